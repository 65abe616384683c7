"""The sending core: from the facts about one job to one decision, and from a gateway outcome to what is
recorded. Pure: every instant, draw and state comes in as an argument.

The worker (:mod:`billing.worker.handler`) gathers facts, calls :func:`decide`, carries out the
:class:`Decision` and settles the delivery. Some facts cost I/O (the gateway block row, the
``connectionState`` probe, the send ledger under the tenant's lock), so they are gathered only when a
check needs them: :func:`decide` answers ``Action.GATHER`` with the :class:`Need` it lacks, and the worker
calls it again with that fact added. The order of the checks (each source in the worker's docs):

1. job names an unknown contact, a contact of another tenant, an unknown queue or tenant → REJECT
2. contact final → ACK (``already_final``; promise 3)
3. queue cancelled → CANCEL
4. pending with ``not_before`` ahead → ACK (``not_due``) — unless it was deferred only because its queue
   was paused and the queue is no longer (a pause lifted early: wider hours, a manual resume);
   dispatched under a live lease → ACK (``in_flight``)
5. queue paused: its ``resume_at`` passed → resume and go on; ``gateway_misconfigured`` without
   ``resume_at`` whose block no longer holds (the tenant's gateway settings changed) → unblock, resume,
   go on; otherwise DEFER until ``resume_at`` (``queue_paused``)
6. dunning reminder outside business hours → pause the queue until the next opening, DEFER to it
7. the tenant's gateway blocked at its current generation (401/403/404) → pause ``gateway_misconfigured``
8. gateway health: misconfigured probe → block, pause; down → pause ``gateway_disconnected`` until the
   health's backoff ends; both DEFER
8b. the person (:class:`RecipientFacts`): opted out → SKIP ``opted_out``; the lookup found no WhatsApp
   account → SKIP ``not_on_whatsapp``; over the per-debtor cap → DEFER to the next opening
9. throttle at the instant the message will reach the gateway (now + typing pause): daily cap → pause
   ``daily_limit_reached`` and DEFER; per-minute → DEFER until it fits
10. otherwise CLAIM, with the lease, the typing pause and the planned arrival

After the call, :func:`settle` turns the classified :class:`~billing.domain.delivery.SendOutcome` into
the contact's record (sent, skipped, failed with or without a retry instant) and the side effects on the
queue and the tenant's gateway (``docs/evolution-api.md``, "Failures to classify").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID

from billing.domain.audit import allowed_by
from billing.domain.contact import Contact
from billing.domain.debtor_cap import CapDecision
from billing.domain.delivery import OutcomeKind, SendOutcome
from billing.domain.policy import SendingPolicy
from billing.domain.queue import Queue
from billing.domain.throttle import DAILY_LIMIT_REACHED, decide_arrival
from billing.domain.types import ContactStatus, PauseReason, TemplateType
from billing.domain.whatsapp import Account

__all__ = [
    "Action",
    "Decision",
    "GatewayBlock",
    "GatewayState",
    "GatewayVerdict",
    "Handled",
    "JobFacts",
    "Need",
    "QueuePause",
    "RecipientFacts",
    "Record",
    "Settlement",
    "ThrottleState",
    "call_fits_lease",
    "decide",
    "settle",
    "settle_render_error",
    "typing_ms",
]


class Handled(StrEnum):
    """What handling one job did (the ``outcome`` of its log line)."""

    POISON = "poison"
    """Malformed, or names an unknown contact/queue/tenant: dead-lettered."""
    ALREADY_FINAL = "already_final"
    CANCELLED = "cancelled"
    NOT_DUE = "not_due"
    IN_FLIGHT = "in_flight"
    CONTENDED = "contended"
    """Another writer changed the contact meanwhile; it owns the next step."""
    QUEUE_PAUSED = "queue_paused"
    OUTSIDE_BUSINESS_HOURS = "outside_business_hours"
    GATEWAY_MISCONFIGURED = "gateway_misconfigured"
    GATEWAY_DISCONNECTED = "gateway_disconnected"
    THROTTLED = "throttled"
    DAILY_LIMIT_REACHED = "daily_limit_reached"
    DEBTOR_DAILY_CAP = "debtor_daily_cap"
    """The phone already got its dunning messages of the day (per-debtor cap): deferred."""
    CLAIMED_ELSEWHERE = "claimed_elsewhere"
    LEASE_TOO_SHORT = "lease_too_short"
    """The claim would expire before the gateway call could end: released without calling."""
    SENT = "sent"
    SKIPPED = "skipped"
    RETRY_SCHEDULED = "retry_scheduled"
    FAILED = "failed"
    UNRECORDED = "outcome_not_recorded"


class Action(StrEnum):
    """What the worker does with the job."""

    REJECT = "reject"
    """Poison: dead-letter the delivery."""
    ACK = "ack"
    """Nothing to write: settle the delivery."""
    CANCEL = "cancel"
    """Record ``Contact.Cancelled`` (``reason``)."""
    DEFER = "defer"
    """Record ``Contact.Deferred(reason, not_before)``."""
    SKIP = "skip"
    """Record ``Contact.Skipped`` (``reason``) without a send (opted out, no WhatsApp account)."""
    CLAIM = "claim"
    """Take a throttle grant at ``arrival``, record ``Contact.Dispatched`` (lease), render and send."""
    GATHER = "gather"
    """A fact is missing (``need``): gather it and decide again."""


class Need(StrEnum):
    """A fact :func:`decide` asks for before it can go on."""

    BLOCK = "block"
    """:class:`GatewayBlock` — the tenant's gateway block row (one small read)."""
    HEALTH = "health"
    """:class:`GatewayState` — the cached ``connectionState`` verdict (maybe an HTTP probe)."""
    THROTTLE = "throttle"
    """:class:`ThrottleState` — the send ledger, read under the tenant's lock."""
    RECIPIENT = "recipient"
    """:class:`RecipientFacts` — consent ledger, WhatsApp account lookup, per-debtor cap."""


class GatewayVerdict(StrEnum):
    """What the worker may do with a tenant's gateway now (``docs/evolution-api.md``, "Instance
    health")."""

    OPEN = "open"
    DOWN = "down"
    """Not connected (state not ``open``, no answer, or tripped by repeated connection problems)."""
    MISCONFIGURED = "misconfigured"
    """401/403/404/redirect on the probe: pause until the gateway settings change."""


@dataclass(frozen=True)
class GatewayBlock:
    """The tenant's gateway settings generation, and the generation its gateway was blocked at after a
    401/403/404 (None: not blocked). The block holds while ``blocked_generation >= generation``."""

    generation: int
    blocked_generation: int | None

    @property
    def holds(self) -> bool:
        """True while the block concerns the current gateway settings."""
        return self.blocked_generation is not None and self.blocked_generation >= self.generation


@dataclass(frozen=True)
class GatewayState:
    """The gateway health verdict at ``now``: for ``DOWN``, ``down_until`` (UTC) is when to look again
    (the pause's ``resume_at``); for ``MISCONFIGURED``, ``code`` is the probe's code (``unauthorized``…)."""

    verdict: GatewayVerdict
    code: str | None = None
    down_until: datetime | None = None


@dataclass(frozen=True)
class ThrottleState:
    """The tenant's send ledger around the planned arrival.

    Attributes:
        arrivals: planned gateway arrivals (aware) of granted sends within ``2 × window`` of the arrival.
        arrivals_that_day: granted sends arriving on the tenant's local day of the planned arrival.
        window: the per-minute window widened by the safety margin (60 s + 1 real second).
    """

    arrivals: tuple[datetime, ...]
    arrivals_that_day: int
    window: timedelta

    def granted(self, arrival: datetime, *, that_day: bool) -> ThrottleState:
        """The state after one more grant planned to arrive at ``arrival`` (aware); ``that_day``: it
        arrives on the same local day as the state's planned arrival (then it counts for the day)."""
        return ThrottleState(
            arrivals=(*self.arrivals, arrival),
            arrivals_that_day=self.arrivals_that_day + (1 if that_day else 0),
            window=self.window,
        )


@dataclass(frozen=True)
class RecipientFacts:
    """About the person (gathered by :mod:`billing.worker.recipient`).

    Attributes:
        opted_out: the phone's Conversation records an opt-out in force.
        account: the lookup's answer (None: the lookup failed; send to the bare number).
        cap: the per-debtor cap's verdict (:func:`billing.domain.debtor_cap.decide_cap`), its slot
            reserved under the phone's lock when allowed.
    """

    opted_out: bool
    account: Account | None
    cap: CapDecision


@dataclass(frozen=True)
class JobFacts:
    """Everything :func:`decide` looks at for one job.

    Attributes:
        job_tenant_id: the tenant the job names.
        contact / queue: the aggregates (None: unknown id).
        policy: the tenant's sending policy (None: unknown tenant).
        now: aware instant of the decision.
        lease: how long a claim holds (``BILLING_DISPATCH_LEASE_S``).
        pause_draw: a uniform draw in ``[0, 1)`` choosing the typing pause within the policy's range.
        policy_versions: the tenant's ``(policy_version, calendar_version)``, recorded in a claim's
            ``allowed_by`` (None: unknown, recorded as 0).
        block / health / throttle: gathered on demand (:class:`Need`); None until then.
    """

    job_tenant_id: UUID
    contact: Contact | None
    queue: Queue | None
    policy: SendingPolicy | None
    now: datetime
    lease: timedelta
    pause_draw: float = 0.0
    policy_versions: tuple[int, int] | None = None
    block: GatewayBlock | None = None
    health: GatewayState | None = None
    throttle: ThrottleState | None = None
    recipient: RecipientFacts | None = None


@dataclass(frozen=True)
class QueuePause:
    """Pause the contact's queue for ``reason`` until ``resume_at`` (UTC; None: until lifted)."""

    reason: str
    resume_at: datetime | None


@dataclass(frozen=True)
class Decision:
    """One decision about one job (see :class:`Action`). Side effects are carried out in this order:
    ``unblock_below`` (lift a stale gateway block), ``resume`` (lift the queue's pause), ``block_gateway``
    (record a 401/403/404 at ``(generation, code)``), ``pause``, then the action on the contact.

    Attributes:
        action / handled: what to do, and the label of the job's log line.
        reason: REJECT — why; CANCEL/DEFER — the event's ``reason``.
        not_before: DEFER — UTC instant the contact is due again.
        need: GATHER — the missing fact.
        typing_ms: CLAIM — the typing pause the gateway spends before sending (None: no pause).
        arrival: CLAIM — UTC instant the message is planned to reach the gateway (the throttle's count).
        lease_until: CLAIM — UTC end of the claim.
        allowed_by: CLAIM — the rule that allowed it, for the claim's event
            (:func:`billing.domain.audit.allowed_by`).
        fields: extra facts for the log line (ids, codes, instants; never text or phone).
    """

    action: Action
    handled: Handled
    reason: str | None = None
    not_before: datetime | None = None
    need: Need | None = None
    pause: QueuePause | None = None
    resume: bool = False
    unblock_below: int | None = None
    block_gateway: tuple[int, str] | None = None
    typing_ms: int | None = None
    arrival: datetime | None = None
    lease_until: datetime | None = None
    jid: str | None = None
    """CLAIM — the JID the lookup found, sent to instead of the bare number (None: the number)."""
    allowed_by: dict[str, Any] | None = None
    fields: dict[str, Any] = field(default_factory=dict)


PAUSE_DEFERRALS = frozenset({"queue_paused", *(reason.value for reason in PauseReason), "paused_by_admin"})
"""Deferral reasons that only waited for the queue's pause (a contact so deferred is due once the pause
is lifted, even before its ``not_before``)."""


def typing_ms(policy: SendingPolicy, draw: float) -> int | None:
    """The pause before a message, in milliseconds: ``pause_min_s + draw × (pause_max_s − pause_min_s)``,
    spent by the gateway as "typing…" (evolution-api.md ``delay``); None when ``pause_max_s`` is 0.

    Raises:
        ValueError: ``draw`` outside ``[0, 1)``.
    """
    if not 0 <= draw < 1:
        raise ValueError(f"draw must be in [0, 1), got {draw!r}")
    if policy.pause_max_s <= 0:
        return None
    return round((policy.pause_min_s + draw * (policy.pause_max_s - policy.pause_min_s)) * 1000)


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _defer(
    handled: Handled, reason: str, not_before: datetime, *, pause: QueuePause | None = None, **kw: Any
) -> Decision:
    return Decision(Action.DEFER, handled, reason=reason, not_before=_utc(not_before), pause=pause, **kw)


def decide(facts: JobFacts) -> Decision:
    """The one decision for a job (module docstring: the order of the checks).

    Raises:
        ValueError: ``pause_draw`` outside ``[0, 1)``.
    """
    contact, queue, policy, now = facts.contact, facts.queue, facts.policy, facts.now
    if contact is None or contact.tenant_id != facts.job_tenant_id:
        return Decision(Action.REJECT, Handled.POISON, reason="unknown_contact")
    if contact.status.is_terminal:
        return Decision(Action.ACK, Handled.ALREADY_FINAL, fields={"status": contact.status.value})
    if queue is None:
        return Decision(Action.REJECT, Handled.POISON, reason="unknown_queue")
    if queue.cancelled:
        return Decision(Action.CANCEL, Handled.CANCELLED, reason="queue_cancelled")
    if (
        contact.status is ContactStatus.PENDING
        and contact.not_before is not None
        and contact.not_before > now
        and not (contact.deferred_for in PAUSE_DEFERRALS and not queue.paused)
    ):
        return Decision(Action.ACK, Handled.NOT_DUE, fields={"not_before": contact.not_before.isoformat()})
    if contact.status is ContactStatus.DISPATCHED and contact.lease_until and now < contact.lease_until:
        return Decision(
            Action.ACK, Handled.IN_FLIGHT, fields={"lease_until": contact.lease_until.isoformat()}
        )
    if policy is None:
        return Decision(Action.REJECT, Handled.POISON, reason="unknown_tenant")

    resume, unblock_below = False, None
    if queue.paused:
        if queue.resume_at is not None and queue.resume_at <= now:
            resume = True
        elif queue.resume_at is None and queue.paused_reason == PauseReason.GATEWAY_MISCONFIGURED:
            if facts.block is None:
                return Decision(Action.GATHER, Handled.QUEUE_PAUSED, need=Need.BLOCK)
            if not facts.block.holds:
                resume, unblock_below = True, facts.block.generation
        if not resume:
            reason = queue.paused_reason or "paused"
            return _defer(
                Handled.QUEUE_PAUSED, reason, queue.resume_at or now, fields={"paused_reason": reason}
            )
    side: dict[str, Any] = {"resume": resume, "unblock_below": unblock_below}

    calendar = policy.calendar
    if TemplateType(contact.template_type).respects_business_hours and not calendar.is_open(now):
        opening = calendar.next_opening(now)
        reason = PauseReason.OUTSIDE_BUSINESS_HOURS.value
        return _defer(
            Handled.OUTSIDE_BUSINESS_HOURS, reason, opening, pause=QueuePause(reason, _utc(opening)), **side
        )

    misconfigured = PauseReason.GATEWAY_MISCONFIGURED.value
    if facts.block is None:
        return Decision(Action.GATHER, Handled.QUEUE_PAUSED, need=Need.BLOCK)
    if facts.block.holds:
        return _defer(
            Handled.GATEWAY_MISCONFIGURED, misconfigured, now, pause=QueuePause(misconfigured, None), **side
        )
    if facts.health is None:
        return Decision(Action.GATHER, Handled.QUEUE_PAUSED, need=Need.HEALTH)
    if facts.health.verdict is GatewayVerdict.MISCONFIGURED:
        code = facts.health.code or ""
        return _defer(
            Handled.GATEWAY_MISCONFIGURED,
            misconfigured,
            now,
            pause=QueuePause(misconfigured, None),
            block_gateway=(facts.block.generation, code),
            fields={"code": code},
            **side,
        )
    if facts.health.verdict is GatewayVerdict.DOWN:
        until = _utc(facts.health.down_until or now)
        reason = PauseReason.GATEWAY_DISCONNECTED.value
        return _defer(Handled.GATEWAY_DISCONNECTED, reason, until, pause=QueuePause(reason, until), **side)

    recipient = facts.recipient
    if recipient is None:
        return Decision(Action.GATHER, Handled.THROTTLED, need=Need.RECIPIENT, **side)
    if recipient.opted_out:
        return Decision(Action.SKIP, Handled.SKIPPED, reason="opted_out", **side)
    if recipient.account is not None and not recipient.account.exists:
        return Decision(Action.SKIP, Handled.SKIPPED, reason="not_on_whatsapp", **side)
    if not recipient.cap.allowed:
        assert recipient.cap.not_before is not None
        return _defer(Handled.DEBTOR_DAILY_CAP, "debtor_daily_cap", recipient.cap.not_before, **side)
    jid = recipient.account.jid if recipient.account is not None else None

    typing = typing_ms(policy, facts.pause_draw)
    arrival = _utc(now + timedelta(milliseconds=typing or 0))
    if facts.throttle is None:
        return Decision(Action.GATHER, Handled.THROTTLED, need=Need.THROTTLE, **side)
    verdict = decide_arrival(
        policy.limits,
        arrival=arrival,
        arrivals=facts.throttle.arrivals,
        arrivals_that_day=facts.throttle.arrivals_that_day,
        calendar=calendar,
        window=facts.throttle.window,
    )
    if not verdict.allowed:
        assert verdict.retry_at is not None
        if verdict.reason == DAILY_LIMIT_REACHED:
            retry_at = _utc(verdict.retry_at)
            return _defer(
                Handled.DAILY_LIMIT_REACHED,
                DAILY_LIMIT_REACHED,
                retry_at,
                pause=QueuePause(DAILY_LIMIT_REACHED, retry_at),
                **side,
            )
        # the send fits when it *arrives* at retry_at: decide again that much earlier than the arrival
        not_before = verdict.retry_at - (arrival - now)
        return _defer(Handled.THROTTLED, verdict.reason or "throttled", max(now, not_before), **side)
    versions = facts.policy_versions or (0, 0)
    window_start = arrival - facts.throttle.window
    rule = allowed_by(
        at=now,
        respects_business_hours=TemplateType(contact.template_type).respects_business_hours,
        calendar=calendar,
        calendar_version=versions[1],
        policy_version=versions[0],
        limits=policy.limits,
        sent_in_window=sum(1 for a in facts.throttle.arrivals if window_start < a <= arrival),
        sent_today=facts.throttle.arrivals_that_day,
        jid=jid,
    )
    return Decision(
        Action.CLAIM,
        Handled.SENT,
        typing_ms=typing,
        arrival=arrival,
        lease_until=_utc(now + facts.lease),
        jid=jid,
        allowed_by=rule,
        **side,
    )


def call_fits_lease(
    lease_until: datetime | None, *, now: datetime, typing: int | None, timeout_s: float
) -> bool:
    """True when a gateway call started at ``now`` — typing pause (ms) plus the client's timeout (s) —
    ends before the claim's ``lease_until``. Past the lease another worker may claim the contact, and a
    call still running then could make WhatsApp receive the message twice."""
    if lease_until is None:
        return True
    return now + timedelta(seconds=timeout_s + (typing or 0) / 1000) < lease_until


@dataclass(frozen=True)
class Record:
    """The command to apply to the claimed contact: ``kind`` ``sent`` (``Contact.record_sent``),
    ``skipped`` (``record_skipped``) or ``failed`` (``record_failure``, final when ``retry_at`` is None)."""

    kind: str
    code: str
    message: str = ""
    retryable: bool = False
    retry_at: datetime | None = None


@dataclass(frozen=True)
class Settlement:
    """What one gateway outcome leads to.

    Attributes:
        handled: the log line's outcome.
        record: the contact's command.
        pause: the queue's pause, if any (gateway misconfigured or tripped down).
        block_gateway: record the tenant's gateway as blocked with this code (401/403/404).
        healthy: the send went through (the gateway's health counters start over).
    """

    handled: Handled
    record: Record
    pause: QueuePause | None = None
    block_gateway: str | None = None
    healthy: bool = False


def _retry_at(policy: SendingPolicy, attempt: int, draw: float, now: datetime) -> datetime | None:
    if not policy.retry.should_retry(attempt, True):
        return None
    return _utc(now + timedelta(seconds=policy.retry.next_delay(attempt, draw)))


def settle(
    outcome: SendOutcome,
    *,
    attempt: int,
    policy: SendingPolicy,
    retry_draw: float,
    now: datetime,
    tripped_until: datetime | None = None,
) -> Settlement:
    """From the classified answer to attempt ``attempt`` to its record (module docstring).

    | outcome          | record                                                               |
    | ---------------- | -------------------------------------------------------------------- |
    | SENT             | ``sent`` (the gateway's message id is the caller's to pass)          |
    | NOT_ON_WHATSAPP  | ``skipped`` (``not_on_whatsapp``)                                    |
    | RETRYABLE        | ``failed`` with ``retry_at = now + RetryPolicy.next_delay`` while    |
    |                  | ``should_retry`` (not before ``tripped_until``), else final          |
    | PERMANENT        | ``failed``, final                                                    |
    | MISCONFIGURED    | ``failed`` with ``retry_at = now`` (not the contact's fault), gateway |
    |                  | blocked, queue paused ``gateway_misconfigured``                      |

    Args:
        retry_draw: uniform draw in ``[0, 1)`` for the retry jitter.
        tripped_until: when this connection problem tripped the gateway's health, the end of its backoff
            (the queue pauses ``gateway_disconnected`` until then).
    """
    if outcome.kind is OutcomeKind.SENT:
        return Settlement(Handled.SENT, Record("sent", outcome.code), healthy=True)
    if outcome.kind is OutcomeKind.NOT_ON_WHATSAPP:
        return Settlement(Handled.SKIPPED, Record("skipped", outcome.code, outcome.message))
    if outcome.kind is OutcomeKind.MISCONFIGURED:
        return Settlement(
            Handled.GATEWAY_MISCONFIGURED,
            Record("failed", outcome.code, outcome.message, retryable=True, retry_at=_utc(now)),
            pause=QueuePause(PauseReason.GATEWAY_MISCONFIGURED.value, None),
            block_gateway=outcome.code,
        )
    if outcome.kind is OutcomeKind.RETRYABLE:
        retry_at = _retry_at(policy, attempt, retry_draw, now)
        pause = None
        if tripped_until is not None:
            pause = QueuePause(PauseReason.GATEWAY_DISCONNECTED.value, _utc(tripped_until))
            if retry_at is not None:
                retry_at = max(retry_at, _utc(tripped_until))
        handled = Handled.RETRY_SCHEDULED if retry_at else Handled.FAILED
        return Settlement(
            handled,
            Record("failed", outcome.code, outcome.message, retryable=True, retry_at=retry_at),
            pause=pause,
        )
    return Settlement(Handled.FAILED, Record("failed", outcome.code, outcome.message))


def settle_render_error(
    code: str,
    message: str,
    *,
    retryable: bool,
    attempt: int,
    policy: SendingPolicy,
    retry_draw: float,
    now: datetime,
) -> Settlement:
    """Nothing could be rendered (no active template, a template error, a missing variable): the attempt
    fails before the gateway; a retryable cause (``no_active_template``) is retried by the policy."""
    retry_at = _retry_at(policy, attempt, retry_draw, now) if retryable else None
    handled = Handled.RETRY_SCHEDULED if retry_at else Handled.FAILED
    return Settlement(handled, Record("failed", code, message, retryable=retryable, retry_at=retry_at))
