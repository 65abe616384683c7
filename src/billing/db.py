"""PostgreSQL plumbing: connection pools for the read models and the schema migration.

The event store opens its own pool (the ``eventsourcing`` library's); the views use the pool built here,
and the API's hot polled reads an async one (:func:`async_read_pool`).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import ParamSpec, TypeVar

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from billing.eventstore import open_event_store
from billing.pgcheck import AsyncConnectionCheck, ConnectionCheck

P = ParamSpec("P")
R = TypeVar("R")

ViewsPool = ConnectionPool[psycopg.Connection[DictRow]]
"""A sync pool whose connections return rows as dicts (the views, the operational tables)."""

AsyncReadPool = AsyncConnectionPool[psycopg.AsyncConnection[DictRow]]
"""An async pool of autocommit dict-row connections, for single-statement reads (:func:`async_read_pool`)."""


class MigrationError(RuntimeError):
    """``migrate`` found no DDL to apply: the package was installed without its ``billing/sql/*.sql``."""


def sql_files() -> list[Traversable]:
    """The package's DDL files (``billing/sql/*.sql``, package data read through ``importlib.resources``,
    so they are found in a wheel as in a checkout), in name order."""
    folder = files("billing") / "sql"
    if not folder.is_dir():
        return []
    ddl = [f for f in folder.iterdir() if f.name.endswith(".sql") and f.is_file()]
    return sorted(ddl, key=lambda f: f.name)


def migrate(database_url: str) -> list[str]:
    """Create the event store's table and apply every ``billing/sql/*.sql`` file in name order.

    Idempotent: every statement is ``CREATE ... IF NOT EXISTS``. Returns the names of the files applied.

    Raises:
        MigrationError: the package holds no ``*.sql`` file (a broken install); nothing is applied.
        psycopg.Error: the database is unreachable or a statement fails (nothing of that file is kept).
    """
    ddl = sql_files()
    if not ddl:
        raise MigrationError(
            f"no DDL found in {files('billing') / 'sql'}: the billing package was installed without its "
            "sql/*.sql package data; reinstall it"
        )
    store = open_event_store(database_url, pool_size=1, create_table=True)
    store.close()
    applied = []
    with psycopg.connect(database_url, autocommit=False) as conn:
        for path in ddl:
            with conn.transaction():
                conn.execute(path.read_text(encoding="utf-8"))
            applied.append(path.name)
    return applied


def open_pool(database_url: str, *, size: int = 5, name: str = "views") -> ViewsPool:
    """A sync pool of dict-row connections (autocommit off), opened and waited for.

    Every connection is checked before it is lent (:class:`~billing.pgcheck.ConnectionCheck`: a dead one —
    the server restarted, ``pg_terminate_backend`` — is replaced instead of failing the caller's first
    query; a round trip only for a connection idle a few seconds or with something waiting on its socket),
    as the event store's pool is."""
    pool = ViewsPool(
        database_url,
        connection_class=psycopg.Connection[DictRow],
        check=ConnectionCheck(),
        min_size=1,
        max_size=size,
        kwargs={"row_factory": dict_row},
        name=name,
        open=False,
    )
    pool.open(wait=True, timeout=30)
    return pool


def async_read_pool(database_url: str, *, size: int = 5, name: str = "reads") -> AsyncReadPool:
    """An async pool for single-statement reads, **not opened**: open it in the event loop that uses it
    (``await pool.open(wait=True, timeout=30)``; the API does on startup) and close it there.

    Its connections are in autocommit: a one-statement read needs no transaction, so a read is one round
    trip instead of three (psycopg otherwise sends ``BEGIN`` before it and the pool ``COMMIT`` after).
    Never write through it. Connections are checked before they are lent, as in :func:`open_pool`
    (:class:`~billing.pgcheck.AsyncConnectionCheck`)."""
    return AsyncReadPool(
        database_url,
        connection_class=psycopg.AsyncConnection[DictRow],
        check=AsyncConnectionCheck(),
        min_size=1,
        max_size=size,
        kwargs={"row_factory": dict_row, "autocommit": True},
        name=name,
        open=False,
    )


READ_RETRY_PAUSES_S = (0.0, 0.05, 0.2)
"""Pauses (seconds) before each repeat of a read whose connection died: three repeats, so a read still
answers when every connection of the pool was dropped twice in a row (each dead one found is replaced
by the pool)."""


def read_retrying(read: Callable[P, R]) -> Callable[P, R]:
    """Run a read-only query function again when its connection died under it
    (:class:`psycopg.OperationalError`: the server restarted, ``pg_terminate_backend``), up to
    ``len(READ_RETRY_PAUSES_S)`` times. The pool checks connections before lending them, but one can
    still die between the check and the query; a read is safe to repeat, a write is not (never decorate
    one). Raises the last OperationalError when every try failed."""

    @functools.wraps(read)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        for pause in READ_RETRY_PAUSES_S:
            try:
                return read(*args, **kwargs)
            except psycopg.OperationalError:
                time.sleep(pause)
        return read(*args, **kwargs)

    return wrapper


def read_retrying_async(read: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """:func:`read_retrying` for a coroutine function (the pauses are ``asyncio.sleep``). Raises the last
    OperationalError when every try failed."""

    @functools.wraps(read)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        for pause in READ_RETRY_PAUSES_S:
            try:
                return await read(*args, **kwargs)
            except psycopg.OperationalError:
                await asyncio.sleep(pause)
        return await read(*args, **kwargs)

    return wrapper
