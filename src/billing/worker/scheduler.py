"""The scheduler: part of every worker process, it turns time into jobs (DESIGN.md, "The flow").

Every few seconds (instants from the injected clock) one :meth:`Scheduler.tick`:

(a) **resumes** paused queues whose ``resume_at`` has passed (a ``Queue.Resumed`` event), and queues
    paused ``gateway_misconfigured`` whose tenant's gateway generation moved past its block. Everything it
    needs is in PostgreSQL (the ``queue_status`` view, the event store, ``gateway_blocks``), so a queue
    resumes by itself at ``resume_at`` even after every process restarted (promise 4);
(b) **republishes** a SendJob (reason ``due``) for each contact that is ``pending`` with ``not_before``
    reached — a retry after backoff, a deferral (business hours, throttle, gateway) — unless its queue is
    still paused; (reason ``due``) for each contact still ``pending`` without ``not_before``
    :attr:`Scheduler.stale_s` after its last change (its job was lost: dead-lettered after repeated
    transient failures, or the relay is far behind); and (reason ``lease``) for each ``dispatched``
    contact whose ``lease_until`` passed (its worker died mid-attempt).

Rows come from the ``campaign_contacts`` / ``queue_status`` views (read only; the projections process
writes them). Duplicate jobs are harmless — the handler is idempotent and re-checks everything — but to
keep the broker quiet each ``(contact, not_before)`` or ``(contact, lease_until)`` is published once per
:attr:`Scheduler.remember_s`; a contact deferred again has a new ``not_before`` and is published again
when that comes. Fairness: at most :attr:`Scheduler.per_tenant` contacts per tenant per tick, so one
tenant's backlog cannot crowd out another's; each job goes to its kind's retry queue
(``Topology.retry_queue``), ahead of any fresh backlog. Several worker processes each run a scheduler;
they publish some duplicates, nothing worse.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import zip_longest
from typing import Any
from uuid import UUID

import structlog
from psycopg.rows import dict_row

from billing.db import ViewsPool
from billing.domain.tenant import Tenant
from billing.domain.types import PauseReason, TemplateType
from billing.eventstore import EventStore
from billing.outbox.broker import OutgoingMessage, Publisher, Topology
from billing.outbox.jobs import SendJob, job_message
from billing.services.clock import Clock
from billing.worker.ledger import SendLedger
from billing.worker.persistence import load, resume_queue

__all__ = ["Scheduler", "TickReport"]

log = structlog.get_logger(__name__)

GATEWAY_MISCONFIGURED = PauseReason.GATEWAY_MISCONFIGURED.value

_PAUSED_SQL = """
SELECT queue_id, tenant_id, paused_reason, resume_at FROM queue_status
WHERE paused_reason IS NOT NULL AND cancelled_at IS NULL
  AND ((resume_at IS NOT NULL AND resume_at <= %(now)s)
       OR (resume_at IS NULL AND paused_reason = %(misconf)s))
ORDER BY resume_at NULLS LAST
LIMIT %(limit)s
"""

_DUE_SQL = """
SELECT contact_id, tenant_id, queue_id, template_type, not_before AS at FROM (
    SELECT c.contact_id, c.tenant_id, c.queue_id, c.template_type, c.not_before,
           row_number() OVER (PARTITION BY c.tenant_id ORDER BY c.not_before, c.contact_id) AS rank
    FROM campaign_contacts c JOIN queue_status q ON q.queue_id = c.queue_id
    WHERE c.status = 'pending' AND c.not_before IS NOT NULL AND c.not_before <= %(now)s
      AND (q.paused_reason IS NULL OR q.cancelled_at IS NOT NULL
           OR (q.resume_at IS NOT NULL AND q.resume_at <= %(now)s) OR q.queue_id = ANY(%(resumed)s))
) due
WHERE rank <= %(per_tenant)s
ORDER BY not_before
LIMIT %(limit)s
"""

_STALE_SQL = """
SELECT c.contact_id, c.tenant_id, c.queue_id, c.template_type, c.updated_at AS at
FROM queue_status q JOIN campaign_contacts c ON c.queue_id = q.queue_id AND c.status = 'pending'
WHERE q.pending > 0 AND q.completed_at IS NULL
  AND c.not_before IS NULL AND c.updated_at <= %(stale_before)s
  AND (q.paused_reason IS NULL OR q.cancelled_at IS NOT NULL
       OR (q.resume_at IS NOT NULL AND q.resume_at <= %(now)s) OR q.queue_id = ANY(%(resumed)s))
ORDER BY c.updated_at
LIMIT %(limit)s
"""

_LEASE_SQL = """
SELECT contact_id, tenant_id, queue_id, template_type, lease_until AS at FROM campaign_contacts
WHERE status = 'dispatched' AND lease_until IS NOT NULL AND lease_until < %(now)s
ORDER BY lease_until
LIMIT %(limit)s
"""


@dataclass(frozen=True)
class TickReport:
    """What one tick did: queues resumed, and jobs published for due contacts, for pending contacts whose
    job seems lost (``stale``) and for expired leases."""

    resumed: int = 0
    due: int = 0
    stale: int = 0
    leases: int = 0


class Scheduler:
    """Resumes queues and republishes jobs (see the module docstring).

    Args:
        pool: the views pool (read only).
        store: the event store (queues, tenants).
        publisher / topology: where republished jobs go.
        ledger: the send ledger (per-minute room, pruning; gateway blocks).
        clock: the time source.
        limit: most rows read per query per tick.
        per_tenant: most due contacts of one tenant published per tick.
        remember_s: seconds a published ``(contact, instant)`` is not published again (clock seconds).
        stale_s: seconds a pending contact with no ``not_before`` may wait for its job before it is
            republished (clock seconds).
    """

    def __init__(
        self,
        *,
        pool: ViewsPool,
        store: EventStore,
        publisher: Publisher,
        topology: Topology,
        ledger: SendLedger,
        clock: Clock,
        limit: int = 1000,
        per_tenant: int = 200,
        remember_s: float = 300.0,
        stale_s: float = 600.0,
    ) -> None:
        self.pool = pool
        self.store = store
        self.clock = clock
        self.publisher = publisher
        self.limit = limit
        self.per_tenant = per_tenant
        self.remember = timedelta(seconds=remember_s)
        self.stale = timedelta(seconds=stale_s)
        self.topology = topology
        self.ledger = ledger
        self._published: dict[tuple[UUID, datetime], datetime] = {}
        self._last_prune: datetime | None = None

    async def run(self, stop: asyncio.Event, *, interval_s: float = 2.0) -> None:
        """Tick every ``interval_s`` wall-clock seconds until ``stop`` is set. A failing tick is logged and
        the loop goes on (the database or broker may be back next time)."""
        while not stop.is_set():
            try:
                await self.tick()
            except Exception:
                log.exception("scheduler_tick_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)

    async def tick(self) -> TickReport:
        """One pass of (a) resume and (b) republish, at the clock's ``now``.

        Raises:
            Exception: the database or the broker failed (nothing is remembered as published then).
        """
        now = self.clock.now()
        resumed = await self._resume(now)
        due = await self._publish(_DUE_SQL, "due", now, resumed=resumed, budgeted=True)
        stale = await self._publish(_STALE_SQL, "due", now, resumed=resumed)
        leases = await self._publish(_LEASE_SQL, "lease", now)
        self._forget(now)
        if self._last_prune is None or now - self._last_prune > timedelta(hours=1):
            self._last_prune = now
            await asyncio.to_thread(self.ledger.prune, now)
        report = TickReport(resumed=len(resumed), due=due, stale=stale, leases=leases)
        if resumed or due or stale or leases:
            log.info("scheduler_tick", resumed=len(resumed), due=due, stale=stale, leases=leases)
        return report

    async def _resume(self, now: datetime) -> list[UUID]:
        """Resume what is due; returns the queues resumed (the view may not show it yet)."""
        rows = await self._query(_PAUSED_SQL, now=now, misconf=GATEWAY_MISCONFIGURED, limit=self.limit)
        resumed: list[UUID] = []
        store = self.store
        for row in rows:
            queue_id: UUID = row["queue_id"]
            if row["resume_at"] is not None:
                queue = await resume_queue(store, queue_id, at=now)
            elif await self._gateway_fixed(row["tenant_id"]):
                queue = await resume_queue(
                    store, queue_id, at=now, when=lambda q: q.paused_reason == GATEWAY_MISCONFIGURED
                )
            else:
                continue
            if queue is not None and not queue.paused:
                resumed.append(queue_id)
                log.info("queue_resumed", queue_id=str(queue_id), tenant_id=str(row["tenant_id"]))
        return resumed

    async def _gateway_fixed(self, tenant_id: UUID) -> bool:
        """True when the tenant's gateway settings changed since the block (and the stale block is gone)."""
        tenant = await load(self.store, tenant_id, Tenant)
        if tenant is None:
            return False
        blocked = await asyncio.to_thread(self.ledger.blocked_generation, tenant_id)
        if blocked is not None and blocked >= tenant.gateway_generation:
            return False
        await asyncio.to_thread(self.ledger.unblock, tenant_id, below_generation=tenant.gateway_generation)
        return True

    async def _publish(
        self, sql: str, reason: str, now: datetime, resumed: Sequence[UUID] = (), *, budgeted: bool = False
    ) -> int:
        rows = await self._query(
            sql,
            now=now,
            limit=self.limit,
            per_tenant=self.per_tenant,
            resumed=list(resumed),
            stale_before=now - self.stale,
        )
        fresh = [row for row in rows if (row["contact_id"], row["at"]) not in self._published]
        if budgeted:
            fresh = await self._within_budget(fresh, now)
        if not fresh:
            return 0
        messages = [self._message(row, reason) for row in fresh]
        await self.publisher.publish(messages)
        for row in fresh:
            self._published[(row["contact_id"], row["at"])] = now
        return len(messages)

    async def _within_budget(self, rows: Sequence[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
        """Keep, per tenant, no more due contacts than its per-minute room at ``now``, taken round-robin
        over its queues (so a tenant's queues share its budget fairly). Without this, a throttled tenant's
        whole backlog would be republished every time its window opens and almost all of it deferred
        again — one ``Deferred`` event per contact per minute. The rest stays due for a later tick."""
        by_tenant: dict[UUID, dict[UUID, list[dict[str, Any]]]] = {}
        for row in rows:
            by_tenant.setdefault(row["tenant_id"], {}).setdefault(row["queue_id"], []).append(row)
        kept: list[dict[str, Any]] = []
        for tenant_id, queues in by_tenant.items():
            tenant = await load(self.store, tenant_id, Tenant)
            if tenant is None:
                continue
            room = await asyncio.to_thread(
                self.ledger.minute_room, tenant_id, tenant.sending_policy.limits, now
            )
            interleaved = [row for group in zip_longest(*queues.values()) for row in group if row is not None]
            kept.extend(interleaved[:room])
        return kept

    def _message(self, row: dict[str, Any], reason: str) -> OutgoingMessage:
        job = SendJob(
            contact_id=row["contact_id"],
            tenant_id=row["tenant_id"],
            queue_id=row["queue_id"],
            template_type=TemplateType(row["template_type"]),
            reason=reason,
        )
        return job_message(job, f"{reason}-{row['at'].timestamp():.6f}", self.topology)

    def _forget(self, now: datetime) -> None:
        """Drop memories older than :attr:`remember` (so a lost job is published again after that)."""
        horizon = now - self.remember
        stale = [key for key, at in self._published.items() if at <= horizon or at > now]
        for key in stale:
            del self._published[key]

    async def _query(self, sql: str, **params: Any) -> Sequence[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                return cur.execute(sql, params).fetchall()

        return await asyncio.to_thread(run)
