"""The ``billing hooks`` process body: apply the gateway's webhooks and deliver the ERP's."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from uuid import UUID

import httpx
import structlog

from billing.db import ViewsPool
from billing.domain.delivery import OutcomeKind
from billing.domain.tenant import Tenant
from billing.eventstore import EventStore, get_owned
from billing.gateway.client import GatewayFactory
from billing.hooks.erp import ErpDispatcher, ErpOutbox
from billing.hooks.inbox import InboxApplier
from billing.netguard import guarded_client
from billing.services.clock import Clock

__all__ = ["run_hooks"]

log = structlog.get_logger(__name__)


def _confirmation_sender(
    store: EventStore, gateways: GatewayFactory
) -> Callable[[UUID, str, str], Awaitable[str | None]]:
    async def send(tenant_id: UUID, phone: str, text: str) -> str | None:
        tenant = await asyncio.to_thread(get_owned, store, tenant_id, Tenant)
        if tenant is None:
            return None
        outcome = await gateways(tenant.gateway).send_text(phone.removeprefix("+"), text)
        return outcome.message_id if outcome.kind is OutcomeKind.SENT else None

    return send


async def run_hooks(
    store: EventStore,
    pool: ViewsPool,
    clock: Clock,
    gateways: GatewayFactory,
    stop: asyncio.Event,
    *,
    database_url: str,
    poll_interval_s: float,
    allow_private: bool,
    erp_http: httpx.AsyncClient | None = None,
    interval_s: float = 0.5,
) -> None:
    """Run the inbox applier, the ERP outbox follower and the ERP dispatcher until ``stop`` is set.

    Args:
        store / pool / clock: the event store, the views pool and the time source.
        gateways: a tenant's Evolution API client from its gateway config (the opt-out confirmations).
        database_url / poll_interval_s: where the ERP outbox follower LISTENs, and how often (seconds) it
            polls when no notification wakes it.
        allow_private: ERP endpoints may be loopback or private addresses
            (``BILLING_WEBHOOKS_ALLOW_PRIVATE``).
        erp_http: the client of ERP calls (default: :func:`billing.netguard.guarded_client`, closed at the
            end); it must check each connection's address as that one does — the dispatcher checks only
            the URL's shape, so the host is resolved once per connection.
        interval_s: seconds between the inbox's and the dispatcher's passes.
    """
    own_http = erp_http is None
    http = erp_http or guarded_client(allow_private=allow_private)
    inbox = InboxApplier(store, pool, clock, send_confirmation=_confirmation_sender(store, gateways))
    outbox = ErpOutbox(store, pool, clock)
    dispatcher = ErpDispatcher(store, pool, clock, http)
    log.info("hooks_started")
    try:
        await asyncio.gather(
            inbox.run(stop, interval_s=interval_s),
            outbox.follower(database_url, poll_interval_s).run(stop),
            dispatcher.run(stop, outbox, interval_s=interval_s),
        )
    finally:
        if own_http:
            await http.aclose()
