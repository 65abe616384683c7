"""A tenant's sending policy: business hours, throttle, daily cap, pauses between messages, retries.

Parsed from a JSON-like spec (the shape of ``GET/PATCH /config/``) into typed policies, with every error
naming its field (:class:`~billing.domain.calendar.PolicyError`, HTTP 422).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from billing.domain.calendar import BusinessCalendar, PolicyError, default_calendar_spec, parse_calendar
from billing.domain.retry import RetryPolicy
from billing.domain.throttle import ThrottleLimits

DEFAULT_MESSAGES_PER_MINUTE = 20
DEFAULT_MAX_MESSAGES_PER_DAY = 1000
MAX_PAUSE_S = 60.0
"""Upper bound of the pause between messages: it is spent inside the gateway call as "typing…", and a
worker's claim (``BILLING_DISPATCH_LEASE_S``, default 120 s) must outlive the whole call."""


@dataclass(frozen=True)
class SendingPolicy:
    """Everything that decides *when* a tenant's message may go out.

    Attributes:
        calendar: business hours and holidays in the tenant's zone.
        limits: messages per sliding 60 s and per local day.
        pause_min_s / pause_max_s: random pause between two sends of the tenant, seconds.
        retry: attempts and backoff for retryable gateway failures.
    """

    calendar: BusinessCalendar
    limits: ThrottleLimits
    pause_min_s: float
    pause_max_s: float
    retry: RetryPolicy


def default_policy_spec() -> dict[str, Any]:
    """The policy of a new tenant: São Paulo, Mon–Fri 08–18, Sat 08–12, BR holidays, 20/min, 1000/day."""
    spec: dict[str, Any] = dict(default_calendar_spec())
    spec.update(
        {
            "messages_per_minute": DEFAULT_MESSAGES_PER_MINUTE,
            "max_messages_per_day": DEFAULT_MAX_MESSAGES_PER_DAY,
            "pause_min_s": 1.0,
            "pause_max_s": 3.0,
            "retry": {"max_attempts": 5, "base_delay_s": 30.0, "max_delay_s": 3600.0},
        }
    )
    return spec


def _number(spec: Mapping[str, Any], key: str, default: float, *, integer: bool = False) -> float:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyError(f"{key} must be a number", field=key)
    if integer and int(value) != value:
        raise PolicyError(f"{key} must be a whole number", field=key)
    if value < 0:
        raise PolicyError(f"{key} must not be negative", field=key)
    return value


POLICY_KEYS = frozenset(
    {"messages_per_minute", "max_messages_per_day", "pause_min_s", "pause_max_s", "retry"}
)
"""The policy keys that are not the business-hours calendar's."""


def parse_policy(spec: Mapping[str, Any]) -> SendingPolicy:
    """Validate and type a policy spec; missing keys take the defaults of :func:`default_policy_spec`.

    Raises:
        PolicyError: naming the field (unknown zone, window start = end, overlapping windows, negative
            or zero rates, pause_min_s > pause_max_s, bad retry settings).
    """
    defaults = default_policy_spec()
    calendar_spec = {k: v for k, v in spec.items() if k not in POLICY_KEYS}
    calendar = parse_calendar(calendar_spec)
    mpm = _number(spec, "messages_per_minute", defaults["messages_per_minute"], integer=True)
    per_day = _number(spec, "max_messages_per_day", defaults["max_messages_per_day"], integer=True)
    limits = ThrottleLimits(messages_per_minute=int(mpm), max_messages_per_day=int(per_day))
    pause_min = _number(spec, "pause_min_s", defaults["pause_min_s"])
    pause_max = _number(spec, "pause_max_s", defaults["pause_max_s"])
    if pause_min > pause_max:
        raise PolicyError("pause_min_s must not exceed pause_max_s", field="pause_min_s")
    if pause_max > MAX_PAUSE_S:
        raise PolicyError(f"pause_max_s must not exceed {MAX_PAUSE_S:g} s", field="pause_max_s")
    retry_spec = spec.get("retry", defaults["retry"])
    if not isinstance(retry_spec, Mapping):
        raise PolicyError("retry must be an object", field="retry")
    unknown = set(retry_spec) - {"max_attempts", "base_delay_s", "max_delay_s"}
    if unknown:
        raise PolicyError(
            f"unknown retry setting {sorted(unknown)[0]!r}", field=f"retry.{sorted(unknown)[0]}"
        )
    retry_values = {**defaults["retry"], **retry_spec}
    try:  # RetryPolicy checks the values' types and ranges itself; its errors name the bare attribute
        retry = RetryPolicy(
            max_attempts=retry_values["max_attempts"],
            base_delay_s=retry_values["base_delay_s"],
            max_delay_s=retry_values["max_delay_s"],
        )
    except PolicyError as exc:
        raise PolicyError(f"retry.{exc.message}", field=f"retry.{exc.field}") from None
    return SendingPolicy(
        calendar=calendar, limits=limits, pause_min_s=pause_min, pause_max_s=pause_max, retry=retry
    )
