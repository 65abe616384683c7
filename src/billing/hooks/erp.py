"""Signed webhooks to the ERP: an outbox driven by the notification log, like the relay.

:class:`ErpOutbox` follows the log (topics of :data:`EVENT_TYPES`); for each event it writes one
``erp_deliveries`` row per subscribed endpoint of the event's tenant, **in the transaction that moves its
tracking position** (``tracking.name = 'erp-webhooks'``), so a crash neither loses an event nor queues it
twice (``UNIQUE (event_id, endpoint_id)``). ``queue.completed`` is derived by the projection, so it comes
from the ``queue_status`` view instead (each completed queue once, ``erp_completed_queues``).

:class:`ErpDispatcher` posts due deliveries: body = the stored payload (same bytes on every retry),
headers ``Billing-Signature: t=…,v1=…`` (HMAC-SHA256 over ``"<t>.<body>"``, :mod:`billing.domain.signing`)
and ``Billing-Event-Id`` (the ERP de-duplicates on it: delivery is at least once). Any 2xx is delivered;
anything else, a timeout or an unsafe address (judged by the guarded client when it connects: the host is
resolved once, every address checked, so a name re-pointed since it was saved is refused) is an
attempt recorded in ``erp_attempts`` and retried after :data:`~billing.domain.engagement.ERP_RETRY_DELAYS_S`
(≥ 24 h in all), then given up. Rows are claimed with ``FOR UPDATE SKIP LOCKED`` and a short lease, so
several processes share the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid5

import httpx
import msgspec
import structlog
from eventsourcing.persistence import Notification

from billing.db import ViewsPool
from billing.domain.contact import Contact
from billing.domain.conversation import Conversation
from billing.domain.engagement import Engagement, engagement_id, erp_next_attempt
from billing.domain.errors import InvalidValue
from billing.domain.queue import Queue
from billing.domain.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, signature_header
from billing.eventstore import EventStore, get_owned
from billing.netguard import check_webhook_shape, refused_by_guard
from billing.projections.follower import NotificationFollower
from billing.projections.tracking import load_position, record_error, save_position
from billing.services.clock import Clock

__all__ = ["ERP_OUTBOX", "EVENT_TYPES", "ErpDispatcher", "ErpOutbox", "erp_event_id"]

log = structlog.get_logger(__name__)

ERP_OUTBOX = "erp-webhooks"
_NAMESPACE = UUID("3d1f0a9e-58c4-4b0e-8f6d-0c2b9a7e5d41")
EVENT_TYPES: dict[str, str] = {
    Contact.Sent.TOPIC: "contact.sent",
    Contact.Delivered.TOPIC: "contact.delivered",
    Contact.Read.TOPIC: "contact.read",
    Contact.Failed.TOPIC: "contact.failed",
    Contact.Skipped.TOPIC: "contact.skipped",
    Contact.Replied.TOPIC: "contact.replied",
    Conversation.OptedOut.TOPIC: "contact.opted_out",
    Queue.Paused.TOPIC: "queue.paused",
    Queue.Resumed.TOPIC: "queue.resumed",
    Queue.Cancelled.TOPIC: "queue.cancelled",
}
"""Event topic → ERP event type (``queue.completed`` comes from the view)."""
_INSERT = """
INSERT INTO erp_deliveries
    (event_id, endpoint_id, tenant_id, event_type, payload, created_at, next_attempt_at)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (event_id, endpoint_id) DO NOTHING
"""
_CLAIM = """
UPDATE erp_deliveries SET next_attempt_at = %(lease)s
WHERE id IN (SELECT id FROM erp_deliveries WHERE state = 'pending' AND next_attempt_at <= %(now)s
             ORDER BY next_attempt_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
RETURNING id, event_id, endpoint_id, tenant_id, payload, attempts
"""
_COMPLETED = """
SELECT q.queue_id, q.tenant_id, q.campaign_id, q.template_type, q.total, q.sent, q.failed, q.skipped,
       q.rejected, q.delivered, q.read, q.replied, q.completed_at
FROM queue_status q LEFT JOIN erp_completed_queues s ON s.queue_id = q.queue_id
WHERE q.completed_at IS NOT NULL AND s.queue_id IS NULL
LIMIT 200
"""
LEASE_S = 60
TIMEOUT_S = 10.0


def erp_event_id(originator_id: UUID, version: int | str) -> UUID:
    """The stable id of one ERP event (the ERP de-duplicates on it)."""
    return uuid5(_NAMESPACE, f"{originator_id}:{version}")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class ErpOutbox:
    """Turns log events into ``erp_deliveries`` rows (see the module docstring)."""

    def __init__(self, store: EventStore, pool: ViewsPool, clock: Clock) -> None:
        self.store = store
        self.pool = pool
        self.clock = clock
        self._contacts: dict[UUID, Contact] = {}

    def _contact(self, contact_id: UUID) -> Contact | None:
        contact = get_owned(self.store, contact_id, Contact)
        if contact is not None and len(self._contacts) < 20_000:
            self._contacts[contact_id] = contact
        return contact

    def _documents(self, event: Any, topic: str) -> tuple[UUID, dict[str, Any]] | None:
        """``(tenant_id, data)`` of one event, or None when it is no ERP event."""
        kind = EVENT_TYPES[topic]
        if isinstance(event, Contact.Failed) and event.retry_at is not None:
            return None  # a retry will follow: only final failures are reported
        if kind.startswith("queue."):
            queue = get_owned(self.store, event.originator_id, Queue)
            if queue is None:
                return None
            data: dict[str, Any] = {"queue_id": str(queue.id), "campaign_id": str(queue.campaign_id)}
            if isinstance(event, Queue.Paused):
                data.update(reason=event.reason, resume_at=_iso(event.resume_at))
            return queue.tenant_id, data
        if isinstance(event, Conversation.OptedOut):
            conversation = get_owned(self.store, event.originator_id, Conversation)
            if conversation is None:
                return None
            data = {
                "phone": conversation.phone,
                "contact_id": str(event.contact_id) if event.contact_id else None,
                "message_id": event.message_id,
                "stop_word": event.stop_word,
            }
            return conversation.tenant_id, data
        contact = self._contacts.get(event.originator_id) or self._contact(event.originator_id)
        if contact is None:
            return None
        data = {
            "contact_id": str(contact.id),
            "campaign_id": str(contact.campaign_id),
            "queue_id": str(contact.queue_id),
            "external_id": contact.external_id,
            "index": contact.index,
            "phone": contact.phone,
        }
        if isinstance(event, Contact.Sent):
            data.update(gateway_message_id=event.gateway_message_id, remote_jid=event.remote_jid)
        elif isinstance(event, Contact.Failed | Contact.Skipped):
            data.update(error={"code": event.code, "message": event.message})
        elif isinstance(event, Contact.Replied):
            data.update(message_id=event.message_id, opted_out=event.opted_out)
        return contact.tenant_id, data

    def handle(self, batch: Sequence[Notification], upto: int) -> int:
        """Write the deliveries of ``batch`` and move the position to ``upto`` in one transaction."""
        rows: list[tuple[Any, ...]] = []
        failures: list[tuple[Notification, BaseException]] = []
        engagements: dict[UUID, Engagement | None] = {}
        now = self.clock.now()
        for notification in batch:
            try:
                event: Any = self.store.mapper.to_domain_event(notification)
                found = self._documents(event, notification.topic)
            except Exception as exc:
                failures.append((notification, exc))
                continue
            if found is None:
                continue
            tenant_id, data = found
            if tenant_id not in engagements:
                engagements[tenant_id] = get_owned(self.store, engagement_id(tenant_id), Engagement)
            engagement = engagements[tenant_id]
            if engagement is None:
                continue
            kind = EVENT_TYPES[notification.topic]
            event_id = erp_event_id(event.originator_id, event.originator_version)
            payload = msgspec.json.encode(
                {"id": str(event_id), "type": kind, "created_at": event.timestamp.isoformat(), "data": data}
            ).decode()
            for endpoint_id, _ in engagement.endpoints_for(kind):
                rows.append((event_id, endpoint_id, tenant_id, kind, payload, now, now))
        with self.pool.connection() as conn, conn.transaction():
            with conn.cursor() as cur:
                for row in rows:
                    cur.execute(_INSERT, row)
            for notification, error in failures:
                record_error(conn, ERP_OUTBOX, notification, error)
            return save_position(conn, ERP_OUTBOX, upto)

    def completed_queues(self) -> int:
        """Queue ``queue.completed`` deliveries for queues the view shows completed (each queue once)."""
        now = self.clock.now()
        with self.pool.connection() as conn, conn.transaction():
            rows = conn.execute(_COMPLETED).fetchall()
            for row in rows:
                conn.execute(
                    "INSERT INTO erp_completed_queues (queue_id) VALUES (%s) ON CONFLICT DO NOTHING",
                    (row["queue_id"],),
                )
                engagement = get_owned(self.store, engagement_id(row["tenant_id"]), Engagement)
                if engagement is None:
                    continue
                event_id = uuid5(_NAMESPACE, f"{row['queue_id']}:completed")
                counters = {
                    k: row[k]
                    for k in (
                        "total",
                        "sent",
                        "failed",
                        "skipped",
                        "rejected",
                        "delivered",
                        "read",
                        "replied",
                    )
                }
                payload = msgspec.json.encode(
                    {
                        "id": str(event_id),
                        "type": "queue.completed",
                        "created_at": row["completed_at"].isoformat(),
                        "data": {
                            "queue_id": str(row["queue_id"]),
                            "campaign_id": str(row["campaign_id"]),
                            "contacts": counters,
                        },
                    }
                ).decode()
                for endpoint_id, _ in engagement.endpoints_for("queue.completed"):
                    conn.execute(
                        _INSERT,
                        (event_id, endpoint_id, row["tenant_id"], "queue.completed", payload, now, now),
                    )
        return len(rows)

    def follower(self, database_url: str, poll_interval_s: float) -> NotificationFollower:
        """The notification-log follower driving :meth:`handle`."""

        async def load() -> int:
            return await asyncio.to_thread(load_position, self.pool, ERP_OUTBOX)

        async def handle(batch: Sequence[Notification], after: int, upto: int) -> int:
            return await asyncio.to_thread(self.handle, batch, upto)

        return NotificationFollower(
            name=ERP_OUTBOX,
            recorder=self.store.recorder,
            database_url=database_url,
            load_position=load,
            handle_batch=handle,
            topics=tuple(EVENT_TYPES),
            poll_interval_s=poll_interval_s,
        )


class ErpDispatcher:
    """Posts due ERP deliveries (see the module docstring).

    Args:
        http: the HTTP client of ERP calls (owned by the caller): :func:`billing.netguard.guarded_client`,
            which resolves each new connection's host once and refuses an unsafe address — the
            dispatcher itself checks only the URL's shape (:func:`billing.netguard.check_webhook_shape`).
        batch: deliveries claimed per pass.
    """

    def __init__(
        self,
        store: EventStore,
        pool: ViewsPool,
        clock: Clock,
        http: httpx.AsyncClient,
        *,
        batch: int = 20,
    ) -> None:
        self.store = store
        self.pool = pool
        self.clock = clock
        self.http = http
        self.batch = batch

    async def run(self, stop: asyncio.Event, outbox: ErpOutbox, *, interval_s: float = 0.5) -> None:
        """Dispatch every ``interval_s`` seconds (and derive ``queue.completed``) until ``stop``."""
        while not stop.is_set():
            try:
                await asyncio.to_thread(outbox.completed_queues)
                while await self.dispatch_due() and not stop.is_set():
                    pass
            except Exception:
                log.exception("erp_dispatch_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)

    def _claim(self) -> list[dict[str, Any]]:
        now = self.clock.now()
        with self.pool.connection() as conn, conn.transaction():
            params = {"now": now, "lease": now + timedelta(seconds=LEASE_S), "limit": self.batch}
            return list(conn.execute(_CLAIM, params).fetchall())

    async def dispatch_due(self) -> int:
        """Post the deliveries due now (one claimed batch, concurrently); returns how many were tried."""
        rows = await asyncio.to_thread(self._claim)
        if not rows:
            return 0
        endpoints: dict[UUID, Engagement | None] = {}
        for row in rows:
            if row["tenant_id"] not in endpoints:
                endpoints[row["tenant_id"]] = await asyncio.to_thread(
                    get_owned, self.store, engagement_id(row["tenant_id"]), Engagement
                )
        await asyncio.gather(*(self._post(row, endpoints[row["tenant_id"]]) for row in rows))
        return len(rows)

    async def _post(self, row: dict[str, Any], engagement: Engagement | None) -> None:
        endpoint = engagement.endpoints.get(row["endpoint_id"]) if engagement else None
        if endpoint is None:
            await asyncio.to_thread(
                self._finish, row, state="dropped", status=None, error="endpoint removed", ms=0
            )
            return
        body = row["payload"].encode()
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            check_webhook_shape(endpoint["url"])  # no I/O: the guarded client resolves, once
            headers = {
                "content-type": "application/json",
                SIGNATURE_HEADER: signature_header(
                    endpoint["secret"], int(self.clock.now().timestamp()), body
                ),
                EVENT_ID_HEADER: str(row["event_id"]),
                "user-agent": "billing-webhooks/1",
            }
            response = await self.http.post(endpoint["url"], content=body, headers=headers, timeout=TIMEOUT_S)
            status = response.status_code
        except InvalidValue as exc:
            error = exc.code
        except (httpx.HTTPError, TimeoutError) as exc:
            error = "unsafe_url" if refused_by_guard(exc) else type(exc).__name__
        ms = round((time.monotonic() - started) * 1000)
        ok = status is not None and 200 <= status < 300
        await asyncio.to_thread(
            self._finish, row, state="delivered" if ok else "pending", status=status, error=error, ms=ms
        )

    def _finish(
        self, row: dict[str, Any], *, state: str, status: int | None, error: str | None, ms: int
    ) -> None:
        now = self.clock.now()
        attempt = row["attempts"] + 1
        next_at = None
        if state == "pending":
            next_at = erp_next_attempt(attempt, now)
            if next_at is None:
                state = "given_up"
        with self.pool.connection() as conn, conn.transaction():
            if state != "dropped":
                conn.execute(
                    "INSERT INTO erp_attempts (delivery_id, attempt, at, status_code, error, duration_ms) "
                    "VALUES (%s, %s, %s, %s, %s, %s)",
                    (row["id"], attempt, now, status, error, ms),
                )
            conn.execute(
                """UPDATE erp_deliveries SET attempts = %s, state = %s, next_attempt_at = %s,
                          last_status = %s,
                          last_error = %s, delivered_at = CASE WHEN %s = 'delivered' THEN %s END
                   WHERE id = %s""",
                (
                    attempt if state != "dropped" else row["attempts"],
                    state,
                    next_at,
                    status,
                    error,
                    state,
                    now,
                    row["id"],
                ),
            )
        if state != "delivered":
            log.info(
                "erp_delivery_attempt",
                state=state,
                status=status,
                error=error,
                attempt=attempt,
                event_type=None,
            )
