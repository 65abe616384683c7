"""Benchmark: the auditor's history queries with 1,000,000 events stored.

Generates Contact events efficiently — each contact Added, Deferred (outside business hours), Dispatched
(with its ``allowed_by`` rule) and Sent, 4 events per contact, across campaigns of 1,000 contacts where
every invoice appears in two campaigns and every phone in about five — encodes them with the event
store's own mapper and writes them to ``billing_events`` with ``COPY``, and projects them with the real
projection writers (:class:`~billing.projections.writers.ViewWriter` and the history writer) in chunks.

Then it times ``GET /history/invoice/{ref}`` and ``GET /history/phone/{e164}`` through the litestar app
(in process, ``httpx.ASGITransport``: routing, JWT, the two indexed queries, JSON), random invoices and
phones, sequentially. Baselines in the same run: the same queries with a small store (``--small``
events), and ``GET /health/live`` through the same app (the framework's floor).

Run: ``.venv/bin/python bench/history.py [--events 1000000] [--small 10000] [--queries 500]``
(PostgreSQL at 127.0.0.1:5432; the database is dropped at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid5

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import GATEWAY, scratch_container

from billing.api.auth import mint_token
from billing.domain.contact import Contact
from billing.projections.history import write_history
from billing.projections.views import project_pending
from billing.projections.writers import ViewWriter
from billing.services.tenants import TenantService
from billing.webapp import create_app

BASE = "/api/billing/v1/billing"
SECRET = "b" * 32
PER_CAMPAIGN = 1000
EVENTS_PER_CONTACT = 4
CHUNK_CONTACTS = 5000
T0 = datetime(2025, 1, 6, 12, 0, tzinfo=UTC)


def phone_of(n: int) -> tuple[str, str]:
    number = f"55119{80000000 + n:08d}"
    return "+" + number, number


def contact_events(tenant_id: UUID, campaign: int, index: int, phones: int) -> list[Any]:
    """The 4 events of contact ``index`` of campaign ``campaign``: invoices pair campaigns (2c, 2c+1)."""
    campaign_id = uuid5(tenant_id, f"campaign-{campaign}")
    queue_id = uuid5(tenant_id, f"queue-{campaign}")
    cid = uuid5(campaign_id, str(index))
    invoice = f"NF-{(campaign // 2) * PER_CAMPAIGN + index:07d}"
    e164, digits = phone_of((campaign * PER_CAMPAIGN + index) % phones)
    at = T0 + timedelta(days=campaign // 4, seconds=index)
    common = {"originator_id": cid, "timestamp": at}
    added = Contact.Added(
        originator_version=1, originator_topic="billing.Contact", tenant_id=tenant_id,
        campaign_id=campaign_id, queue_id=queue_id, index=index, template_type="overdue",
        external_id=f"lote-{campaign}", invoice_ref=invoice,
        fields={"nome": f"Cliente {index}", "telefone": e164, "valor": "R$ 150,00", "external_id": invoice},
        telefone=e164, phone=e164, gateway_number=digits, amount=Decimal("150.00"), amount_total=None,
        due_date=None, ordinal=index, **common,
    )  # fmt: skip
    later = {"originator_id": cid}
    deferred = Contact.Deferred(
        originator_version=2, timestamp=at + timedelta(seconds=1), reason="outside_business_hours",
        not_before=at + timedelta(hours=1), **later,
    )  # fmt: skip
    rule = {
        "policy_version": 1,
        "business_hours": {"applies": True, "open": True, "window_start": "2025-01-06T08:00:00-03:00",
                           "window_end": "2025-01-06T18:00:00-03:00", "timezone": "America/Sao_Paulo",
                           "calendar_version": 1},
        "throttle": {"decision": "allowed", "messages_per_minute": 20, "sent_in_window": index % 20,
                     "max_messages_per_day": 1000, "sent_today": index, "local_date": "2025-01-06"},
    }  # fmt: skip
    dispatched = Contact.Dispatched(
        originator_version=3, timestamp=at + timedelta(hours=1), attempt=1,
        lease_until=at + timedelta(hours=1, minutes=2), allowed_by=rule, **later,
    )  # fmt: skip
    sent = Contact.Sent(
        originator_version=4, timestamp=at + timedelta(hours=1, seconds=2),
        gateway_message_id=f"3EB0{cid.hex[:18].upper()}", remote_jid=f"{digits}@s.whatsapp.net",
        text=f"Olá Cliente {index}, a fatura {invoice} de R$ 150,00 venceu.", template_id=None,
        template_version=1, variation=index % 3, **later,
    )  # fmt: skip
    return [added, deferred, dispatched, sent]


def load(container: Any, tenant_id: UUID, first: int, count: int, phones: int) -> None:
    """Store and project contacts ``first .. first+count`` (their 4 events each) in chunks, with COPY."""
    mapper = container.store.mapper
    done = first
    while done < first + count:
        n = min(CHUNK_CONTACTS, first + count - done)
        events = [
            e
            for k in range(done, done + n)
            for e in contact_events(tenant_id, k // PER_CAMPAIGN, k % PER_CAMPAIGN, phones)
        ]
        stored = [mapper.to_stored_event(e) for e in events]
        copy_sql = "COPY billing_events (originator_id, originator_version, topic, state) FROM STDIN"
        with (
            psycopg.connect(container.settings.database_url) as conn,
            conn.transaction(),
            conn.cursor() as cur,
        ):
            with cur.copy(copy_sql) as copy:
                for s in stored:
                    copy.write_row((s.originator_id, s.originator_version, s.topic, s.state))
            last = cur.execute(
                "SELECT currval(pg_get_serial_sequence('billing_events', 'notification_id'))"
            ).fetchone()
        assert last is not None
        ids = range(int(last[0]) - len(events) + 1, int(last[0]) + 1)
        with container.pool.connection() as conn, conn.transaction():
            writer = ViewWriter(conn)
            for e in events:
                writer.apply(e)
            writer.flush()
            write_history(conn, list(zip(ids, events, strict=True)), writer.contacts)
            conn.execute("UPDATE tracking SET position = %s WHERE name = 'projections'", (ids[-1],))
        done += n


async def timed(client: httpx.AsyncClient, paths: list[str], headers: dict[str, str]) -> list[float]:
    """Latency (ms) of each GET, sequentially; every answer must be 200."""
    out = []
    for path in paths:
        start = time.perf_counter()
        response = await client.get(path, headers=headers)
        out.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, (path, response.status_code, response.text[:200])
    return out


def p(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]
    )


async def measure(
    app: Any, tenant_id: UUID, contacts: int, phones: int, queries: int, seed: int
) -> dict[str, Any]:
    rng = random.Random(seed)
    campaigns = max(1, contacts // PER_CAMPAIGN)
    invoices = [
        f"NF-{(c // 2) * PER_CAMPAIGN + i:07d}"
        for c, i in (
            (rng.randrange(campaigns), rng.randrange(min(PER_CAMPAIGN, contacts))) for _ in range(queries)
        )
    ]
    numbers = [phone_of(rng.randrange(min(phones, contacts)))[0] for _ in range(queries)]
    headers = {"Authorization": f"Bearer {mint_token(SECRET, tenant_id)}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        await timed(client, [f"{BASE}/history/invoice/{invoices[0]}"] * 20, headers)  # warm-up
        live = await timed(client, ["/health/live"] * queries, {})
        inv = await timed(client, [f"{BASE}/history/invoice/{ref}" for ref in invoices], headers)
        ph = await timed(client, [f"{BASE}/history/phone/{n}" for n in numbers], headers)
        sample = (await client.get(f"{BASE}/history/invoice/{invoices[0]}", headers=headers)).json()
    return {"live": live, "invoice": inv, "phone": ph, "events_per_invoice": len(sample["events"])}


def report(label: str, stored: int, r: dict[str, Any]) -> None:
    for name in ("invoice", "phone", "live"):
        v = r[name]
        print(
            f"{label:>7} {stored:>9,} events  {name:<8} p50 {p(v, 50):7.2f} ms  p99 {p(v, 99):7.2f} ms"
            f"  max {max(v):7.2f} ms  (n={len(v)})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with scratch_container("billing_bench_history", jwt_secret=SECRET, log_level="WARNING") as (
        url,
        container,
    ):
        tenant_id = TenantService(container.store, container.clock).create_tenant(
            name="Bench", gateway=GATEWAY
        )
        project_pending(container.store, container.pool)
        app = create_app(container)
        small = args.small // EVENTS_PER_CONTACT
        total = args.events // EVENTS_PER_CONTACT
        phones = max(1, total // 5)
        start = time.perf_counter()
        load(container, tenant_id, 0, small, phones)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ANALYZE")
        baseline = asyncio.run(measure(app, tenant_id, small, phones, args.queries, args.seed))
        load(container, tenant_id, small, total - small, phones)
        loaded = time.perf_counter() - start
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ANALYZE")
            stored = conn.execute("SELECT count(*) FROM billing_events").fetchone()
            history_rows = conn.execute("SELECT count(*) FROM contact_history").fetchone()
        assert stored is not None and history_rows is not None
        big = asyncio.run(measure(app, tenant_id, total, phones, args.queries, args.seed))
        print(
            f"generated and projected {stored[0]:,} events ({history_rows[0]:,} history rows)"
            f" in {loaded:.0f} s"
        )
        print(f"an invoice's history holds {big['events_per_invoice']} events (2 campaigns); a phone's ~20")
        report("small", args.small, baseline)
        report("large", int(stored[0]), big)
        for name_ in ("invoice", "phone"):
            ratio = p(big[name_], 99) / p(baseline[name_], 99)
            print(
                f"p99 {name_} at {int(stored[0]):,} / at {args.small:,} events: {ratio:.2f}x"
                " (target: p99 < 50 ms)"
            )


if __name__ == "__main__":
    main()
