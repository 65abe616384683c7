"""Last use of each API key (the dashboard's "último uso"): an operational table, not a domain event —
a key is used on every request, and its last use decides nothing."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from uuid import UUID

from billing.db import ViewsPool

WRITE_EVERY_S = 60.0
"""A process writes a key's last use at most this often (seconds): the page shows it to the minute."""


class KeyUsage:
    """Records when keys were used, writing ``api_key_usage`` at most once a minute per key."""

    def __init__(self, pool: ViewsPool, *, every_s: float = WRITE_EVERY_S) -> None:
        self.pool = pool
        self.every_s = every_s
        self._written: dict[UUID, float] = {}
        self._lock = threading.Lock()

    def due(self, key_id: UUID) -> bool:
        """True when this process has not written the key's use in the last ``every_s`` seconds (and
        claims the write)."""
        now = time.monotonic()
        with self._lock:
            last = self._written.get(key_id)
            if last is not None and now - last < self.every_s:
                return False
            if len(self._written) > 100_000:
                self._written.clear()
            self._written[key_id] = now
            return True

    def touch(self, key_id: UUID, at: datetime) -> None:
        """Store ``at`` (aware) as the key's last use (never moves it back)."""
        with self.pool.connection() as conn:
            conn.execute(
                "INSERT INTO api_key_usage (key_id, last_used) VALUES (%s, %s) ON CONFLICT (key_id) "
                "DO UPDATE SET last_used = GREATEST(api_key_usage.last_used, EXCLUDED.last_used)",
                (key_id, at),
            )
