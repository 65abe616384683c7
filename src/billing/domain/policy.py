"""A tenant's sending policy: business hours, throttle, daily cap, pauses between messages, retries.

Parsed from a JSON-like spec (the shape of ``GET/PATCH /config/``) into typed policies, with every error
naming its field (:class:`~billing.domain.calendar.PolicyError`, HTTP 422).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import phonenumbers

from billing.domain.calendar import BusinessCalendar, PolicyError, default_calendar_spec, parse_calendar
from billing.domain.retry import RetryPolicy
from billing.domain.throttle import ThrottleLimits

DEFAULT_MESSAGES_PER_MINUTE = 20
DEFAULT_MAX_MESSAGES_PER_DAY = 1000
MAX_MESSAGES_PER_MINUTE = 1_000
"""Upper bound of ``messages_per_minute``: the throttle protects the tenant's WhatsApp number from being
flagged, and beyond ~16 a second it protects nothing (a figure such as ``1e9`` is a typo that would remove
the throttle)."""
MAX_MESSAGES_PER_DAY = 1_000_000
"""Upper bound of ``max_messages_per_day`` (``MAX_MESSAGES_PER_MINUTE`` for 16 hours and a half)."""
MAX_RETRY_ATTEMPTS = 20
MAX_RETRY_DELAY_S = 86_400.0
"""Upper bounds of ``retry.max_attempts`` and ``retry.base_delay_s`` / ``retry.max_delay_s`` (one day)."""
DEFAULT_ALLOWED_COUNTRIES = ("BR",)
MAX_ALLOWED_COUNTRIES = 50
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
        allowed_countries: ISO 3166-1 alpha-2 regions whose numbers the tenant may send to (``BR``).
    """

    calendar: BusinessCalendar
    limits: ThrottleLimits
    pause_min_s: float
    pause_max_s: float
    retry: RetryPolicy
    allowed_countries: frozenset[str] = frozenset(DEFAULT_ALLOWED_COUNTRIES)


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
            "allowed_countries": list(DEFAULT_ALLOWED_COUNTRIES),
        }
    )
    return spec


def _number(
    spec: Mapping[str, Any],
    key: str,
    default: float,
    *,
    integer: bool = False,
    minimum: float = 0,
    maximum: float,
) -> float:
    """``spec[key]`` (or ``default``) checked to be a finite number in ``[minimum, maximum]``."""
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise PolicyError(f"{key} must be a number", field=key)
    if integer and (value in (float("inf"), float("-inf")) or int(value) != value):
        raise PolicyError(f"{key} must be a whole number", field=key)
    if not minimum <= value <= maximum:
        raise PolicyError(f"{key} must be between {minimum:g} and {maximum:g}, got {value:g}", field=key)
    return value


def parse_allowed_countries(value: object) -> frozenset[str]:
    """Validate ``allowed_countries``: a non-empty list (at most 50) of ISO 3166-1 alpha-2 regions known
    to the numbering plan data (phonenumbers), e.g. ``["BR", "PT"]``; upper-cased.

    Raises:
        PolicyError: naming ``allowed_countries`` or ``allowed_countries[i]``.
    """
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple) or not value:
        raise PolicyError(
            'allowed_countries must be a non-empty list such as ["BR"]', field="allowed_countries"
        )
    if len(value) > MAX_ALLOWED_COUNTRIES:
        raise PolicyError(f"at most {MAX_ALLOWED_COUNTRIES} allowed_countries", field="allowed_countries")
    out: set[str] = set()
    for index, item in enumerate(value):
        code = item.strip().upper() if isinstance(item, str) else None
        if code is None or code not in phonenumbers.SUPPORTED_REGIONS:
            raise PolicyError(
                f"{item!r} is not an ISO 3166-1 alpha-2 country code", field=f"allowed_countries[{index}]"
            )
        out.add(code)
    return frozenset(out)


POLICY_KEYS = frozenset(
    {
        "messages_per_minute",
        "max_messages_per_day",
        "pause_min_s",
        "pause_max_s",
        "retry",
        "allowed_countries",
    }
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
    mpm = _number(
        spec,
        "messages_per_minute",
        DEFAULT_MESSAGES_PER_MINUTE,
        integer=True,
        minimum=1,
        maximum=MAX_MESSAGES_PER_MINUTE,
    )
    per_day = _number(
        spec,
        "max_messages_per_day",
        DEFAULT_MAX_MESSAGES_PER_DAY,
        integer=True,
        minimum=1,
        maximum=MAX_MESSAGES_PER_DAY,
    )
    limits = ThrottleLimits(messages_per_minute=int(mpm), max_messages_per_day=int(per_day))
    pause_min = _number(spec, "pause_min_s", defaults["pause_min_s"], maximum=MAX_PAUSE_S)
    pause_max = _number(spec, "pause_max_s", defaults["pause_max_s"], maximum=MAX_PAUSE_S)
    if pause_min > pause_max:
        raise PolicyError("pause_min_s must not exceed pause_max_s", field="pause_min_s")
    allowed = parse_allowed_countries(spec.get("allowed_countries", defaults["allowed_countries"]))
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
    if retry.max_attempts > MAX_RETRY_ATTEMPTS:
        raise PolicyError(
            f"retry.max_attempts must be at most {MAX_RETRY_ATTEMPTS}", field="retry.max_attempts"
        )
    if retry.max_delay_s > MAX_RETRY_DELAY_S:
        raise PolicyError(
            f"retry.max_delay_s must be at most {MAX_RETRY_DELAY_S:g} s", field="retry.max_delay_s"
        )
    return SendingPolicy(
        calendar=calendar,
        limits=limits,
        pause_min_s=pause_min,
        pause_max_s=pause_max,
        retry=retry,
        allowed_countries=allowed,
    )
