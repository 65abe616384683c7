"""Positions of the notification-log followers (table ``tracking``) and their error records.

A follower's position is the id of the last notification it handled (0 before the first). The
projections write it in the same transaction as the views (promise 6); the outbox relay writes it only
after the broker confirmed the batch (promise 2). ``projection_errors`` keeps the notifications a
follower could not handle and moved past (see :mod:`billing.projections.views`).
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from eventsourcing.persistence import Notification

from billing.db import ViewsPool

log = logging.getLogger(__name__)

MAX_ERROR_TEXT = 2000  # characters of an error kept in projection_errors


def load_position(pool: ViewsPool, name: str) -> int:
    """The recorded position of follower ``name`` (0 when it has none). Raises ``psycopg.Error``."""
    with pool.connection() as conn:
        row: Any = conn.execute("SELECT position FROM tracking WHERE name = %s", (name,)).fetchone()
    return int(row["position"]) if row else 0


def lock_position(conn: psycopg.Connection[Any], name: str) -> int:
    """Create follower ``name``'s tracking row if missing, lock it (``FOR UPDATE``) and return its position.

    Must run inside the caller's transaction: the lock is held until it ends, so two processes applying
    the same batch are serialised and the second sees the first one's position.
    """
    conn.execute(
        "INSERT INTO tracking (name, position) VALUES (%s, 0) ON CONFLICT (name) DO NOTHING", (name,)
    )
    row: Any = conn.execute("SELECT position FROM tracking WHERE name = %s FOR UPDATE", (name,)).fetchone()
    assert row is not None
    return int(row["position"] if isinstance(row, dict) else row[0])


def save_position(conn: psycopg.Connection[Any], name: str, position: int) -> int:
    """Move follower ``name``'s position forward to ``position`` (never backwards); returns the new one."""
    row: Any = conn.execute(
        """INSERT INTO tracking (name, position) VALUES (%s, %s)
           ON CONFLICT (name) DO UPDATE
           SET position = GREATEST(tracking.position, EXCLUDED.position), updated_at = now()
           RETURNING position""",
        (name, position),
    ).fetchone()
    assert row is not None
    return int(row["position"] if isinstance(row, dict) else row[0])


def describe_error(exc: BaseException) -> str:
    """``"<ExceptionClass>: <message>"``, cut to :data:`MAX_ERROR_TEXT` characters."""
    return f"{type(exc).__name__}: {exc}"[:MAX_ERROR_TEXT]


def record_error(
    conn: psycopg.Connection[Any], follower: str, notification: Notification, exc: BaseException
) -> None:
    """Insert a ``projection_errors`` row for ``notification`` and log it at error level.

    The log line carries the follower, notification id, topic and error class/message, never the
    event's state (it may hold personal data).
    """
    text = describe_error(exc)
    conn.execute(
        "INSERT INTO projection_errors (projection, notification_id, topic, error) VALUES (%s, %s, %s, %s)",
        (follower, notification.id, notification.topic, text),
    )
    log.error("%s skipped notification %d (%s): %s", follower, notification.id, notification.topic, text)
