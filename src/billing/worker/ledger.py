"""The worker's operational tables (``sql/002_worker.sql``): the send ledger and the gateway blocks.

Synchronous (psycopg pool of :class:`~billing.bootstrap.Container`); async callers use ``asyncio.to_thread``.

**Send ledger (promise 5).** The throttle (:func:`billing.domain.throttle.decide`) is pure; keeping it
across any number of worker processes is this adapter's job: :meth:`SendLedger.acquire` takes
``pg_advisory_xact_lock(LOCK_CLASS, hashtext(tenant_id))`` and, in that one transaction, reads the
tenant's sends of the last 60 s and of its local day, decides, and inserts the granted send. Two processes
deciding for one tenant are therefore serialised, and each sees the other's grant. One row is one gateway
attempt granted (counted whatever the gateway answers: the call reached WhatsApp's side); a grant that
never reached the gateway (the claim was lost, nothing to render) is :meth:`SendLedger.release`\\ d.
Rows older than the local day are no longer read; :meth:`SendLedger.prune` deletes them.

**Gateway blocks.** A 401/403/404 from a tenant's gateway blocks sending for that tenant until its gateway
settings change: the row holds ``Tenant.gateway_generation`` at the time of the failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from uuid import UUID

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from billing.domain.calendar import BusinessCalendar
from billing.domain.throttle import WINDOW, ThrottleDecision, ThrottleLimits, decide

__all__ = ["LOCK_CLASS", "Grant", "SendLedger"]

LOCK_CLASS = 0x62696C6C & 0x7FFFFFFF
"""First key of the two-key advisory lock (``'bill'``), so our locks never collide with other users'."""


@dataclass(frozen=True)
class Grant:
    """The answer of :meth:`SendLedger.acquire`.

    Attributes:
        decision: the throttle's decision (``allowed``, ``retry_at``, ``reason``).
        ledger_id: id of the ledger row recorded for an allowed send, else None.
    """

    decision: ThrottleDecision
    ledger_id: int | None = None

    @property
    def allowed(self) -> bool:
        """True when one send was granted (and recorded)."""
        return self.decision.allowed


class SendLedger:
    """Per-tenant send accounting and gateway blocks in PostgreSQL.

    Args:
        pool: a sync psycopg pool with dict rows (the container's ``pool``).
    """

    def __init__(self, pool: ConnectionPool[Any]) -> None:
        self._pool = pool

    def acquire(
        self,
        *,
        tenant_id: UUID,
        contact_id: UUID,
        limits: ThrottleLimits,
        calendar: BusinessCalendar,
        now: datetime,
    ) -> Grant:
        """Decide, under the tenant's advisory lock, whether one more message may go out at ``now``, and
        record it if so.

        Args:
            now: aware instant from the worker's clock (recorded as ``sent_at``).

        Raises:
            psycopg.Error: the database failed (nothing recorded).
        """
        day_start = calendar.local_datetime(calendar.local_date(now), time(0, 0))
        with (
            self._pool.connection() as conn,
            conn.transaction(),
            conn.cursor(row_factory=dict_row) as cur,
        ):
            cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_CLASS, str(tenant_id)))
            counted = cur.execute(
                "SELECT count(*) AS n FROM send_ledger "
                "WHERE tenant_id = %s AND sent_at >= %s AND sent_at <= %s",
                (tenant_id, day_start, now),
            ).fetchone()
            recent = cur.execute(
                "SELECT sent_at FROM send_ledger WHERE tenant_id = %s AND sent_at > %s AND sent_at <= %s",
                (tenant_id, now - WINDOW, now),
            ).fetchall()
            decision = decide(
                limits,
                now=now,
                recent_sends=[row["sent_at"] for row in recent],
                sent_today=int(counted["n"]) if counted else 0,
                calendar=calendar,
            )
            if not decision.allowed:
                return Grant(decision)
            row = cur.execute(
                "INSERT INTO send_ledger (tenant_id, sent_at, contact_id) VALUES (%s, %s, %s) RETURNING id",
                (tenant_id, now, contact_id),
            ).fetchone()
        assert row is not None
        return Grant(decision, ledger_id=int(row["id"]))

    def release(self, ledger_id: int) -> None:
        """Forget a grant whose message never reached the gateway."""
        with self._pool.connection() as conn:
            conn.execute("DELETE FROM send_ledger WHERE id = %s", (ledger_id,))

    def prune(self, before: datetime) -> int:
        """Delete ledger rows older than ``before`` (keep at least two days: no local day is longer).
        Returns how many were deleted."""
        with self._pool.connection() as conn:
            cur = conn.execute("DELETE FROM send_ledger WHERE sent_at < %s", (before - timedelta(days=2),))
            return int(cur.rowcount)

    def block_gateway(self, *, tenant_id: UUID, generation: int, code: str, at: datetime) -> None:
        """Record that the tenant's gateway of ``generation`` refused us (401/403/404: ``code``)."""
        with self._pool.connection() as conn:
            conn.execute(
                """
                INSERT INTO gateway_blocks (tenant_id, generation, code, blocked_at) VALUES (%s, %s, %s, %s)
                ON CONFLICT (tenant_id) DO UPDATE
                SET generation = GREATEST(gateway_blocks.generation, EXCLUDED.generation),
                    code = EXCLUDED.code, blocked_at = EXCLUDED.blocked_at
                """,
                (tenant_id, generation, code, at),
            )

    def blocked_generation(self, tenant_id: UUID) -> int | None:
        """The gateway generation the tenant is blocked at, or None when it is not blocked."""
        with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(
                "SELECT generation FROM gateway_blocks WHERE tenant_id = %s", (tenant_id,)
            ).fetchone()
        return None if row is None else int(row["generation"])

    def unblock(self, tenant_id: UUID, *, below_generation: int) -> None:
        """Lift the tenant's block if it concerns a gateway generation older than ``below_generation``."""
        with self._pool.connection() as conn:
            conn.execute(
                "DELETE FROM gateway_blocks WHERE tenant_id = %s AND generation < %s",
                (tenant_id, below_generation),
            )
