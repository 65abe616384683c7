"""Use cases of "after the send": settings, gateway webhook secret, ERP endpoints, opt-outs, manual and
automatic pauses. Synchronous (the event store and pool are)."""

from __future__ import annotations

import secrets
import threading
import time
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.persistence import IntegrityError

from billing.db import ViewsPool
from billing.domain.conversation import Conversation, conversation_id
from billing.domain.engagement import Engagement, engagement_id
from billing.domain.errors import Conflict, InvalidValue, NotFound
from billing.domain.phone import normalize_phone
from billing.domain.queue import PAUSED_BY_ADMIN, Queue, review_pause
from billing.domain.tenant import Tenant
from billing.domain.types import PauseReason
from billing.eventstore import EventStore, get_owned
from billing.netguard import Resolver, check_webhook_url, system_resolver
from billing.services.clock import Clock

__all__ = ["CONNECTION_PAUSE_S", "EngagementService"]

SECRET_CACHE_TTL_S = 10.0
CONNECTION_PAUSE_S = 600
"""A ``close`` from the gateway pauses the tenant's queues this long at most (seconds): the ``open``
webhook resumes them at once, and should it be lost the worker's ``connectionState`` probe decides then."""
_ACTIVE_QUEUES = """
SELECT queue_id FROM queue_status
WHERE tenant_id = %s AND cancelled_at IS NULL AND completed_at IS NULL
"""


class EngagementService:
    """See the module docstring. ``allow_private``: ERP endpoints may be private/loopback addresses."""

    def __init__(
        self,
        store: EventStore,
        pool: ViewsPool,
        clock: Clock,
        *,
        allow_private: bool = False,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.store = store
        self.pool = pool
        self.clock = clock
        self.allow_private = allow_private
        self.resolver = resolver
        self._cache: dict[UUID, tuple[float, Engagement | None]] = {}
        self._lock = threading.Lock()

    # ---- engagement aggregate ----------------------------------------------------------------------

    def get(self, tenant_id: UUID) -> Engagement | None:
        """The tenant's settings aggregate, or None before its first change."""
        return get_owned(self.store, engagement_id(tenant_id), Engagement)

    def cached(self, tenant_id: UUID) -> Engagement | None:
        """:meth:`get`, cached :data:`SECRET_CACHE_TTL_S` seconds (webhook authentication per request)."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(tenant_id)
        if hit is not None and now - hit[0] < SECRET_CACHE_TTL_S:
            return hit[1]
        engagement = self.get(tenant_id)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[tenant_id] = (now, engagement)
        return engagement

    def _change(self, tenant_id: UUID, command: Any) -> Engagement:
        if get_owned(self.store, tenant_id, Tenant) is None:
            raise NotFound("tenant not found", code="tenant_not_found")
        for _ in range(3):
            engagement = self.get(tenant_id) or Engagement.start(tenant_id, at=self.clock.now())
            command(engagement)
            try:
                self.store.save(engagement)
            except IntegrityError:
                continue
            with self._lock:
                self._cache.pop(tenant_id, None)
            return engagement
        raise Conflict("the settings changed meanwhile; try again", code="concurrent_change")

    def settings_document(self, tenant_id: UUID) -> dict[str, Any]:
        """``{stop_words, confirmation_text, daily_cap, cap_notices, gateway_webhook: bool}``."""
        engagement = self.get(tenant_id)
        typed = engagement.typed if engagement else Engagement.start(tenant_id, at=self.clock.now()).typed
        return {
            "stop_words": list(typed.stop_words),
            "confirmation_text": typed.confirmation_text,
            "daily_cap": typed.daily_cap,
            "cap_notices": typed.cap_notices,
            "gateway_webhook_configured": bool(engagement and engagement.gateway_secret_digest),
        }

    def change_settings(self, tenant_id: UUID, changes: dict[str, Any]) -> dict[str, Any]:
        """Merge settings (see :meth:`Engagement.change_settings`). Raises InvalidValue naming the field."""
        self._change(tenant_id, lambda e: e.change_settings(changes, at=self.clock.now()))
        return self.settings_document(tenant_id)

    def new_gateway_secret(self, tenant_id: UUID) -> str:
        """Generate and store a new gateway webhook secret; returns it (shown once)."""
        secret = "gws_" + secrets.token_urlsafe(32)
        self._change(tenant_id, lambda e: e.set_gateway_secret(secret, at=self.clock.now()))
        return secret

    def gateway_authorised(self, tenant_id: UUID, secret: str | None) -> bool:
        """True when ``secret`` is the tenant's gateway webhook secret (cached lookup)."""
        engagement = self.cached(tenant_id)
        return engagement is not None and engagement.gateway_secret_matches(secret)

    # ---- ERP endpoints -----------------------------------------------------------------------------

    def add_endpoint(self, tenant_id: UUID, url: str, events: list[str]) -> dict[str, Any]:
        """Add an ERP endpoint; its signing secret is in the answer only.

        Raises:
            InvalidValue: bad or unsafe URL (``unsafe_url``), unknown event type.
        """
        check_webhook_url(url, allow_private=self.allow_private, resolver=self.resolver)
        endpoint_id = str(uuid4())
        secret = "whsec_" + secrets.token_urlsafe(32)
        self._change(
            tenant_id,
            lambda e: e.add_endpoint(endpoint_id, url=url, secret=secret, events=events, at=self.clock.now()),
        )
        return {"endpoint_id": endpoint_id, "url": url, "events": events, "secret": secret}

    def list_endpoints(self, tenant_id: UUID) -> list[dict[str, Any]]:
        """The tenant's endpoints (never their secret)."""
        engagement = self.get(tenant_id)
        if engagement is None:
            return []
        return [
            {
                "endpoint_id": eid,
                "url": ep["url"],
                "events": ep["events"],
                "created_at": ep["created_at"].isoformat(),
            }
            for eid, ep in sorted(engagement.endpoints.items())
        ]

    def remove_endpoint(self, tenant_id: UUID, endpoint_id: str) -> None:
        """Remove an endpoint. Raises NotFound."""
        if self.get(tenant_id) is None:
            raise NotFound("webhook endpoint not found", code="webhook_not_found", field="endpoint_id")
        self._change(tenant_id, lambda e: e.remove_endpoint(endpoint_id, at=self.clock.now()))

    def deliveries(self, tenant_id: UUID, *, limit: int = 100) -> list[dict[str, Any]]:
        """The latest ERP deliveries with every attempt (newest first)."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT * FROM erp_deliveries WHERE tenant_id = %s "
                "ORDER BY created_at DESC, id DESC LIMIT %s",
                (tenant_id, max(1, min(limit, 500))),
            ).fetchall()
            ids = [r["id"] for r in rows]
            attempts = conn.execute(
                "SELECT * FROM erp_attempts WHERE delivery_id = ANY(%s) ORDER BY delivery_id, attempt", (ids,)
            ).fetchall()
        by_delivery: dict[int, list[dict[str, Any]]] = {}
        for a in attempts:
            by_delivery.setdefault(a["delivery_id"], []).append(
                {
                    "attempt": a["attempt"],
                    "at": a["at"].isoformat(),
                    "status_code": a["status_code"],
                    "error": a["error"],
                    "duration_ms": a["duration_ms"],
                }
            )
        return [
            {
                "event_id": str(r["event_id"]),
                "endpoint_id": r["endpoint_id"],
                "type": r["event_type"],
                "state": r["state"],
                "attempts": by_delivery.get(r["id"], []),
                "next_attempt_at": r["next_attempt_at"].isoformat() if r["next_attempt_at"] else None,
                "delivered_at": r["delivered_at"].isoformat() if r["delivered_at"] else None,
            }
            for r in rows
        ]

    # ---- opt-outs ----------------------------------------------------------------------------------

    def list_opt_outs(self, tenant_id: UUID, *, include_lifted: bool = False) -> list[dict[str, Any]]:
        """The tenant's opted-out phones (and lifted ones with ``include_lifted``), newest first."""
        sql = "SELECT * FROM opt_outs WHERE tenant_id = %s AND (opted_out OR (%s AND lifted_at IS NOT NULL))"
        with self.pool.connection() as conn:
            rows = conn.execute(sql + " ORDER BY updated_at DESC", (tenant_id, include_lifted)).fetchall()
        return [
            {
                "phone": r["phone"],
                "opted_out": r["opted_out"],
                "opted_out_at": r["opted_out_at"].isoformat() if r["opted_out_at"] else None,
                "message_id": r["message_id"],
                "stop_word": r["stop_word"],
                "contact_id": str(r["contact_id"]) if r["contact_id"] else None,
                "lifted_at": r["lifted_at"].isoformat() if r["lifted_at"] else None,
            }
            for r in rows
        ]

    def _conversation(self, tenant_id: UUID, phone: str) -> Conversation:
        try:
            e164 = normalize_phone(phone, field="phone").e164
        except InvalidValue:
            raise NotFound(
                "no conversation with this phone", code="conversation_not_found", field="phone"
            ) from None
        conversation = get_owned(self.store, conversation_id(tenant_id, e164), Conversation, tenant_id)
        if conversation is None:
            raise NotFound("no conversation with this phone", code="conversation_not_found", field="phone")
        return conversation

    def lift_opt_out(self, tenant_id: UUID, phone: str, *, by: str, reason: str) -> None:
        """Lift a phone's opt-out (the debtor asked). Raises NotFound, Conflict ``not_opted_out``."""
        conversation = self._conversation(tenant_id, phone)
        conversation.lift_opt_out(by=by, reason=reason, at=self.clock.now())
        self.store.save(conversation)

    def conversation_history(self, tenant_id: UUID, phone: str) -> list[Any]:
        """Every event of the tenant's conversation with ``phone`` (replies, opt-out and its cause, lifts)."""
        conversation = self._conversation(tenant_id, phone)
        return list(self.store.events.get(conversation.id))

    def conversation_events(self, tenant_id: UUID, e164: str) -> list[Any]:
        """The events of the tenant's conversation with ``e164`` (normalised), or [] when there is none."""
        conversation = get_owned(self.store, conversation_id(tenant_id, e164), Conversation, tenant_id)
        return [] if conversation is None else list(self.store.events.get(conversation.id))

    def is_opted_out(self, tenant_id: UUID, phone: str) -> bool:
        """True when ``phone`` (E.164) opted out of the tenant's reminders (read from the event store)."""
        conversation = get_owned(self.store, conversation_id(tenant_id, phone), Conversation)
        return conversation is not None and conversation.opted_out

    # ---- pauses ------------------------------------------------------------------------------------

    def _queue(self, tenant_id: UUID, queue_id: UUID) -> Queue:
        queue = get_owned(self.store, queue_id, Queue, tenant_id)
        if queue is None:
            raise NotFound("queue not found", code="queue_not_found", field="queue_id")
        return queue

    def pause_by_admin(self, tenant_id: UUID, queue_id: UUID) -> Queue:
        """Pause a queue by hand (until :meth:`resume_by_admin`). Raises NotFound, Conflict."""
        queue = self._queue(tenant_id, queue_id)
        queue.pause(reason=PAUSED_BY_ADMIN, resume_at=None, at=self.clock.now())
        self.store.save(queue)
        return queue

    def resume_by_admin(self, tenant_id: UUID, queue_id: UUID) -> Queue:
        """Lift any pause of the queue now (the worker re-checks hours, gateway and throttle first)."""
        queue = self._queue(tenant_id, queue_id)
        queue.resume(at=self.clock.now())
        self.store.save(queue)
        return queue

    def _active_queues(self, tenant_id: UUID) -> list[UUID]:
        with self.pool.connection() as conn:
            return [r["queue_id"] for r in conn.execute(_ACTIVE_QUEUES, (tenant_id,)).fetchall()]

    def connection_changed(self, tenant_id: UUID, state: str) -> int:
        """The gateway said ``connection.update``: ``close``/``refused`` pause the tenant's active queues
        ``gateway_disconnected`` (for :data:`CONNECTION_PAUSE_S` at most), ``open`` resumes those paused
        so. Returns how many queues changed."""
        now = self.clock.now()
        changed = 0
        for queue_id in self._active_queues(tenant_id):
            queue = get_owned(self.store, queue_id, Queue)
            if queue is None or queue.cancelled:
                continue
            if state in ("close", "refused") and not queue.paused:
                queue.pause(
                    reason=PauseReason.GATEWAY_DISCONNECTED.value,
                    resume_at=now + timedelta(seconds=CONNECTION_PAUSE_S),
                    at=now,
                )
            elif state == "open" and queue.paused_reason == PauseReason.GATEWAY_DISCONNECTED.value:
                queue.resume(at=now)
            if queue.pending_events:
                try:
                    self.store.save(queue)
                    changed += 1
                except IntegrityError:
                    pass  # a worker changed it meanwhile; it decides with fresher facts
        return changed

    def review_pauses(self, tenant_id: UUID, *, policy_changed: bool, gateway_changed: bool) -> int:
        """Re-evaluate the tenant's paused queues after a policy/gateway change
        (:func:`billing.domain.queue.review_pause`). Returns how many queues changed."""
        tenant = get_owned(self.store, tenant_id, Tenant)
        if tenant is None:
            return 0
        now = self.clock.now()
        calendar = tenant.sending_policy.calendar
        changed = 0
        for queue_id in self._active_queues(tenant_id):
            queue = get_owned(self.store, queue_id, Queue)
            if queue is None or not queue.paused or queue.cancelled or queue.paused_reason is None:
                continue
            open_now = calendar.is_open(now)
            action, resume_at = review_pause(
                queue.paused_reason,
                queue.resume_at,
                open_now=open_now,
                next_opening=None if open_now else calendar.next_opening(now),
                policy_changed=policy_changed,
                gateway_changed=gateway_changed,
            )
            if action == "resume":
                queue.resume(at=now)
            elif action == "move":
                queue.pause(reason=queue.paused_reason, resume_at=resume_at, at=now)
            if queue.pending_events:
                try:
                    self.store.save(queue)
                    changed += 1
                except IntegrityError:
                    pass
        return changed
