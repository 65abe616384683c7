"""The rate limit's stored window (``billing.api.ratelimit``): a count and a reset time, so a request
costs the same at any limit; an ended or foreign-format window starts over. The HTTP behaviour (headers,
429, per key, two processes on Redis) is tested in ``tests/integration/test_api_edges.py`` and
``tests/e2e/test_rate_limit_processes.py``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import pytest
from litestar.exceptions import TooManyRequestsException

from billing.api.ratelimit import KeyRateLimitMiddleware, ProcessStore, Window, build_rate_limit


async def _app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("not called")


@pytest.fixture
def middleware() -> KeyRateLimitMiddleware:
    config, _ = build_rate_limit(default_limit=5, overrides={}, redis_url="", tenant_of=None)
    return KeyRateLimitMiddleware(_app, config)


async def test_each_request_adds_one_to_the_stored_count_until_the_reset(
    middleware: KeyRateLimitMiddleware,
) -> None:
    store = ProcessStore()
    first = await middleware.retrieve_window("k", store)
    now = int(time.time())
    assert first.count == 0 and now + 59 <= first.reset <= now + 60
    for _ in range(1_500):  # beyond the default limit: the stored value stays two integers
        window = await middleware.retrieve_window("k", store)
        await middleware.count_request("k", window, store)
    stored = await store.get("k")
    assert stored == msgspec.json.encode([1_500, first.reset])
    assert (await middleware.retrieve_window("k", store)) == Window(count=1_500, reset=first.reset)


async def test_an_ended_window_or_another_format_starts_a_new_one(middleware: KeyRateLimitMiddleware) -> None:
    store = ProcessStore()
    now = int(time.time())
    await store.set("ended", msgspec.json.encode(Window(count=9, reset=now - 1)))
    await store.set("library", b'{"history":[1,2,3],"reset":%d}' % (now + 30))
    for key in ("ended", "library", "absent"):
        window = await middleware.retrieve_window(key, store)
        assert window.count == 0 and window.reset >= now + 59, key


async def test_the_process_store_keeps_a_value_until_it_expires() -> None:
    now = [100.0]
    store = ProcessStore(clock=lambda: now[0])
    await store.set("w", "ab", expires_in=60)
    await store.set("forever", b"x")
    assert (await store.get("w"), await store.expires_in("w"), await store.exists("w")) == (b"ab", 60, True)
    assert (await store.get("forever"), await store.expires_in("forever")) == (b"x", None)
    now[0] = 159.5
    assert await store.get("w", renew_for=30) == b"ab"  # renewed: 30 s from now
    now[0] = 189.0
    assert await store.expires_in("w") == 0
    now[0] = 189.5
    assert (await store.get("w"), await store.exists("w"), await store.expires_in("w")) == (None, False, None)
    assert await store.get("forever", renew_for=5) == b"x" and await store.expires_in("forever") is None
    await store.delete("forever")
    await store.delete("absent")
    assert await store.get("forever") is None


async def test_the_process_store_drops_expired_entries_once_it_is_full() -> None:
    now = [0.0]
    store = ProcessStore(clock=lambda: now[0])
    for index in range(ProcessStore.SWEEP_AT):
        await store.set(f"old-{index}", b"1", expires_in=1)
    now[0] = 2.0
    await store.set("new", b"2", expires_in=1)
    assert len(store._data) == 1 and await store.get("new") == b"2"
    await store.delete_all()
    assert await store.get("new") is None


async def test_a_process_store_full_of_live_keys_is_not_swept_on_every_write() -> None:
    now = [0.0]
    store = ProcessStore(clock=lambda: now[0])
    size = ProcessStore.SWEEP_AT
    for index in range(size):
        await store.set(f"live-{index}", b"1", expires_in=60)
    await store.set("one-more", b"1", expires_in=60)  # a sweep that finds nothing to drop
    assert (len(store._data), store._next_sweep) == (size + 1, 2 * size)
    now[0] = 61.0  # every entry so far has expired
    for index in range(size - 1):
        await store.set(f"new-{index}", b"2", expires_in=60)
    assert len(store._data) == 2 * size  # no sweep yet: the expired ones are still held
    await store.set("last", b"2", expires_in=60)  # the sweep at twice the live count drops them
    assert (len(store._data), store._next_sweep) == (size, 2 * (size - 1))  # 9,999 live + "last"


def test_without_redis_the_rate_limit_keeps_its_windows_in_a_process_store() -> None:
    _, stores = build_rate_limit(default_limit=5, overrides={}, redis_url="", tenant_of=None)
    assert [type(store) for store in stores.values()] == [ProcessStore]


async def test_requests_counted_together_over_a_process_store_admit_exactly_the_limit(
    middleware: KeyRateLimitMiddleware,
) -> None:
    # the middleware takes no lock over a ProcessStore: it relies on the store never yielding between the
    # window's read and its write, so requests counted at the same time cannot all see the same count
    store = ProcessStore()
    results = await asyncio.gather(
        *(middleware._count("k", store, limit=3) for _ in range(12)), return_exceptions=True
    )
    assert sum(isinstance(r, Window) for r in results) == 3
    assert sum(isinstance(r, TooManyRequestsException) for r in results) == 9
    assert (await middleware.retrieve_window("k", store)).count == 3
