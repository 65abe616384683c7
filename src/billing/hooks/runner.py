"""The ``billing hooks`` process body: apply the gateway's webhooks and deliver the ERP's."""

from __future__ import annotations

import asyncio
from uuid import UUID

import httpx
import structlog

from billing.bootstrap import Container
from billing.domain.delivery import OutcomeKind
from billing.domain.tenant import Tenant
from billing.eventstore import get_owned
from billing.hooks.erp import ErpDispatcher, ErpOutbox
from billing.hooks.inbox import InboxApplier
from billing.netguard import guarded_client

__all__ = ["run_hooks"]

log = structlog.get_logger(__name__)


def _confirmation_sender(container: Container):  # type: ignore[no-untyped-def]
    async def send(tenant_id: UUID, phone: str, text: str) -> str | None:
        tenant = await asyncio.to_thread(get_owned, container.store, tenant_id, Tenant)
        if tenant is None:
            return None
        outcome = await container.gateways()(tenant.gateway).send_text(phone.removeprefix("+"), text)
        return outcome.message_id if outcome.kind is OutcomeKind.SENT else None

    return send


async def run_hooks(
    container: Container,
    stop: asyncio.Event,
    *,
    erp_http: httpx.AsyncClient | None = None,
    interval_s: float = 0.5,
) -> None:
    """Run the inbox applier, the ERP outbox follower and the ERP dispatcher until ``stop`` is set.

    ``erp_http`` is the client of ERP calls (default: :func:`billing.netguard.guarded_client`, which checks
    each connection's address, closed at the end).
    """
    settings = container.settings
    own_http = erp_http is None
    http = erp_http or guarded_client(allow_private=settings.webhooks_allow_private)
    inbox = InboxApplier(
        container.store, container.pool, container.clock, send_confirmation=_confirmation_sender(container)
    )
    outbox = ErpOutbox(container.store, container.pool, container.clock)
    dispatcher = ErpDispatcher(
        container.store, container.pool, container.clock, http, allow_private=settings.webhooks_allow_private
    )
    log.info("hooks_started")
    try:
        await asyncio.gather(
            inbox.run(stop, interval_s=interval_s),
            outbox.follower(settings.database_url, settings.poll_interval_s).run(stop),
            dispatcher.run(stop, outbox, interval_s=interval_s),
        )
    finally:
        if own_http:
            await http.aclose()
