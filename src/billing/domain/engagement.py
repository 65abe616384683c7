"""What a tenant set up for "after the send": the gateway webhook's secret, opt-out words and
confirmation, the per-debtor cap, and its ERP webhook endpoints.

One ``Engagement`` aggregate per tenant (id :func:`engagement_id`, UUID v5 of the tenant), created on
first change, so the Tenant aggregate and its sending policy stay as they are. Every change is an event.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate

from billing.domain.errors import InvalidValue, NotFound
from billing.domain.optout import DEFAULT_STOP_WORDS, validate_stop_words

__all__ = [
    "CONTACT_EVENTS",
    "DEFAULT_DAILY_CAP",
    "ERP_EVENT_TYPES",
    "ERP_RETRY_DELAYS_S",
    "Engagement",
    "EngagementSettings",
    "engagement_id",
    "erp_next_attempt",
    "secret_digest",
]

_NAMESPACE = UUID("6f1c3a52-7f0e-4d8a-9a53-2a8b7f0c9e11")
DEFAULT_DAILY_CAP = 1
"""Dunning messages per phone per local day across a tenant's campaigns (issue: "default 1")."""
MAX_CONFIRMATION = 1000
MAX_ENDPOINTS = 10
CONTACT_EVENTS = (
    "contact.sent",
    "contact.delivered",
    "contact.read",
    "contact.failed",
    "contact.skipped",
    "contact.replied",
    "contact.opted_out",
)
QUEUE_EVENTS = ("queue.paused", "queue.resumed", "queue.completed", "queue.cancelled")
ERP_EVENT_TYPES: tuple[str, ...] = CONTACT_EVENTS + QUEUE_EVENTS

ERP_RETRY_DELAYS_S: tuple[int, ...] = (
    10, 30, 60, 300, 900, 1800, 3600, 3600, 7200, 7200, 7200, 7200, 7200, 7200, 7200, 7200, 7200, 7200,
    7200, 7200,
)  # fmt: skip
"""Seconds before each retry of an ERP delivery: 20 retries spread over 30 h 21 min (≥ 24 h, as
Stripe's 3 days of retries for its own webhooks), then the delivery is given up (visible to the admin)."""


def engagement_id(tenant_id: UUID) -> UUID:
    """The id of a tenant's Engagement aggregate."""
    return uuid5(_NAMESPACE, str(tenant_id))


def secret_digest(secret: str) -> str:
    """SHA-256 hex of a webhook secret (the gateway's header value); only the digest is stored."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def erp_next_attempt(attempts: int, at: datetime) -> datetime | None:
    """When to try an ERP delivery again after ``attempts`` failed attempts (the last one at ``at``);
    None when :data:`ERP_RETRY_DELAYS_S` is spent (give up)."""
    if attempts < 1 or attempts > len(ERP_RETRY_DELAYS_S):
        return None
    return at + timedelta(seconds=ERP_RETRY_DELAYS_S[attempts - 1])


@dataclass(frozen=True)
class EngagementSettings:
    """Typed view of the tenant's settings (defaults when never set).

    Attributes:
        stop_words: words/phrases of a reply that opt the phone out.
        confirmation_text: sent once to a phone that opted out, or None.
        daily_cap: most dunning (overdue/upcoming) messages per phone per local day.
        cap_notices: whether notices count against (and obey) the cap too.
    """

    stop_words: tuple[str, ...] = DEFAULT_STOP_WORDS
    confirmation_text: str | None = None
    daily_cap: int = DEFAULT_DAILY_CAP
    cap_notices: bool = False


def _validate_url(url: object) -> str:
    if not isinstance(url, str) or not url.startswith(("https://", "http://")) or len(url) > 2000:
        raise InvalidValue("url must be an http(s) URL", code="invalid_webhook", field="url")
    return url


class Engagement(Aggregate):
    """A tenant's after-the-send settings (see the module docstring)."""

    TOPIC = "billing.Engagement"

    if TYPE_CHECKING:
        tenant_id: UUID
        gateway_secret_digest: str | None
        settings: dict[str, Any]
        endpoints: dict[str, dict[str, Any]]

    class Created(Aggregate.Created):
        """Base of the creation event; never recorded itself."""

        TOPIC = "billing.Engagement.Created"

    class Started(Created):
        """The tenant's first change."""

        TOPIC = "billing.Engagement.Started"
        tenant_id: UUID

        def apply(self, aggregate: Engagement) -> None:
            aggregate.tenant_id = self.tenant_id
            aggregate.gateway_secret_digest = None
            aggregate.settings = {}
            aggregate.endpoints = {}

    class GatewaySecretSet(Aggregate.Event):
        """A new secret for the gateway's webhook header (only its SHA-256 is kept)."""

        TOPIC = "billing.Engagement.GatewaySecretSet"
        digest: str

        def apply(self, aggregate: Engagement) -> None:
            aggregate.gateway_secret_digest = self.digest

    class SettingsChanged(Aggregate.Event):
        """Opt-out words, confirmation text or cap changed; ``settings`` is the whole new set."""

        TOPIC = "billing.Engagement.SettingsChanged"
        settings: dict[str, Any]

        def apply(self, aggregate: Engagement) -> None:
            aggregate.settings = dict(self.settings)

    class EndpointAdded(Aggregate.Event):
        """An ERP endpoint: ``url``, signing ``secret``, subscribed ``events`` (empty: all)."""

        TOPIC = "billing.Engagement.EndpointAdded"
        endpoint_id: str
        url: str
        secret: str
        events: list[str]

        def apply(self, aggregate: Engagement) -> None:
            aggregate.endpoints[self.endpoint_id] = {
                "url": self.url,
                "secret": self.secret,
                "events": list(self.events),
                "created_at": self.timestamp,
            }

    class EndpointRemoved(Aggregate.Event):
        """The endpoint receives nothing more (deliveries already queued are dropped)."""

        TOPIC = "billing.Engagement.EndpointRemoved"
        endpoint_id: str

        def apply(self, aggregate: Engagement) -> None:
            aggregate.endpoints.pop(self.endpoint_id, None)

    @classmethod
    def start(cls, tenant_id: UUID, *, at: datetime) -> Engagement:
        """A tenant's empty settings (defaults)."""
        return cls._create(cls.Started, id=engagement_id(tenant_id), tenant_id=tenant_id, timestamp=at)

    # ---- reads -----------------------------------------------------------------------------------

    @property
    def typed(self) -> EngagementSettings:
        """The settings with defaults filled in."""
        s = self.settings
        return EngagementSettings(
            stop_words=tuple(s.get("stop_words") or DEFAULT_STOP_WORDS),
            confirmation_text=s.get("confirmation_text") or None,
            daily_cap=int(s.get("daily_cap", DEFAULT_DAILY_CAP)),
            cap_notices=bool(s.get("cap_notices", False)),
        )

    def gateway_secret_matches(self, secret: str | None) -> bool:
        """True when ``secret`` is the gateway webhook secret in force (constant-time)."""
        if not secret or self.gateway_secret_digest is None:
            return False
        return hmac.compare_digest(secret_digest(secret), self.gateway_secret_digest)

    def endpoints_for(self, event_type: str) -> list[tuple[str, dict[str, Any]]]:
        """``[(endpoint_id, endpoint)]`` subscribed to ``event_type``."""
        return [
            (eid, ep)
            for eid, ep in sorted(self.endpoints.items())
            if not ep["events"] or event_type in ep["events"]
        ]

    # ---- commands --------------------------------------------------------------------------------

    def set_gateway_secret(self, secret: str, *, at: datetime) -> None:
        """Replace the gateway webhook secret (store its digest)."""
        self.trigger_event(self.GatewaySecretSet, digest=secret_digest(secret), timestamp=at)

    def change_settings(self, changes: dict[str, Any], *, at: datetime) -> None:
        """Merge ``changes`` (``stop_words``, ``confirmation_text``, ``daily_cap``, ``cap_notices``).

        Raises:
            InvalidValue: an unknown key or a bad value, naming the field.
        """
        allowed = {"stop_words", "confirmation_text", "daily_cap", "cap_notices"}
        unknown = sorted(set(changes) - allowed)
        if unknown:
            raise InvalidValue(f"unknown setting {unknown[0]!r}", code="invalid_request", field=unknown[0])
        merged = {**self.settings, **changes}
        if "stop_words" in changes:
            merged["stop_words"] = list(validate_stop_words(changes["stop_words"]))
        text = merged.get("confirmation_text")
        if text is not None and (not isinstance(text, str) or len(text) > MAX_CONFIRMATION):
            raise InvalidValue(
                f"confirmation_text must be text of at most {MAX_CONFIRMATION} characters or null",
                code="invalid_request",
                field="confirmation_text",
            )
        cap = merged.get("daily_cap", DEFAULT_DAILY_CAP)
        if isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= 100:
            raise InvalidValue(
                "daily_cap must be a whole number from 1 to 100", code="invalid_request", field="daily_cap"
            )
        if not isinstance(merged.get("cap_notices", False), bool):
            raise InvalidValue(
                "cap_notices must be true or false", code="invalid_request", field="cap_notices"
            )
        if merged != self.settings:
            self.trigger_event(self.SettingsChanged, settings=merged, timestamp=at)

    def add_endpoint(
        self, endpoint_id: str, *, url: str, secret: str, events: list[str], at: datetime
    ) -> None:
        """Add an ERP endpoint. ``events`` empty means every type of :data:`ERP_EVENT_TYPES`.

        Raises:
            InvalidValue: bad URL or event type, or too many endpoints (the URL's address is checked by
                the adapter, which resolves it).
        """
        _validate_url(url)
        bad = [e for e in events if e not in ERP_EVENT_TYPES]
        if bad:
            raise InvalidValue(f"unknown event type {bad[0]!r}", code="invalid_webhook", field="events")
        if len(self.endpoints) >= MAX_ENDPOINTS:
            raise InvalidValue(f"at most {MAX_ENDPOINTS} endpoints", code="invalid_webhook", field="url")
        self.trigger_event(
            self.EndpointAdded,
            endpoint_id=endpoint_id,
            url=url,
            secret=secret,
            events=list(events),
            timestamp=at,
        )

    def remove_endpoint(self, endpoint_id: str, *, at: datetime) -> None:
        """Remove an endpoint.

        Raises:
            NotFound: no such endpoint.
        """
        if endpoint_id not in self.endpoints:
            raise NotFound("webhook endpoint not found", code="webhook_not_found", field="endpoint_id")
        self.trigger_event(self.EndpointRemoved, endpoint_id=endpoint_id, timestamp=at)
