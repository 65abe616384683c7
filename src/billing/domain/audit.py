"""The rule that allowed a send, recorded in the claim (``Contact.Dispatched.allowed_by``) when it is
decided, so an auditor reads what was in force then — never a reconstruction from today's configuration.

Pure: the worker passes the facts it gathered for the decision (the tenant's calendar and versions, the
throttle's counts under its lock, the instant of the claim).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from billing.domain.calendar import BusinessCalendar
from billing.domain.throttle import ThrottleLimits

__all__ = ["allowed_by"]


def allowed_by(
    *,
    at: datetime,
    respects_business_hours: bool,
    calendar: BusinessCalendar,
    calendar_version: int,
    policy_version: int,
    limits: ThrottleLimits,
    sent_in_window: int,
    sent_today: int,
    jid: str | None,
) -> dict[str, Any]:
    """The JSON-like record of why a send was allowed at ``at`` (aware).

    Args:
        respects_business_hours: the template type is a dunning reminder (overdue, upcoming); notices are
            sent at any hour and record ``business_hours.applies = False``.
        calendar / calendar_version: the tenant's calendar and the Tenant version that last changed it.
        policy_version: the Tenant version that last set the sending policy.
        limits: the throttle's limits in force.
        sent_in_window / sent_today: sends the throttle counted in its per-minute window and on the local
            day *before* granting this one (so ``sent_in_window < messages_per_minute`` and
            ``sent_today < max_messages_per_day`` when granted).
        jid: the WhatsApp account the gateway's lookup found for the phone (None: the lookup failed, the
            bare number is sent to). A claim is only decided for a phone that has not opted out and is
            within the per-debtor daily cap, so ``recipient`` records both as checked.

    Returns:
        ``{"policy_version": int, "business_hours": {"applies": bool, "open": bool, "window_start": ISO |
        None, "window_end": ISO | None, "timezone": str, "calendar_version": int}, "throttle": {"decision":
        "allowed", "messages_per_minute": int, "sent_in_window": int, "max_messages_per_day": int,
        "sent_today": int, "local_date": "YYYY-MM-DD"}, "recipient": {"opted_out": False, "debtor_cap":
        "allowed", "whatsapp_account": jid | None}}`` — instants in the tenant's zone.
    """
    window = calendar.window_at(at)
    return {
        "policy_version": policy_version,
        "business_hours": {
            "applies": respects_business_hours,
            "open": window is not None,
            "window_start": window[0].isoformat() if window else None,
            "window_end": window[1].isoformat() if window else None,
            "timezone": calendar.tz.key,
            "calendar_version": calendar_version,
        },
        "throttle": {
            "decision": "allowed",
            "messages_per_minute": limits.messages_per_minute,
            "sent_in_window": sent_in_window,
            "max_messages_per_day": limits.max_messages_per_day,
            "sent_today": sent_today,
            "local_date": calendar.local_date(at).isoformat(),
        },
        "recipient": {"opted_out": False, "debtor_cap": "allowed", "whatsapp_account": jid},
    }
