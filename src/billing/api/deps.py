"""The services the HTTP handlers use, built once per app from the container."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from billing.api.auth import API_KEY_DIGEST_STATE, API_KEY_HEADER
from billing.api.errors import Unauthorized
from billing.bootstrap import Container
from billing.db import async_read_pool
from billing.domain.apikey import api_key_id
from billing.logging import get_logger
from billing.services.cancel import CancelService
from billing.services.config import ConfigService
from billing.services.engagement import EngagementService
from billing.services.history import HistoryQueries
from billing.services.ingest import IngestService
from billing.services.queries import Queries, StatusReads
from billing.services.templates import TemplateService
from billing.services.tenants import TenantService, hash_api_key
from billing.services.usage import KeyUsage
from billing.services.users import UserService

T = TypeVar("T")
log = get_logger(__name__)


@dataclass
class Services:
    """Application services of the API process."""

    container: Container
    tenants: TenantService
    ingest: IngestService
    templates: TemplateService
    queries: Queries
    status: StatusReads
    """Its pool is opened and closed by the app's lifespan (:func:`billing.webapp.create_app`)."""
    cancel: CancelService
    users: UserService
    key_usage: KeyUsage
    key_lookups: KeyLookups
    """The key check's cache misses, read together (one thread hop for all the misses of a loop turn)."""
    engagement: EngagementService
    history: HistoryQueries
    config: ConfigService
    """Policy and gateway changes with the paused queues' review (``PATCH /config/``, the settings page)."""

    @classmethod
    def build(cls, container: Container) -> Services:
        """Wire the services over the container's ports."""
        queries = Queries(container.pool)
        tenants = TenantService(
            container.store, container.clock, gateway_url_guard=container.check_gateway_url
        )
        engagement = EngagementService(
            container.store,
            container.pool,
            container.clock,
            allow_private=container.settings.webhooks_allow_private,
        )
        return cls(
            container=container,
            tenants=tenants,
            ingest=IngestService(container.store, queries, container.clock),
            templates=TemplateService(container.store, container.clock),
            queries=queries,
            status=StatusReads(
                async_read_pool(container.settings.database_url, size=container.settings.pool_size)
            ),
            cancel=CancelService(container.store, container.pool, container.clock),
            users=UserService(container.store, container.pool, container.clock),
            key_usage=KeyUsage(container.pool),
            key_lookups=KeyLookups(tenants),
            engagement=engagement,
            history=HistoryQueries(container.pool),
            config=ConfigService(tenants, engagement),
        )


async def run_sync(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a synchronous service call (the event store and pool are sync) in a worker thread."""
    return await asyncio.to_thread(func, *args, **kwargs)


class KeyLookups:
    """The key check's cache misses, answered together: every miss of one turn of the event loop waits
    for ONE thread hop and ONE read (:meth:`TenantService.authenticate_digests`) instead of one each.

    Misses come together: when the cache's answers expire (10 s) or a process starts while many ERPs
    poll, each of their keys misses at once. A request that is cancelled while waiting does not cancel
    the read the others wait for. Use from one event loop (the app's).
    """

    def __init__(self, tenants: TenantService) -> None:
        self.tenants = tenants
        self._waiting: dict[str, asyncio.Future[UUID | None]] = {}
        self._reads: set[asyncio.Task[None]] = set()

    async def tenant_of(self, digest: str) -> UUID | None:
        """The tenant of the key whose SHA-256 hex digest is ``digest``, or None (unknown, revoked).

        Raises:
            psycopg.Error: the database is unreachable.
        """
        future = self._waiting.get(digest)
        if future is None:
            loop = asyncio.get_running_loop()
            if not self._waiting:  # the first miss of this turn: read once the turn's requests are in
                loop.call_soon(self._read_waiting)
            future = self._waiting[digest] = loop.create_future()
        return await asyncio.shield(future)

    def _read_waiting(self) -> None:
        batch, self._waiting = self._waiting, {}
        task = asyncio.get_running_loop().create_task(self._read(batch))
        self._reads.add(task)  # held until done (the loop keeps only a weak reference)
        task.add_done_callback(self._reads.discard)

    async def _read(self, batch: dict[str, asyncio.Future[UUID | None]]) -> None:
        try:
            answers = await asyncio.to_thread(self.tenants.authenticate_digests, list(batch))
        except Exception as exc:
            for future in batch.values():
                if not future.done():
                    future.set_exception(exc)
        else:
            for digest, future in batch.items():
                if not future.done():
                    future.set_result(answers[digest])
        finally:  # the read itself was cancelled (the app stopping): so are its waiters
            for future in batch.values():
                if not future.done():
                    future.cancel()


async def tenant_of_key(services: Services, key: str, digest: str | None = None) -> UUID | None:
    """The tenant of the clear-text API ``key`` (None: unknown, revoked): a recent answer from memory
    (no thread hop), else through :class:`KeyLookups`. ``digest``: its :func:`hash_api_key`, when known.

    Raises:
        psycopg.Error: the database is unreachable.
    """
    digest = digest or hash_api_key(key)
    known, tenant_id = services.tenants.cached_tenant(key, digest)
    if known:
        return tenant_id
    return await services.key_lookups.tenant_of(digest)


async def flush_key_usage_every(usage: KeyUsage, every_s: float, stop: asyncio.Event) -> None:
    """Write the API keys' noted uses (:meth:`KeyUsage.flush`, in a thread) every ``every_s`` seconds, and
    once more when ``stop`` is set, then return (the API's lifespan task: a flush under way finishes
    before the last one starts). A failed flush is logged and its uses stay noted for the next one (the
    last use is shown to the minute: no retry loop)."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        try:
            await run_sync(usage.flush)
        except Exception as exc:
            log.warning("api key last use not written; retried at the next flush", error=type(exc).__name__)


async def provide_services(request: Request[Any, Any, Any]) -> Services:
    """Litestar dependency: the app's services."""
    services: Services = request.app.state.services
    return services


async def api_key_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard of the public API: authenticate ``X-Billing-API-Key`` before anything reads the body (guards
    run first), keeping the tenant in the connection's state for :func:`provide_tenant_id`.

    Raises:
        Unauthorized: missing, unknown or revoked key (401).
    """
    key = connection.headers.get(API_KEY_HEADER)
    if not key:
        raise Unauthorized(f"missing {API_KEY_HEADER} header", field=API_KEY_HEADER)
    services: Services = connection.app.state.services
    digest = connection.scope.get("state", {}).get(API_KEY_DIGEST_STATE) or hash_api_key(key)
    tenant_id = await tenant_of_key(services, key, digest)
    if tenant_id is None:
        raise Unauthorized("unknown or revoked API key", field=API_KEY_HEADER)
    services.key_usage.record(api_key_id(digest), services.container.clock.now())  # written behind
    connection.state.tenant_id = tenant_id


async def provide_tenant_id(request: Request[Any, Any, Any], services: Services) -> UUID:
    """Litestar dependency of the public API: the tenant :func:`api_key_guard` authenticated.

    It takes ``services`` (unused) so that litestar resolves the two dependencies one after the other:
    two independent dependencies form one batch, which litestar resolves in an anyio task group (two tasks
    per request); that cost 20-40 % of a status poll's CPU (``bench/status.py``)."""
    del services
    tenant_id: UUID = request.state.tenant_id
    return tenant_id
