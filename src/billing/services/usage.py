"""Last use of each API key (the dashboard's "último uso"): an operational table, not a domain event —
a key is used on every request, and its last use decides nothing."""

from __future__ import annotations

import threading
from datetime import datetime
from uuid import UUID

from billing.db import ViewsPool

FLUSH_EVERY_S = 10.0
"""How often the API process writes the last uses it noted (seconds): the page shows them to the minute."""

_UPSERT = (
    "INSERT INTO api_key_usage (key_id, last_used) "
    "SELECT * FROM unnest(%s::uuid[], %s::timestamptz[]) "
    "ON CONFLICT (key_id) DO UPDATE SET last_used = GREATEST(api_key_usage.last_used, EXCLUDED.last_used)"
)


class KeyUsage:
    """Notes when keys were used, in memory, and writes them to ``api_key_usage`` in one statement per
    :meth:`flush` (write-behind: a request never waits for this write nor hops to a thread for it).

    The API process flushes every :data:`FLUSH_EVERY_S` seconds and once more when it stops
    (:func:`billing.webapp.create_app`), so a last use reaches the table within that interval; one that a
    crashed process had not flushed yet is lost (the next use sets it again). Thread-safe.
    """

    def __init__(self, pool: ViewsPool) -> None:
        self.pool = pool
        self._pending: dict[UUID, datetime] = {}
        self._lock = threading.Lock()

    def record(self, key_id: UUID, at: datetime) -> None:
        """Note that ``key_id`` was used at ``at`` (aware). No I/O; memory is one entry per key used
        since the last flush (authenticated keys only: the caller records after the key check)."""
        with self._lock:
            last = self._pending.get(key_id)
            if last is None or at > last:
                self._pending[key_id] = at

    def pending(self) -> int:
        """How many keys have a use not written yet."""
        with self._lock:
            return len(self._pending)

    def flush(self) -> int:
        """Write every noted use (never moving a stored one back) in one statement; returns how many keys
        were written. Synchronous: run it in a thread from async code.

        Raises:
            psycopg.Error: the write failed; the uses stay noted for the next flush (newer ones kept).
        """
        with self._lock:
            batch, self._pending = self._pending, {}
        if not batch:
            return 0
        keys = sorted(batch)  # every process locks the rows in one order: two flushes never deadlock
        try:
            with self.pool.connection() as conn:
                conn.execute(_UPSERT, (keys, [batch[k] for k in keys]))
        except BaseException:
            for key_id, at in batch.items():
                self.record(key_id, at)
            raise
        return len(batch)
