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
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from billing.db import ViewsPool
from billing.eventstore import EventStore
from billing.projections.follower import Backoff
from billing.projections.scratch import Progress, drop_schema, live_schema, replay_upto, scratch_pool
from billing.projections.tracking import load_position, lock_position
from billing.projections.views import PROJECTION, REBUILD_BATCH_SIZE, VIEW_TABLES

__all__ = [
    "REBUILD_BATCH_SIZE",
    "SWAP_ATTEMPTS",
    "SWAP_LOCK_TIMEOUT_MS",
    "RebuildRefused",
    "rebuild_projections",
]

log = logging.getLogger(__name__)

SWAP_LOCK_TIMEOUT_MS = 1_000
"""How long the swap waits for the views' locks (a long read of a live view) before it gives up and
retries; while it waits, new reads of the views queue behind it, so the wait is bounded (PostgreSQL's
``lock_timeout``)."""
SWAP_ATTEMPTS = 10
"""Tries of the swap before the rebuild fails (the live views are then untouched)."""
BUILDERS = 2
"""Connections vacuuming the copies and building their indexes at once."""


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
        RebuildRefused: a view table is published, has a trigger or a row-security policy, or another
            table's foreign key or a view depends on it; nothing is changed.
        RebuildRefused: also when the live tables changed shape during the rebuild (a migrate).
        psycopg.Error: the database is unreachable, or the swap could not lock the views within
            :data:`SWAP_LOCK_TIMEOUT_MS` (or met a deadlock) on each of :data:`SWAP_ATTEMPTS` tries. The
            live views are then untouched and the copies dropped.
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
        started = time.monotonic()
        handled = replay_upto(store, scratch, head, batch_size, progress)
        replayed = time.monotonic()
        _finish_copies(scratch, schema, deferred)
        log.info(
            "views replayed up to %d in %.1f s, indexed and analysed in %.1f s; swapping them in",
            head,
            replayed - started,
            time.monotonic() - replayed,
        )
        handled += _swap(store, pool, scratch, live, schema, batch_size, progress)
    finally:
        if scratch is not None:
            scratch.close()
        drop_schema(pool, schema)
    return handled


def _finish_copies(scratch: ViewsPool, schema: str, deferred: list[_Index]) -> None:
    """``VACUUM (ANALYZE)`` the copies (the planner's statistics and the visibility map before their first
    live query: PostgreSQL's manual, "Populating a Database") and build the ``deferred`` indexes, on
    :data:`BUILDERS` autocommit connections at once (``VACUUM`` cannot run in a transaction): each
    statement keeps one PostgreSQL process busy, and the replay, done, leaves the other core idle."""
    todo: deque[sql.Composed | sql.SQL] = deque(
        [
            *(
                sql.SQL("VACUUM (ANALYZE) {}.{}").format(sql.Identifier(schema), sql.Identifier(t))
                for t in VIEW_TABLES
            ),
            *(sql.SQL(index.statement) for index in deferred),
        ]
    )
    conninfo = scratch.conninfo() if callable(scratch.conninfo) else scratch.conninfo

    def build() -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            while todo:
                try:
                    statement = todo.popleft()  # atomic: each statement runs once
                except IndexError:
                    return
                conn.execute(statement)

    with ThreadPoolExecutor(max_workers=BUILDERS, thread_name_prefix="rebuild-index") as builders:
        for builder in [builders.submit(build) for _ in range(BUILDERS)]:
            builder.result()


def _create_copies(conn: psycopg.Connection[Any], live: str, schema: str) -> list[_Index]:
    """Create ``schema`` with an empty copy of each view table of ``live`` (columns, defaults, checks,
    primary key, unique constraints and indexes, grants, storage parameters, comment, owner, column
    settings) and of ``tracking``/``projection_errors``; returns the other indexes, to build after the
    replay.

    Raises:
        RebuildRefused: a view table has something a swap would lose (nothing is created).
    """
    _refuse_what_a_swap_would_lose(conn, live)
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    deferred: list[_Index] = []
    for table in VIEW_TABLES:
        source = sql.SQL("{}.{}").format(sql.Identifier(live), sql.Identifier(table))
        target = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        like = sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL EXCLUDING INDEXES)")
        conn.execute(like.format(target, source))
        qualified = _regclass(live, table)
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
        _copy_settings(conn, qualified, target)
    for table in ("tracking", "projection_errors"):
        conn.execute(
            sql.SQL("CREATE TABLE {}.{} (LIKE {}.{} INCLUDING ALL)").format(
                sql.Identifier(schema), sql.Identifier(table), sql.Identifier(live), sql.Identifier(table)
            )
        )
    return deferred


def _regclass(schema: str, table: str) -> str:
    """``"schema"."table"``, as ``::regclass`` reads it whatever the names' case or characters."""
    return ".".join('"' + name.replace('"', '""') + '"' for name in (schema, table))


def _retarget(definition: str, shown: str, schema: str, table: str) -> str:
    """``pg_get_indexdef``'s ``CREATE INDEX name ON live.table USING …`` made to create the same index on
    ``schema.table``."""
    marker = f" ON {shown} USING "
    if definition.count(marker) != 1:
        raise RuntimeError(f"unexpected index definition, not rebuilt: {definition}")
    target = f" ON {schema}.{table} USING "  # both names are plain identifiers (VIEW_TABLES, a hex suffix)
    return definition.replace(marker, target)


def _copy_grants(conn: psycopg.Connection[Any], qualified: str, target: sql.Composable) -> None:
    """Grant on ``target`` what is granted on ``qualified`` (table and column privileges, grant options
    included) to roles other than its owner."""
    for row in conn.execute(
        """SELECT a.privilege_type AS privilege, NULL::name AS column_name, a.is_grantable,
                  CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END AS grantee
           FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
           LEFT JOIN pg_roles r ON r.oid = a.grantee
           WHERE c.oid = %s::regclass AND a.grantee <> c.relowner
           UNION ALL
           SELECT a.privilege_type, t.attname, a.is_grantable,
                  CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END
           FROM pg_attribute t JOIN pg_class c ON c.oid = t.attrelid
           CROSS JOIN LATERAL aclexplode(t.attacl) a
           LEFT JOIN pg_roles r ON r.oid = a.grantee
           WHERE t.attrelid = %s::regclass AND t.attnum > 0 AND NOT t.attisdropped
             AND a.grantee <> c.relowner""",
        (qualified, qualified),
    ).fetchall():
        columns = (
            sql.SQL(" ({})").format(sql.Identifier(row["column_name"])) if row["column_name"] else sql.SQL("")
        )
        conn.execute(
            sql.SQL("GRANT {}{} ON {} TO {}{}").format(
                sql.SQL(row["privilege"]),
                columns,
                target,
                sql.SQL(row["grantee"]),
                sql.SQL(" WITH GRANT OPTION" if row["is_grantable"] else ""),
            )
        )


def _copy_settings(conn: psycopg.Connection[Any], qualified: str, target: sql.Composable) -> None:
    """Give ``target`` the storage parameters (its own and its TOAST table's), comment, owner and column
    settings (statistics targets, ``n_distinct``) of ``qualified``, which ``LIKE`` does not copy."""
    row: Any = conn.execute(
        """SELECT c.reloptions, t.reloptions AS toast, obj_description(c.oid, 'pg_class') AS comment,
                  quote_ident(pg_get_userbyid(c.relowner)) AS owner, c.relowner = (
                      SELECT oid FROM pg_roles WHERE rolname = current_user) AS mine
           FROM pg_class c LEFT JOIN pg_class t ON t.oid = c.reltoastrelid WHERE c.oid = %s::regclass""",
        (qualified,),
    ).fetchone()
    options = [*(row["reloptions"] or ()), *(f"toast.{o}" for o in row["toast"] or ())]
    if options:  # name=value pairs as the catalog holds them
        conn.execute(sql.SQL("ALTER TABLE {} SET ({})").format(target, sql.SQL(", ".join(options))))
    if row["comment"] is not None:
        conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(target, sql.Literal(row["comment"])))
    if not row["mine"]:
        conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(target, sql.SQL(row["owner"])))
    for column in conn.execute(
        """SELECT attname, attstattarget,
                  (SELECT array_agg(o) FROM unnest(attoptions) o WHERE o LIKE 'n\\_distinct%%') AS attoptions
           FROM pg_attribute
           WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped
             AND (attstattarget >= 0 OR attoptions IS NOT NULL)""",
        (qualified,),
    ).fetchall():
        name = sql.Identifier(column["attname"])
        if column["attstattarget"] is not None and column["attstattarget"] >= 0:
            conn.execute(
                sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET STATISTICS {}").format(
                    target, name, sql.Literal(column["attstattarget"])
                )
            )
        if column["attoptions"]:
            conn.execute(
                sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET ({})").format(
                    target, name, sql.SQL(", ".join(column["attoptions"]))
                )
            )


class RebuildRefused(RuntimeError):
    """The live view tables have something a swap would not carry over (each named in the message):
    nothing was changed."""


def _refuse_what_a_swap_would_lose(conn: psycopg.Connection[Any], live: str) -> None:
    """Raise :class:`RebuildRefused` when a view table of ``live`` is published for logical replication
    (its subscribers would keep the old rows), has a trigger or a row-security policy (``LIKE`` copies
    neither), has a column drawn from a sequence (``serial``: the copy would draw from the live table's
    sequence, which its ``DROP`` takes along), or is the target of a foreign key or under a view (the
    swap's ``DROP TABLE`` would fail, after the whole replay)."""
    tables = [_regclass(live, t) for t in VIEW_TABLES]
    found = conn.execute(
        """WITH v(oid) AS (SELECT unnest(%s::text[])::regclass::oid)
           SELECT c.relname AS table_name, 'is published by ' || p.pubname AS problem
             FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
             JOIN pg_class c ON c.oid = r.prrelid
             WHERE r.prrelid IN (SELECT oid FROM v)
           UNION ALL SELECT '*', 'publication ' || pubname || ' publishes all tables'
             FROM pg_publication WHERE puballtables
           UNION ALL SELECT c.relname, 'has trigger ' || t.tgname
             FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
             WHERE NOT t.tgisinternal AND t.tgrelid IN (SELECT oid FROM v)
           UNION ALL SELECT c.relname, 'has column ' || a.attname || ' drawn from a sequence'
             FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
             JOIN pg_class c ON c.oid = d.adrelid
             WHERE d.adrelid IN (SELECT oid FROM v) AND pg_get_expr(d.adbin, d.adrelid) LIKE 'nextval(%%'
           UNION ALL SELECT c.relname, 'has row security policy ' || p.polname
             FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid WHERE p.polrelid IN (SELECT oid FROM v)
           UNION ALL SELECT c.relname,
                            'is referenced by foreign key ' || k.conname || ' of ' || k.conrelid::regclass
             FROM pg_constraint k JOIN pg_class c ON c.oid = k.confrelid
             WHERE k.contype = 'f' AND k.confrelid IN (SELECT oid FROM v)
           UNION ALL SELECT DISTINCT c.relname, 'is read by view ' || w.ev_class::regclass
             FROM pg_depend d JOIN pg_rewrite w ON w.oid = d.objid JOIN pg_class c ON c.oid = d.refobjid
             WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid IN (SELECT oid FROM v)
               AND w.ev_class <> d.refobjid
           ORDER BY 1, 2""",
        (tables,),
    ).fetchall()
    if found:
        problems = "; ".join(f"{r['table_name']} {r['problem']}" for r in found)
        raise RebuildRefused(
            f"not rebuilt, nothing changed: a swap would lose or trip over this: {problems}. Remove it, "
            "rebuild, then add it back"
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
    """Replay into the copies what the log got since; then, in one transaction: lock the live tracking
    record and every live view table at once, replay the last few events, check that the live tables
    still have the copies' shape, replace them with the copies, this projection's errors with the
    replay's, and move its position to the copies'. Returns the notifications replayed here. Retries on a
    lock timeout or a deadlock (the copies keep what they replayed).

    Raises:
        RebuildRefused: the live tables changed shape during the rebuild (a ``billing migrate``).
        psycopg.errors.LockNotAvailable / DeadlockDetected: still so on the last of :data:`SWAP_ATTEMPTS`.
    """
    started = time.monotonic()
    handled = replay_upto(store, scratch, store.recorder.max_notification_id() or 0, batch_size, progress)
    tables = sql.SQL(", ").join(
        sql.SQL("{}.{}").format(sql.Identifier(live), sql.Identifier(t)) for t in VIEW_TABLES
    )
    backoff = Backoff(0.2, 2.0)
    for attempt in range(1, SWAP_ATTEMPTS + 1):
        try:
            with pool.connection() as conn, conn.transaction():
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(SWAP_LOCK_TIMEOUT_MS)))
                # idle while the catch-up runs on the scratch pool: if this process vanishes, the server
                # ends the transaction (and the live projection's wait) instead of TCP keepalive
                conn.execute("SET LOCAL idle_in_transaction_session_timeout = '60s'")
                lock_position(conn, PROJECTION)  # the live projection waits from here to the commit
                # all at once, before any DROP: readers wait at most the lock timeout, and a reader that
                # takes two views in another order ends in a deadlock that is retried, not a lost rebuild
                conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(tables))
                head = store.recorder.max_notification_id() or 0
                handled += replay_upto(store, scratch, head, batch_size, progress)
                position = load_position(scratch, PROJECTION)
                _check_same_shape(conn, live, schema)
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
            log.info(
                "projections rebuilt up to %d and swapped in (catch-up and swap %.2f s, %d attempt(s))",
                position,
                time.monotonic() - started,
                attempt,
            )
            return handled
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as exc:
            if attempt == SWAP_ATTEMPTS:
                raise
            delay = backoff.next()
            log.warning(
                "swap %d of %d could not lock the views (%s); retrying in %.1f s",
                attempt,
                SWAP_ATTEMPTS,
                type(exc).__name__,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def _check_same_shape(conn: psycopg.Connection[Any], live: str, schema: str) -> None:
    """Raise :class:`RebuildRefused` unless every live view table still has the columns (name, type,
    nullability, default, statistics target) and index names of its copy: a ``billing migrate`` during
    the rebuild would otherwise be undone by the swap."""
    changed = conn.execute(
        """WITH shape AS (
               SELECT n.nspname AS schema_name, c.relname AS table_name,
                      coalesce((SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                                       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
                                       || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
                                       || ' statistics ' || coalesce(a.attstattarget, -1),
                                       ', ' ORDER BY a.attnum)
                                FROM pg_attribute a
                                LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                                WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
                               '') AS columns,
                      coalesce((SELECT string_agg(i.relname, ', ' ORDER BY i.relname) FROM pg_index x
                                JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = c.oid),
                               '') AS indexes
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname IN (%s, %s) AND c.relname = ANY(%s) AND c.relkind = 'r')
           SELECT l.table_name FROM shape l JOIN shape r ON r.table_name = l.table_name
           WHERE l.schema_name = %s AND r.schema_name = %s
             AND (l.columns, l.indexes) IS DISTINCT FROM (r.columns, r.indexes)
           ORDER BY 1""",
        (live, schema, list(VIEW_TABLES), live, schema),
    ).fetchall()
    if changed:
        names = ", ".join(r["table_name"] for r in changed)
        raise RebuildRefused(
            f"not rebuilt, nothing changed: the live views changed shape during the rebuild ({names}; a "
            "`billing migrate`?); run the rebuild again"
        )
