"""The composition root: builds pools, the event store, the broker, the clock and gateway clients from one
:class:`~billing.settings.Settings` and hands them to the processes. Nothing connects at import time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from billing.db import ViewsPool, open_pool
from billing.eventstore import EventStore, open_event_store
from billing.gateway.client import EvolutionClient
from billing.netguard import check_url, guarded_client
from billing.outbox.broker import Broker
from billing.services.clock import Clock, SystemClock
from billing.settings import Settings

GatewayFactory = Callable[[Mapping[str, str]], EvolutionClient]


@dataclass
class Container:
    """Everything a process shares.

    Attributes:
        settings: validated settings.
        store: the event store (sync library; call through ``asyncio.to_thread`` from async code).
        pool: sync psycopg pool (dict rows) for the read models and operational tables.
        broker: RabbitMQ or the in-process broker (``None`` for processes that need none).
        clock: the time source.
        http: the shared async HTTP client of gateway calls (default: :func:`billing.netguard.guarded_client`,
            which refuses forbidden addresses at connect time).
    """

    settings: Settings
    store: EventStore
    pool: ViewsPool
    broker: Broker | None
    clock: Clock = field(default_factory=SystemClock)
    http: httpx.AsyncClient | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def gateway(self, config: Mapping[str, str]) -> EvolutionClient:
        """An Evolution API client for a tenant's gateway config.

        ``config`` is ``{base_url, instance, api_key, api_version}`` (see :mod:`billing.domain.tenant`).
        """
        if self.http is None:  # every gateway call passes the SSRF guard (billing.netguard)
            self.http = guarded_client(allow_private=self.settings.gateway_allow_private)
        return EvolutionClient(
            self.http,
            base_url=config["base_url"],
            api_key=config["api_key"],
            instance=config["instance"],
            api_version=config["api_version"],  # type: ignore[arg-type]
            timeout_s=self.settings.gateway_timeout_s,
        )

    def check_gateway_url(self, url: str) -> None:
        """The save-time SSRF check of a tenant's gateway URL under this process's settings
        (:func:`billing.netguard.check_url`; resolves names, blocking). Raises UnsafeAddressError."""
        check_url(url, allow_private=self.settings.gateway_allow_private)

    async def aclose(self) -> None:
        """Close what this container opened."""
        if self.http is not None:
            await self.http.aclose()
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
