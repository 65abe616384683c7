"""Benchmark: polling a queue's status (``GET /queue/{id}/status``) at 64 connections, against a bare
litestar + psycopg endpoint reading the same row, in the same run.

Both servers run as separate processes (uvicorn, one worker each, the same flags), over the same fresh
database holding one tenant and one 10,000-contact queue; ``wrk`` (``apt-get install wrk``) drives each
for ``--duration`` seconds with 64 connections on 2 threads, alternately, ``--runs`` times. The bare
endpoint is what any service needs at least: an async litestar handler, one ``SELECT * FROM queue_status
WHERE queue_id = … AND tenant_id = …`` on a psycopg async pool of the same size, the row as JSON. Ours also
authenticates the ``X-Billing-API-Key`` and shapes the DESIGN.md document; its app is built as ``billing api``
builds it (startup heap frozen once built, ``billing.runtime.freeze_startup_heap``). Goal: ≥ 90 % of the bare
endpoint's requests/s, p99 latency not above it.

Run: ``.venv/bin/python bench/status.py [--duration 10] [--runs 3] [--connections 64]``.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import BASE, GATEWAY, free_port, process_cpu_s, scratch_database

POOL_SIZE = 5


def bare_app(url: str) -> Any:
    """The baseline: one async handler, one query on an async psycopg pool."""
    from litestar import Litestar, get
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    pool = AsyncConnectionPool(
        url, min_size=POOL_SIZE, max_size=POOL_SIZE, open=False, kwargs={"row_factory": dict_row}
    )

    @get("/bare/{tenant_id:uuid}/{queue_id:uuid}")
    async def status(tenant_id: uuid.UUID, queue_id: uuid.UUID) -> dict[str, Any]:
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT * FROM queue_status WHERE queue_id = %s AND tenant_id = %s", (queue_id, tenant_id)
            )
            row = await cur.fetchone()
        assert row is not None
        return row

    async def start() -> None:
        await pool.open(wait=True)

    async def stop() -> None:
        await pool.close()

    return Litestar([status], on_startup=[start], on_shutdown=[stop], debug=False, logging_config=None)


def our_app(url: str) -> Any:
    from billing.bootstrap import build_container
    from billing.runtime import freeze_startup_heap
    from billing.settings import Settings
    from billing.webapp import create_app

    settings = Settings.from_env({}, database_url=url, jwt_secret="b" * 32, pool_size=POOL_SIZE)
    app = create_app(build_container(settings))
    freeze_startup_heap()  # as `billing api` does once its app is built (billing.runtime._build_app)
    return app


def serve_child(which: str, url: str, port: int) -> None:
    import uvicorn

    app = bare_app(url) if which == "bare" else our_app(url)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def start_server(which: str, url: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", which, "--url", url, "--port", str(port)]
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return process, port
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{which} server did not start")


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


KEYS = 128
"""API keys the polls rotate over. The rate limit stays on at its production default (1,200 requests per
key per minute, litestar's sliding log): 128 keys keep every key under it at the rates measured here
(2,500 req/s over two runs of 10 s within a minute is ~390 requests per key), and a refused poll fails the
run (non-2xx). One key at 64 connections would only measure 429s."""

ROTATE = """
keys = {%s}
i = 0
request = function()
  i = i %% #keys + 1
  wrk.headers["X-Billing-API-Key"] = keys[i]
  return wrk.format(nil)
end
"""


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of the running server ``pid`` so far (``/proc``, Linux)."""
    used = process_cpu_s(pid)
    if used is None:
        raise RuntimeError(f"server process {pid} has ended")
    return used


def wrk(url: str, connections: int, duration: int, keys: list[str]) -> tuple[float, float, int]:
    """(requests/s, p99 ms, non-2xx count) of one wrk run, rotating over ``keys`` (none: no header)."""
    args = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        if keys:
            script.write(ROTATE % ", ".join(f'"{key}"' for key in keys))
            script.flush()
            args += ["-s", script.name]
        out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rate, float(p99) * UNITS[unit], int(bad.group(1)) if bad else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--serve", choices=("ours", "bare"))
    parser.add_argument("--url")
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    if args.serve:
        serve_child(args.serve, args.url, args.port)
        return

    from billing.bootstrap import build_container
    from billing.db import migrate
    from billing.projections.views import project_pending
    from billing.services.tenants import TenantService
    from billing.settings import Settings
    from tests.integration.test_cancel_batch import posted

    with scratch_database() as url:
        migrate(url)
        container = build_container(Settings(database_url=url))
        tenants = TenantService(container.store, container.clock)
        tenant_id = tenants.create_tenant(name="Bench", gateway=GATEWAY)
        keys = [tenants.issue_api_key(tenant_id, f"bench {n}") for n in range(KEYS)]
        campaign, queue, contacts = posted(tenant_id, accepted=10_000, rejected=0)
        container.store.save(campaign, queue, *contacts)
        project_pending(container.store, container.pool)
        container.store.close()
        container.pool.close()
        ours, ours_port = start_server("ours", url)
        bare, bare_port = start_server("bare", url)
        try:
            ours_url = f"http://127.0.0.1:{ours_port}{BASE}/queue/{queue.id}/status"
            bare_url = f"http://127.0.0.1:{bare_port}/bare/{tenant_id}/{queue.id}"
            headers = {"X-Billing-API-Key": keys[0]}
            assert httpx.get(ours_url, headers=headers).json()["contacts"]["total"] == 10_000
            assert httpx.get(bare_url).json()["total"] == 10_000
            results: dict[str, list[tuple[float, float, int]]] = {"ours": [], "bare": []}
            cpu_per_request: dict[str, list[float]] = {"ours": [], "bare": []}
            for _ in range(args.runs):
                for which, process, url_, keys_ in (
                    ("ours", ours, ours_url, keys),
                    ("bare", bare, bare_url, []),
                ):
                    before = cpu_s(process.pid)
                    run = wrk(url_, args.connections, args.duration, keys_)
                    used = cpu_s(process.pid) - before
                    results[which].append(run)
                    cpu_per_request[which].append(used / (run[0] * args.duration))
        finally:
            for process in (ours, bare):
                process.terminate()
                process.wait(timeout=10)
        summary = {}
        for which, runs in results.items():
            assert all(bad == 0 for _, _, bad in runs), f"{which}: non-2xx answers"
            summary[which] = (
                statistics.median(r for r, _, _ in runs),
                statistics.median(p for _, p, _ in runs),
            )
        (rate, p99), (bare_rate, bare_p99) = summary["ours"], summary["bare"]
        print(
            f"status poll, {args.connections} connections, {args.runs} × {args.duration} s (wrk): "
            f"{rate:,.0f} req/s, p99 {p99:.0f} ms (medians)"
        )
        print(f"  baseline: bare litestar + psycopg, same row: {bare_rate:,.0f} req/s, p99 {bare_p99:.0f} ms")
        ours_cpu, bare_cpu = (statistics.median(cpu_per_request[w]) * 1e6 for w in ("ours", "bare"))
        print(
            f"  server CPU per request (median): ours {ours_cpu:,.0f} µs, bare {bare_cpu:,.0f} µs "
            f"({ours_cpu / bare_cpu:.2f}x)"
        )
        ok = rate >= 0.9 * bare_rate and p99 <= bare_p99
        print(
            f"  ratio: {rate / bare_rate:.0%} of the bare rate, p99 {p99 / bare_p99:.2f}x; "
            f"goal ≥ 90 %, p99 not above -> {'met' if ok else 'NOT met'}"
        )
        for which in ("ours", "bare"):
            print(
                f"  {which} runs: "
                + ", ".join(f"{r:,.0f} req/s p99 {p:.0f} ms" for r, p, _ in results[which])
            )


if __name__ == "__main__":
    main()
