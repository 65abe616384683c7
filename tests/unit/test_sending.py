"""The pure sending core: every branch of :func:`decide`, :func:`settle` and the arrival throttle, exact
values, no I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

from billing.domain.contact import Contact
from billing.domain.debtor_cap import CapDecision
from billing.domain.delivery import OutcomeKind, SendOutcome
from billing.domain.errors import InvalidValue
from billing.domain.policy import default_policy_spec, parse_policy
from billing.domain.queue import Queue
from billing.domain.sending import (
    Action,
    Decision,
    GatewayBlock,
    GatewayState,
    GatewayVerdict,
    Handled,
    JobFacts,
    Need,
    QueuePause,
    RecipientFacts,
    Record,
    ThrottleState,
    call_fits_lease,
    decide,
    settle,
    settle_render_error,
    typing_ms,
)
from billing.domain.throttle import DAILY_LIMIT_REACHED, RATE_LIMITED, ThrottleLimits, decide_arrival
from billing.domain.whatsapp import Account
from tests.factories import added_contact

MONDAY_10 = datetime(2025, 1, 20, 13, 0, tzinfo=UTC)  # 10:00 in São Paulo, open
MONDAY_20 = datetime(2025, 1, 20, 23, 0, tzinfo=UTC)  # 20:00 in São Paulo, closed
TUESDAY_08 = datetime(2025, 1, 21, 11, 0, tzinfo=UTC)  # the next opening after MONDAY_20
LEASE = timedelta(seconds=120)
WINDOW = timedelta(seconds=61)
TENANT = UUID(int=1)
POLICY = parse_policy({**default_policy_spec(), "messages_per_minute": 3, "max_messages_per_day": 10})
NO_PAUSE = parse_policy(
    {**default_policy_spec(), "pause_min_s": 0, "pause_max_s": 0, "messages_per_minute": 3}
)
OPEN = GatewayState(GatewayVerdict.OPEN)
UNBLOCKED = GatewayBlock(generation=2, blocked_generation=None)
EMPTY = ThrottleState(arrivals=(), arrivals_that_day=0, window=WINDOW)


def contact(template_type: str = "overdue", *, tenant_id: UUID = TENANT) -> Contact:
    return added_contact(at=MONDAY_10 - timedelta(hours=1), template_type=template_type, tenant_id=tenant_id)


def queue() -> Queue:
    return Queue.open(
        queue_id=uuid4(),
        tenant_id=TENANT,
        campaign_id=uuid4(),
        template_type="overdue",
        total=1,
        at=MONDAY_10 - timedelta(hours=1),
    )


REACHABLE = RecipientFacts(opted_out=False, account=None, cap=CapDecision(allowed=True))
"""The person: not opted out, the lookup not answered (send to the bare number), under the cap."""


def facts(**changes: Any) -> JobFacts:
    """Facts of a due pending overdue reminder at Monday 10:00, every fact gathered and favourable."""
    base = JobFacts(
        job_tenant_id=TENANT,
        contact=contact(),
        queue=queue(),
        policy=POLICY,
        now=MONDAY_10,
        lease=LEASE,
        pause_draw=0.5,
        block=UNBLOCKED,
        health=OPEN,
        throttle=EMPTY,
        recipient=REACHABLE,
    )
    return replace(base, **changes)


# --- the contact's own state -------------------------------------------------------------------------


def test_a_due_pending_contact_is_claimed_with_its_typing_pause_and_planned_arrival() -> None:
    decision = decide(facts())
    # pause 1..3 s, draw 0.5 → 2 s; the message reaches the gateway after it
    assert decision == Decision(
        Action.CLAIM,
        Handled.SENT,
        typing_ms=2000,
        arrival=MONDAY_10 + timedelta(seconds=2),
        lease_until=MONDAY_10 + LEASE,
        allowed_by={  # the rule that allowed it, for the auditor (policy versions unknown here: 0)
            "policy_version": 0,
            "business_hours": {
                "applies": True,
                "open": True,
                "window_start": "2025-01-20T08:00:00-03:00",
                "window_end": "2025-01-20T18:00:00-03:00",
                "timezone": "America/Sao_Paulo",
                "calendar_version": 0,
            },
            "throttle": {
                "decision": "allowed",
                "messages_per_minute": 3,
                "sent_in_window": 0,
                "max_messages_per_day": 10,
                "sent_today": 0,
                "local_date": "2025-01-20",
            },
            "recipient": {"opted_out": False, "debtor_cap": "allowed", "whatsapp_account": None},
        },
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"contact": None}, "unknown_contact"),
        ({"job_tenant_id": UUID(int=2)}, "unknown_contact"),
        ({"queue": None}, "unknown_queue"),
        ({"policy": None}, "unknown_tenant"),
    ],
)
def test_unknown_or_foreign_ids_are_poison(change: dict[str, Any], reason: str) -> None:
    assert decide(facts(**change)) == Decision(Action.REJECT, Handled.POISON, reason=reason)


@pytest.mark.parametrize("final", ["sent", "skipped", "failed", "cancelled"])
def test_a_final_contact_is_acked_whatever_else_holds(final: str) -> None:
    c = contact()
    c.dispatch(at=MONDAY_10, lease=LEASE)
    if final == "sent":
        c.record_sent(gateway_message_id="3EB0", remote_jid=None, text="Olá", at=MONDAY_10)
    elif final == "skipped":
        c.record_skipped(code="not_on_whatsapp", message="no", at=MONDAY_10)
    elif final == "failed":
        c.record_failure(code="bad_request", message="no", retryable=False, retry_at=None, at=MONDAY_10)
    else:
        c.cancel(reason="paid", at=MONDAY_10)
    decision = decide(facts(contact=c, queue=None, policy=None, block=None))
    assert decision == Decision(Action.ACK, Handled.ALREADY_FINAL, fields={"status": final})


def test_a_cancelled_queue_cancels_the_contact() -> None:
    q = queue()
    q.cancel(reason="erp", at=MONDAY_10)
    assert decide(facts(queue=q)) == Decision(Action.CANCEL, Handled.CANCELLED, reason="queue_cancelled")


def test_a_contact_deferred_to_a_later_instant_is_not_due() -> None:
    c = contact()
    later = MONDAY_10 + timedelta(minutes=5)
    c.defer(reason=RATE_LIMITED, not_before=later, at=MONDAY_10)
    assert decide(facts(contact=c)) == Decision(
        Action.ACK, Handled.NOT_DUE, fields={"not_before": later.isoformat()}
    )


def test_a_claim_in_force_is_in_flight_and_an_expired_one_is_claimed_again() -> None:
    c = contact()
    c.dispatch(at=MONDAY_10, lease=LEASE)
    assert decide(facts(contact=c, now=MONDAY_10 + timedelta(seconds=119))).handled is Handled.IN_FLIGHT
    after = MONDAY_10 + LEASE
    assert decide(facts(contact=c, now=after)).action is Action.CLAIM


# --- queue pauses ---------------------------------------------------------------------------------------


def test_a_pause_in_force_defers_until_resume_at() -> None:
    q = queue()
    until = MONDAY_10 + timedelta(minutes=10)
    q.pause(reason="gateway_disconnected", resume_at=until, at=MONDAY_10)
    assert decide(facts(queue=q)) == Decision(
        Action.DEFER,
        Handled.QUEUE_PAUSED,
        reason="gateway_disconnected",
        not_before=until,
        fields={"paused_reason": "gateway_disconnected"},
    )


def test_a_pause_whose_resume_at_passed_is_lifted_and_the_checks_go_on() -> None:
    q = queue()
    q.pause(reason="outside_business_hours", resume_at=MONDAY_10, at=MONDAY_10 - timedelta(hours=3))
    decision = decide(facts(queue=q))
    assert (decision.action, decision.resume, decision.unblock_below) == (Action.CLAIM, True, None)


def test_a_misconfigured_pause_asks_for_the_block_then_holds_while_the_block_holds() -> None:
    q = queue()
    q.pause(reason="gateway_misconfigured", resume_at=None, at=MONDAY_10)
    assert decide(facts(queue=q, block=None)) == Decision(
        Action.GATHER, Handled.QUEUE_PAUSED, need=Need.BLOCK
    )
    held = decide(facts(queue=q, block=GatewayBlock(generation=2, blocked_generation=2)))
    assert (held.action, held.handled, held.not_before) == (Action.DEFER, Handled.QUEUE_PAUSED, MONDAY_10)


def test_a_misconfigured_pause_is_lifted_once_the_gateway_settings_changed() -> None:
    q = queue()
    q.pause(reason="gateway_misconfigured", resume_at=None, at=MONDAY_10)
    decision = decide(facts(queue=q, block=GatewayBlock(generation=3, blocked_generation=2)))
    assert (decision.action, decision.resume, decision.unblock_below) == (Action.CLAIM, True, 3)


def test_a_pause_until_told_stays() -> None:
    q = queue()
    q.pause(reason="manual", resume_at=None, at=MONDAY_10)
    decision = decide(facts(queue=q))
    assert (decision.action, decision.reason, decision.not_before) == (Action.DEFER, "manual", MONDAY_10)


# --- business hours, gateway ----------------------------------------------------------------------------


def test_a_reminder_outside_business_hours_pauses_the_queue_until_the_next_opening() -> None:
    decision = decide(facts(now=MONDAY_20))
    assert decision == Decision(
        Action.DEFER,
        Handled.OUTSIDE_BUSINESS_HOURS,
        reason="outside_business_hours",
        not_before=TUESDAY_08,
        pause=QueuePause("outside_business_hours", TUESDAY_08),
    )


def test_a_notice_goes_out_at_any_hour() -> None:
    decision = decide(facts(contact=contact("notification"), now=MONDAY_20))
    assert decision.action is Action.CLAIM


def test_gateway_facts_are_asked_for_in_order_block_then_health_then_throttle() -> None:
    assert decide(facts(block=None, health=None, throttle=None)).need is Need.BLOCK
    assert decide(facts(health=None, throttle=None)).need is Need.HEALTH
    assert decide(facts(throttle=None)).need is Need.THROTTLE


def test_a_blocked_gateway_pauses_the_queue_until_its_settings_change() -> None:
    decision = decide(facts(block=GatewayBlock(generation=2, blocked_generation=2), health=None))
    assert decision == Decision(
        Action.DEFER,
        Handled.GATEWAY_MISCONFIGURED,
        reason="gateway_misconfigured",
        not_before=MONDAY_10,
        pause=QueuePause("gateway_misconfigured", None),
    )


def test_a_misconfigured_probe_blocks_the_gateway_at_its_generation() -> None:
    decision = decide(facts(health=GatewayState(GatewayVerdict.MISCONFIGURED, "unauthorized")))
    assert decision.block_gateway == (2, "unauthorized")
    assert decision.pause == QueuePause("gateway_misconfigured", None)
    assert decision.fields == {"code": "unauthorized"}


def test_a_down_gateway_pauses_until_the_backoff_ends() -> None:
    until = MONDAY_10 + timedelta(seconds=30)
    decision = decide(facts(health=GatewayState(GatewayVerdict.DOWN, down_until=until)))
    assert (decision.handled, decision.not_before, decision.pause) == (
        Handled.GATEWAY_DISCONNECTED,
        until,
        QueuePause("gateway_disconnected", until),
    )


# --- throttle at the arrival ------------------------------------------------------------------------------


def test_the_minute_is_full_at_the_arrival_so_the_contact_waits_until_it_fits() -> None:
    # three arrivals 10, 20 and 30 s before now; the new one would arrive 2 s after now
    arrivals = tuple(MONDAY_10 - timedelta(seconds=s) for s in (30, 20, 10))
    decision = decide(facts(throttle=ThrottleState(arrivals, 3, WINDOW)))
    # room once the oldest (now − 30 s) is 61 s behind: arrival at now + 31 s, decided 2 s before
    assert decision == Decision(
        Action.DEFER, Handled.THROTTLED, reason=RATE_LIMITED, not_before=MONDAY_10 + timedelta(seconds=29)
    )


def test_a_later_planned_arrival_counts_against_an_earlier_decision() -> None:
    # three sends already planned to arrive 5, 10 and 50 s from now (long typing pauses)
    arrivals = tuple(MONDAY_10 + timedelta(seconds=s) for s in (5, 10, 50))
    assert decide(facts(throttle=ThrottleState(arrivals, 3, WINDOW))).action is Action.DEFER


def test_the_daily_cap_pauses_the_queue_until_the_next_days_opening() -> None:
    decision = decide(facts(throttle=ThrottleState((), 10, WINDOW)))
    assert decision == Decision(
        Action.DEFER,
        Handled.DAILY_LIMIT_REACHED,
        reason=DAILY_LIMIT_REACHED,
        not_before=TUESDAY_08,
        pause=QueuePause(DAILY_LIMIT_REACHED, TUESDAY_08),
    )


def test_no_pause_means_no_typing_and_arrival_now() -> None:
    decision = decide(facts(policy=NO_PAUSE))
    assert (decision.typing_ms, decision.arrival) == (None, MONDAY_10)


@pytest.mark.parametrize(("draw", "ms"), [(0.0, 1000), (0.25, 1500), (0.999, 2998)])
def test_typing_pause_spans_the_policy_range(draw: float, ms: int) -> None:
    assert typing_ms(POLICY, draw) == ms


def test_typing_draw_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match="draw"):
        typing_ms(POLICY, 1.0)


LIMITS = ThrottleLimits(messages_per_minute=2, max_messages_per_day=100)


def arrive(at: datetime, *offsets: float) -> tuple[datetime, ...]:
    return tuple(at + timedelta(seconds=s) for s in offsets)


@pytest.mark.parametrize(
    ("others", "allowed", "retry_after_s"),
    [
        ((), True, None),
        ((-30,), True, None),
        ((-61, -30), True, None),  # exactly 61 s apart: not in one window
        ((-60.999, -30), False, 0.001),  # still inside: room 1 ms later
        ((-30, -10), False, 31),
        ((10, 30), False, 71),  # future arrivals count too: fits once 10 is 61 s behind, beside 30
        ((-50, 20), True, None),  # [−50, 11] and [0, 61] hold two each
        ((-100, 100), True, None),
    ],
)
def test_arrival_throttle_checks_every_window_that_holds_the_new_arrival(
    others: tuple[float, ...], allowed: bool, retry_after_s: float | None
) -> None:
    decision = decide_arrival(
        LIMITS,
        arrival=MONDAY_10,
        arrivals=arrive(MONDAY_10, *others),
        arrivals_that_day=len(others),
        calendar=POLICY.calendar,
        window=WINDOW,
    )
    assert decision.allowed is allowed
    if retry_after_s is None:
        assert decision.retry_at is None
    else:
        assert decision.retry_at == MONDAY_10 + timedelta(seconds=retry_after_s)


def test_arrival_throttle_never_lets_a_window_hold_more_than_the_limit() -> None:
    # a greedy sequence of 40 grants with typing pauses cycling 3, 1, 2 s: no 61 s window holds 3
    granted: list[datetime] = []
    now = MONDAY_10
    pauses = [3.0, 1.0, 2.0]
    for i in range(40):
        arrival = now + timedelta(seconds=pauses[i % 3])
        decision = decide_arrival(
            LIMITS,
            arrival=arrival,
            arrivals=granted,
            arrivals_that_day=0,
            calendar=POLICY.calendar,
            window=WINDOW,
        )
        if decision.allowed:
            granted.append(arrival)
            now += timedelta(seconds=0.5)
        else:
            assert decision.retry_at is not None
            now = decision.retry_at - timedelta(seconds=pauses[i % 3])
    ordered = sorted(granted)
    worst = max(sum(1 for u in ordered if t <= u < t + WINDOW) for t in ordered)
    assert worst == 2
    assert len(granted) == 26


def test_arrival_throttle_refuses_naive_instants_and_short_windows() -> None:
    with pytest.raises(InvalidValue, match="arrival"):
        decide_arrival(
            LIMITS, arrival=datetime(2025, 1, 20), arrivals=(), arrivals_that_day=0, calendar=POLICY.calendar
        )
    with pytest.raises(InvalidValue, match="window"):
        decide_arrival(
            LIMITS,
            arrival=MONDAY_10,
            arrivals=(),
            arrivals_that_day=0,
            calendar=POLICY.calendar,
            window=WINDOW / 2,
        )


# --- the call and its outcome -----------------------------------------------------------------------------


def test_a_call_fits_the_lease_only_when_typing_and_timeout_end_before_it() -> None:
    lease_until = MONDAY_10 + LEASE
    assert call_fits_lease(lease_until, now=MONDAY_10, typing=3000, timeout_s=30)
    assert not call_fits_lease(lease_until, now=MONDAY_10 + timedelta(seconds=87), typing=3000, timeout_s=30)
    assert call_fits_lease(None, now=MONDAY_10, typing=None, timeout_s=30)


def outcome(kind: OutcomeKind, code: str, **kw: Any) -> SendOutcome:
    return SendOutcome(kind=kind, code=code, message=code, retryable=kind is OutcomeKind.RETRYABLE, **kw)


def test_a_sent_outcome_records_sent_and_marks_the_gateway_healthy() -> None:
    s = settle(
        outcome(OutcomeKind.SENT, "sent", message_id="3EB0"),
        attempt=1,
        policy=POLICY,
        retry_draw=0,
        now=MONDAY_10,
    )
    assert (s.handled, s.record, s.healthy, s.pause) == (Handled.SENT, Record("sent", "sent"), True, None)


def test_not_on_whatsapp_is_skipped() -> None:
    s = settle(
        outcome(OutcomeKind.NOT_ON_WHATSAPP, "not_on_whatsapp"),
        attempt=1,
        policy=POLICY,
        retry_draw=0,
        now=MONDAY_10,
    )
    assert (s.handled, s.record) == (Handled.SKIPPED, Record("skipped", "not_on_whatsapp", "not_on_whatsapp"))


def test_a_retryable_failure_is_retried_after_the_policys_backoff() -> None:
    # defaults: 5 attempts, 30 s base, jitter 0.2 → attempt 2 waits 48..60 s; draw 0.5 → 54 s
    s = settle(
        outcome(OutcomeKind.RETRYABLE, "gateway_unavailable"),
        attempt=2,
        policy=POLICY,
        retry_draw=0.5,
        now=MONDAY_10,
    )
    assert s.handled is Handled.RETRY_SCHEDULED
    assert s.record == Record(
        "failed",
        "gateway_unavailable",
        "gateway_unavailable",
        retryable=True,
        retry_at=MONDAY_10 + timedelta(seconds=54),
    )


def test_the_last_attempt_fails_for_good() -> None:
    s = settle(
        outcome(OutcomeKind.RETRYABLE, "gateway_error"),
        attempt=5,
        policy=POLICY,
        retry_draw=0.5,
        now=MONDAY_10,
    )
    assert (s.handled, s.record.retry_at) == (Handled.FAILED, None)


def test_a_tripped_connection_pauses_the_queue_and_the_retry_waits_for_the_backoff() -> None:
    until = MONDAY_10 + timedelta(minutes=5)
    s = settle(
        outcome(OutcomeKind.RETRYABLE, "connection_closed", connection_problem=True),
        attempt=1,
        policy=POLICY,
        retry_draw=0.0,
        now=MONDAY_10,
        tripped_until=until,
    )
    assert (s.pause, s.record.retry_at) == (QueuePause("gateway_disconnected", until), until)


def test_misconfigured_blocks_the_gateway_pauses_and_retries_the_contact_later() -> None:
    s = settle(
        outcome(OutcomeKind.MISCONFIGURED, "unauthorized"),
        attempt=1,
        policy=POLICY,
        retry_draw=0,
        now=MONDAY_10,
    )
    assert s.block_gateway == "unauthorized"
    assert s.pause == QueuePause("gateway_misconfigured", None)
    assert s.record == Record("failed", "unauthorized", "unauthorized", retryable=True, retry_at=MONDAY_10)


def test_a_permanent_failure_is_final() -> None:
    s = settle(
        outcome(OutcomeKind.PERMANENT, "bad_request"), attempt=1, policy=POLICY, retry_draw=0, now=MONDAY_10
    )
    assert (s.handled, s.record) == (Handled.FAILED, Record("failed", "bad_request", "bad_request"))


def test_render_errors_retry_only_when_retryable() -> None:
    s = settle_render_error(
        "no_active_template", "none", retryable=True, attempt=1, policy=POLICY, retry_draw=0.0, now=MONDAY_10
    )
    assert (s.handled, s.record.retry_at) == (Handled.RETRY_SCHEDULED, MONDAY_10 + timedelta(seconds=24))
    s = settle_render_error(
        "missing_variable", "x", retryable=False, attempt=1, policy=POLICY, retry_draw=0.0, now=MONDAY_10
    )
    assert (s.handled, s.record) == (Handled.FAILED, Record("failed", "missing_variable", "x"))


# --- the person: opt-out, WhatsApp account, per-debtor cap ----------------------------------------------


def test_the_recipient_facts_are_gathered_after_the_gateway_checks() -> None:
    decision = decide(facts(recipient=None))
    assert (decision.action, decision.need) == (Action.GATHER, Need.RECIPIENT)


def test_an_opted_out_phone_is_skipped_without_a_send() -> None:
    decision = decide(facts(recipient=RecipientFacts(True, None, CapDecision(True))))
    assert (decision.action, decision.handled, decision.reason) == (Action.SKIP, Handled.SKIPPED, "opted_out")


def test_no_whatsapp_account_is_skipped_and_the_found_jid_is_sent_to() -> None:
    absent = decide(facts(recipient=RecipientFacts(False, Account(None), CapDecision(True))))
    assert (absent.action, absent.reason) == (Action.SKIP, "not_on_whatsapp")
    found = decide(
        facts(recipient=RecipientFacts(False, Account("557588251234@s.whatsapp.net"), CapDecision(True)))
    )
    assert (found.action, found.jid) == (Action.CLAIM, "557588251234@s.whatsapp.net")


def test_over_the_per_debtor_cap_is_deferred_to_the_next_opening() -> None:
    tomorrow = MONDAY_10 + timedelta(days=1)
    decision = decide(facts(recipient=RecipientFacts(False, None, CapDecision(False, tomorrow))))
    assert (decision.action, decision.handled, decision.reason, decision.not_before) == (
        Action.DEFER, Handled.DEBTOR_DAILY_CAP, "debtor_daily_cap", tomorrow,
    )  # fmt: skip


def test_a_contact_deferred_by_a_pause_is_due_once_the_pause_is_lifted_early() -> None:
    waiting = contact()
    waiting.defer(reason="outside_business_hours", not_before=MONDAY_10 + timedelta(hours=20), at=MONDAY_10)
    assert decide(facts(contact=waiting)).action is Action.CLAIM  # the queue is not paused (any more)
    paused = queue()
    paused.pause(reason="outside_business_hours", resume_at=MONDAY_10 + timedelta(hours=20), at=MONDAY_10)
    assert decide(facts(contact=waiting, queue=paused)).handled is Handled.NOT_DUE
    throttled = contact()
    throttled.defer(reason="throttled", not_before=MONDAY_10 + timedelta(seconds=30), at=MONDAY_10)
    assert decide(facts(contact=throttled)).handled is Handled.NOT_DUE
