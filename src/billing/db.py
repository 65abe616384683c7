"""PostgreSQL plumbing: connection pools for the read models and the schema migration.

The event store opens its own pool (the ``eventsourcing`` library's); the views use the pool built here.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from billing.eventstore import open_event_store

P = ParamSpec("P")
R = TypeVar("R")

ViewsPool = ConnectionPool[psycopg.Connection[DictRow]]
"""A sync pool whose connections return rows as dicts (the views, the operational tables)."""


def sql_dir() -> Path:
    """The folder of ordered ``*.sql`` files (``BILLING_SQL_DIR``, else the repository's ``sql/``)."""
    override = os.environ.get("BILLING_SQL_DIR")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "sql"


def migrate(database_url: str) -> list[str]:
    """Create the event store's table and apply every ``sql/*.sql`` file in name order.

    Idempotent: every statement is ``CREATE ... IF NOT EXISTS``. Returns the names of the files applied.

    Raises:
        psycopg.Error: the database is unreachable or a statement fails (nothing of that file is kept).
    """
    store = open_event_store(database_url, pool_size=1, create_table=True)
    store.close()
    applied = []
    with psycopg.connect(database_url, autocommit=False) as conn:
        for path in sorted(sql_dir().glob("*.sql")):
            with conn.transaction():
                conn.execute(path.read_text())
            applied.append(path.name)
    return applied


def open_pool(database_url: str, *, size: int = 5, name: str = "views") -> ViewsPool:
    """A sync pool of dict-row connections (autocommit off), opened and waited for.

    Every connection is checked before it is lent (``ConnectionPool.check_connection``: a dead one — the
    server restarted, ``pg_terminate_backend`` — is replaced instead of failing the caller's first query),
    as the event store's pool is (``POSTGRES_PRE_PING``)."""
    pool = ViewsPool(
        database_url,
        connection_class=psycopg.Connection[DictRow],
        check=ViewsPool.check_connection,
        min_size=1,
        max_size=size,
        kwargs={"row_factory": dict_row},
        name=name,
        open=False,
    )
    pool.open(wait=True, timeout=30)
    return pool


def read_retrying(read: Callable[P, R]) -> Callable[P, R]:
    """Run a read-only query function again, once, when its connection died under it
    (:class:`psycopg.OperationalError`: the server restarted, ``pg_terminate_backend``). The pool checks
    connections before lending them, but one can still die between the check and the query; a read is
    safe to repeat, a write is not (never decorate one)."""

    @functools.wraps(read)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return read(*args, **kwargs)
        except psycopg.OperationalError:
            return read(*args, **kwargs)

    return wrapper
