"""The pools' check before a lend (``billing.pgcheck``) on PostgreSQL: a connection in steady use is lent
without a round trip, and one whose backend was terminated (``pg_terminate_backend``) is replaced before
it is lent — the caller's first query works."""

from __future__ import annotations

import asyncio
import time

import psycopg

from billing.db import open_pool
from billing.pgcheck import ConnectionCheck
from tests.conftest import ADMIN_URL


def test_a_terminated_backend_is_replaced_before_the_lend_and_a_live_one_is_not_pinged(
    database_url: str,
) -> None:
    pool = open_pool(database_url, size=1, name="check-test")
    try:
        check = pool._check
        assert isinstance(check, ConnectionCheck)
        with pool.connection() as conn:
            pid = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]  # type: ignore[index]
        with pool.connection() as conn:
            assert conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"] == pid  # type: ignore[index]
        assert (check.full_checks, check.quick_checks) == (1, 1)
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            deadline = time.monotonic() + 5
            while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
                assert time.monotonic() < deadline, "the backend did not end"
                time.sleep(0.02)
        with pool.connection() as conn:
            fresh = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]  # type: ignore[index]
        assert fresh != pid
        assert (check.full_checks, check.quick_checks) == (3, 1)  # the dead one failed it; the new one passed
    finally:
        pool.close()


def test_the_event_stores_pool_lends_through_the_same_check(database_url: str) -> None:
    from eventsourcing.postgres import PostgresApplicationRecorder

    from billing.eventstore import open_event_store

    store = open_event_store(database_url, pool_size=1)
    try:
        recorder = store.recorder
        assert isinstance(recorder, PostgresApplicationRecorder)
        check = recorder.datastore.pool._check
        assert isinstance(check, ConnectionCheck)  # not the library's ping before every lend
        for _ in range(3):
            recorder.max_notification_id()
        assert check.quick_checks >= 1  # a connection in steady use is lent without a round trip
    finally:
        store.close()


async def test_the_async_read_pool_reads_in_autocommit_and_replaces_a_terminated_backend(
    database_url: str,
) -> None:
    from billing.db import async_read_pool
    from billing.pgcheck import AsyncConnectionCheck

    pool = async_read_pool(database_url, size=1, name="async-check-test")
    await pool.open(wait=True, timeout=10)
    try:
        check = pool._check
        assert isinstance(check, AsyncConnectionCheck)
        async with pool.connection() as conn:
            cursor = await conn.execute("SELECT pg_backend_pid() AS pid")
            pid = (await cursor.fetchone())["pid"]  # type: ignore[index]
            # autocommit: the read opened no transaction (so no BEGIN and no COMMIT round trips)
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            deadline = time.monotonic() + 5
            while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
                assert time.monotonic() < deadline, "the backend did not end"
                await asyncio.sleep(0.02)
        async with pool.connection() as conn:
            cursor = await conn.execute("SELECT pg_backend_pid() AS pid")
            fresh = (await cursor.fetchone())["pid"]  # type: ignore[index]
        assert fresh != pid
        assert (check.full_checks, check.quick_checks) == (3, 0)  # open, the dead one, the new one
    finally:
        await pool.close()
