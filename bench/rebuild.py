"""Benchmark: ``billing projections rebuild`` against a raw read of the same event log.

Builds a log like a busy day's: ``--posts`` POSTs of ``--contacts`` overdue contacts over real HTTP, then
every contact dispatched and sent (as a worker records it: one save per step, batched here for speed), so
about three events per contact. Then, in the same run: the rebuild (what the command runs: replay every
event into copies of the views, index them, swap them in) timed in this process, and the baseline — a
raw psycopg select of every stored event in notification order plus a JSON decode of each state (the
least any replay must do). Goal: the rebuild's rate ≥ 35 % of the baseline's. It also prints the
PostgreSQL server's CPU during each rebuild (from ``/proc``): with this process's, what the rebuild asks
of the machine's cores. ``--cli`` also times the real ``billing projections rebuild`` command (a separate
process, its start-up included), progress bar and all.

Run: ``.venv/bin/python bench/rebuild.py [--posts 2] [--contacts 10000] [--runs 2] [--cli]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from uuid import UUID, uuid5

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BASE, GATEWAY, contacts, postgres_cpu_s, scratch_container, serve

from billing.eventstore import load_many, save_unless_moved
from billing.projections.rebuild import REBUILD_BATCH_SIZE, rebuild_projections
from billing.projections.views import project_pending
from billing.services.tenants import TenantService
from billing.webapp import create_app

CHUNK = 2_000


def raw_read(url: str) -> tuple[int, float]:
    """(events, seconds) of a plain select of the whole log in id order, each state JSON-decoded."""
    started = time.perf_counter()
    count = 0
    with psycopg.connect(url) as conn, conn.cursor(name="scan") as cur:
        cur.itersize = 5_000
        cur.execute("SELECT notification_id, originator_id, topic, state FROM billing_events ORDER BY 1")
        for _id, _oid, _topic, state in cur:
            json.loads(state)
            count += 1
    return count, time.perf_counter() - started


def send_all(container: object, campaign_ids: list[UUID], n: int) -> None:
    """Every contact of the campaigns dispatched, then sent (two saves per chunk of contacts)."""
    store, clock = container.store, container.clock  # type: ignore[attr-defined]
    for campaign_id in campaign_ids:
        ids = [uuid5(campaign_id, str(i)) for i in range(n)]
        for start in range(0, n, CHUNK):
            chunk = ids[start : start + CHUNK]
            loaded = load_many(store, chunk)
            now = clock.now()
            batch = list(loaded.values())
            for contact in batch:
                contact.dispatch(at=now, lease=timedelta(minutes=2))
            assert not save_unless_moved(store, batch)
            loaded = load_many(store, chunk)
            batch = list(loaded.values())
            for contact in batch:
                contact.record_sent(
                    gateway_message_id=f"WA-{contact.index}",
                    remote_jid=f"{contact.gateway_number}@s.whatsapp.net",
                    text=f"Olá {contact.fields['nome']}, a fatura {contact.fields['numero_fatura']} venceu.",
                    at=now + timedelta(seconds=3),
                    template_version=1,
                    variation=0,
                )
            assert not save_unless_moved(store, batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--posts", type=int, default=2)
    parser.add_argument("--contacts", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--cli", action="store_true", help="also time the real command")
    parser.add_argument("--batch-size", type=int, default=0, help="default: the command's own")
    args = parser.parse_args()

    with scratch_container(jwt_secret="b" * 32, pool_size=4) as (url, container):
        tenants = TenantService(container.store, container.clock)
        tenant_id = tenants.create_tenant(name="Bench", gateway=GATEWAY)
        headers = {"X-Billing-API-Key": tenants.issue_api_key(tenant_id, "bench")}
        project_pending(container.store, container.pool)
        campaign_ids = []
        with (
            serve(create_app(container)) as port,
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client,
        ):
            for run in range(args.posts):
                body = {"external_id": f"bench-{run}", "contacts": contacts(args.contacts, run)}
                posted = client.post(f"{BASE}/send/overdue", json=body, headers=headers)
                assert posted.status_code == 202, posted.text
                campaign_ids.append(UUID(posted.json()["campaign_id"]))
        send_all(container, campaign_ids, args.contacts)
        project_pending(container.store, container.pool)
        with psycopg.connect(url) as conn:
            before = conn.execute("SELECT sum(sent) FROM queue_status").fetchone()
        rebuilds, raws, cpus, server_cpus = [], [], [], []
        batch_size = args.batch_size or REBUILD_BATCH_SIZE
        for _ in range(args.runs):
            started, cpu, server = time.perf_counter(), time.process_time(), postgres_cpu_s()
            replayed = rebuild_projections(container.store, container.pool, batch_size=batch_size)
            rebuilds.append(time.perf_counter() - started)
            cpus.append(time.process_time() - cpu)
            server_after = postgres_cpu_s()
            if server is not None and server_after is not None:
                server_cpus.append(server_after - server)
            events, seconds = raw_read(url)
            raws.append(seconds)
        with psycopg.connect(url) as conn:
            after = conn.execute("SELECT sum(sent) FROM queue_status").fetchone()
        assert before == after == (args.posts * args.contacts,), (before, after)
        assert replayed == events
        cli = None
        if args.cli:
            env = {**os.environ, "BILLING_DATABASE_URL": url, "BILLING_LOG_FORMAT": "console"}
            started = time.perf_counter()
            subprocess.run(
                [str(Path(sys.executable).parent / "billing"), "projections", "rebuild"], env=env, check=True
            )
            cli = time.perf_counter() - started
        rebuild, raw = statistics.median(rebuilds), statistics.median(raws)
        print(
            f"projections rebuild of {events:,} events (batches of {batch_size:,}): median {rebuild:.2f} s "
            f"= {events / rebuild:,.0f}/s; this process's CPU {statistics.median(cpus):.2f} s (the rest of "
            "the wall time is PostgreSQL's)"
        )
        if server_cpus:
            print(
                f"  PostgreSQL's CPU during the rebuild (the whole server, from /proc): median "
                f"{statistics.median(server_cpus):.2f} s; with this process's, "
                f"{statistics.median(server_cpus) + statistics.median(cpus):.2f} s of the machine's "
                f"{os.cpu_count()} cores"
            )
        print(f"  baseline: raw select + JSON decode of the rows: median {raw:.2f} s = {events / raw:,.0f}/s")
        ratio = raw / rebuild
        print(f"  ratio: {ratio:.0%} of the raw rate; goal ≥ 35 % -> {'met' if ratio >= 0.35 else 'NOT met'}")
        if cli is not None:
            print(f"  `billing projections rebuild` (a process, start-up included): {cli:.2f} s")


if __name__ == "__main__":
    main()
