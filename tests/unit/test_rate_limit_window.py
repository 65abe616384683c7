"""The rate limit's stored window (``billing.api.ratelimit``): a count and a reset time, so a request
costs the same at any limit; an ended or foreign-format window starts over. The HTTP behaviour (headers,
429, per key, two processes on Redis) is tested in ``tests/integration/test_api_edges.py`` and
``tests/e2e/test_rate_limit_processes.py``."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest
from litestar.stores.memory import MemoryStore

from billing.api.ratelimit import KeyRateLimitMiddleware, Window, build_rate_limit


async def _app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("not called")


@pytest.fixture
def middleware() -> KeyRateLimitMiddleware:
    config, _ = build_rate_limit(default_limit=5, overrides={}, redis_url="", tenant_of=None)
    return KeyRateLimitMiddleware(_app, config)


async def test_each_request_adds_one_to_the_stored_count_until_the_reset(
    middleware: KeyRateLimitMiddleware,
) -> None:
    store = MemoryStore()
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
    store = MemoryStore()
    now = int(time.time())
    await store.set("ended", msgspec.json.encode(Window(count=9, reset=now - 1)))
    await store.set("library", b'{"history":[1,2,3],"reset":%d}' % (now + 30))
    for key in ("ended", "library", "absent"):
        window = await middleware.retrieve_window(key, store)
        assert window.count == 0 and window.reset >= now + 59, key
