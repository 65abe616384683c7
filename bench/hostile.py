"""Benchmark: what refusing a hostile body costs, over real HTTP against the real PostgreSQL.

Prints, each as the median of ``--runs``:

* a 9 MB batch whose names have 1,000 characters (over the 500 limit) → 422 ``value_too_long``;
* a 17 MB body (over the 16 MiB limit of a send) → 413 ``body_too_large``;
* a 10,000-level nested contact value → 422;
* baseline in the same run: a valid POST of the same number of contacts with ordinary names → 202.

Run: ``.venv/bin/python bench/hostile.py [--contacts 8500] [--runs 3]`` (PostgreSQL at 127.0.0.1:5432).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import GATEWAY, free_port, scratch_container

from billing.projections.views import project_pending
from billing.services.tenants import TenantService
from billing.webapp import create_app

SEND = "/api/billing/v1/billing/send/notification"


def batch(n: int, name_length: int, seed: int) -> bytes:
    rows = ",".join(
        f'{{"nome": "{"n" * name_length}", "telefone": "+55119{(87000000 + seed * n + i) % 100000000:08d}"}}'
        for i in range(n)
    )
    return f'{{"contacts": [{rows}]}}'.encode()


def timed(client: httpx.Client, body: bytes, key: str, status: int) -> float:
    started = time.perf_counter()
    response = client.post(
        SEND, content=body, headers={"X-Billing-API-Key": key, "Content-Type": "application/json"}
    )
    elapsed = time.perf_counter() - started
    assert response.status_code == status, response.text[:300]
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=8_500)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with scratch_container(jwt_secret="b" * 32) as (_, container):
        tenants = TenantService(container.store, container.clock)
        tenant_id = tenants.create_tenant(name="Bench", gateway=GATEWAY)
        key = tenants.issue_api_key(tenant_id, "bench")
        project_pending(container.store, container.pool)
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app(container), host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        hostile = batch(args.contacts, 1000, 0)
        huge = hostile + b" " * (17 * 1024 * 1024 - len(hostile))
        deep = b'{"contacts": [{"nome": "x", "v": ' + b"[" * 10_000 + b"]" * 10_000 + b"}]}"
        figures: dict[str, list[float]] = {"9mb": [], "17mb": [], "deep": [], "valid": []}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            for run in range(args.runs):
                figures["9mb"].append(timed(client, hostile, key, 422))
                figures["17mb"].append(timed(client, huge, key, 413))
                figures["deep"].append(timed(client, deep, key, 422))
                figures["valid"].append(timed(client, batch(args.contacts, 20, run + 1), key, 202))
        server.should_exit = True
        thread.join(timeout=10)
        median = {name: statistics.median(values) for name, values in figures.items()}
        print(
            f"{len(hostile) / 1e6:.1f} MB, {args.contacts} names of 1,000 chars → 422: "
            f"{median['9mb'] * 1000:.0f} ms"
        )
        print(f"17 MB body → 413: {median['17mb'] * 1000:.0f} ms")
        print(f"10,000-level nesting → 422: {median['deep'] * 1000:.0f} ms")
        print(f"baseline: valid POST of {args.contacts} contacts → 202: {median['valid'] * 1000:.0f} ms")
        print(f"ratio: the 9 MB refusal costs {median['9mb'] / median['valid']:.3f}x the valid batch")


if __name__ == "__main__":
    main()
