"""Per-API-key rate limit of the public API: litestar's ``RateLimitMiddleware`` and its stores.

What litestar gives: the middleware and its configuration (a fixed window per identity, kept in a
litestar ``Store``), the ``RateLimit-Limit/-Remaining/-Reset/-Policy`` header names, the ``Store``
interface and ``RedisStore``, shared by every ``api`` process when ``BILLING_REDIS_URL`` is set. What
this subclass adds:

- the identity is the API key (its SHA-256, never the clear text), not the client address; requests
  without ``X-Billing-API-Key`` (admin, health, schema) are not counted here;
- the limit is per key: ``BILLING_RATE_LIMITS`` overrides (by key prefix or tenant id) over the default
  ``BILLING_RATE_LIMIT_PER_MINUTE`` (:meth:`billing.settings.Settings.rate_limit_overrides`);
- the read-check-write of a key's window runs under a Redis lock when the store is shared (the library's
  lock is per process, so two processes could both admit the last request of a window);
- a refusal is 429 ``{code: "rate_limited", message, field: "X-Billing-API-Key"}`` with ``Retry-After``
  (seconds until the window resets) beside the ``RateLimit-*`` headers;
- a window is stored as its count and reset time (:class:`Window`), not the library's list of every
  request's timestamp: the library only counts that list, but decodes and re-encodes it whole on every
  request (1,200 integers at the default limit; with Redis, shipped both ways);
- without Redis the windows are kept in a :class:`ProcessStore` (litestar's ``Store`` interface over a
  dict), not a ``MemoryStore``, whose anyio lock yields to the event loop on every read and write.

If the shared store is unreachable the request is let through (logged): the limit protects the service,
it must not stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from uuid import UUID

import msgspec
from litestar.datastructures import MutableScopeHeaders
from litestar.exceptions import TooManyRequestsException
from litestar.middleware.rate_limit import (
    DURATION_VALUES,
    DurationUnit,
    RateLimitConfig,
    RateLimitMiddleware,
)
from litestar.stores.base import Store
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from billing.api.auth import API_KEY_DIGEST_STATE, API_KEY_HEADER
from billing.logging import get_logger
from billing.services.tenants import hash_api_key

STORE_NAME = "rate_limit"
WINDOW: DurationUnit = "minute"
WINDOW_S = DURATION_VALUES[WINDOW]
log = get_logger(__name__)


class Window(msgspec.Struct, array_like=True):
    """One key's fixed window: ``count`` requests admitted so far, ``reset`` (Unix seconds, UTC) when it
    ends. Stored as a two-element JSON array."""

    count: int
    reset: int


_WINDOW_DECODER = msgspec.json.Decoder(Window)


class ProcessStore(Store):
    """litestar's ``Store`` interface over a dict of this process (what the rate limit uses without Redis).

    Like litestar's ``MemoryStore`` but without its lock: each method reads and writes the dict with no
    ``await`` in between, so on one event loop it is atomic already, while ``MemoryStore``'s anyio lock
    yields to the loop on every ``get`` and ``set`` (two extra turns of the loop per public request, each
    one a wait behind every other ready task). Not for use from several threads. Expiry times are on
    ``clock`` (seconds, monotonic); expired entries are dropped when read, and all of them once the store
    holds :attr:`SWEEP_AT` entries — or, when more are alive, twice as many as the last sweep left (so a
    store of many live keys is not swept on every write).
    """

    SWEEP_AT = 10_000

    __slots__ = ("_clock", "_data", "_next_sweep")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._data: dict[str, tuple[bytes, float | None]] = {}
        self._next_sweep = self.SWEEP_AT

    def _deadline(self, expires_in: int | timedelta | None) -> float | None:
        seconds = expires_in.total_seconds() if isinstance(expires_in, timedelta) else expires_in
        return self._clock() + seconds if seconds else None

    def _live(self, key: str) -> tuple[bytes, float | None] | None:
        item = self._data.get(key)
        if item is not None and item[1] is not None and item[1] <= self._clock():
            del self._data[key]
            return None
        return item

    async def set(self, key: str, value: str | bytes, expires_in: int | timedelta | None = None) -> None:
        """Store ``value`` (str as UTF-8) under ``key``, for ``expires_in`` seconds (None: no expiry)."""
        if len(self._data) >= self._next_sweep:
            now = self._clock()
            self._data = {k: v for k, v in self._data.items() if v[1] is None or v[1] > now}
            self._next_sweep = max(self.SWEEP_AT, 2 * len(self._data))
        self._data[key] = (value.encode() if isinstance(value, str) else value, self._deadline(expires_in))

    async def get(self, key: str, renew_for: int | timedelta | None = None) -> bytes | None:
        """The value of ``key``, or None when absent or expired; ``renew_for`` restarts its expiry (only
        for a value stored with one, as ``MemoryStore`` does)."""
        item = self._live(key)
        if item is None:
            return None
        if renew_for and item[1] is not None:
            self._data[key] = (item[0], self._deadline(renew_for))
        return item[0]

    async def delete(self, key: str) -> None:
        """Remove ``key`` (no-op when absent)."""
        self._data.pop(key, None)

    async def delete_all(self) -> None:
        """Remove everything."""
        self._data.clear()

    async def exists(self, key: str) -> bool:
        """True when ``key`` holds a value that has not expired."""
        return self._live(key) is not None

    async def expires_in(self, key: str) -> int | None:
        """Whole seconds until ``key`` expires; None when absent or stored without expiry."""
        item = self._live(key)
        if item is None or item[1] is None:
            return None
        return int(item[1] - self._clock())


class KeyRateLimitMiddleware(RateLimitMiddleware):
    """litestar's rate limit middleware, keyed and sized per API key (see the module docstring)."""

    def __init__(self, app: ASGIApp, config: KeyRateLimitConfig) -> None:
        """Wrap ``app`` (litestar builds this from :attr:`KeyRateLimitConfig.middleware`)."""
        super().__init__(app, config)
        self.key_config = config
        self._key_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count the request against its key's window; 429 when the window is full."""
        app = scope["litestar_app"]
        request = app.request_class(scope)
        key = request.headers.get(API_KEY_HEADER)
        if not key:
            await self.app(scope, receive, send)
            return
        limit = await self.key_config.limit_for(request, key)
        digest = hash_api_key(key)
        scope.setdefault("state", {})[API_KEY_DIGEST_STATE] = digest  # the key check's, not hashed again
        cache_key = f"{type(self).__name__}::{digest[:32]}"  # never the clear key
        store = self.config.get_store_from_app(app)
        try:
            if type(store) is ProcessStore:  # no await in it yields: read-check-write is atomic already
                window = await self._count(cache_key, store, limit)
            else:
                async with self._window_lock(cache_key):
                    window = await self._count(cache_key, store, limit)
        except TooManyRequestsException:
            raise
        except Exception as exc:  # the shared store is down: serve, and say so
            log.warning("rate limit store unavailable; request not counted", error=type(exc).__name__)
            await self.app(scope, receive, send)
            return
        headers = self._headers(window, limit)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                scope_headers = MutableScopeHeaders.from_message(message)
                for name, value in headers.items():
                    scope_headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _count(self, cache_key: str, store: Store, limit: int) -> Window:
        """Count the request in its key's window and return the window.

        Raises:
            TooManyRequestsException: the window is full (429 with ``Retry-After``).
        """
        window = await self.retrieve_window(cache_key, store)
        if window.count >= limit:
            headers = self._headers(window, limit)
            headers["Retry-After"] = headers[self.config.rate_limit_reset_header_key]
            raise TooManyRequestsException(
                detail=f"rate limit of {limit} requests per {WINDOW_S} s for this API key reached; "
                f"retry after {headers['Retry-After']} s",
                headers=headers,
            )
        await self.count_request(cache_key, window, store)
        return window

    @contextlib.asynccontextmanager
    async def _window_lock(self, cache_key: str) -> AsyncIterator[None]:
        """For a store that may yield (Redis, another ``Store``; a :class:`ProcessStore` needs none): the
        key's lock in this process (one per key, so keys do not wait for each other; the library
        has one lock for all), then — with the shared store — the key's Redis lock, so only one request
        of one process at a time reads and writes the key's window. The local lock is an
        ``asyncio.Lock``: free, it is taken without a turn of the event loop (anyio's always yields one)."""
        local = self._key_locks.get(cache_key)
        if local is None:
            local = self._key_locks[cache_key] = asyncio.Lock()
        async with local:
            redis = self.key_config.redis
            if redis is None:
                yield
                return
            lock = redis.lock(
                f"billing:rate_limit_lock:{cache_key}", timeout=5, sleep=0.002, blocking_timeout=10
            )
            async with lock:
                yield

    async def retrieve_window(self, key: str, store: Store) -> Window:
        """The key's current window: the stored one, or a new empty one when none is stored, it has
        ended, or it is not in :class:`Window`'s shape (e.g. the library's format, during an upgrade)."""
        now = int(time.time())
        stored = await store.get(key)
        if stored:
            try:
                window = _WINDOW_DECODER.decode(stored)
            except msgspec.DecodeError:
                window = None
            if window is not None and window.reset > now:
                return window
        return Window(count=0, reset=now + WINDOW_S)

    async def count_request(self, key: str, window: Window, store: Store) -> None:
        """Store ``window`` with one more request, kept until it resets."""
        window.count += 1
        expires_in = max(1, window.reset - int(time.time()))
        await store.set(key, msgspec.json.encode(window), expires_in=expires_in)

    def _headers(self, window: Window, limit: int) -> dict[str, str]:
        used = window.count
        return {
            self.config.rate_limit_policy_header_key: f"{limit}; w={WINDOW_S}",
            self.config.rate_limit_limit_header_key: str(limit),
            self.config.rate_limit_remaining_header_key: str(max(0, limit - used)),
            self.config.rate_limit_reset_header_key: str(max(0, window.reset - int(time.time()))),
        }


@dataclass
class KeyRateLimitConfig(RateLimitConfig):
    """``RateLimitConfig`` with the per-key limits (see :func:`build_rate_limit`)."""

    default_limit: int = 1200
    overrides: dict[str, int] = field(default_factory=dict)
    redis: Any = None
    """The ``redis.asyncio.Redis`` client of the shared store (its locks), or None (memory store)."""
    tenant_of: Callable[[str], Awaitable[UUID | None]] | None = None

    async def limit_for(self, request: Any, key: str) -> int:
        """The requests per minute allowed to ``key``: its prefix's override, its tenant's, the default."""
        if key[:8] in self.overrides:
            return self.overrides[key[:8]]
        if self.overrides and self.tenant_of is not None:
            tenant = await self.tenant_of(key)
            if tenant is not None and str(tenant) in self.overrides:
                return self.overrides[str(tenant)]
        return self.default_limit


def build_rate_limit(
    *,
    default_limit: int,
    overrides: dict[str, int],
    redis_url: str,
    tenant_of: Callable[[str], Awaitable[UUID | None]] | None,
) -> tuple[KeyRateLimitConfig, dict[str, Store]]:
    """The middleware config and the ``stores`` mapping of the app.

    Args:
        default_limit: requests per minute of a key without an override (``BILLING_RATE_LIMIT_PER_MINUTE``).
        overrides: :meth:`billing.settings.Settings.rate_limit_overrides`.
        redis_url: ``BILLING_REDIS_URL``; empty: a per-process :class:`ProcessStore`.
        tenant_of: ``async (key) -> tenant id | None`` (only called when there are overrides).
    """
    redis = None
    store: Store
    if redis_url:
        from litestar.stores.redis import RedisStore
        from redis.asyncio import Redis

        redis = Redis.from_url(redis_url)
        store = RedisStore(redis, namespace="billing_rate_limit", handle_client_shutdown=True)
    else:
        store = ProcessStore()
    config = KeyRateLimitConfig(
        rate_limit=(WINDOW, default_limit),
        store=STORE_NAME,
        middleware_class=KeyRateLimitMiddleware,
        default_limit=default_limit,
        overrides=overrides,
        redis=redis,
        tenant_of=tenant_of,
    )
    return config, {STORE_NAME: store}
