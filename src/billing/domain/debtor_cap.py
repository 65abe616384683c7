"""The per-debtor cap: at most N dunning messages per phone per local day, across a tenant's campaigns.

Three batches on one day must not send three reminders to the same person. Dunning reminders
(``overdue``, ``upcoming``) count and obey the cap; notices are exempt unless the tenant says
``cap_notices``. A message over the cap is deferred to the next opening of the business calendar after
the local day ends (pure: instants and counts are passed in).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta

from billing.domain.calendar import BusinessCalendar
from billing.domain.types import TemplateType

__all__ = ["CapDecision", "capped", "decide_cap", "local_day_bounds"]


@dataclass(frozen=True)
class CapDecision:
    """``allowed``; else ``not_before`` (aware UTC), when the next local day's sending may start."""

    allowed: bool
    not_before: datetime | None = None


def capped(template_type: str, *, cap_notices: bool) -> bool:
    """True when messages of ``template_type`` count against and obey the per-debtor cap."""
    return TemplateType(template_type).respects_business_hours or cap_notices


def local_day_bounds(calendar: BusinessCalendar, now: datetime) -> tuple[datetime, datetime]:
    """``[start, end)`` of the tenant's local day containing ``now``, as aware instants."""
    day = calendar.local_date(now)
    start = datetime.combine(day, time(0), tzinfo=calendar.tz)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=calendar.tz)
    return start, end


def decide_cap(
    *,
    sent_today: int,
    cap: int,
    template_type: str,
    cap_notices: bool,
    calendar: BusinessCalendar,
    now: datetime,
) -> CapDecision:
    """Decide one message against the cap.

    Args:
        sent_today: capped messages already sent (or claimed) to this phone in the local day of ``now``.
        cap: the tenant's N (≥ 1).
        template_type / cap_notices: see :func:`capped`.
        calendar: the tenant's business calendar (its zone sets the day; its next opening the deferral).
        now: aware instant.
    """
    if not capped(template_type, cap_notices=cap_notices) or sent_today < cap:
        return CapDecision(allowed=True)
    _, end = local_day_bounds(calendar, now)
    opening = end
    if TemplateType(template_type).respects_business_hours and not calendar.is_open(end):
        opening = calendar.next_opening(end)
    return CapDecision(allowed=False, not_before=opening)
