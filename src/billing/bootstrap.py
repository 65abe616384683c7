"""The composition root: builds pools, the event store, the broker, the clock and gateway clients from one
:class:`~billing.settings.Settings`, and from them each process's parts — every part gets exactly the
dependencies it uses (the worker's handler and scheduler: :func:`build_handler`, :func:`build_scheduler`;
the relay: :func:`build_relay`). The worker, relay, projections and hooks processes are built by their
bodies here (``run_*_process(container, stop)``); the web app reads its services off the container it is
given. Nothing connects at import time.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import httpx

from billing.db import ViewsPool, open_pool
from billing.eventstore import EventStore, open_event_store
from billing.gateway.client import EvolutionClient
from billing.netguard import GuardedTransport, check_url
from billing.outbox.broker import Broker
from billing.services.clock import Clock, SystemClock
from billing.settings import Settings

if TYPE_CHECKING:
    from billing.outbox.broker import Publisher
    from billing.outbox.relay import OutboxRelay
    from billing.worker.handler import JobHandler
    from billing.worker.scheduler import Scheduler


class GatewayClients:
    """The :class:`~billing.gateway.client.GatewayFactory` of a process: builds a tenant's Evolution API
    client on the one shared HTTP transport (``transport``, which the
    health probe, :func:`billing.worker.health.probe_connection_state`, calls too).

    ``config`` is ``{base_url, instance, api_key, api_version}`` (see :mod:`billing.domain.tenant`);
    ``timeout_s`` is each call's timeout on top of its typing delay (``BILLING_GATEWAY_TIMEOUT_S``)."""

    def __init__(self, transport: httpx.AsyncBaseTransport, *, timeout_s: float) -> None:
        self.transport = transport
        self.timeout_s = timeout_s

    def __call__(self, config: Mapping[str, str]) -> EvolutionClient:
        return EvolutionClient(
            self.transport,
            base_url=config["base_url"],
            api_key=config["api_key"],
            instance=config["instance"],
            api_version=config["api_version"],  # type: ignore[arg-type]
            timeout_s=self.timeout_s,
        )


@dataclass
class Container:
    """Everything a process shares.

    Attributes:
        settings: validated settings.
        store: the event store (sync library; call through ``asyncio.to_thread`` from async code).
        pool: sync psycopg pool (dict rows) for the read models and operational tables.
        broker: RabbitMQ or the in-process broker (``None`` for processes that need none).
        clock: the time source.
        gateway_transport: the shared HTTP transport of gateway calls (default:
            :class:`billing.netguard.GuardedTransport`, which refuses forbidden addresses at connect time;
            tests set an ``httpx.ASGITransport`` on a simulator); the gateway clients and the health
            probe call it directly.
    """

    settings: Settings
    store: EventStore
    pool: ViewsPool
    broker: Broker | None
    clock: Clock = field(default_factory=SystemClock)
    gateway_transport: httpx.AsyncBaseTransport | None = None

    def gateways(self) -> GatewayClients:
        """The gateway client factory on this process's shared HTTP transport (created on first use); every
        gateway call passes the SSRF guard (:mod:`billing.netguard`) unless a test set its own transport."""
        if self.gateway_transport is None:
            self.gateway_transport = GuardedTransport(allow_private=self.settings.gateway_allow_private)
        return GatewayClients(self.gateway_transport, timeout_s=self.settings.gateway_timeout_s)

    def check_gateway_url(self, url: str) -> None:
        """The save-time SSRF check of a tenant's gateway URL under this process's settings
        (:func:`billing.netguard.check_url`; resolves names, blocking). Raises UnsafeAddressError."""
        check_url(url, allow_private=self.settings.gateway_allow_private)

    async def aclose(self) -> None:
        """Close what this container opened."""
        if self.gateway_transport is not None:
            await self.gateway_transport.aclose()
        if self.broker is not None:
            await self.broker.close()
        self.pool.close()
        self.store.close()


def build_container(
    settings: Settings, *, broker: Broker | None = None, clock: Clock | None = None
) -> Container:
    """Open the event store and the views pool for ``settings`` (the broker is connected by the caller)."""
    store = open_event_store(settings.database_url, pool_size=settings.pool_size, create_table=False)
    pool = open_pool(settings.database_url, size=settings.pool_size)
    return Container(settings=settings, store=store, pool=pool, broker=broker, clock=clock or SystemClock())


def build_handler(
    container: Container, *, rng: random.Random | None = None, cache_ttl_s: float = 5.0
) -> JobHandler:
    """The worker's job handler over the container's store, pool, clock and HTTP client. Tenants, active
    templates, gateway blocks and engagement settings are reused for ``cache_ttl_s`` real seconds (0:
    read every time); the contacts' saves are grouped with ``BILLING_SAVE_LINGER_MS``."""
    from billing.worker.groupcommit import GroupCommitter
    from billing.worker.handler import JobHandler, TenantCache
    from billing.worker.health import GatewayHealth
    from billing.worker.ledger import SendLedger, margin_for
    from billing.worker.recipient import Recipient
    from billing.worker.rendering import Renderer, template_variations_at

    linger_s = container.settings.save_linger_ms / 1000
    return JobHandler(
        store=container.store,
        saves=GroupCommitter.for_store(container.store, linger_s=linger_s),
        tenants=TenantCache(ttl_s=cache_ttl_s),
        ledger=SendLedger(container.pool, margin=margin_for(container.clock)),
        renderer=Renderer(
            container.pool,
            ttl_s=cache_ttl_s,
            variations_at=partial(template_variations_at, container.store),
        ),
        health=GatewayHealth(),
        gateways=container.gateways(),
        clock=container.clock,
        lease_s=container.settings.dispatch_lease_s,
        gateway_timeout_s=container.settings.gateway_timeout_s,
        recipient=Recipient(container.store, container.pool, engagement_ttl_s=cache_ttl_s),
        rng=rng,
        block_ttl_s=cache_ttl_s,
    )


def _broker(container: Container, what: str) -> Broker:
    """The container's broker. Raises ValueError naming ``what`` needs it when there is none."""
    if container.broker is None:
        raise ValueError(f"{what} needs a broker")
    return container.broker


def build_scheduler(container: Container) -> Scheduler:
    """The worker's scheduler: the views pool, the store, a publisher of the container's broker.

    Raises:
        ValueError: the container has no broker.
    """
    from billing.worker.ledger import SendLedger, margin_for
    from billing.worker.scheduler import Scheduler

    broker = _broker(container, "the scheduler")
    return Scheduler(
        pool=container.pool,
        store=container.store,
        publisher=broker.publisher(),
        topology=broker.topology,
        ledger=SendLedger(container.pool, margin=margin_for(container.clock)),
        clock=container.clock,
    )


async def run_worker_process(
    container: Container,
    stop: asyncio.Event,
    *,
    handler: JobHandler | None = None,
    scheduler_interval_s: float = 2.0,
) -> None:
    """The ``billing worker`` process body: its handler and scheduler built from the container, run until
    ``stop`` (:func:`billing.worker.runner.run_worker`).

    Raises:
        ValueError: the container has no broker.
    """
    from billing.worker.runner import run_worker

    await run_worker(
        _broker(container, "the worker"),
        stop,
        handler=handler or build_handler(container),
        scheduler=build_scheduler(container),
        prefetch=container.settings.worker_prefetch,
        drain_s=container.settings.dispatch_lease_s,
        scheduler_interval_s=scheduler_interval_s,
    )


def build_relay(container: Container, *, publisher: Publisher | None = None) -> OutboxRelay:
    """The outbox relay over the container's store, pool and broker, following the notification log with
    the settings' database URL and poll interval; ``publisher`` as :class:`~billing.outbox.relay.OutboxRelay`
    takes it (default: the broker's, made on first use).

    Raises:
        ValueError: the container has no broker.
    """
    from billing.outbox.relay import OutboxRelay

    return OutboxRelay(
        container.store,
        container.pool,
        _broker(container, "the relay"),
        database_url=container.settings.database_url,
        poll_interval_s=container.settings.poll_interval_s,
        publisher=publisher,
    )


async def run_relay_process(container: Container, stop: asyncio.Event) -> None:
    """The ``billing relay`` process body: :func:`build_relay`, run until ``stop`` is set.

    Raises:
        ValueError: the container has no broker.
    """
    await build_relay(container).run(stop)


async def run_projections_process(container: Container, stop: asyncio.Event) -> None:
    """The ``billing projections`` process body: the projection's follower over the container's store and
    pool (:func:`billing.projections.views.projection_follower`), run until ``stop`` is set. Never returns
    on an error: failures are logged and retried with backoff."""
    from billing.projections.views import projection_follower

    follower = projection_follower(
        container.store,
        container.pool,
        database_url=container.settings.database_url,
        poll_interval_s=container.settings.poll_interval_s,
    )
    await follower.run(stop)


async def run_hooks_process(
    container: Container,
    stop: asyncio.Event,
    *,
    erp_http: httpx.AsyncClient | None = None,
    interval_s: float = 0.5,
) -> None:
    """The ``billing hooks`` process body: :func:`billing.hooks.runner.run_hooks` over the container's
    store, pool, clock and gateway clients, with ``BILLING_WEBHOOKS_ALLOW_PRIVATE``; ``erp_http`` and
    ``interval_s`` as there."""
    from billing.hooks.runner import run_hooks

    settings = container.settings
    await run_hooks(
        container.store,
        container.pool,
        container.clock,
        container.gateways(),
        stop,
        database_url=settings.database_url,
        poll_interval_s=settings.poll_interval_s,
        allow_private=settings.webhooks_allow_private,
        erp_http=erp_http,
        interval_s=interval_s,
    )
