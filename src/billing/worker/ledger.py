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

**Safety margin.** A row's ``sent_at`` is the instant of the *decision*; the message reaches the gateway a
little later (claim saved, text rendered, HTTP call), and that delay varies between processes and sends.
If the throttle allowed the next send at exactly "oldest + 60 s", a send decided at that boundary could
reach the gateway less than 60 s after the oldest one arrived there (the oldest one was slow, the new one
fast), and the gateway would see ``messages_per_minute + 1`` in 60 s of its own clock. So the adapter
counts the sends of the last ``60 s + margin`` and allows the next one only at
``oldest + 60 s + margin`` (:data:`THROTTLE_MARGIN`, 1 s): any spread of latencies below the margin
stays within the limit as the gateway measures it. The daily cap is unaffected. The cost is at most
``margin`` seconds of throughput per minute at full speed.

The latency is real time, so the margin is one *real* second: a process whose clock runs faster
(``BILLING_CLOCK``, tests and demos only) uses ``scale`` clock seconds (:func:`margin_for`, called by the
worker's handler with the container's clock).

**Stale instants.** The caller reads ``now`` before it gets the lock; meanwhile another process may have
recorded a grant with a later instant. A window ending at the stale ``now`` would not see that grant and
both would go out. So the decision is taken at ``max(now, latest grant of the tenant)`` and that instant
is recorded: the ledger stays ordered and every grant counts. (Grants more than 60 s after ``now`` are
ignored: only a clock moved back, as in tests, produces them.)

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
from billing.domain.throttle import (
    DAILY_LIMIT_REACHED,
    RATE_LIMITED,
    WINDOW,
    ThrottleDecision,
    ThrottleLimits,
    decide,
)

__all__ = ["LOCK_CLASS", "THROTTLE_MARGIN", "Grant", "SendLedger", "margin_for"]

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


@dataclass(frozen=True)
class Grant:
    """The answer of :meth:`SendLedger.acquire`.

    Attributes:
        decision: the throttle's decision (``allowed``, ``retry_at``, ``reason``).
        ledger_id: id of the ledger row recorded for an allowed send, else None.
        sent_in_window / sent_today: the tenant's sends counted in the per-minute window and on its local
            day before this decision (recorded in the claim's ``allowed_by`` for auditors).
    """

    decision: ThrottleDecision
    ledger_id: int | None = None
    sent_in_window: int = 0
    sent_today: int = 0

    @property
    def allowed(self) -> bool:
        """True when one send was granted (and recorded)."""
        return self.decision.allowed


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
        record it if so. The per-minute rule counts the last ``60 s +`` :attr:`margin`; a refusal's
        ``retry_at`` is the instant the widened window has room again.

        Args:
            now: aware instant from the worker's clock, read before the call (recorded as ``sent_at``;
                if another process already recorded a later grant for the tenant, that later instant is
                used for the decision and recorded instead).

        Raises:
            psycopg.Error: the database failed (nothing recorded).
        """
        window = WINDOW + self.margin
        with (
            self._pool.connection() as conn,
            conn.transaction(),
            conn.cursor(row_factory=dict_row) as cur,
        ):
            cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_CLASS, str(tenant_id)))
            recent = cur.execute(
                "SELECT sent_at FROM send_ledger WHERE tenant_id = %s AND sent_at > %s AND sent_at < %s",
                (tenant_id, now - window, now + WINDOW),
            ).fetchall()
            recent_sends = sorted(row["sent_at"] for row in recent)
            if recent_sends and recent_sends[-1] > now:
                now = recent_sends[-1]  # ``now`` went stale while we waited for the lock (docstring)
            day_start = calendar.local_datetime(calendar.local_date(now), time(0, 0))
            counted = cur.execute(
                "SELECT count(*) AS n FROM send_ledger "
                "WHERE tenant_id = %s AND sent_at >= %s AND sent_at <= %s",
                (tenant_id, day_start, now),
            ).fetchone()
            decision = decide(
                limits,
                now=now,
                recent_sends=recent_sends,
                sent_today=int(counted["n"]) if counted else 0,
                calendar=calendar,
            )
            excess = len(recent_sends) - limits.messages_per_minute
            if decision.reason != DAILY_LIMIT_REACHED and excess >= 0:
                # the widened window is full (decide() saw only its last 60 s): room again once the
                # (excess+1)-th oldest of these leaves it
                retry_at = (recent_sends[excess] + window).astimezone(calendar.tz)
                decision = ThrottleDecision(allowed=False, retry_at=retry_at, reason=RATE_LIMITED)
            if not decision.allowed:
                return Grant(decision)
            row = cur.execute(
                "INSERT INTO send_ledger (tenant_id, sent_at, contact_id) VALUES (%s, %s, %s) RETURNING id",
                (tenant_id, now, contact_id),
            ).fetchone()
        assert row is not None
        today = int(counted["n"]) if counted else 0
        return Grant(decision, ledger_id=int(row["id"]), sent_in_window=len(recent_sends), sent_today=today)

    def minute_room(self, tenant_id: UUID, limits: ThrottleLimits, now: datetime) -> int:
        """How many more sends the per-minute rule allows the tenant at ``now`` (its window widened by
        :attr:`margin`, as :meth:`acquire` counts it); never negative. Advisory (no lock): the scheduler
        uses it to republish no more due contacts than can go out, :meth:`acquire` still decides."""
        with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(
                "SELECT count(*) AS n FROM send_ledger "
                "WHERE tenant_id = %s AND sent_at > %s AND sent_at <= %s",
                (tenant_id, now - (WINDOW + self.margin), now),
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
