"""The check a connection pool runs before it lends a PostgreSQL connection, without a round trip for a
connection in steady use.

psycopg_pool's ``ConnectionPool.check_connection`` sends an empty query on every lend: one round trip per
read or save, a few percent of the worker's CPU. :class:`ConnectionCheck` instead:

- refuses a connection psycopg already knows is closed or broken;
- polls its socket (no round trip): a server that ended the session (``pg_terminate_backend``, a restart,
  a shutdown) first sends its FATAL error and closes, so the socket is readable — then, and for anything
  else unexpected waiting on an idle connection, the full check runs (it fails on a dead one, and the pool
  replaces it);
- runs the full check anyway when the connection was last lent more than ``recheck_s`` ago (a connection
  that sat idle a while is pinged as before).

What it does not see, as the full check did not either: a session that dies between the check and the
first query (the read then fails; reads are retried, ``billing.db.read_retrying``).

:class:`AsyncConnectionCheck` is the same check for an ``AsyncConnectionPool``.
"""

from __future__ import annotations

import select
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

__all__ = ["RECHECK_S", "AsyncConnectionCheck", "ConnectionCheck"]

RECHECK_S = 5.0
"""A connection not lent for this many seconds gets the full check (one round trip) before its next lend."""
_LENT_AT = "_billing_lent_at"


class ConnectionCheck:
    """A pool's ``check=`` callback (see the module docstring).

    Args:
        recheck_s: seconds since a connection's last lend after which it gets the full check.
        clock: monotonic seconds (tests pass their own).
        full: the full check (default ``ConnectionPool.check_connection``: an empty query).
    """

    def __init__(
        self,
        *,
        recheck_s: float = RECHECK_S,
        clock: Callable[[], float] = time.monotonic,
        full: Callable[[Any], None] = ConnectionPool.check_connection,
    ) -> None:
        self.recheck_s = recheck_s
        self._clock = clock
        self._full = full
        self.full_checks = 0
        """Full checks run (round trips) so far."""
        self.quick_checks = 0
        """Lends that needed no round trip so far."""

    def __call__(self, conn: Any) -> None:
        """Return quietly when ``conn`` may be lent; raise when it must be replaced.

        Raises:
            psycopg.OperationalError: the connection is closed, broken or failed the full check.
        """
        if self._needs_full(conn):
            self._full(conn)

    def _needs_full(self, conn: Any) -> bool:
        """False when ``conn`` may be lent without a round trip (counted); raises when it is closed."""
        if conn.closed or conn.broken:
            raise psycopg.OperationalError("the connection is closed")
        now = self._clock()
        last = getattr(conn, _LENT_AT, None)
        setattr(conn, _LENT_AT, now)
        if last is not None and now - last <= self.recheck_s and not _readable(conn):
            self.quick_checks += 1
            return False
        self.full_checks += 1
        return True


class AsyncConnectionCheck(ConnectionCheck):
    """:class:`ConnectionCheck` as an ``AsyncConnectionPool``'s ``check=`` callback (a coroutine); the
    full check defaults to ``AsyncConnectionPool.check_connection``."""

    def __init__(
        self,
        *,
        recheck_s: float = RECHECK_S,
        clock: Callable[[], float] = time.monotonic,
        full: Callable[[Any], Awaitable[None]] = AsyncConnectionPool.check_connection,
    ) -> None:
        super().__init__(recheck_s=recheck_s, clock=clock)
        self._full_async = full

    async def __call__(self, conn: Any) -> None:  # type: ignore[override]
        """Return quietly when ``conn`` may be lent; raise when it must be replaced.

        Raises:
            psycopg.OperationalError: the connection is closed, broken or failed the full check.
        """
        if self._needs_full(conn):
            await self._full_async(conn)


def _readable(conn: Any) -> bool:
    """Something (an error, the end of the stream) waits on the idle connection's socket, or the socket
    cannot be polled."""
    try:
        fd = conn.pgconn.socket
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    except Exception:
        return True
