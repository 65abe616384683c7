# ruff: noqa: F811  (the make_api fixture is imported from test_api_edges and named as a parameter)
"""The API keys' last use is written behind the requests: noted in memory by the key check, written in
one statement per flush (never moved back), kept for the next flush when a write fails, and written once
more when the API stops."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from billing.api.deps import flush_key_usage_every
from billing.db import open_pool
from billing.domain.apikey import api_key_id
from billing.services.tenants import hash_api_key
from billing.services.usage import KeyUsage
from tests.integration.test_api_edges import BASE, NOW, make_api  # noqa: F401

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def stored(database_url: str) -> dict[uuid.UUID, datetime]:
    with psycopg.connect(database_url) as conn:
        return dict(conn.execute("SELECT key_id, last_used FROM api_key_usage").fetchall())


def test_a_flush_writes_each_keys_latest_use_in_one_statement_and_never_moves_one_back(
    database_url: str,
) -> None:
    pool = open_pool(database_url, size=1)
    try:
        usage = KeyUsage(pool)
        a, b = uuid.uuid4(), uuid.uuid4()
        usage.record(a, T0 + timedelta(seconds=30))
        usage.record(a, T0)  # older than the noted one: ignored
        usage.record(b, T0 + timedelta(seconds=5))
        assert usage.pending() == 2
        assert stored(database_url) == {}  # nothing written before a flush
        assert usage.flush() == 2
        assert stored(database_url) == {a: T0 + timedelta(seconds=30), b: T0 + timedelta(seconds=5)}
        assert usage.pending() == 0
        assert usage.flush() == 0

        usage.record(a, T0 + timedelta(seconds=10))  # another process wrote a later use already
        usage.record(b, T0 + timedelta(minutes=2))
        assert usage.flush() == 2
        assert stored(database_url) == {a: T0 + timedelta(seconds=30), b: T0 + timedelta(minutes=2)}
    finally:
        pool.close()


class _DownPool:
    """A pool whose database is unreachable."""

    def connection(self) -> Any:
        raise psycopg.OperationalError("connection refused")


def test_a_failed_flush_keeps_the_uses_for_the_next_one_with_newer_uses_kept() -> None:
    usage = KeyUsage(_DownPool())  # type: ignore[arg-type]
    key = uuid.uuid4()
    other = uuid.uuid4()
    usage.record(key, T0)
    usage.record(other, T0)
    with pytest.raises(psycopg.OperationalError):
        usage.flush()
    assert usage._pending == {key: T0, other: T0}  # kept for the next flush
    usage.record(key, T0 + timedelta(seconds=1))
    usage.record(other, T0 - timedelta(seconds=1))
    with pytest.raises(psycopg.OperationalError):
        usage.flush()
    assert usage._pending == {key: T0 + timedelta(seconds=1), other: T0}  # the newer use of each


async def test_a_status_poll_notes_the_keys_use_and_the_api_writes_it_when_it_stops(
    make_api: Callable[..., Any], database_url: str
) -> None:
    async with make_api() as api:
        answer = await api.client.get(f"{BASE}/queue/{uuid.uuid4()}/status", headers=api.public)
        assert answer.status_code == 404  # an unknown queue, but the key was checked and used
        key_id = api_key_id(hash_api_key(api.key))
        assert stored(database_url) == {}  # the request did not wait for the write
        refused = await api.client.get(
            f"{BASE}/queue/{uuid.uuid4()}/status", headers={"X-Billing-API-Key": "bk_x"}
        )
        assert refused.status_code == 401
    assert stored(database_url) == {key_id: NOW}  # the unknown key is not recorded


async def test_the_api_flushes_the_noted_uses_on_its_interval(database_url: str) -> None:
    pool = open_pool(database_url, size=1)
    usage = KeyUsage(pool)
    stop = asyncio.Event()
    task = asyncio.create_task(flush_key_usage_every(usage, 0.05, stop))
    try:
        key = uuid.uuid4()
        usage.record(key, T0)
        for _ in range(100):
            if await asyncio.to_thread(stored, database_url):
                break
            await asyncio.sleep(0.02)
        assert await asyncio.to_thread(stored, database_url) == {key: T0}
        assert usage.pending() == 0
        later = uuid.uuid4()
        usage.record(later, T0)
        stop.set()  # stopping: the last uses are written before the task returns
        await asyncio.wait_for(task, 5)
        assert await asyncio.to_thread(stored, database_url) == {key: T0, later: T0}
    finally:
        task.cancel()
        pool.close()
