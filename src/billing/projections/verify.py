"""Replay you can verify (``billing projections rebuild --verify``) and the followers' status
(``billing projections status``).

**Verify.** The views are rebuilt from the events into a scratch schema and compared with the live ones
row by row, without touching them. The scratch schema gets empty copies of the view tables and of
``tracking``/``projection_errors`` (``CREATE TABLE … (LIKE … INCLUDING ALL)``); a pool whose
``search_path`` puts it first runs the very projection code (:func:`~billing.projections.views.apply_batch`)
up to the live projection's position ``P``. The comparison then runs in one REPEATABLE READ snapshot of the
live views: if the live position moved past ``P`` meanwhile, the scratch copy is brought to the new
position and compared again (a few rounds; stop the projections process for a quiet comparison). Rows are
matched by primary key; a row missing on one side, or whose values differ (as JSON), is a difference. The
scratch schema is dropped afterwards.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from billing.db import ViewsPool
from billing.eventstore import EventStore
from billing.projections.follower import DEFAULT_BATCH_SIZE
from billing.projections.scratch import Progress, drop_schema, live_schema, replay_upto, scratch_pool
from billing.projections.tracking import load_position
from billing.projections.views import PROJECTION, REBUILD_BATCH_SIZE, VIEW_TABLES

__all__ = [
    "REBUILD_BATCH_SIZE",
    "Difference",
    "FollowerStatus",
    "VerifyResult",
    "follower_status",
    "verify_projections",
]

ROUNDS = 5
"""Times the comparison is retried while the live projection keeps moving."""


@dataclass(frozen=True)
class Difference:
    """One row that differs. ``live``/``rebuilt`` are the rows as JSON objects (None: absent there);
    ``columns`` names the columns whose values differ (all of them when a side is absent)."""

    table: str
    key: str
    live: dict[str, Any] | None
    rebuilt: dict[str, Any] | None
    columns: tuple[str, ...]

    def describe(self) -> str:
        """One human line: table, key and the differing values."""
        if self.live is None:
            return f"{self.table} {self.key}: missing from the live views (the rebuild has it)"
        if self.rebuilt is None:
            return f"{self.table} {self.key}: in the live views only (the rebuild has no such row)"
        rebuilt = self.rebuilt
        parts = [f"{c}: live {self.live.get(c)!r} != rebuilt {rebuilt.get(c)!r}" for c in self.columns]
        return f"{self.table} {self.key}: " + "; ".join(parts)


@dataclass
class VerifyResult:
    """What :func:`verify_projections` found: ``position`` compared at, rows compared per table, and the
    first differences (at most the ``limit`` asked for). ``ok`` when there are none."""

    position: int
    rows: dict[str, int] = field(default_factory=dict)
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences


def _primary_key(conn: psycopg.Connection[Any], schema: str, table: str) -> list[str]:
    """The columns of ``schema.table``'s primary key, in key order (one or several)."""
    rows = conn.execute(
        """SELECT a.attname AS name FROM pg_index i
           CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, position)
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
           WHERE i.indrelid = %s::regclass AND i.indisprimary ORDER BY k.position""",
        (f"{schema}.{table}",),
    ).fetchall()
    assert rows, f"{table} has no primary key"
    return [str(r["name"]) for r in rows]


def _qualified(alias: str, names: list[str]) -> sql.Composable:
    """``alias.a, alias.b, …`` of the columns ``names``."""
    return sql.SQL(", ").join(
        sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(c)) for c in names
    )


def _compare(
    conn: psycopg.Connection[Any], live: str, scratch: str, limit: int, result: VerifyResult
) -> None:
    for table in VIEW_TABLES:
        key = _primary_key(conn, live, table)
        count = conn.execute(
            sql.SQL("SELECT count(*) AS n FROM {}.{}").format(sql.Identifier(live), sql.Identifier(table))
        ).fetchone()
        result.rows[table] = int(count["n"]) if count else 0
        room = limit - len(result.differences)
        if room <= 0:
            continue
        first = sql.Identifier(key[0])

        rows = conn.execute(
            sql.SQL(
                """SELECT concat_ws('/', {shown})::text AS key,
                          CASE WHEN l.{first} IS NULL THEN NULL ELSE to_jsonb(l) END AS live,
                          CASE WHEN r.{first} IS NULL THEN NULL ELSE to_jsonb(r) END AS rebuilt
                   FROM {live}.{table} l FULL JOIN {scratch}.{table} r ON ({left}) = ({right})
                   WHERE l.{first} IS NULL OR r.{first} IS NULL OR to_jsonb(l) <> to_jsonb(r)
                   ORDER BY 1 LIMIT {room}"""
            ).format(
                shown=sql.SQL(", ").join(
                    sql.SQL("coalesce(l.{0}, r.{0})").format(sql.Identifier(c)) for c in key
                ),
                first=first,
                left=_qualified("l", key),
                right=_qualified("r", key),
                live=sql.Identifier(live),
                scratch=sql.Identifier(scratch),
                table=sql.Identifier(table),
                room=sql.Literal(room),
            )
        ).fetchall()
        for row in rows:
            left, right = row["live"], row["rebuilt"]
            if left is None or right is None:
                columns = tuple(sorted((left or right or {}).keys()))
            else:
                columns = tuple(sorted(c for c in left if left.get(c) != right.get(c)))
            result.differences.append(Difference(table, row["key"], left, right, columns))


def verify_projections(
    store: EventStore,
    pool: ViewsPool,
    database_url: str,
    *,
    limit: int = 20,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
) -> VerifyResult:
    """Rebuild the views into a scratch schema and compare them with the live ones (module docstring).

    Args:
        store / pool / database_url: the live event store, views pool and its URL.
        limit: the most differences to report.
        progress: called after each replayed batch with ``(handled, position, target)``.

    Raises:
        psycopg.Error: the database is unreachable (the scratch schema is dropped when possible).
    """
    schema = f"billing_verify_{uuid.uuid4().hex[:10]}"
    with pool.connection() as conn:
        live = live_schema(conn)
        with conn.transaction():
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            for table in (*VIEW_TABLES, "tracking", "projection_errors"):
                conn.execute(
                    sql.SQL("CREATE TABLE {}.{} (LIKE {}.{} INCLUDING ALL)").format(
                        sql.Identifier(schema),
                        sql.Identifier(table),
                        sql.Identifier(live),
                        sql.Identifier(table),
                    )
                )
    scratch: ViewsPool | None = None
    try:
        scratch = scratch_pool(database_url, schema, name="verify")
        target = load_position(pool, PROJECTION)
        for _ in range(ROUNDS):
            replay_upto(store, scratch, target, batch_size, progress)
            with pool.connection() as conn:
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                row = conn.execute("SELECT position FROM tracking WHERE name = %s", (PROJECTION,)).fetchone()
                now_at = int(row["position"]) if row else 0
                if now_at != target:  # the live projection moved: catch up and compare again
                    conn.rollback()
                    target = now_at
                    continue
                result = VerifyResult(position=target)
                _compare(conn, live, schema, limit, result)
                conn.rollback()
                return result
        raise RuntimeError(f"the live projection kept moving during {ROUNDS} comparisons; stop it and retry")
    finally:
        if scratch is not None:
            scratch.close()
        drop_schema(pool, schema)


@dataclass(frozen=True)
class FollowerStatus:
    """One follower of the notification log (a ``tracking`` row).

    Attributes:
        name: ``projections``, ``relay``, ...
        position: last notification id handled.
        head: the log's last notification id.
        lag: ``head - position`` (notifications not handled yet; for the relay, most of them are not
            ``Contact.Added`` and it passes over them in one read).
        updated_at: when the position last moved (ISO 8601) or None.
        errors: notifications it recorded in ``projection_errors`` and moved past.
        last_error: the newest of those ``{notification_id, topic, error, recorded_at}`` or None.
    """

    name: str
    position: int
    head: int
    lag: int
    updated_at: str | None
    errors: int
    last_error: dict[str, Any] | None


def follower_status(store: EventStore, pool: ViewsPool) -> list[FollowerStatus]:
    """Every follower's position, lag and recorded errors (the expected ``projections`` and ``relay``
    appear with position 0 before their first batch)."""
    head = store.recorder.max_notification_id() or 0
    with pool.connection() as conn:
        tracked = {r["name"]: r for r in conn.execute("SELECT * FROM tracking ORDER BY name").fetchall()}
        counts = {
            r["projection"]: int(r["n"])
            for r in conn.execute(
                "SELECT projection, count(*) AS n FROM projection_errors GROUP BY projection"
            ).fetchall()
        }
        last = {
            r["projection"]: r
            for r in conn.execute(
                "SELECT DISTINCT ON (projection) projection, notification_id, topic, error, recorded_at "
                "FROM projection_errors ORDER BY projection, id DESC"
            ).fetchall()
        }
    names = sorted({PROJECTION, "relay", *tracked, *counts})
    result = []
    for name in names:
        row = tracked.get(name)
        position = int(row["position"]) if row else 0
        error = last.get(name)
        result.append(
            FollowerStatus(
                name=name,
                position=position,
                head=head,
                lag=max(0, head - position),
                updated_at=row["updated_at"].isoformat() if row else None,
                errors=counts.get(name, 0),
                last_error=None
                if error is None
                else {
                    "notification_id": error["notification_id"],
                    "topic": error["topic"],
                    "error": error["error"],
                    "recorded_at": error["recorded_at"].isoformat(),
                },
            )
        )
    return result
