"""Benchmark: one POST of 10,000 contacts against the real PostgreSQL, over real HTTP.

Prints the time to 202 and contacts/s (the body is encoded before the clock starts), and — in the same
run — the rate of a raw psycopg ``COPY`` of 10,000 rows of the same size into a scratch table (the
physical limit). Goal: the 202 within 5× the raw ``COPY``. Both are the median over ``--runs`` (the
``COPY`` alone varies about 2× between runs on a shared machine). The raw ``COPY`` is in text format
(the goal's baseline); the same rows in binary format are printed beside it, since the event store's
``COPY`` is binary.

Run: ``.venv/bin/python bench/ingest.py [--contacts 10000] [--runs 3]`` (PostgreSQL at 127.0.0.1:5432).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import GATEWAY, free_port, scratch_container

from billing.projections.views import project_pending
from billing.runtime import freeze_startup_heap
from billing.services.tenants import TenantService
from billing.webapp import create_app


def contacts(n: int, seed: int) -> list[dict[str, object]]:
    return [
        {
            "nome": f"Cliente {seed}-{i} da Silva",
            "telefone": f"+55119{(87000000 + i) % 100000000:08d}",
            "valor": "R$ 1.234,56",
            "valor_total": "R$ 1.234,56",
            "data_vencimento": "2025-01-15",
            "numero_fatura": f"NF-{seed}-{i:06d}",
        }
        for i in range(n)
    ]


def copy_baseline(url: str, n: int, row_size: int, *, binary: bool = False) -> float:
    """Seconds to ``COPY`` ``n`` rows with a ``row_size``-byte state into a fresh scratch table and commit
    (text format, or binary with ``binary``)."""
    payload = b"x" * row_size
    statement = "COPY scratch (originator_id, originator_version, topic, state) FROM STDIN"
    with psycopg.connect(url) as conn:
        conn.execute(
            "CREATE TEMP TABLE scratch (id bigserial PRIMARY KEY, originator_id uuid, "
            "originator_version bigint, topic text, state bytea)"
        )
        started = time.perf_counter()
        with conn.cursor() as cur, cur.copy(statement + (" (FORMAT BINARY)" if binary else "")) as copy:
            if binary:
                copy.set_types(["uuid", "int8", "text", "bytea"])
            for _ in range(n):
                copy.write_row((uuid.uuid4(), 1, "billing.Contact.Added", payload))
        conn.commit()
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    with scratch_container(jwt_secret="b" * 32, pool_size=4) as (url, container):
        tenants = TenantService(container.store, container.clock)
        tenant_id = tenants.create_tenant(name="Bench", gateway=GATEWAY)
        key = tenants.issue_api_key(tenant_id, "bench")
        project_pending(container.store, container.pool)
        port = free_port()
        app = create_app(container)
        freeze_startup_heap()  # as `billing api` does once its app is built (billing.runtime._build_app)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        timings, cpus = [], []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            for run in range(args.runs):
                body = {"external_id": f"bench-{run}", "contacts": contacts(args.contacts, run)}
                # Encoded before the clock starts: the ERP's work, not the service's (httpx's json= would
                # add ~0.1 s of this process's CPU to every POST).
                content = json.dumps(body).encode()
                headers = {"X-Billing-API-Key": key, "Content-Type": "application/json"}
                started, cpu = time.perf_counter(), time.process_time()
                response = client.post(
                    "/api/billing/v1/billing/send/overdue", content=content, headers=headers
                )
                elapsed = time.perf_counter() - started
                cpus.append(time.process_time() - cpu)
                assert response.status_code == 202, response.text
                assert response.json()["contacts"]["accepted"] == args.contacts
                timings.append(elapsed)
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT avg(length(state))::int FROM billing_events WHERE topic = 'billing.Contact.Added'"
            ).fetchone()
        row_size = int(row[0]) if row else 400
        baselines = [copy_baseline(url, args.contacts, row_size) for _ in range(args.runs)]
        binaries = [copy_baseline(url, args.contacts, row_size, binary=True) for _ in range(args.runs)]
        baseline, binary = statistics.median(baselines), statistics.median(binaries)
        server.should_exit = True
        thread.join(timeout=10)
        best, median = min(timings), statistics.median(timings)
        print("runs: " + ", ".join(f"{t:.2f} s" for t in timings))
        print(
            f"CPU of this process (api + client) per POST: median {statistics.median(cpus):.2f} s "
            "(the wall time above minus this is waiting: PostgreSQL, other processes)"
        )
        print(
            f"POST {args.contacts} contacts → 202: best {best:.3f} s, "
            f"median {median:.3f} s over {args.runs} runs"
        )
        print(f"  = {args.contacts / median:,.0f} contacts/s (median)")
        print(
            f"baseline: raw psycopg COPY of {args.contacts} rows of {row_size} B: median {baseline:.3f} s "
            f"over {args.runs} runs ({', '.join(f'{t:.3f}' for t in baselines)}) "
            f"= {args.contacts / baseline:,.0f} rows/s (the physical limit)"
        )
        print(
            f"  the same rows in binary COPY format: median {binary:.3f} s "
            f"({median / binary:.1f}x of it for the POST)"
        )
        ratio = median / baseline
        print(
            f"ratio: POST takes {ratio:.1f}x the raw COPY; goal ≤ 5x -> {'met' if ratio <= 5 else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
