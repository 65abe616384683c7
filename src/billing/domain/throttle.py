"""The per-tenant throttle: messages per minute and maximum messages per local day.

Pure policy: the caller passes the current instant, the tenant's recent send instants and today's count;
:func:`decide` answers whether one more message may be sent now and, if not, when to try again.

Promise 5 of ``DESIGN.md``: a tenant never exceeds ``messages_per_minute`` over *any* 60-second window,
nor ``max_messages_per_day`` per day in the tenant's zone. The per-minute rule is therefore a *sliding*
60-second window, not a fixed calendar minute (a fixed minute would allow ``2 × limit`` sends across a
minute boundary).

This module only decides. Keeping the promise with several worker processes is the adapter's job: it must
serialise the decide-then-record step per tenant (e.g. hold a PostgreSQL advisory lock keyed by the
tenant while reading the recent sends, deciding and recording the send), and take ``now`` from the same
clock that records send instants.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from billing.domain.calendar import BusinessCalendar, PolicyError
from billing.domain.errors import InvalidValue
from billing.domain.types import PauseReason

__all__ = [
    "DAILY_LIMIT_REACHED",
    "RATE_LIMITED",
    "WINDOW",
    "ThrottleDecision",
    "ThrottleLimits",
    "decide",
    "decide_arrival",
]

WINDOW = timedelta(seconds=60)
"""Length of the sliding window of the per-minute rule."""

RATE_LIMITED = "rate_limited"
"""Reason: ``messages_per_minute`` sends already happened in the last 60 seconds."""

DAILY_LIMIT_REACHED = PauseReason.DAILY_LIMIT_REACHED.value
"""Reason: ``max_messages_per_day`` sends already made on the tenant's local day (also a pause reason)."""


@dataclass(frozen=True)
class ThrottleLimits:
    """A tenant's sending rate limits.

    Attributes:
        messages_per_minute: most sends in any 60-second window (default tenant value: 20).
        max_messages_per_day: most sends per local calendar day in the tenant's zone (default: 1000).

    Raises:
        PolicyError: a limit that is not an integer > 0 (``field`` = the attribute name).
    """

    messages_per_minute: int
    max_messages_per_day: int

    def __post_init__(self) -> None:
        for name in ("messages_per_minute", "max_messages_per_day"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise PolicyError(f"{name} must be a whole number greater than 0, got {value!r}", field=name)


@dataclass(frozen=True)
class ThrottleDecision:
    """The answer of :func:`decide`.

    Attributes:
        allowed: True if one message may be sent at ``now``.
        retry_at: when refused, the earliest aware instant (tenant zone) worth asking again; None if allowed.
        reason: when refused, :data:`RATE_LIMITED` or :data:`DAILY_LIMIT_REACHED`; None if allowed.
    """

    allowed: bool
    retry_at: datetime | None = None
    reason: str | None = None


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidValue(f"{name} must be a timezone-aware datetime", field=name)
    return value.astimezone(UTC)


def decide(
    limits: ThrottleLimits,
    *,
    now: datetime,
    recent_sends: Sequence[datetime],
    sent_today: int,
    calendar: BusinessCalendar,
) -> ThrottleDecision:
    """Decide whether the tenant may send one more message at ``now``.

    Args:
        limits: the tenant's limits.
        now: the current instant (aware).
        recent_sends: the tenant's send instants (aware, any order) from at least the last 60 seconds;
            older ones and ones after ``now`` are ignored.
        sent_today: sends already made on the tenant's local day of ``now``
            (see :meth:`BusinessCalendar.local_date`).
        calendar: the tenant's calendar (zone for "day", opening for the retry instant).

    Rules, in this order:

    1. Daily cap: ``sent_today >= max_messages_per_day`` → refused, :data:`DAILY_LIMIT_REACHED`,
       ``retry_at = calendar.next_opening(start of the next local day)`` (midnight, or the first valid
       instant of that day if a DST change skips midnight).
    2. Sliding minute: with ``k`` sends in ``(now - 60 s, now]`` and ``k >= messages_per_minute``
       → refused, :data:`RATE_LIMITED`, ``retry_at`` = the instant the window has room again, i.e. the
       ``(k - messages_per_minute + 1)``-th oldest of those sends + 60 s. When ``k`` equals the limit (the
       normal case) that is the oldest send in the window + 60 s. ``retry_at`` is in the tenant zone.
    3. Otherwise allowed.

    Raises:
        InvalidValue: ``now`` or a send instant is naive, or ``sent_today`` is negative.
        PolicyError: from ``calendar.next_opening`` if the calendar never opens.
    """
    now_utc = _aware(now, "now")
    if isinstance(sent_today, bool) or not isinstance(sent_today, int) or sent_today < 0:
        raise InvalidValue(f"sent_today must be a whole number >= 0, got {sent_today!r}", field="sent_today")

    if sent_today >= limits.max_messages_per_day:
        next_day = calendar.local_date(now_utc) + timedelta(days=1)
        retry_at = calendar.next_opening(calendar.local_datetime(next_day, time(0, 0)))
        return ThrottleDecision(allowed=False, retry_at=retry_at, reason=DAILY_LIMIT_REACHED)

    window_start = now_utc - WINDOW
    in_window = sorted(
        sent for sent in (_aware(s, "recent_sends") for s in recent_sends) if window_start < sent <= now_utc
    )
    excess = len(in_window) - limits.messages_per_minute
    if excess >= 0:
        retry_at = (in_window[excess] + WINDOW).astimezone(calendar.tz)
        return ThrottleDecision(allowed=False, retry_at=retry_at, reason=RATE_LIMITED)

    return ThrottleDecision(allowed=True)


def _busiest_with(arrival: datetime, others: Sequence[datetime], window: timedelta) -> int:
    """How many of ``others`` (sorted) plus ``arrival`` the fullest half-open window ``[start, start +
    window)`` that contains ``arrival`` holds (the worst such window starts at ``arrival`` or at one of the
    others). Two sends exactly ``window`` apart never share one."""
    lo = bisect_right(others, arrival - window)
    hi = bisect_right(others, arrival)
    best = 0
    for start in (arrival, *others[lo:hi]):
        inside = bisect_left(others, start + window) - bisect_left(others, start)
        best = max(best, inside)
    return best + 1


def decide_arrival(
    limits: ThrottleLimits,
    *,
    arrival: datetime,
    arrivals: Sequence[datetime],
    arrivals_that_day: int,
    calendar: BusinessCalendar,
    window: timedelta = WINDOW,
) -> ThrottleDecision:
    """Whether one more message may *reach the gateway* at ``arrival`` (promise 5, counted where the
    tenant's sends are seen: at the gateway, not at the decision).

    Unlike :func:`decide`, the instants are the planned arrivals of already granted sends, which need not
    be in order (a send decided earlier with a longer typing pause arrives later). The new arrival is
    allowed when no window ``[t, t + window)`` (60 s, widened by the caller's safety margin) that
    contains it would then hold more than ``messages_per_minute`` arrivals — whether the others lie before
    or after it.

    Args:
        limits: the tenant's limits.
        arrival: aware instant the message would reach the gateway (decision + typing pause).
        arrivals: aware planned arrivals of the tenant's granted sends near ``arrival`` (any order; at
            least those within ``2 × window`` of it, more are ignored).
        arrivals_that_day: granted sends whose arrival falls on the tenant's local day of ``arrival``.
        calendar: the tenant's calendar (zone of "day", opening after the daily cap).
        window: the sliding window, at least 60 s.

    Returns:
        allowed; or refused with ``reason`` :data:`DAILY_LIMIT_REACHED` (``retry_at``: next opening after
        the start of the next local day) or :data:`RATE_LIMITED` (``retry_at``: the earliest arrival
        instant at which the new send would fit, tenant zone).

    Raises:
        InvalidValue: a naive instant, a negative count or a window shorter than 60 s.
    """
    arrival = _aware(arrival, "arrival")
    if isinstance(arrivals_that_day, bool) or not isinstance(arrivals_that_day, int) or arrivals_that_day < 0:
        raise InvalidValue(
            f"arrivals_that_day must be a whole number >= 0, got {arrivals_that_day!r}",
            field="arrivals_that_day",
        )
    if window < WINDOW:
        raise InvalidValue("window must be at least 60 seconds", field="window")
    if arrivals_that_day >= limits.max_messages_per_day:
        next_day = calendar.local_date(arrival) + timedelta(days=1)
        retry_at = calendar.next_opening(calendar.local_datetime(next_day, time(0, 0)))
        return ThrottleDecision(allowed=False, retry_at=retry_at, reason=DAILY_LIMIT_REACHED)
    others = sorted(_aware(t, "arrivals") for t in arrivals)
    limit = limits.messages_per_minute
    candidates = [arrival, *(t + window for t in others if t + window > arrival)]
    for candidate in candidates:
        if _busiest_with(candidate, others, window) <= limit:
            if candidate == arrival:
                return ThrottleDecision(allowed=True)
            return ThrottleDecision(
                allowed=False, retry_at=candidate.astimezone(calendar.tz), reason=RATE_LIMITED
            )
    # unreachable: past the last arrival + window nothing shares a window with the candidate
    raise AssertionError("no arrival instant fits")  # pragma: no cover
