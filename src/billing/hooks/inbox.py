"""The gateway's webhooks, kept and applied: receipts → Contact ``Delivered``/``Read``/``Played``; replies →
the phone's Conversation (and opt-out) and ``Contact.Replied``.

Receiving (:func:`store_batch`, called by the API) only inserts rows into ``gateway_inbox``, idempotent on
``(tenant, kind, message id, status)`` — gateways retry and duplicate, so a duplicate is a no-op — and
answers at once. Applying (:class:`InboxApplier`, in ``billing hooks``) matches each open receipt on the
message id kept from the send (``campaign_contacts.gateway_message_id``, projected from ``Contact.Sent``,
i.e. driven by the notification log). A receipt that arrives before the send's own answer was saved and
projected simply waits in the inbox and is applied on the first pass after the Sent event is projected:
nothing is lost and nothing is applied twice (the Contact's receipt decision is idempotent). A receipt
whose id never matches stays unapplied and is counted (``unmatched``), not an error.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import structlog
from eventsourcing.persistence import IntegrityError

from billing.db import ViewsPool
from billing.domain.contact import Contact
from billing.domain.conversation import Conversation, conversation_id
from billing.domain.engagement import Engagement, engagement_id
from billing.domain.errors import Conflict, InvalidValue
from billing.domain.gateway_events import WebhookBatch
from billing.domain.optout import DEFAULT_STOP_WORDS
from billing.domain.phone import normalize_phone
from billing.eventstore import EventStore, get_owned
from billing.services.clock import Clock

__all__ = ["InboxApplier", "InboxCounts", "inbox_counts", "store_batch"]

log = structlog.get_logger(__name__)

_INSERT = """
INSERT INTO gateway_inbox (tenant_id, kind, message_id, status, remote_jid, body, reported_at, received_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (tenant_id, kind, message_id, status) DO NOTHING
"""
_OPEN_RECEIPTS = """
SELECT i.id, i.tenant_id, i.status, i.reported_at, c.contact_id
FROM gateway_inbox i
JOIN campaign_contacts c ON c.gateway_message_id = i.message_id AND c.tenant_id = i.tenant_id
WHERE i.applied_at IS NULL AND i.kind = 'receipt'
ORDER BY i.id
LIMIT %s
"""
_OPEN_REPLIES = """
SELECT id, tenant_id, message_id, remote_jid, body, reported_at, received_at FROM gateway_inbox
WHERE applied_at IS NULL AND kind = 'reply'
ORDER BY id
LIMIT %s
"""
_CONTACT_FOR_JID = """
SELECT contact_id, phone FROM campaign_contacts
WHERE tenant_id = %s AND remote_jid = %s AND sent_at IS NOT NULL
ORDER BY sent_at DESC
LIMIT 1
"""
_DONE = "UPDATE gateway_inbox SET applied_at = %s, outcome = %s WHERE id = %s"


def store_batch(pool: ViewsPool, tenant_id: UUID, batch: WebhookBatch, *, at: datetime) -> int:
    """Insert the receipts and replies of ``batch`` into the inbox; returns how many were new (a
    duplicate delivery inserts nothing)."""
    rows: list[tuple[Any, ...]] = [
        (tenant_id, "receipt", r.message_id, r.status, r.remote_jid, None, r.at, at) for r in batch.receipts
    ]
    rows += [(tenant_id, "reply", m.message_id, "", m.remote_jid, m.text, m.at, at) for m in batch.messages]
    if not rows:
        return 0
    with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        new = 0
        for row in rows:
            cur.execute(_INSERT, row)
            new += cur.rowcount
    return new


@dataclass(frozen=True)
class InboxCounts:
    """Inbox figures of one tenant: applied, waiting (unmatched yet), and unmatched for over an hour."""

    applied: int
    waiting: int
    unmatched: int


def inbox_counts(pool: ViewsPool, tenant_id: UUID, *, now: datetime) -> InboxCounts:
    """Counts for the admin (``unmatched``: receipts for ids we never sent, or lost, older than 1 h)."""
    with pool.connection() as conn:
        row = conn.execute(
            """SELECT count(*) FILTER (WHERE applied_at IS NOT NULL) AS applied,
                      count(*) FILTER (WHERE applied_at IS NULL) AS waiting,
                      count(*) FILTER (WHERE applied_at IS NULL AND received_at < %s) AS unmatched
               FROM gateway_inbox WHERE tenant_id = %s""",
            (now - timedelta(hours=1), tenant_id),
        ).fetchone()
    assert row is not None
    return InboxCounts(applied=row["applied"], waiting=row["waiting"], unmatched=row["unmatched"])


def _phone_of(jid: str) -> str | None:
    """The E.164 phone of a ``…@s.whatsapp.net`` JID (an old 8-digit mobile gets its ninth digit)."""
    digits = jid.split("@")[0].split(":")[0]
    try:
        return normalize_phone("+" + digits).e164
    except InvalidValue:
        return None


class InboxApplier:
    """Applies the inbox to the event store (see the module docstring).

    Args:
        store / pool / clock: the container's.
        batch: rows per pass.
        send_confirmation: ``await send_confirmation(tenant_id, phone, text) -> message id | None``, the
            optional opt-out confirmation (None: never sent).
    """

    def __init__(
        self,
        store: EventStore,
        pool: ViewsPool,
        clock: Clock,
        *,
        batch: int = 500,
        send_confirmation: Any = None,
    ) -> None:
        self.store = store
        self.pool = pool
        self.clock = clock
        self.batch = batch
        self.send_confirmation = send_confirmation
        self.applied = 0

    async def run(self, stop: asyncio.Event, *, interval_s: float = 0.5) -> None:
        """Apply every ``interval_s`` seconds until ``stop``; errors are logged and retried next pass."""
        while not stop.is_set():
            try:
                await self.apply_pending()
            except Exception:
                log.exception("inbox_pass_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)

    async def apply_pending(self) -> int:
        """One pass over the open receipts that match a sent message, and the open replies."""
        receipts = await asyncio.to_thread(self._query, _OPEN_RECEIPTS)
        done = 0
        for row in receipts:
            outcome = await asyncio.to_thread(self._apply_receipt, row)
            await asyncio.to_thread(self._done, row["id"], outcome)
            done += 1
        for row in await asyncio.to_thread(self._query, _OPEN_REPLIES):
            outcome, confirm = await asyncio.to_thread(self._apply_reply, row)
            if confirm is not None and self.send_confirmation is not None:
                await self._confirm(*confirm)
            await asyncio.to_thread(self._done, row["id"], outcome)
            done += 1
        self.applied += done
        return done

    def _query(self, sql: str) -> list[dict[str, Any]]:
        with self.pool.connection() as conn:
            return list(conn.execute(sql, (self.batch,)).fetchall())

    def _done(self, row_id: int, outcome: str) -> None:
        with self.pool.connection() as conn:
            conn.execute(_DONE, (self.clock.now(), outcome, row_id))

    def _apply_receipt(self, row: dict[str, Any]) -> str:
        for _ in range(3):
            contact = get_owned(self.store, row["contact_id"], Contact, row["tenant_id"])
            if contact is None:
                return "unknown_contact"
            try:
                steps = contact.record_receipt(
                    status=row["status"], reported_at=row["reported_at"], at=self.clock.now()
                )
            except Conflict:
                return "not_sent"
            if not steps:
                return "duplicate"
            try:
                self.store.save(contact)
            except IntegrityError:
                continue
            return "+".join(steps)
        raise RuntimeError("contact kept changing; the receipt is retried next pass")

    def _apply_reply(self, row: dict[str, Any]) -> tuple[str, tuple[UUID, str, str] | None]:
        tenant_id: UUID = row["tenant_id"]
        jid: str = row["remote_jid"] or ""
        with self.pool.connection() as conn:
            match = conn.execute(_CONTACT_FOR_JID, (tenant_id, jid)).fetchone()
        phone = match["phone"] if match else _phone_of(jid)
        if phone is None:
            return "unknown_phone", None
        contact_id: UUID | None = match["contact_id"] if match else None
        engagement = get_owned(self.store, engagement_id(tenant_id), Engagement)
        settings = engagement.typed if engagement else None
        stop_words = settings.stop_words if settings else DEFAULT_STOP_WORDS
        now = self.clock.now()
        for _ in range(3):
            conversation = get_owned(self.store, conversation_id(tenant_id, phone), Conversation)
            conversation = conversation or Conversation.open(tenant_id, phone, at=now)
            word = conversation.receive(
                message_id=row["message_id"],
                text=row["body"] or "",
                remote_jid=jid,
                contact_id=contact_id,
                stop_words=stop_words,
                at=now,
            )
            if not conversation.pending_events:
                return "duplicate", None
            aggregates: list[Any] = [conversation]
            if contact_id is not None:
                contact = get_owned(self.store, contact_id, Contact)
                if contact is not None:
                    contact.record_reply(message_id=row["message_id"], opted_out=word is not None, at=now)
                    aggregates.append(contact)
            try:
                self.store.save(*aggregates)
            except IntegrityError:
                continue
            if word is None:
                return "replied", None
            confirm = (
                (tenant_id, phone, settings.confirmation_text)
                if settings and settings.confirmation_text
                else None
            )
            return "opted_out", confirm
        raise RuntimeError("conversation kept changing; the reply is retried next pass")

    async def _confirm(self, tenant_id: UUID, phone: str, text: str) -> None:
        try:
            message_id = await self.send_confirmation(tenant_id, phone, text)
        except Exception:
            log.warning("opt_out_confirmation_failed", tenant_id=str(tenant_id), exc_info=True)
            return
        if message_id:

            def record() -> None:
                conversation = get_owned(self.store, conversation_id(tenant_id, phone), Conversation)
                if conversation is not None:
                    conversation.confirmation_sent(message_id, at=self.clock.now())
                    self.store.save(conversation)

            await asyncio.to_thread(record)
