"""PostgreSQL plumbing: connection pools for the read models and the schema migration.

The event store opens its own pool (the ``eventsourcing`` library's); the views use the pool built here.
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from billing.eventstore import open_event_store

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
    """A sync pool of dict-row connections (autocommit off), opened and waited for."""
    pool = ViewsPool(
        database_url,
        connection_class=psycopg.Connection[DictRow],
        min_size=1,
        max_size=size,
        kwargs={"row_factory": dict_row},
        name=name,
        open=False,
    )
    pool.open(wait=True, timeout=30)
    return pool
