"""Scratch schemas: a private copy of the view tables that the very projection code writes into, for
``billing projections rebuild`` (replayed there, then swapped in) and ``--verify`` (replayed there, then
compared). A pool whose ``search_path`` puts the scratch schema first makes every unqualified table name
of the projection resolve to the copy; the event store's tables, absent from it, resolve to the live ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from billing.db import ViewsPool, open_pool
from billing.eventstore import EventStore
from billing.projections.tracking import load_position
from billing.projections.views import PROJECTION, apply_next_batch

__all__ = ["Progress", "drop_schema", "live_schema", "replay_upto", "scratch_pool"]

log = logging.getLogger(__name__)

Progress = Callable[[int, int, int], None]
"""``progress(handled, position, target)``: notifications replayed so far, the position reached and the
position to reach (the shape of :func:`billing.progress.replay_progress`)."""


def live_schema(conn: psycopg.Connection[Any]) -> str:
    """The schema the live views are in: the first of ``conn``'s ``search_path`` (usually ``public``)."""
    row: Any = conn.execute("SELECT current_schema() AS s").fetchone()
    return str(row["s"] if isinstance(row, dict) else row[0]) if row else "public"


def scratch_pool(database_url: str, schema: str, *, name: str) -> ViewsPool:
    """A pool of two connections on ``database_url`` whose ``search_path`` is ``schema, public``."""
    url = make_conninfo(database_url, options=f"-c search_path={schema},public")
    return open_pool(url, size=2, name=name)


def replay_upto(
    store: EventStore, pool: ViewsPool, upto: int, batch_size: int, progress: Progress | None
) -> int:
    """Apply ``store``'s log to the views of ``pool`` (a scratch pool) from their own position up to
    notification ``upto``, in batches of ``batch_size``; returns the notifications handled.

    Raises:
        psycopg.Error: the database is unreachable (transient errors were retried first).
    """
    position = load_position(pool, PROJECTION)
    handled = 0
    while position < upto:
        result = apply_next_batch(store, pool, position, batch_size, upto=upto)
        if result is None:
            break
        position, handled = result.position, handled + result.applied
        if progress is not None:
            progress(handled, position, upto)
    return handled


def drop_schema(pool: ViewsPool, schema: str) -> None:
    """``DROP SCHEMA … CASCADE`` of ``schema`` when it exists.

    Never raises: it runs in the callers' ``finally``, where the error that stopped them matters more. A
    failure (the database unreachable) is logged at error level with the statement to run by hand; the
    live views are not in the schema, so nothing else is affected.
    """
    statement = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
    try:
        with pool.connection() as conn:
            conn.execute(statement)
    except psycopg.Error as exc:
        log.error(
            "scratch schema %s was not dropped (%s); drop it by hand: DROP SCHEMA %s CASCADE",
            schema,
            exc,
            schema,
        )
