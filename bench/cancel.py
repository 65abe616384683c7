"""Benchmark: cancel a whole queue (``POST /queue/{id}/cancel``) of 3,000 and of 10,000 contacts, over real
HTTP against the real PostgreSQL.

Each queue is POSTed first (as the ERP does), then cancelled; printed: the time to the cancel's answer,
the count it answered (it must be every accepted contact), and — in the same run — a raw psycopg ``COPY``
of as many rows of the same size as a ``Contact.Cancelled`` event (the physical limit of one save of
that many events). Goals: ≤ 1 s for 3,000 and ≤ 3 s for 10,000, with the exact count.

Run: ``.venv/bin/python bench/cancel.py [--sizes 3000,10000] [--runs 3]`` (PostgreSQL at 127.0.0.1:5432).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BASE, GATEWAY, average_state_size, contacts, copy_baseline, scratch_container, serve

from billing.projections.views import project_pending
from billing.services.tenants import TenantService
from billing.webapp import create_app

GOALS = {3_000: 1.0, 10_000: 3.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="3000,10000")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    with scratch_container(jwt_secret="b" * 32, pool_size=4) as (url, container):
        tenants = TenantService(container.store, container.clock)
        tenant_id = tenants.create_tenant(name="Bench", gateway=GATEWAY)
        headers = {"X-Billing-API-Key": tenants.issue_api_key(tenant_id, "bench")}
        project_pending(container.store, container.pool)
        results: dict[int, list[float]] = {n: [] for n in sizes}
        with (
            serve(create_app(container)) as port,
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client,
        ):
            for run in range(args.runs):
                for n in sizes:
                    body = {"external_id": f"bench-{n}-{run}", "contacts": contacts(n, run)}
                    posted = client.post(f"{BASE}/send/overdue", json=body, headers=headers)
                    assert posted.status_code == 202, posted.text
                    queue_id = posted.json()["queue_id"]
                    started = time.perf_counter()
                    answer = client.post(f"{BASE}/queue/{queue_id}/cancel", headers=headers)
                    elapsed = time.perf_counter() - started
                    assert answer.status_code == 200, answer.text
                    count = answer.json()["cancelled"]
                    assert count == n, f"answered cancelled: {count}, expected {n}"
                    results[n].append(elapsed)
        row_size = average_state_size(url, "billing.Contact.Cancelled")
        for n in sizes:
            median = statistics.median(results[n])
            baseline = copy_baseline(url, n, row_size, "billing.Contact.Cancelled")
            goal = GOALS.get(n)
            verdict = (
                "" if goal is None else f"; goal ≤ {goal:.0f} s -> {'met' if median <= goal else 'NOT met'}"
            )
            print(
                f"cancel a {n:,}-contact queue: median {median:.3f} s (best {min(results[n]):.3f} s, "
                f"{args.runs} runs), answered the exact count {n:,}{verdict}"
            )
            print(
                f"  baseline: raw COPY of {n:,} rows of {row_size} B: {baseline:.3f} s -> "
                f"cancel takes {median / baseline:.1f}x the raw COPY"
            )


if __name__ == "__main__":
    main()
