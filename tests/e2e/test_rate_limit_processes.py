"""The per-API-key rate limit holds across two real ``billing api`` processes sharing Redis
(``BILLING_REDIS_URL``, 127.0.0.1:6379), and — the same-run baseline — does not without it (each
process's memory store counts alone). Requests alternate between the two processes, C at a time."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from billing.bootstrap import build_container
from billing.projections.views import project_pending
from billing.services.tenants import TenantService
from billing.settings import Settings

REDIS_URL = os.environ.get("BILLING_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
LIMIT = 60  # requests per minute per key
REQUESTS = 200
CONCURRENCY = 20
GATEWAY = {"base_url": "http://sim", "instance": "demo", "api_key": "gw-secret-key", "api_version": "v2"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def issue_key(database_url: str) -> str:
    container = build_container(Settings.from_env({}, database_url=database_url))
    try:
        tenants = TenantService(container.store, container.clock)
        key = tenants.issue_api_key(tenants.create_tenant(name="Loja", gateway=GATEWAY), "erp")
        project_pending(container.store, container.pool)
        return key
    finally:
        asyncio.run(container.aclose())


@contextmanager
def two_api_processes(
    database_url: str, tmp_path: Path, limit: int = LIMIT, **extra: str
) -> Iterator[list[str]]:
    """Two ``billing api`` processes on free ports, ready; their base URLs."""
    billing = str(Path(sys.executable).with_name("billing"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    env.update(
        BILLING_DATABASE_URL=database_url,
        BILLING_JWT_SECRET="r" * 40,
        BILLING_LOG_FORMAT="json",
        BILLING_POOL_SIZE="3",
        BILLING_RATE_LIMIT_PER_MINUTE=str(limit),
        **extra,
    )
    processes, urls = [], []
    try:
        for n in range(2):
            port = free_port()
            log = (tmp_path / f"api-{n}-{uuid.uuid4().hex[:6]}.log").open("w")
            processes.append(
                subprocess.Popen(
                    [billing, "api"],
                    env={**env, "BILLING_API_PORT": str(port)},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            urls.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        for url, process in zip(urls, processes, strict=True):
            while True:
                assert process.poll() is None, "an api process exited"
                try:
                    if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"{url} never became ready"
                time.sleep(0.3)
        yield urls
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


async def hammer(
    urls: list[str], key: str, requests: int = REQUESTS, concurrency: int = CONCURRENCY
) -> tuple[Counter[int], list[httpx.Response]]:
    """``requests`` status polls, alternating between the processes, ``concurrency`` in flight."""
    gate = asyncio.Semaphore(concurrency)
    answers: list[httpx.Response] = []
    async with httpx.AsyncClient(timeout=30) as http:

        async def one(i: int) -> None:
            async with gate:
                url = f"{urls[i % 2]}/api/billing/v1/billing/queue/{uuid.uuid4()}/status"
                answers.append(await http.get(url, headers={"X-Billing-API-Key": key}))

        await asyncio.gather(*(one(i) for i in range(requests)))
    return Counter(a.status_code for a in answers), answers


@pytest.mark.e2e
def test_the_limit_holds_across_two_processes_sharing_redis(database_url: str, tmp_path: Path) -> None:
    key = issue_key(database_url)
    with two_api_processes(database_url, tmp_path, BILLING_REDIS_URL=REDIS_URL) as urls:
        shared, answers = asyncio.run(hammer(urls, key))
    with two_api_processes(database_url, tmp_path) as urls:  # baseline: a memory store per process
        alone, _ = asyncio.run(hammer(urls, issue_key(database_url)))
    print(
        f"\nrate limit {LIMIT}/min, {REQUESTS} requests at concurrency {CONCURRENCY} over 2 api processes: "
        f"shared Redis store {dict(shared)}; baseline memory store per process {dict(alone)}"
    )
    assert shared == {404: LIMIT, 429: REQUESTS - LIMIT}  # 404: the polled queue does not exist
    assert alone == {404: 2 * LIMIT, 429: REQUESTS - 2 * LIMIT}
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["code"] == "rate_limited"
    assert 0 < int(refused.headers["retry-after"]) <= 60
    assert refused.headers["ratelimit-limit"] == str(LIMIT)
    assert refused.headers["ratelimit-remaining"] == "0"
    assert all("server" not in a.headers for a in answers)  # no uvicorn banner
    assert all(a.headers["x-content-type-options"] == "nosniff" for a in answers)
