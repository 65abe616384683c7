"""Benchmark: the dashboard's overview with 1,000,000 contacts stored for the tenant.

Fills a scratch database with one tenant, 100 campaigns/queues and 1,000,000 ``campaign_contacts`` rows
spread over 30 days, and the matching ``outcome_counts`` read model (what the projection keeps), then
measures in the same run:

- the overview page (``GET /dashboard/?days=30``, logged in, over HTTP to uvicorn: session, user and
  tenant load, query, Jinja rendering) — target p95 < 100 ms — beside ``GET /health/live`` on the same
  server;
- its query alone (``DashboardQueries.overview``);
- baselines: a bare ``SELECT 1`` round trip, and the admin API's ``/stats/`` query, which counts every
  contact of the tenant (what the overview must not do).

Run: ``.venv/bin/python bench/overview.py [--contacts 1000000] [--runs 200]`` (PostgreSQL at 127.0.0.1).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import GATEWAY, free_port, scratch_container

from billing.projections.views import project_pending
from billing.services.clock import FakeClock
from billing.services.overview import DashboardQueries
from billing.services.queries import Queries
from billing.services.tenants import TenantService
from billing.services.users import UserService
from billing.webapp import create_app

NOW = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)
OUTCOMES = ("sent", "sent", "sent", "sent", "failed", "skipped", "rejected", "cancelled")


def fill(url: str, tenant_id: uuid.UUID, contacts: int) -> None:
    """Campaigns, queues, contacts and their outcome counts, written directly in SQL (set-based)."""
    queues = 100
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO campaigns (campaign_id, tenant_id, queue_id, template_type, external_id, accepted,
                                      rejected, created_at)
               SELECT md5('c' || q)::uuid, %(t)s, md5('q' || q)::uuid, 'overdue', 'lote-' || q, %(per)s, 0,
                      %(now)s - (q * interval '7 hours')
               FROM generate_series(1, %(queues)s) q""",
            {"t": tenant_id, "per": contacts // queues, "now": NOW, "queues": queues},
        )
        conn.execute(
            """INSERT INTO queue_status (queue_id, tenant_id, campaign_id, template_type, total, sent,
                                         created_at, started_at, completed_at, updated_at, paused_reason)
               SELECT md5('q' || q)::uuid, %(t)s, md5('c' || q)::uuid, 'overdue', %(per)s, %(per)s,
                      %(now)s - (q * interval '7 hours'), %(now)s - (q * interval '7 hours'),
                      CASE WHEN q > 3 THEN %(now)s - (q * interval '6 hours') END,
                      %(now)s, CASE WHEN q = 2 THEN 'outside_business_hours' END
               FROM generate_series(1, %(queues)s) q""",
            {"t": tenant_id, "per": contacts // queues, "now": NOW, "queues": queues},
        )
        conn.execute(
            """INSERT INTO campaign_contacts (contact_id, tenant_id, campaign_id, queue_id, idx,
                                              template_type, nome, telefone, phone, status, attempts,
                                              message_text,
                                              created_at, updated_at)
               SELECT md5('k' || i)::uuid, %(t)s,
                      md5('c' || (i %% %(queues)s + 1))::uuid,
                      md5('q' || (i %% %(queues)s + 1))::uuid, i / %(queues)s, 'overdue',
                      'Cliente ' || i, '1198' || lpad(i::text, 7, '0'), '+551198' || lpad(i::text, 7, '0'),
                      (ARRAY['sent','sent','sent','sent','failed','skipped','rejected','cancelled'])
                          [i %% 8 + 1],
                      1, 'Olá Cliente ' || i || ', sua fatura de R$ 1.234,56 venceu.',
                      %(now)s - ((i %% 720) * interval '1 hour'),
                      %(now)s - ((i %% 720) * interval '1 hour')
               FROM generate_series(0, %(n)s - 1) i""",
            {"t": tenant_id, "queues": queues, "n": contacts, "now": NOW},
        )
        conn.execute(
            """INSERT INTO outcome_counts (tenant_id, hour, outcome, n)
               SELECT tenant_id, date_trunc('hour', updated_at), status, count(*) FROM campaign_contacts
               WHERE tenant_id = %s GROUP BY 1, 2, 3""",
            (tenant_id,),
        )
        conn.execute("ANALYZE")


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[18]


def measure(func: Callable[[], object], runs: int) -> list[float]:
    for _ in range(5):
        func()  # warm up
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        func()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    with scratch_container("billing_bench_overview", clock=FakeClock(NOW), jwt_secret="o" * 40) as (
        url,
        container,
    ):
        tenant_id = TenantService(container.store, container.clock).create_tenant(
            name="Bench", gateway=GATEWAY
        )
        UserService(container.store, container.pool, container.clock).create(
            tenant_id, email="bench@bench.example", password="senha-do-bench", role="admin"
        )
        project_pending(container.store, container.pool)
        started = time.perf_counter()
        fill(url, tenant_id, args.contacts)
        print(f"filled {args.contacts:,} contacts in {time.perf_counter() - started:.1f} s")
        zone = container.store.repository.get(tenant_id).sending_policy.calendar.tz
        dash, queries = DashboardQueries(container.pool), Queries(container.pool)

        def select_one() -> None:
            with container.pool.connection() as conn:
                conn.execute("SELECT 1").fetchone()

        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app(container), host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            token = re.search(r'name="_csrf_token" value="([^"]+)"', client.get("/dashboard/login").text)
            assert token
            client.post(
                "/dashboard/login",
                data={
                    "email": "bench@bench.example",
                    "password": "senha-do-bench",
                    "_csrf_token": token.group(1),
                },
            )
            page = client.get("/dashboard/?days=30")
            assert page.status_code == 200 and "Visão geral" in page.text, page.status_code
            results = {
                "overview page GET /dashboard/?days=30": measure(
                    lambda: client.get("/dashboard/?days=30"), args.runs
                ),
                "baseline: GET /health/live (same server)": measure(
                    lambda: client.get("/health/live"), args.runs
                ),
                "overview query alone": measure(
                    lambda: dash.overview(tenant_id, days=30, now=NOW, tz=zone), args.runs
                ),
                "baseline: SELECT 1 round trip": measure(select_one, args.runs),
                "baseline: /stats/ count(*) of every contact": measure(
                    lambda: queries.stats(tenant_id), max(10, args.runs // 10)
                ),
            }
        server.should_exit = True
        thread.join(timeout=10)
        totals = dash.overview(tenant_id, days=30, now=NOW, tz=zone)["totals"]
        print(f"30-day totals from outcome_counts: {totals} (sum {sum(totals.values()):,})")
        for label, samples in results.items():
            print(f"{label:<48} p50 {statistics.median(samples):8.2f} ms   p95 {p95(samples):8.2f} ms")
        page_p95 = p95(results["overview page GET /dashboard/?days=30"])
        verdict = "met" if page_p95 < 100 else "NOT met"
        print(f"target: overview page p95 < 100 ms -> {verdict} ({page_p95:.1f} ms)")


if __name__ == "__main__":
    main()
