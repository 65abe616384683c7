"""Before the claim, about the person: opted out? which WhatsApp account? over the per-debtor cap?

The worker gathers the facts here and the pure domain decides:

1. **Opt-out** — the phone's Conversation (event store) says opted out → skip ``opted_out``, no send.
2. **Account** — :func:`billing.domain.whatsapp.lookup_candidates` gives both forms of a Brazilian
   mobile; the answer is read from ``whatsapp_accounts`` while :func:`~billing.domain.whatsapp.is_fresh`,
   else asked from the gateway (``/chat/whatsappNumbers``) together with the other pending contacts of the
   same queue that have no fresh answer, at most 50 numbers a call and one call per tenant per
   :data:`LOOKUP_INTERVAL_S` in this process (bulk checks get accounts flagged). No account → skip
   ``not_on_whatsapp``. A lookup that fails (gateway error) falls back to sending to the bare number.
3. **Per-debtor cap** — :func:`billing.domain.debtor_cap.decide_cap` on today's ``debtor_sends`` of the
   phone, under an advisory lock per (tenant, phone); refused → defer to the next opening.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import structlog

from billing.db import ViewsPool
from billing.domain.calendar import BusinessCalendar
from billing.domain.contact import Contact
from billing.domain.conversation import Conversation, conversation_id
from billing.domain.debtor_cap import CapDecision, capped, decide_cap, local_day_bounds
from billing.domain.engagement import Engagement, EngagementSettings, engagement_id
from billing.domain.sending import RecipientFacts
from billing.domain.whatsapp import (
    ABSENT_TTL,
    LOOKUP_BATCH,
    Account,
    choose_account,
    is_fresh,
    lookup_candidates,
)
from billing.eventstore import EventStore, get_owned
from billing.gateway.client import GatewayError
from billing.worker.persistence import read_many

__all__ = ["LOOKUP_INTERVAL_S", "Recipient"]

log = structlog.get_logger(__name__)

LOOKUP_INTERVAL_S = 1.0
"""Least real seconds between two lookup calls of one tenant from one process."""
ANSWERS_KEPT = 50_000
"""Lookup answers kept in memory per process (all dropped when full; the table still has them)."""
_LOCK_CLASS = 0x62696C6C  # 'bill', as the send ledger's
_PEERS = """
SELECT DISTINCT c.phone FROM campaign_contacts c
LEFT JOIN whatsapp_accounts a ON a.tenant_id = c.tenant_id AND a.phone = c.phone
WHERE c.queue_id = %s AND c.status IN ('pending', 'dispatched') AND c.phone IS NOT NULL AND c.phone <> %s
  AND (a.checked_at IS NULL OR a.checked_at < %s)
LIMIT %s
"""


class Recipient:
    """See the module docstring. One per worker process.

    Args:
        store: the event store (Conversation, Engagement).
        pool: the views pool (``whatsapp_accounts``, ``campaign_contacts``, ``debtor_sends``).
        engagement_ttl_s: real seconds a tenant's Engagement settings (per-debtor cap) are reused.
            **Invalidation rule:** an entry older than that is read again, so a ``PATCH /engagement/``
            takes effect in every worker within ``engagement_ttl_s`` (default 5 s, as the tenant cache);
            0 reads it for every job. The opt-out (the phone's Conversation) is never cached.

    Lookup answers this process read or wrote are also kept in memory (at most
    :data:`ANSWERS_KEPT`), each used under the same rule as the table's row: while
    :func:`~billing.domain.whatsapp.is_fresh` holds for its ``checked_at`` (only this module writes
    ``whatsapp_accounts``, and a row is replaced only once it is no longer fresh).
    """

    def __init__(self, store: EventStore, pool: ViewsPool, *, engagement_ttl_s: float = 5.0) -> None:
        self.store = store
        self.pool = pool
        self.engagement_ttl_s = engagement_ttl_s
        self._engagements: dict[UUID, tuple[float, EngagementSettings]] = {}
        self._answers: dict[tuple[UUID, str], tuple[str | None, datetime]] = {}
        self.lookups = 0
        """Lookup calls made (``/chat/whatsappNumbers`` requests) by this process."""
        self._last_call: dict[UUID, float] = {}
        self._locks: dict[UUID, asyncio.Lock] = {}

    async def gather_looked_up(
        self, contact: Contact, client: Any, calendar: BusinessCalendar, now: datetime
    ) -> RecipientFacts:
        """The facts about the contact's phone at ``now`` once :meth:`gather_known_many` answered None
        for it (not opted out, no account answer known): the account is looked up now (with peers of its
        queue; the table is read once more under the tenant's lookup lock, for an answer another task or
        process got meanwhile), then the per-debtor cap. No account needs no cap."""
        assert contact.phone is not None
        allowed = CapDecision(allowed=True)
        account = await self.account(contact, client, now, unknown=True)
        if account is not None and not account.exists:
            return RecipientFacts(opted_out=False, account=account, cap=allowed)
        settings = await self.engagement(contact.tenant_id)
        cap = allowed
        if capped(contact.template_type, cap_notices=settings.cap_notices):
            cap = await asyncio.to_thread(self._cap, contact, settings, calendar, now)
        return RecipientFacts(opted_out=False, account=account, cap=cap)

    def gather_known_many(
        self, asked: Sequence[tuple[Contact, BusinessCalendar, datetime]]
    ) -> list[RecipientFacts | Exception | None]:
        """The facts about each contact's phone without a gateway call, **blocking** (call it in a thread):
        opted out?, the account answer when one is known (memory or ``whatsapp_accounts``), the per-debtor
        cap. The phones' Conversations are read in one query, the table rows of the phones not in memory
        in one query per tenant. One item per ``(contact, calendar, now)`` asked, in order — the facts,
        None (only a lookup call can tell: use :meth:`gather_looked_up`) or the exception that contact's
        reads raised. The handler runs it in the one thread
        hand-off of its grouped throttle step.

        Raises:
            Exception: the Conversations could not be read (the database failed).
        """
        ids = []
        for contact, _, _ in asked:
            assert contact.phone is not None
            ids.append(conversation_id(contact.tenant_id, contact.phone))
        conversations = read_many(self.store, ids)
        missing: dict[UUID, list[str]] = {}
        for contact, _, _ in asked:
            assert contact.phone is not None
            if (contact.tenant_id, contact.phone) not in self._answers:
                missing.setdefault(contact.tenant_id, []).append(contact.phone)
        for tenant_id, phones in missing.items():  # one table read per tenant for the whole group
            for phone, hit in self._cached(tenant_id, phones).items():
                self._keep(tenant_id, phone, *hit)
        answers: list[RecipientFacts | Exception | None] = []
        for (contact, calendar, now), cid in zip(asked, ids, strict=True):
            conversation = conversations.get(cid)
            try:
                answers.append(
                    self._known_facts(
                        contact,
                        conversation if isinstance(conversation, Conversation) else None,
                        calendar,
                        now,
                        table_read=True,  # just read above, for the whole group
                    )
                )
            except Exception as exc:
                answers.append(exc)
        return answers

    def _known_facts(
        self,
        contact: Contact,
        conversation: Conversation | None,
        calendar: BusinessCalendar,
        now: datetime,
        *,
        table_read: bool = False,
    ) -> RecipientFacts | None:
        """One contact of :meth:`gather_known_many` once the phone's Conversation is read (``table_read``:
        and its row of ``whatsapp_accounts``, whose answer is then in memory if there was one)."""
        assert contact.phone is not None
        allowed = CapDecision(allowed=True)
        if conversation is not None and conversation.opted_out:
            return RecipientFacts(opted_out=True, account=None, cap=allowed)
        account = self._known_now(contact.tenant_id, contact.phone, now, table_read=table_read)
        if account is None:
            return None
        if not account.exists:
            return RecipientFacts(opted_out=False, account=account, cap=allowed)
        settings = self._engagement_now(contact.tenant_id)
        cap = allowed
        if capped(contact.template_type, cap_notices=settings.cap_notices):
            cap = self._cap(contact, settings, calendar, now)
        return RecipientFacts(opted_out=False, account=account, cap=cap)

    async def engagement(self, tenant_id: UUID) -> EngagementSettings:
        """The tenant's engagement settings (defaults when it has none), reused for ``engagement_ttl_s``.

        Raises:
            Exception: the database failed.
        """
        entry = self._engagements.get(tenant_id)
        if entry is not None and time.monotonic() - entry[0] < self.engagement_ttl_s:
            return entry[1]
        return await asyncio.to_thread(self._engagement_now, tenant_id)

    def _engagement_now(self, tenant_id: UUID) -> EngagementSettings:
        """:meth:`engagement`, blocking."""
        entry = self._engagements.get(tenant_id)
        now = time.monotonic()
        if entry is not None and now - entry[0] < self.engagement_ttl_s:
            return entry[1]
        engagement = get_owned(self.store, engagement_id(tenant_id), Engagement)
        settings = engagement.typed if engagement else EngagementSettings()
        if self.engagement_ttl_s > 0:
            self._engagements[tenant_id] = (now, settings)
        return settings

    # ---- account lookup ------------------------------------------------------------------------------

    def _cached(self, tenant_id: UUID, phones: list[str]) -> dict[str, tuple[str | None, datetime]]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT phone, jid, checked_at FROM whatsapp_accounts "
                "WHERE tenant_id = %s AND phone = ANY(%s)",
                (tenant_id, phones),
            ).fetchall()
        return {r["phone"]: (r["jid"], r["checked_at"]) for r in rows}

    def _keep(self, tenant_id: UUID, phone: str, jid: str | None, checked_at: datetime) -> None:
        if len(self._answers) >= ANSWERS_KEPT:
            self._answers.clear()
        self._answers[(tenant_id, phone)] = (jid, checked_at)

    async def _known(self, tenant_id: UUID, phone: str, now: datetime) -> Account | None:
        """A fresh answer for ``phone``: from memory, else from ``whatsapp_accounts`` (then kept)."""
        hit = self._answers.get((tenant_id, phone))
        if hit is None:
            return await asyncio.to_thread(self._known_now, tenant_id, phone, now)
        if is_fresh(Account(hit[0]), hit[1], now):
            return Account(hit[0])
        return None

    def _known_now(
        self, tenant_id: UUID, phone: str, now: datetime, *, table_read: bool = False
    ) -> Account | None:
        """:meth:`_known`, blocking (``table_read``: the table was just read for it; not again)."""
        hit = self._answers.get((tenant_id, phone))
        if hit is None and not table_read:
            hit = self._cached(tenant_id, [phone]).get(phone)
            if hit is not None:
                self._keep(tenant_id, phone, *hit)
        if hit is not None and is_fresh(Account(hit[0]), hit[1], now):
            return Account(hit[0])
        return None

    def _peers(self, contact: Contact, now: datetime, room: int) -> list[str]:
        with self.pool.connection() as conn:
            rows = conn.execute(_PEERS, (contact.queue_id, contact.phone, now - ABSENT_TTL, room)).fetchall()
        return [r["phone"] for r in rows]

    def _remember(self, tenant_id: UUID, accounts: dict[str, Account], now: datetime) -> None:
        """Upsert the answers in ONE statement, in phone order: two processes whose lookups share phones
        (peers of one queue) then lock the rows in the same order and cannot deadlock."""
        if not accounts:
            return
        ordered = sorted(accounts.items())
        with self.pool.connection() as conn:
            conn.execute(
                """INSERT INTO whatsapp_accounts (tenant_id, phone, jid, checked_at)
                   SELECT %s, u.phone, u.jid, %s FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY
                       AS u(phone, jid, n)
                   ORDER BY u.n
                   ON CONFLICT (tenant_id, phone)
                   DO UPDATE SET jid = EXCLUDED.jid, checked_at = EXCLUDED.checked_at""",
                (tenant_id, now, [p for p, _ in ordered], [a.jid for _, a in ordered]),
            )

    async def account(
        self, contact: Contact, client: Any, now: datetime, *, unknown: bool = False
    ) -> Account | None:
        """The account of the contact's phone (cached or looked up now, with peers of its queue), or None
        when the lookup failed (send to the bare number). ``unknown``: the caller has just found no fresh
        answer in memory or the table, so the first check is skipped (the one under the tenant's lookup
        lock, for answers another task or process got meanwhile, still runs)."""
        assert contact.phone is not None
        tenant_id = contact.tenant_id
        if not unknown:
            known = await self._known(tenant_id, contact.phone, now)
            if known is not None:
                return known
        lock = self._locks.setdefault(tenant_id, asyncio.Lock())
        async with lock:
            self._answers.pop((tenant_id, contact.phone), None)  # not fresh: read the table again
            known = await self._known(tenant_id, contact.phone, now)  # another task or process asked?
            if known is not None:
                return known
            own = list(lookup_candidates(contact.phone))
            peers = await asyncio.to_thread(self._peers, contact, now, (LOOKUP_BATCH - len(own)) // 2)
            phones = [contact.phone]
            numbers = list(own)
            for phone in peers:
                candidates = lookup_candidates(phone)
                if len(numbers) + len(candidates) > LOOKUP_BATCH:
                    break
                phones.append(phone)
                numbers.extend(candidates)
            wait = self._last_call.get(tenant_id, 0.0) + LOOKUP_INTERVAL_S - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._last_call[tenant_id] = time.monotonic()
            self.lookups += 1
            try:
                answers = await client.lookup_accounts(numbers)
            except GatewayError as exc:
                log.warning("whatsapp_lookup_failed", code=exc.outcome.code)
                return None
            accounts: dict[str, Account] = {}
            for phone in phones:
                candidates = lookup_candidates(phone)
                if all(c in answers for c in candidates) or any(answers.get(c) for c in candidates):
                    accounts[phone] = choose_account(candidates, answers)
            await asyncio.to_thread(self._remember, tenant_id, accounts, now)
            for phone, account in accounts.items():
                self._keep(tenant_id, phone, account.jid, now)
            return accounts.get(contact.phone)

    # ---- per-debtor cap ------------------------------------------------------------------------------

    def _cap(
        self, contact: Contact, settings: EngagementSettings, calendar: BusinessCalendar, now: datetime
    ) -> Any:
        start, end = local_day_bounds(calendar, now)
        with self.pool.connection() as conn, conn.transaction():
            conn.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                (_LOCK_CLASS, f"{contact.tenant_id}:{contact.phone}"),
            )
            row = conn.execute(
                """SELECT count(*) AS n FROM debtor_sends
                   WHERE tenant_id = %s AND phone = %s AND at >= %s AND at < %s AND contact_id <> %s""",
                (contact.tenant_id, contact.phone, start, end, contact.id),
            ).fetchone()
            decision = decide_cap(
                sent_today=int(row["n"]) if row else 0,
                cap=settings.daily_cap,
                template_type=contact.template_type,
                cap_notices=settings.cap_notices,
                calendar=calendar,
                now=now,
            )
            if decision.allowed:
                conn.execute(
                    """INSERT INTO debtor_sends (contact_id, tenant_id, phone, at) VALUES (%s, %s, %s, %s)
                       ON CONFLICT (contact_id) DO UPDATE SET at = EXCLUDED.at""",
                    (contact.id, contact.tenant_id, contact.phone, now),
                )
        return decision
