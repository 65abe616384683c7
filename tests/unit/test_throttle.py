"""Throttle: sliding 60-second window and daily cap, with exact values."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from billing.domain.calendar import BusinessCalendar, PolicyError, default_calendar_spec, parse_calendar
from billing.domain.errors import InvalidValue
from billing.domain.throttle import (
    DAILY_LIMIT_REACHED,
    RATE_LIMITED,
    ThrottleDecision,
    ThrottleLimits,
    decide,
)

SP = ZoneInfo("America/Sao_Paulo")
CALENDAR = parse_calendar(default_calendar_spec())
LIMITS = ThrottleLimits(messages_per_minute=3, max_messages_per_day=1000)
NOW = datetime.fromisoformat("2025-01-06T10:00:30-03:00")  # a Monday, open


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def seconds_before(*offsets: float) -> list[datetime]:
    return [NOW - timedelta(seconds=s) for s in offsets]


def run(
    recent: list[datetime],
    *,
    now: datetime = NOW,
    sent_today: int = 0,
    limits: ThrottleLimits = LIMITS,
    calendar: BusinessCalendar = CALENDAR,
) -> ThrottleDecision:
    return decide(limits, now=now, recent_sends=recent, sent_today=sent_today, calendar=calendar)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"messages_per_minute": 0, "max_messages_per_day": 10}, "messages_per_minute"),
        ({"messages_per_minute": -5, "max_messages_per_day": 10}, "messages_per_minute"),
        ({"messages_per_minute": True, "max_messages_per_day": 10}, "messages_per_minute"),
        ({"messages_per_minute": 2.5, "max_messages_per_day": 10}, "messages_per_minute"),
        ({"messages_per_minute": 20, "max_messages_per_day": 0}, "max_messages_per_day"),
    ],
)
def test_limits_must_be_positive_integers(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(PolicyError) as caught:
        ThrottleLimits(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert caught.value.code == "invalid_policy"


def test_allowed_under_the_limit() -> None:
    assert run(seconds_before(10, 20)) == ThrottleDecision(allowed=True, retry_at=None, reason=None)
    assert run([]) == ThrottleDecision(allowed=True)


def test_rate_limited_retry_at_oldest_in_window_plus_60_seconds() -> None:
    # Unordered: 10:00:00, 09:59:45, 10:00:10; the oldest is 09:59:45 → retry at 10:00:45.
    decision = run(
        [at("2025-01-06T10:00:00-03:00"), at("2025-01-06T09:59:45-03:00"), at("2025-01-06T10:00:10-03:00")]
    )
    assert decision.allowed is False
    assert decision.reason == RATE_LIMITED == "rate_limited"
    assert decision.retry_at == at("2025-01-06T10:00:45-03:00")
    assert decision.retry_at is not None and decision.retry_at.tzinfo == SP


def test_window_is_open_at_its_old_end_and_closed_at_now() -> None:
    # A send exactly 60 s ago has left the window (now - 60 s, now]; one at `now` is inside it.
    assert run(seconds_before(60, 30, 0)).allowed is True
    decision = run(seconds_before(59.999, 30, 0))
    assert decision.allowed is False
    assert decision.retry_at == NOW + timedelta(seconds=0.001)


def test_old_and_future_sends_are_ignored() -> None:
    recent = [*seconds_before(61, 120, 10, 20), NOW + timedelta(seconds=1)]
    assert run(recent).allowed is True


def test_more_sends_than_the_limit_waits_for_enough_to_leave() -> None:
    # Limit lowered to 2 while 4 sends sit in the window: the 3rd oldest (30 s ago) must leave first.
    limits = ThrottleLimits(messages_per_minute=2, max_messages_per_day=1000)
    recent = seconds_before(50, 40, 30, 20)
    decision = run(recent, limits=limits)
    assert decision == ThrottleDecision(
        allowed=False, retry_at=NOW + timedelta(seconds=30), reason=RATE_LIMITED
    )


@pytest.mark.parametrize(
    ("offsets", "per_minute"), [((59, 1, 0), 3), ((45, 44, 43, 42), 3), ((30, 30, 30), 3), ((10,), 1)]
)
def test_retry_at_is_the_first_instant_allowed(offsets: tuple[float, ...], per_minute: int) -> None:
    limits = ThrottleLimits(messages_per_minute=per_minute, max_messages_per_day=99)
    recent = seconds_before(*offsets)
    decision = run(recent, limits=limits)
    assert decision.retry_at is not None
    assert run(recent, now=decision.retry_at, limits=limits).allowed is True
    assert run(recent, now=decision.retry_at - timedelta(microseconds=1), limits=limits).allowed is False


def test_daily_limit_retries_at_next_days_opening() -> None:
    decision = run([], sent_today=1000)
    assert decision == ThrottleDecision(
        allowed=False, retry_at=at("2025-01-07T08:00:00-03:00"), reason=DAILY_LIMIT_REACHED
    )
    assert DAILY_LIMIT_REACHED == "daily_limit_reached"


def test_daily_limit_on_friday_resumes_saturday_and_on_saturday_resumes_monday() -> None:
    friday = run([], now=at("2025-01-10T17:00:00-03:00"), sent_today=1000)
    assert friday.retry_at == at("2025-01-11T08:00:00-03:00")
    saturday = run([], now=at("2025-01-11T09:00:00-03:00"), sent_today=1001)
    assert saturday.retry_at == at("2025-01-13T08:00:00-03:00")


def test_daily_limit_uses_the_tenant_local_day_not_utc() -> None:
    # 02:30Z on Tuesday is still Monday 23:30 in São Paulo: the next local day is Tuesday.
    decision = run([], now=at("2025-01-07T02:30:00+00:00"), sent_today=1000)
    assert decision.retry_at == at("2025-01-07T08:00:00-03:00")


def test_daily_limit_next_day_starting_in_a_dst_gap() -> None:
    # Midnight of 2018-11-04 never happened in São Paulo; that day started at 01:00 -02:00.
    night = parse_calendar({"windows": {"every_day": [["00:00", "06:00"]]}})
    decision = run([], now=at("2018-11-03T03:00:00-03:00"), sent_today=1000, calendar=night)
    assert decision.retry_at == at("2018-11-04T01:00:00-02:00")


def test_daily_limit_skips_holidays() -> None:
    decision = run([], now=at("2024-11-19T10:00:00-03:00"), sent_today=1000)
    assert decision.retry_at == at("2024-11-21T08:00:00-03:00")


def test_daily_limit_takes_precedence_over_rate_limit() -> None:
    decision = run(seconds_before(1, 2, 3), sent_today=1000)
    assert decision.reason == DAILY_LIMIT_REACHED


def test_below_daily_limit_is_allowed() -> None:
    assert run([], sent_today=999).allowed is True


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(InvalidValue):
        run([], now=datetime(2025, 1, 6, 10, 0))
    with pytest.raises(InvalidValue):
        run([datetime(2025, 1, 6, 10, 0)])
    with pytest.raises(InvalidValue):
        run([], sent_today=-1)
