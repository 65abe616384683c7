"""Benchmark: a fleet of tenants sending through the whole system, against its gateway's own ceiling.

200 tenants × 50 notification contacts (notifications ignore business hours), each tenant with its own
instance on one Evolution API simulator (``time_scale=0``) served over real HTTP by uvicorn in a separate
process, limits generous enough never to throttle (``messages_per_minute`` and ``max_messages_per_day``
1,000,000, ``pause_min_s = pause_max_s = 0``). The API (uvicorn), projections and relay run as tasks of
this process's event loop against the real PostgreSQL and RabbitMQ (fresh database, uniquely prefixed
broker topology); the worker runs as a task too (``--workers 0``, the default) or as N ``billing worker``
processes configured by ``BILLING_*`` variables.

Each tenant's batch is POSTed over real HTTP; the run ends when every contact is final in the read model.
Printed: total wall time (first POST → last contact final), sends/s reaching the simulator (its receive
log, first to last), and POST→send latency p50/p95 (from the start of the tenant's POST to the
simulator's receipt of each message). In the same run, the ceiling: the same number of messages POSTed
straight to the simulator's ``sendText`` at the system's gateway concurrency (one ``httpx.AsyncClient``
per worker process, ``prefetch`` calls in flight on each), timed from the same receive log; and the
ratio. Then the CPU each part used during the fleet phase (from ``/proc``: this process, the worker
processes, the PostgreSQL backends of the bench database, RabbitMQ, the simulator), per message, which
shows what limits throughput, and a warning when other processes took a noticeable share of the machine.

Run: ``.venv/bin/python bench/fleet.py [--tenants 200] [--contacts 50] [--workers 0] [--prefetch 10]
[--profile DIR]`` (``--profile``: each worker process under pyinstrument, its report in ``DIR``)
(PostgreSQL at 127.0.0.1:5432, RabbitMQ at 127.0.0.1:5672). The database and the topology are removed at
the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import msgspec
import psycopg
import uvicorn
from common import process_cpu_s

from billing.bootstrap import (
    Container,
    build_container,
    run_projections_process,
    run_relay_process,
    run_worker_process,
)
from billing.db import migrate
from billing.domain.policy import MAX_MESSAGES_PER_DAY, MAX_MESSAGES_PER_MINUTE, default_policy_spec
from billing.logging import configure_logging
from billing.outbox.broker import Topology
from billing.outbox.rabbitmq import RabbitBroker
from billing.projections.views import project_pending
from billing.services.tenants import TenantService
from billing.settings import Settings
from billing.webapp import create_app

ADMIN_URL = "postgresql://root@127.0.0.1:5432/postgres"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
BASE = "/api/billing/v1/billing"
LOG_PATH = "/__bench/log"
FINAL = ("sent", "failed", "skipped", "rejected", "cancelled")
TEXT = (
    "Olá, Cliente da Silva! Sua fatura de janeiro está disponível no portal. Em caso de dúvida, "
    "responda esta mensagem."
)


# ---- the simulator process -----------------------------------------------------------------------------


def serve_simulator(port: int, tenants: int) -> None:
    """Child process: one simulator (instance ``t000``… with key ``gw-t000``…) on ``127.0.0.1:port``,
    plus ``GET /__bench/log?since=N`` answering its receive log from entry N and its request counts."""
    from billing.gateway.simulator import EvolutionSimulator

    simulator = EvolutionSimulator(time_scale=0.0)
    for i in range(tenants):
        simulator.add_instance(instance_name(i), api_key=f"gw-{instance_name(i)}", api_version="v2")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == LOG_PATH:
            since = int((scope.get("query_string") or b"since=0").decode().split("=", 1)[1] or 0)
            sent = simulator.sent
            routes: dict[str, int] = {}
            for method, path, status in simulator.requests:
                key = f"{method} /{'/'.join(path.strip('/').split('/')[:2])} {status}"
                routes[key] = routes.get(key, 0) + 1
            body = msgspec.json.encode(
                {
                    "count": len(sent),
                    "sent": [(m.instance, m.number, m.received_monotonic) for m in sent[since:]],
                    "requests": routes,
                }
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await simulator.asgi_app(scope, receive, send)

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        interface="asgi3",
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,
    )
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run()


def instance_name(i: int) -> str:
    return f"t{i:03d}"


class CpuMeter:
    """CPU seconds of the processes of the run, from ``/proc`` (Linux; silent elsewhere), sampled every
    0.5 s so that processes gone by the end (PostgreSQL backends) still count.

    Groups: ``bench`` (this process), ``workers``, ``simulator``, ``postgres`` (backends connected to the
    bench database), ``rabbitmq`` (the whole broker), and ``machine`` (every CPU, from ``/proc/stat``).
    """

    def __init__(self, url: str, dbname: str) -> None:
        self.url, self.dbname = url, dbname
        self.static: dict[int, str] = {os.getpid(): "bench"}
        for pid in os.listdir("/proc") if os.path.isdir("/proc") else []:
            with contextlib.suppress(OSError):
                if pid.isdigit() and Path(f"/proc/{pid}/comm").read_text().strip() == "beam.smp":
                    self.static[int(pid)] = "rabbitmq"
        self.seen: dict[int, tuple[str, float]] = {}
        self.marks: dict[str, tuple[float, dict[int, tuple[str, float]], float]] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._thread = threading.Thread(target=self._poll, name="cpu-meter", daemon=True)

    def add(self, pid: int, group: str) -> None:
        self.static[pid] = group

    @staticmethod
    def _machine() -> float:
        try:
            values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return 0.0
        return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")

    def _sample(self, conn: psycopg.Connection[Any] | None) -> None:
        pids = dict(self.static)
        if conn is not None:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (self.dbname,),
            ).fetchall()
            pids.update({int(r[0]): "postgres" for r in rows})
        for pid, group in pids.items():
            cpu = process_cpu_s(pid)
            if cpu is not None:
                self.seen[pid] = (group, cpu)

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                self._sample(self._conn)

    def start(self) -> None:
        if not os.path.isdir("/proc"):
            return
        with contextlib.suppress(psycopg.Error):
            self._conn = psycopg.connect(self.url, autocommit=True)
        self._thread.start()

    def mark(self, name: str) -> None:
        with self._lock:
            with contextlib.suppress(psycopg.Error):
                self._sample(self._conn)
            self.marks[name] = (time.monotonic(), dict(self.seen), self._machine())

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self._conn is not None:
            self._conn.close()

    def report(self, start: str, end: str, messages: int, labels: dict[str, str]) -> str:
        """Lines of CPU seconds per group between two marks, per message and as a share of one core."""
        if start not in self.marks or end not in self.marks or not self.seen:
            return "CPU: not measured (no /proc)"
        (t0, before, m0), (t1, after, m1) = self.marks[start], self.marks[end]
        wall = t1 - t0
        groups: dict[str, float] = {}
        for pid, (group, cpu) in after.items():
            groups[group] = groups.get(group, 0.0) + cpu - before.get(pid, (group, 0.0))[1]
        cores = os.cpu_count() or 1
        lines = [f"CPU during the fleet phase ({wall:.1f} s × {cores} cores = {wall * cores:.1f} core-s):"]
        for name in ("bench", "workers", "postgres", "rabbitmq", "simulator"):
            if name in groups:
                used = groups[name]
                lines.append(
                    f"  {labels.get(name, name):<48} {used:6.1f} s = {used / wall:4.0%} of a core"
                    f" = {used / messages * 1000:5.2f} ms/message"
                )
        ours = sum(groups.values())
        lines.append(
            f"  {'all of the above':<48} {ours:6.1f} s = {ours / wall:4.0%} of a core"
            f" = {ours / messages * 1000:5.2f} ms/message"
        )
        others = max(0.0, m1 - m0 - ours)
        lines.append(
            f"  machine busy {m1 - m0:.1f} core-s ({(m1 - m0) / (cores * wall):.0%}); "
            f"other processes {others:.1f} core-s"
        )
        if others > 0.1 * cores * wall:
            lines.append(
                f"  WARNING: other processes took {others / (cores * wall):.0%} of the machine: "
                "every figure above is disturbed"
            )
        return "\n".join(lines)


# ---- helpers ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def rate(stamps: list[float]) -> tuple[float, float]:
    """(seconds from first to last receipt, receipts per second over that span)."""
    span = max(stamps) - min(stamps)
    return span, (len(stamps) - 1) / span if span > 0 else float("inf")


def batch(tenant: int, contacts: int) -> dict[str, Any]:
    return {
        "external_id": f"fleet-{tenant}",
        "contacts": [
            {
                "nome": f"Cliente {tenant}-{j} da Silva",
                "telefone": f"+55119{80000000 + tenant * contacts + j:08d}",
                "mensagem": "Sua fatura de janeiro está disponível no portal.",
            }
            for j in range(contacts)
        ],
    }


async def sim_log(client: httpx.AsyncClient, since: int = 0) -> dict[str, Any]:
    response = await client.get(f"{LOG_PATH}?since={since}")
    response.raise_for_status()
    log: dict[str, Any] = response.json()
    return log


async def consumers(queue: str) -> int:
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.consumer_count or 0)
    finally:
        await connection.close()


async def delete_topology(topology: Topology) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        for name in (*topology.job_queues, *topology.dead_letter_queues):
            await channel.queue_delete(name)
        for name in (topology.exchange, topology.dead_letter_exchange):
            await channel.exchange_delete(name)
    finally:
        await connection.close()


WORKER_TOPICS = [
    f"billing.Contact.{name}" for name in ("Dispatched", "Sent", "Failed", "Deferred", "Skipped", "Cancelled")
]


def worker_saves(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """(events the workers wrote, transactions that wrote them): rows of one transaction share ``xmin``."""
    row = conn.execute(
        "SELECT count(*), count(DISTINCT xmin::text) FROM billing_events WHERE topic = ANY(%s)",
        (WORKER_TOPICS,),
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def transactions_so_far(conn: psycopg.Connection[Any]) -> int:
    """Transactions the bench database has ended so far (committed or rolled back, every process), from
    ``pg_stat_database`` (each backend reports its counts within about a second)."""
    row = conn.execute(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
    ).fetchone()
    assert row is not None
    return int(row[0])


def final_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    rows = conn.execute("SELECT status, count(*) FROM campaign_contacts GROUP BY status").fetchall()
    return {str(status): int(n) for status, n in rows}


def seed_tenants(container: Container, n: int, sim_url: str) -> list[str]:
    """``n`` tenants with generous limits, each on its own simulator instance; returns their API keys."""
    service = TenantService(container.store, container.clock)
    policy = {
        **default_policy_spec(),
        "messages_per_minute": MAX_MESSAGES_PER_MINUTE,
        "max_messages_per_day": MAX_MESSAGES_PER_DAY,
        "pause_min_s": 0,
        "pause_max_s": 0,
    }
    keys = []
    for i in range(n):
        name = instance_name(i)
        gateway = {"base_url": sim_url, "instance": name, "api_key": f"gw-{name}", "api_version": "v2"}
        tenant_id = service.create_tenant(name=f"Fleet {name}", gateway=gateway, policy=policy)
        keys.append(service.issue_api_key(tenant_id, "bench"))
    project_pending(container.store, container.pool)
    return keys


# ---- the two measurements ------------------------------------------------------------------------------


async def direct_sends(
    sim: httpx.AsyncClient, sim_url: str, args: argparse.Namespace, total: int
) -> dict[str, Any]:
    """The ceiling: ``total`` sendText calls straight to the simulator at the system's concurrency: one
    ``httpx.AsyncClient`` (httpx defaults, like the worker's) per worker process, ``prefetch`` calls in
    flight on each. One client per process matters: httpcore's pool polls every pooled socket on each
    request, so a single client with 20 or more calls in flight spends about twice the CPU per call."""
    before = (await sim_log(sim))["count"]
    jobs = iter(range(total))
    started = time.monotonic()

    async def lane(client: httpx.AsyncClient) -> None:
        for k in jobs:
            name = instance_name(k // args.contacts % args.tenants)
            response = await client.post(
                f"/message/sendText/{name}",
                json={"number": f"55119{80000000 + k:08d}", "text": TEXT},
                headers={"apikey": f"gw-{name}"},
            )
            assert response.status_code == 201, response.text

    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=sim_url))
            for _ in range(max(1, args.workers))
        ]
        await asyncio.gather(*(lane(client) for client in clients for _ in range(args.prefetch)))
    wall = time.monotonic() - started
    log = await sim_log(sim, before)
    stamps = [m[2] for m in log["sent"]]
    assert len(stamps) == total, (len(stamps), total)
    span, per_s = rate(stamps)
    return {"wall": wall, "span": span, "rate": per_s}


async def fleet_run(
    api_url: str, sim: httpx.AsyncClient, url: str, keys: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    total = args.tenants * args.contacts
    with psycopg.connect(url, autocommit=True) as conn:
        xacts_before = transactions_so_far(conn)
    start_log = await sim_log(sim)
    before = start_log["count"]
    posted_at: dict[str, float] = {}
    answered_at: dict[str, float] = {}
    tenants = iter(range(args.tenants))
    started = time.monotonic()

    async with httpx.AsyncClient(base_url=api_url, timeout=120) as client:

        async def poster() -> None:
            for i in tenants:
                name = instance_name(i)
                body = msgspec.json.encode(batch(i, args.contacts))
                posted_at[name] = time.monotonic()
                response = await client.post(
                    f"{BASE}/send/notification",
                    content=body,
                    headers={"X-Billing-API-Key": keys[i], "Content-Type": "application/json"},
                )
                answered_at[name] = time.monotonic()
                assert response.status_code == 202, response.text
                assert response.json()["contacts"]["accepted"] == args.contacts, response.text

        await asyncio.gather(*(poster() for _ in range(args.post_concurrency)))
    all_accepted = time.monotonic()

    counts: dict[str, int] = {}
    deadline = started + args.timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            counts = await asyncio.to_thread(final_counts, conn)
            if sum(counts.get(s, 0) for s in FINAL) >= total:
                break
            await asyncio.sleep(0.25)
        finished = time.monotonic()
        saves = await asyncio.to_thread(worker_saves, conn)
        await asyncio.sleep(1.5)  # every backend has reported its transactions
        xacts = await asyncio.to_thread(transactions_so_far, conn) - xacts_before
    log = await sim_log(sim, before)
    sent = log["sent"]
    if sum(counts.get(s, 0) for s in FINAL) < total:
        raise SystemExit(f"timed out after {args.timeout} s: read model {counts}, simulator got {len(sent)}")
    stamps = [m[2] for m in sent]
    latencies = [m[2] - posted_at[m[0]] for m in sent]
    first: dict[str, float] = {}
    for instance, _number, at in sent:
        first[instance] = min(first.get(instance, at), at)
    first_waits = [at - posted_at[instance] for instance, at in first.items()]
    span, per_s = rate(stamps)
    return {
        "wall": finished - started,
        "accepted": all_accepted - started,
        "first_send": min(stamps) - started,
        "last_send": max(stamps) - started,
        "span": span,
        "rate": per_s,
        "received": len(sent),
        "duplicates": len(sent) - len({(m[0], m[1]) for m in sent}),
        "p50": percentile(latencies, 0.50),
        "p95": percentile(latencies, 0.95),
        "max": max(latencies),
        "first_p50": percentile(first_waits, 0.50),
        "first_p95": percentile(first_waits, 0.95),
        "first_max": max(first_waits),
        "post_median": statistics.median(answered_at[n] - posted_at[n] for n in posted_at),
        "counts": counts,
        "saves": saves,
        "transactions": xacts,
        "requests": {k: d for k, n in log["requests"].items() if (d := n - start_log["requests"].get(k, 0))},
    }


# ---- wiring ----------------------------------------------------------------------------------------------


def start_workers(args: argparse.Namespace, settings: Settings, logs: Path) -> list[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "BILLING_DATABASE_URL": settings.database_url,
        "BILLING_AMQP_URL": settings.amqp_url,
        "BILLING_BROKER_PREFIX": settings.broker_prefix,
        "BILLING_WORKER_PREFETCH": str(args.prefetch),
        "BILLING_POOL_SIZE": str(args.pool_size),
        "BILLING_LOG_LEVEL": args.log_level,
        "BILLING_LOG_FORMAT": "json",
        "BILLING_GATEWAY_ALLOW_PRIVATE": "1",  # the simulator listens on 127.0.0.1
    }
    billing = Path(sys.executable).with_name("billing")
    procs = []
    for n in range(args.workers):
        command = [str(billing), "worker"]
        if args.profile:  # the same worker under pyinstrument; its text report is written at exit
            out = Path(args.profile) / f"worker-{n}.txt"
            command = [sys.executable, "-c", PROFILED_WORKER.format(out=str(out))]
        with open(logs / f"worker-{n}.log", "wb") as err:
            procs.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err))
    return procs


PROFILED_WORKER = """
import pyinstrument, billing.cli
profiler = pyinstrument.Profiler(interval=0.002, async_mode="disabled")
profiler.start()
try:
    billing.cli.main(["worker"])
except SystemExit:
    pass
finally:
    profiler.stop()
    open({out!r}, "w").write(profiler.output_text(unicode=True, show_all=False))
"""


async def run(args: argparse.Namespace, url: str, sim_port: int, logs: Path, meter: CpuMeter) -> None:
    total = args.tenants * args.contacts
    prefix = f"bench-fleet-{uuid.uuid4().hex[:8]}"
    settings = Settings.from_env(
        {},
        database_url=url,
        amqp_url=AMQP_URL,
        jwt_secret="f" * 32,
        broker_prefix=prefix,
        worker_prefetch=args.prefetch,
        pool_size=args.pool_size,
        log_level=args.log_level,
        gateway_allow_private=True,  # the simulator listens on 127.0.0.1
    )
    sim_url = f"http://127.0.0.1:{sim_port}"
    broker = await RabbitBroker.connect(AMQP_URL, prefix=prefix)
    await broker.declare_topology()
    container = build_container(settings, broker=broker)
    stop = asyncio.Event()
    tasks: list[asyncio.Task[Any]] = []
    workers: list[subprocess.Popen[bytes]] = []
    api: uvicorn.Server | None = None
    try:
        setup = time.monotonic()
        keys = await asyncio.to_thread(seed_tenants, container, args.tenants, sim_url)
        print(f"setup: {args.tenants} tenants with API keys in {time.monotonic() - setup:.1f} s", flush=True)

        api_port = free_port()
        api = uvicorn.Server(
            uvicorn.Config(create_app(container), host="127.0.0.1", port=api_port, log_level="warning")
        )
        configure_logging("json", args.log_level)  # litestar/uvicorn may have installed their own
        tasks += [
            asyncio.create_task(api.serve(), name="api"),
            asyncio.create_task(run_projections_process(container, stop), name="projections"),
            asyncio.create_task(run_relay_process(container, stop), name="relay"),
        ]
        if args.workers:
            workers = start_workers(args, settings, logs)
            for proc in workers:
                meter.add(proc.pid, "workers")
        else:
            tasks.append(asyncio.create_task(run_worker_process(container, stop), name="worker"))
        queue = broker.topology.queue("notification")
        deadline = time.monotonic() + 60
        while not api.started or await consumers(queue) < max(1, args.workers):
            for task in tasks:
                if task.done():
                    task.result()
            if any(p.poll() is not None for p in workers) or time.monotonic() > deadline:
                raise SystemExit(f"the system did not start; worker logs in {logs}")
            await asyncio.sleep(0.1)

        async with httpx.AsyncClient(base_url=sim_url, timeout=60) as sim:
            ceiling = await direct_sends(sim, sim_url, args, total)
            print(
                f"ceiling: {total} direct sendText calls at concurrency {args.concurrency} "
                f"({max(1, args.workers)} client(s) × {args.prefetch}): "
                f"client wall {ceiling['wall']:.2f} s; simulator receipts first→last {ceiling['span']:.2f} s "
                f"= {ceiling['rate']:,.0f} sends/s",
                flush=True,
            )
            meter.mark("fleet-start")
            fleet = await fleet_run(f"http://127.0.0.1:{api_port}", sim, url, keys, args)
            meter.mark("fleet-end")

        mode = f"{args.workers} worker process(es)" if args.workers else "worker in-process"
        print(
            f"fleet: {args.tenants} tenants × {args.contacts} contacts = {total}, {mode}, "
            f"prefetch {args.prefetch}, pool {args.pool_size}"
        )
        print(
            f"  all {args.tenants} POSTs answered 202 after {fleet['accepted']:.2f} s "
            f"(median POST {fleet['post_median'] * 1000:.0f} ms, {args.post_concurrency} at a time)"
        )
        print(
            f"  total wall time (first POST → every contact final in the read model): {fleet['wall']:.2f} s; "
            f"first send at {fleet['first_send']:.2f} s, last at {fleet['last_send']:.2f} s"
        )
        print(
            f"  sends reaching the simulator: {fleet['received']} ({fleet['duplicates']} duplicates), "
            f"first→last {fleet['span']:.2f} s = {fleet['rate']:,.1f} sends/s"
        )
        print(
            f"  POST→send latency: p50 {fleet['p50']:.2f} s, p95 {fleet['p95']:.2f} s, "
            f"max {fleet['max']:.2f} s"
        )
        print(
            f"  POST→first send of each tenant: p50 {fleet['first_p50']:.2f} s, "
            f"p95 {fleet['first_p95']:.2f} s, max {fleet['first_max']:.2f} s"
        )
        print(f"  read model: {dict(sorted(fleet['counts'].items()))}")
        events, transactions = fleet["saves"]
        print(
            f"  worker saves: {events} contact events in {transactions} transactions "
            f"({events / max(1, transactions):.1f} per transaction)"
        )
        print(
            f"  database transactions, every process: {fleet['transactions']} = "
            f"{fleet['transactions'] / total:.2f} per message (this bench's own polling included)"
        )
        print(f"  simulator requests: {dict(sorted(fleet['requests'].items()))}")
        labels = {
            "bench": "this process (api, projections, relay" + (")" if args.workers else ", worker)"),
            "workers": f"{args.workers} `billing worker` process(es)",
            "postgres": "PostgreSQL backends of the bench database",
            "rabbitmq": "RabbitMQ (whole broker)",
            "simulator": "simulator process",
        }
        print(meter.report("fleet-start", "fleet-end", total, labels))
        print(
            f"ratio: the system reaches {fleet['rate'] / ceiling['rate']:.1%} of the simulator's direct "
            f"capacity ({fleet['rate']:,.1f} vs {ceiling['rate']:,.0f} sends/s)"
        )
    finally:
        stop.set()
        if api is not None:
            api.should_exit = True
        for proc in workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in workers:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=30)
        await container.aclose()
        await delete_topology(broker.topology)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--contacts", type=int, default=50, help="contacts per tenant")
    parser.add_argument(
        "--workers", type=int, default=0, help="`billing worker` processes (0: the worker runs in-process)"
    )
    parser.add_argument("--prefetch", type=int, default=10, help="BILLING_WORKER_PREFETCH")
    parser.add_argument("--pool-size", type=int, default=5, help="BILLING_POOL_SIZE")
    parser.add_argument("--post-concurrency", type=int, default=4, help="POSTs in flight at once")
    parser.add_argument("--log-level", default="WARNING", help="BILLING_LOG_LEVEL of every component")
    parser.add_argument(
        "--profile", metavar="DIR", help="run the worker processes under pyinstrument; reports in DIR"
    )
    parser.add_argument("--timeout", type=float, default=600, help="give up after this many seconds")
    args = parser.parse_args()
    args.concurrency = args.prefetch * max(1, args.workers)

    dbname = f"billing_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + dbname
    sim_port = free_port()
    simulator = multiprocessing.get_context("spawn").Process(
        target=serve_simulator, args=(sim_port, args.tenants), daemon=True
    )
    meter = CpuMeter(url, dbname)
    try:
        migrate(url)
        configure_logging("json", args.log_level)
        simulator.start()
        if simulator.pid is not None:
            meter.add(simulator.pid, "simulator")
        meter.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{sim_port}/", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or not simulator.is_alive():
                    raise SystemExit("the simulator did not start") from None
                time.sleep(0.1)
        with tempfile.TemporaryDirectory(prefix="fleet-") as logs:
            try:
                asyncio.run(run(args, url, sim_port, Path(logs), meter))
            finally:
                for log in sorted(Path(logs).glob("*.log")):
                    text = log.read_text(errors="replace").strip()
                    if text:
                        print(f"--- {log.name} (last lines)\n" + "\n".join(text.splitlines()[-20:]))
    finally:
        meter.stop()
        if simulator.is_alive():
            simulator.terminate()
            simulator.join(timeout=10)
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


if __name__ == "__main__":
    main()
