"""Benchmark of "after the send": WhatsApp account lookups per 1,000 contacts, and gateway webhook
requests handled per second.

1. Lookups: a campaign of ``--contacts`` Brazilian mobiles; every contact's account is asked the way the
   worker asks it before the first send (:class:`billing.worker.recipient.Recipient`, against the
   Evolution simulator). Printed: lookup calls per 1,000 contacts with the cache **cold** (first
   campaign) and **warm** (a second campaign to the same phones), beside the same-run baseline of one
   call per contact (the worker without peer batching).
2. Webhooks: ``--webhooks`` ``messages.update`` posts (v2 envelope, secret header) to the API over real
   HTTP with ``--concurrency`` in flight, beside the same-run baseline of the bare ``GET /health/live``.

Run: ``.venv/bin/python bench/after_send.py [--contacts 1000] [--webhooks 2000] [--concurrency 16]``
(PostgreSQL at 127.0.0.1:5432; the lookup throttle is set to 0 s here so the run is short).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4, uuid5

import httpx
import uvicorn

import billing.worker.recipient as recipient_module

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import free_port, scratch_container

from billing.domain.contact import Contact
from billing.gateway.client import EvolutionClient
from billing.gateway.simulator import EvolutionSimulator
from billing.projections.views import project_pending
from billing.services.clock import FakeClock
from billing.services.engagement import EngagementService
from billing.services.tenants import TenantService
from billing.webapp import create_app

GATEWAY = {"base_url": "http://sim", "instance": "bench", "api_key": "k", "api_version": "v2"}
NOW = datetime(2025, 1, 15, 13, 0, tzinfo=UTC)


def campaign(store: object, tenant_id: uuid.UUID, n: int) -> list[Contact]:
    campaign_id, queue_id = uuid4(), uuid4()
    contacts = []
    for i in range(n):
        phone = f"+55119{87000000 + i:08d}"
        contacts.append(
            Contact._create(
                Contact.Added, id=uuid5(campaign_id, str(i)), tenant_id=tenant_id, campaign_id=campaign_id,
                queue_id=queue_id, index=i, template_type="notification", external_id=None, fields={},
                telefone=phone, phone=phone, gateway_number=phone[1:], amount=None, amount_total=None,
                due_date=None, ordinal=i, timestamp=NOW,
            )
        )  # fmt: skip
    store.save(*contacts)  # type: ignore[attr-defined]
    return contacts


async def lookups(container: object, tenant_id: uuid.UUID, n: int, *, peers: bool) -> tuple[int, float]:
    """Lookup calls (and seconds) for one campaign of ``n`` contacts."""
    sim = EvolutionSimulator(time_scale=0.0)
    sim.add_instance("bench", api_key="k")
    transport = httpx.ASGITransport(app=sim.asgi_app)
    http = httpx.AsyncClient(transport=transport)
    client = EvolutionClient(
        transport, base_url="http://sim", api_key="k", instance="bench", api_version="v2"
    )
    contacts = campaign(container.store, tenant_id, n)  # type: ignore[attr-defined]
    project_pending(container.store, container.pool)  # type: ignore[attr-defined]
    recipient = recipient_module.Recipient(container.store, container.pool)  # type: ignore[attr-defined]
    if not peers:
        recipient._peers = lambda contact, now, room: []  # type: ignore[method-assign]
    started = time.perf_counter()
    for contact in contacts:
        await recipient.account(contact, client, NOW + timedelta(minutes=1))
    elapsed = time.perf_counter() - started
    await http.aclose()
    return len(sim.number_checks), elapsed


def serve(app: object, port: int) -> uvicorn.Server:
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server


async def hammer(url: str, n: int, concurrency: int, *, body: bytes | None, headers: dict[str, str]) -> float:
    """Requests per second of ``n`` requests with ``concurrency`` in flight (POST when ``body``)."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                if body is None:
                    response = await client.get(url)
                else:
                    response = await client.post(
                        url, content=body.replace(b"@ID@", str(i).encode()), headers=headers
                    )
                assert response.status_code == 200, response.text

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contacts", type=int, default=1000)
    parser.add_argument("--webhooks", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    recipient_module.LOOKUP_INTERVAL_S = 0.0

    with scratch_container("bench_after", clock=FakeClock(NOW), jwt_secret="b" * 32) as (_, container):
        tenants = TenantService(container.store, container.clock)
        tenant_id = tenants.create_tenant(name="Bench", gateway=GATEWAY)
        other_id = tenants.create_tenant(name="Baseline", gateway=GATEWAY)

        per = 1000 / args.contacts
        cold, cold_s = asyncio.run(lookups(container, tenant_id, args.contacts, peers=True))
        warm, warm_s = asyncio.run(lookups(container, tenant_id, args.contacts, peers=True))
        naive, naive_s = asyncio.run(lookups(container, other_id, args.contacts, peers=False))
        print(f"lookups per 1,000 contacts, cache cold: {cold * per:.0f} calls ({cold_s:.2f} s)")
        print(f"lookups per 1,000 contacts, cache warm: {warm * per:.0f} calls ({warm_s:.2f} s)")
        print(f"  baseline, one lookup per contact (no batching): {naive * per:.0f} calls ({naive_s:.2f} s)")

        secret = EngagementService(container.store, container.pool, container.clock).new_gateway_secret(
            tenant_id
        )
        port = free_port()
        server = serve(create_app(container), port)
        body = (
            b'{"event":"messages.update","instance":"bench","data":{"keyId":"3EB0@ID@",'
            b'"remoteJid":"5511987000000@s.whatsapp.net","fromMe":true,"status":"DELIVERY_ACK"}}'
        )
        base = f"http://127.0.0.1:{port}"
        hook_url = f"{base}/api/billing/v1/billing/gateway/events/{tenant_id}"
        headers = {"content-type": "application/json", "X-Billing-Webhook-Secret": secret}
        asyncio.run(hammer(hook_url, 50, 4, body=body, headers=headers))  # warm up
        hooks = asyncio.run(hammer(hook_url, args.webhooks, args.concurrency, body=body, headers=headers))
        live = asyncio.run(
            hammer(f"{base}/health/live", args.webhooks, args.concurrency, body=None, headers={})
        )
        print(f"webhook requests handled: {hooks:.0f}/s (stored in the inbox, {args.concurrency} in flight)")
        print(f"  baseline, bare GET /health/live: {live:.0f}/s (ratio {hooks / live:.2f})")
        server.should_exit = True


if __name__ == "__main__":
    main()
