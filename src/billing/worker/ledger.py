"""The worker's operational tables (``billing/sql/002_worker.sql``): the send ledger and the gateway blocks.

Synchronous (psycopg pool of :class:`~billing.bootstrap.Container`); async callers use ``asyncio.to_thread``.

**Send ledger (promise 5).** The throttle (:func:`billing.domain.throttle.decide_arrival`, called by
:func:`billing.domain.sending.decide`) is pure; keeping it across any number of worker processes is this
adapter's job: :meth:`SendLedger.locked_many` takes ``pg_advisory_xact_lock(LOCK_CLASS, hashtext(tenant_id))``
and, in that one transaction, the caller reads the tenant's planned arrivals (:meth:`LedgerSession.state`),
decides, and records the grant (:meth:`LedgerSession.record`). Two processes deciding for one tenant are
therefore serialised, and each sees the other's grant. One row is one gateway attempt granted, at the
instant the message is planned to *reach the gateway's recipient* (decision + typing pause): counted
whatever the gateway answers; a grant that never reached the gateway (the claim was lost, nothing to
render) is given back (:meth:`SendLedger.release`). Rows older than the local day are no longer read;
:meth:`SendLedger.prune` deletes them.

**Safety margin.** The planned arrival is a little earlier than the real one (claim saved, text rendered,
HTTP call), by a delay that varies between processes and sends. So the per-minute window is widened by
:data:`THROTTLE_MARGIN` (1 real second): any spread of those latencies below the margin stays within the
limit as the gateway measures it. A process whose clock runs faster (``BILLING_CLOCK``, tests and demos
only) uses ``scale`` clock seconds (:func:`margin_for`).

**Gateway blocks.** A 401/403/404 from a tenant's gateway blocks sending for that tenant until its gateway
settings change: the row holds ``Tenant.gateway_generation`` at the time of the failure.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, time, timedelta
from typing import Any
from uuid import UUID

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from billing.domain.calendar import BusinessCalendar
from billing.domain.policy import MAX_PAUSE_S
from billing.domain.sending import ThrottleState
from billing.domain.throttle import WINDOW, ThrottleLimits

__all__ = ["LOCK_CLASS", "THROTTLE_MARGIN", "LedgerSession", "SendLedger", "margin_for"]

LOCK_CLASS = 0x62696C6C & 0x7FFFFFFF
"""First key of the two-key advisory lock (``'bill'``), so our locks never collide with other users'."""


THROTTLE_MARGIN = timedelta(seconds=1)
"""Real time added to the 60 s window of the per-minute rule (module docstring, "Safety margin")."""


def margin_for(clock: object) -> timedelta:
    """:data:`THROTTLE_MARGIN` in clock time: one real second at the clock's rate (a
    :class:`~billing.services.clock.ScaledClock` of ``BILLING_CLOCK`` runs ``scale`` clock seconds per real
    second; every other clock runs at 1)."""
    rate = float(getattr(clock, "scale", 1.0))
    if not rate > 0:
        raise ValueError(f"clock rate must be > 0, got {rate!r}")
    return THROTTLE_MARGIN * rate


class LedgerSession:
    """The tenant's ledger inside :meth:`SendLedger.locked_many` (its lock held)."""

    def __init__(self, cur: Any, tenant_id: UUID, window: timedelta) -> None:
        self._cur = cur
        self._tenant_id = tenant_id
        self.window = window

    def state(self, *, near: datetime, calendar: BusinessCalendar) -> ThrottleState:
        """The planned arrivals within ``2 × window`` (+ the longest pause) of ``near`` and the count of
        arrivals on the tenant's local day of ``near`` (:class:`~billing.domain.sending.ThrottleState`)."""
        reach = 2 * self.window + timedelta(seconds=MAX_PAUSE_S)
        day = calendar.local_date(near)
        day_start = calendar.local_datetime(day, time(0, 0))
        next_start = calendar.local_datetime(day + timedelta(days=1), time(0, 0))
        lo, hi = near - reach, near + reach
        row = self._cur.execute(  # one round trip for both facts
            "SELECT coalesce(array_agg(sent_at) FILTER (WHERE sent_at > %(lo)s AND sent_at < %(hi)s),"
            " '{}') AS near, count(*) FILTER (WHERE sent_at >= %(day)s AND sent_at < %(next)s) AS today "
            "FROM send_ledger WHERE tenant_id = %(tenant)s "
            "AND sent_at > least(%(lo)s, %(day)s - interval '1 microsecond') "
            "AND sent_at < greatest(%(hi)s, %(next)s)",
            {"tenant": self._tenant_id, "lo": lo, "hi": hi, "day": day_start, "next": next_start},
        ).fetchone()
        assert row is not None
        return ThrottleState(
            arrivals=tuple(row["near"]), arrivals_that_day=int(row["today"]), window=self.window
        )

    def record(self, *, arrival: datetime, contact_id: UUID) -> int:
        """Record one granted send planned to reach the gateway at ``arrival``; returns its row id."""
        row = self._cur.execute(
            "INSERT INTO send_ledger (tenant_id, sent_at, contact_id) VALUES (%s, %s, %s) RETURNING id",
            (self._tenant_id, arrival, contact_id),
        ).fetchone()
        assert row is not None
        return int(row["id"])


class SendLedger:
    """Per-tenant send accounting and gateway blocks in PostgreSQL.

    Args:
        pool: a sync psycopg pool with dict rows (the container's ``pool``).
        margin: clock time added to the per-minute window (default :data:`THROTTLE_MARGIN`, 1 s with the
            system clock; ``timedelta(0)`` gives the exact sliding window of
            :func:`~billing.domain.throttle.decide`).
    """

    def __init__(self, pool: ConnectionPool[Any], *, margin: timedelta | None = None) -> None:
        margin = THROTTLE_MARGIN if margin is None else margin
        if margin < timedelta(0):
            raise ValueError("margin must not be negative")
        self._pool = pool
        self.margin = margin

    @contextmanager
    def locked_many(self, tenant_ids: Iterable[UUID]) -> Iterator[dict[UUID, LedgerSession]]:
        """One transaction holding the advisory lock of each tenant: ``{tenant_id: session}``, in which the
        caller reads each tenant's throttle state, decides and records the grants.

        Two processes deciding for one tenant are serialised, and each sees the other's grants. The locks
        are taken in the order of the ids' text, the same in every process, so two processes locking
        overlapping sets wait for each other and never deadlock. Leaving the block commits (an exception
        rolls back: nothing recorded).

        Raises:
            psycopg.Error: the database failed.
        """
        ordered = sorted(set(tenant_ids), key=str)
        with (
            self._pool.connection() as conn,
            conn.transaction(),
            conn.cursor(row_factory=dict_row) as cur,
        ):
            for tenant_id in ordered:
                cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_CLASS, str(tenant_id)))
            window = WINDOW + self.margin
            yield {tenant_id: LedgerSession(cur, tenant_id, window) for tenant_id in ordered}

    def minute_room(self, tenant_id: UUID, limits: ThrottleLimits, now: datetime) -> int:
        """How many more sends the per-minute rule allows the tenant at ``now`` (its window widened by
        :attr:`margin`, as the locked decision counts it); never negative. Advisory (no lock): the scheduler
        uses it to republish no more due contacts than can go out, the locked decision still decides."""
        with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(
                "SELECT count(*) AS n FROM send_ledger WHERE tenant_id = %s AND sent_at > %s",
                (tenant_id, now - (WINDOW + self.margin)),
            ).fetchone()
        used = int(row["n"]) if row else 0
        return max(0, limits.messages_per_minute - used)

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
