"""``billing projections rebuild``: every view replayed from the event log into a scratch schema, then
swapped in for the live views in one transaction (docs/architecture.md, "Rebuilding the views").

The live views keep answering, complete and current (the live projection goes on), until the swap. The
copies get their primary keys and unique indexes first (the writers' upserts need them) and their other
indexes after the bulk of the replay: building an index once over the loaded rows costs far less than
maintaining it row by row (PostgreSQL's manual, "Populating a Database": "it is faster to create the
index after loading the data"). The swap locks the live projection's tracking record, replays what came
meanwhile, drops the live tables and moves the copies in, their names, indexes, constraints and grants
as before.
"""

from __future__ import annotations

import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from billing.db import ViewsPool
from billing.eventstore import EventStore
from billing.projections.scratch import Progress, drop_schema, live_schema, replay_upto, scratch_pool
from billing.projections.tracking import load_position, lock_position
from billing.projections.views import PROJECTION, REBUILD_BATCH_SIZE, VIEW_TABLES

__all__ = ["REBUILD_BATCH_SIZE", "SWAP_ATTEMPTS", "SWAP_LOCK_TIMEOUT_MS", "rebuild_projections"]

log = logging.getLogger(__name__)

SWAP_LOCK_TIMEOUT_MS = 5_000
"""How long the swap waits for a table lock (a long read of a live view) before it gives up and retries;
while it waits, new reads of that table queue behind it, so the wait is bounded (PostgreSQL's
``lock_timeout``)."""
SWAP_ATTEMPTS = 5
"""Tries of the swap before the rebuild fails (the live views are then untouched)."""
BUILDERS = 2
"""Connections building the copies' indexes at once (the scratch pool's size)."""


@dataclass(frozen=True)
class _Index:
    """One index of a live view table: its name and its ``CREATE INDEX`` statement for the copy."""

    name: str
    statement: str


def rebuild_projections(
    store: EventStore,
    pool: ViewsPool,
    *,
    batch_size: int = REBUILD_BATCH_SIZE,
    progress: Progress | None = None,
) -> int:
    """Replay ``store``'s whole log into fresh copies of the views of ``pool`` and swap them in (module
    docstring), reporting ``progress(handled, position, head)`` after each batch of ``batch_size``
    notifications (one transaction each, large: each batch recomputes the counters of the queues it
    touches once, and writes its contacts with ``COPY``).

    Returns the number of notifications replayed, the ones that arrived during the rebuild included. The
    views get this projection's errors of the replay (``projection_errors``) and its position; the
    relay's position is untouched. Safe while ``billing projections`` runs: it goes on with the live views
    and, after the swap, from the rebuild's position. Two rebuilds at once each give complete views.

    Raises:
        psycopg.Error: the database is unreachable, or the swap found a table lock held for longer than
            :data:`SWAP_LOCK_TIMEOUT_MS` on each of :data:`SWAP_ATTEMPTS` tries. The live views are then
            untouched and the copies dropped.
    """
    schema = f"billing_rebuild_{uuid.uuid4().hex[:10]}"
    with pool.connection() as conn, conn.transaction():
        live = live_schema(conn)
        deferred = _create_copies(conn, live, schema)
    log.info("replaying the notification log into %s; the live views keep answering until the swap", schema)
    conninfo = pool.conninfo() if callable(pool.conninfo) else pool.conninfo
    scratch: ViewsPool | None = None
    try:
        scratch = scratch_pool(conninfo, schema, name="rebuild")
        head = store.recorder.max_notification_id() or 0
        handled = replay_upto(store, scratch, head, batch_size, progress)
        _finish_copies(scratch, schema, deferred)
        log.info("views replayed up to %d and indexed; swapping them in", head)
        handled += _swap(store, pool, scratch, live, schema, batch_size, progress)
    finally:
        if scratch is not None:
            scratch.close()
        drop_schema(pool, schema)
    return handled


def _finish_copies(scratch: ViewsPool, schema: str, deferred: list[_Index]) -> None:
    """Build the ``deferred`` indexes and ``ANALYZE`` the copies (the planner's statistics, before their
    first live query), on :data:`BUILDERS` connections at once: each statement keeps one PostgreSQL
    process busy, and the replay, done, leaves the other core idle."""
    statements = [
        *(sql.SQL("ANALYZE {}.{}").format(sql.Identifier(schema), sql.Identifier(t)) for t in VIEW_TABLES),
        *(sql.SQL(index.statement) for index in deferred),
    ]

    def run(statement: sql.Composed | sql.SQL) -> None:
        with scratch.connection() as conn:  # committed when given back
            conn.execute(statement)

    with ThreadPoolExecutor(max_workers=BUILDERS, thread_name_prefix="rebuild-index") as builders:
        for done in builders.map(run, statements):
            assert done is None


def _create_copies(conn: psycopg.Connection[Any], live: str, schema: str) -> list[_Index]:
    """Create ``schema`` with an empty copy of each view table of ``live`` (columns, defaults, checks,
    primary key, unique constraints and indexes, grants) and of ``tracking``/``projection_errors``; returns
    the other indexes, to build after the replay."""
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    deferred: list[_Index] = []
    for table in VIEW_TABLES:
        source = sql.SQL("{}.{}").format(sql.Identifier(live), sql.Identifier(table))
        target = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        like = sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL EXCLUDING INDEXES)")
        conn.execute(like.format(target, source))
        qualified = f"{live}.{table}"
        for row in conn.execute(
            """SELECT conname AS name, pg_get_constraintdef(oid) AS definition FROM pg_constraint
               WHERE conrelid = %s::regclass AND contype IN ('p', 'u', 'x') ORDER BY conname""",
            (qualified,),
        ).fetchall():
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                    target, sql.Identifier(row["name"]), sql.SQL(row["definition"])
                )
            )
        for row in conn.execute(
            """SELECT c.relname AS name, pg_get_indexdef(i.indexrelid) AS definition,
                      i.indisunique AS is_unique, quote_ident(%s) || '.' || quote_ident(%s) AS shown
               FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
               WHERE i.indrelid = %s::regclass
                 AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
               ORDER BY c.relname""",
            (live, table, qualified),
        ).fetchall():
            index = _Index(row["name"], _retarget(row["definition"], row["shown"], schema, table))
            if row["is_unique"]:  # an upsert's arbiter: needed from the first write
                conn.execute(index.statement)
            else:
                deferred.append(index)
        _copy_grants(conn, qualified, target)
    for table in ("tracking", "projection_errors"):
        conn.execute(
            sql.SQL("CREATE TABLE {}.{} (LIKE {}.{} INCLUDING ALL)").format(
                sql.Identifier(schema), sql.Identifier(table), sql.Identifier(live), sql.Identifier(table)
            )
        )
    return deferred


def _retarget(definition: str, shown: str, schema: str, table: str) -> str:
    """``pg_get_indexdef``'s ``CREATE INDEX name ON live.table USING …`` made to create the same index on
    ``schema.table``."""
    marker = f" ON {shown} USING "
    if definition.count(marker) != 1:
        raise RuntimeError(f"unexpected index definition, not rebuilt: {definition}")
    target = f" ON {schema}.{table} USING "  # both names are plain identifiers (VIEW_TABLES, a hex suffix)
    return definition.replace(marker, target)


def _copy_grants(conn: psycopg.Connection[Any], qualified: str, target: sql.Composable) -> None:
    """Grant on ``target`` what is granted on ``qualified`` to roles other than its owner."""
    for row in conn.execute(
        """SELECT a.privilege_type AS privilege,
                  CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END AS grantee
           FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
           LEFT JOIN pg_roles r ON r.oid = a.grantee
           WHERE c.oid = %s::regclass AND a.grantee <> c.relowner""",
        (qualified,),
    ).fetchall():
        conn.execute(
            sql.SQL("GRANT {} ON {} TO {}").format(sql.SQL(row["privilege"]), target, sql.SQL(row["grantee"]))
        )


def _swap(
    store: EventStore,
    pool: ViewsPool,
    scratch: ViewsPool,
    live: str,
    schema: str,
    batch_size: int,
    progress: Progress | None,
) -> int:
    """Under the live tracking record's lock: replay into the copies what the log got since, replace the
    live tables with them, this projection's errors with the replay's, and move its position to the
    copies'. Returns the notifications replayed here. Retries on a lock timeout (the copies keep what
    they replayed)."""
    handled = 0
    for attempt in range(1, SWAP_ATTEMPTS + 1):
        try:
            with pool.connection() as conn, conn.transaction():
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(SWAP_LOCK_TIMEOUT_MS)))
                lock_position(conn, PROJECTION)  # the live projection waits from here to the commit
                head = store.recorder.max_notification_id() or 0
                handled += replay_upto(store, scratch, head, batch_size, progress)
                position = load_position(scratch, PROJECTION)
                for table in map(sql.Identifier, VIEW_TABLES):
                    conn.execute(sql.SQL("DROP TABLE {}.{}").format(sql.Identifier(live), table))
                    conn.execute(
                        sql.SQL("ALTER TABLE {}.{} SET SCHEMA {}").format(
                            sql.Identifier(schema), table, sql.Identifier(live)
                        )
                    )
                errors = sql.SQL("{}.projection_errors").format(sql.Identifier(live))
                conn.execute(sql.SQL("DELETE FROM {} WHERE projection = %s").format(errors), (PROJECTION,))
                conn.execute(
                    sql.SQL(
                        """INSERT INTO {} (projection, notification_id, topic, error, recorded_at)
                           SELECT projection, notification_id, topic, error, recorded_at
                           FROM {}.projection_errors WHERE projection = %s ORDER BY id"""
                    ).format(errors, sql.Identifier(schema)),
                    (PROJECTION,),
                )
                moved = sql.SQL("UPDATE {}.tracking SET position = %s, updated_at = now() WHERE name = %s")
                conn.execute(moved.format(sql.Identifier(live)), (position, PROJECTION))
            log.info("projections rebuilt up to %d and swapped in", position)
            return handled
        except psycopg.errors.LockNotAvailable:
            if attempt == SWAP_ATTEMPTS:
                raise
            log.warning("swap %d of %d waited too long for a view's lock; retrying", attempt, SWAP_ATTEMPTS)
    raise AssertionError("unreachable")
