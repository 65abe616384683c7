"""Every production process as a real subprocess (``billing api``, ``projections``, ``relay`` and two
``billing worker``) against the real PostgreSQL and RabbitMQ, sharing one fast clock (``BILLING_CLOCK``),
with the Evolution API simulator served over real HTTP from this test process so its receive log can be
read. Issue 4, "How it is checked":

- two workers never let a tenant exceed ``messages_per_minute`` in any 60-second (scaled) window, as the
  simulator's receive log counts it;
- a queue paused outside business hours survives SIGKILL of every process, resumes by itself at its
  ``resume_at`` after the restart, and sends each contact exactly once.

Each test gets a fresh database (``database_url``) and its own broker prefix. Subprocesses run in their own
process groups and are always killed in teardown. A missing PostgreSQL or RabbitMQ fails the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import httpx
import pytest

from billing.bootstrap import build_container
from billing.domain.policy import default_policy_spec
from billing.gateway.simulator import EvolutionSimulator, ReceivedMessage
from billing.outbox.broker import Topology
from billing.projections.views import project_pending
from billing.services.clock import ScaledClock
from billing.services.tenants import TenantService
from billing.settings import Settings
from tests.integration.test_broker_contract import delete_topology

BASE = "/api/billing/v1/billing"
BILLING = Path(sys.executable).with_name("billing")
SP = ZoneInfo("America/Sao_Paulo")
INSTANCE, GATEWAY_KEY = "loja", "gw-key-processes"
PROCESSES = ("api", "projections", "relay", "worker-1", "worker-2")
READY_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SimulatorServer:
    """The Evolution API simulator served by uvicorn on 127.0.0.1 from a thread of this process."""

    def __init__(self, time_scale: float = 0) -> None:
        self.sim = EvolutionSimulator(time_scale=time_scale)
        self.sim.add_instance(INSTANCE, api_key=GATEWAY_KEY)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self.sim.serve("127.0.0.1", self.port)), daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.sim.started:
            assert self._thread.is_alive(), "the gateway simulator did not start"
            assert time.monotonic() < deadline, "the gateway simulator did not start in 10 s"
            time.sleep(0.02)

    def stop(self) -> None:
        self.sim.shutdown()
        self._thread.join(timeout=10)


def make_tenant(
    database_url: str, prefix: str, clock: ScaledClock, gateway_url: str, policy: dict[str, Any]
) -> tuple[UUID, str]:
    """A tenant "Loja" on the simulator's instance at ``gateway_url`` with ``policy``, and its ERP's API
    key, projected (the templates are in the views before the first POST)."""
    settings = Settings.from_env({}, database_url=database_url, broker_prefix=prefix)
    container = build_container(settings, clock=clock)
    try:
        tenants = TenantService(container.store, clock)
        gateway = {"base_url": gateway_url, "instance": INSTANCE, "api_key": GATEWAY_KEY, "api_version": "v2"}
        tenant_id = tenants.create_tenant(name="Loja", gateway=gateway, policy=policy)
        api_key = tenants.issue_api_key(tenant_id, "erp")
        project_pending(container.store, container.pool)
    finally:
        asyncio.run(container.aclose())
    return tenant_id, api_key


def process_env(
    *,
    database_url: str,
    amqp_url: str,
    prefix: str,
    clock: ScaledClock,
    api_port: int,
    secret: str = "p" * 40,
) -> dict[str, str]:
    """The environment of the billing processes of a test: this process's own without ``BILLING_*``,
    plus the database, broker prefix, scaled clock, API port and fast polling; the gateway may be on
    127.0.0.1 (the simulator)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    env.update(
        BILLING_DATABASE_URL=database_url,
        BILLING_AMQP_URL=amqp_url,
        BILLING_BROKER_PREFIX=prefix,
        BILLING_CLOCK=clock.spec(),
        BILLING_JWT_SECRET=secret,
        BILLING_API_HOST="127.0.0.1",
        BILLING_API_PORT=str(api_port),
        BILLING_LOG_FORMAT="json",
        BILLING_POLL_INTERVAL_S="0.2",
        BILLING_POOL_SIZE="4",
        BILLING_GATEWAY_ALLOW_PRIVATE="1",  # the simulator listens on 127.0.0.1
    )
    return env


@dataclass
class Stack:
    """The billing processes of one test: started, killed and restarted by name, each incarnation logging
    to its own file (``<name>-<n>.log``)."""

    tmp_path: Path
    env: dict[str, str]
    api_url: str
    names: tuple[str, ...] = PROCESSES
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    incarnation: dict[str, int] = field(default_factory=dict)

    def start(self, name: str) -> None:
        command = "worker" if name.startswith("worker") else name
        n = self.incarnation[name] = self.incarnation.get(name, 0) + 1
        with (self.tmp_path / f"{name}-{n}.log").open("wb") as log:
            self.processes[name] = subprocess.Popen(
                [str(BILLING), command],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # its own process group: killed as a whole
            )

    def start_all(self) -> None:
        for name in self.names:
            self.start(name)
        self.wait_ready()

    def log(self, name: str, n: int | None = None) -> str:
        path = self.tmp_path / f"{name}-{n or self.incarnation[name]}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def events(self, name: str, n: int | None = None) -> list[dict[str, Any]]:
        """The JSON log lines of one incarnation of a process."""
        lines = []
        for line in self.log(name, n).splitlines():
            with contextlib.suppress(ValueError):
                item = json.loads(line)
                if isinstance(item, dict):
                    lines.append(item)
        return lines

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name} ---\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.tmp_path.glob("*.log"))
        )

    def assert_alive(self) -> None:
        for name, process in self.processes.items():
            assert process.poll() is None, f"{name} exited with {process.returncode}:\n{self.logs()}"

    def wait_ready(self, timeout_s: float = READY_S) -> None:
        """Until the API answers ready and every other process logged that it runs (at most ``timeout_s``
        seconds)."""
        marks = {
            name: "worker_started" if name.startswith("worker") else "process started" for name in self.names
        }
        deadline = time.monotonic() + timeout_s
        waiting = set(self.names)
        while waiting:
            self.assert_alive()
            assert time.monotonic() < deadline, (
                f"not ready in {timeout_s} s: {sorted(waiting)}\n{self.logs()}"
            )
            for name in sorted(waiting):
                if name == "api":
                    with contextlib.suppress(httpx.HTTPError):
                        if httpx.get(f"{self.api_url}/health/ready", timeout=2).status_code == 200:
                            waiting.discard(name)
                elif marks[name] in self.log(name):
                    waiting.discard(name)
            time.sleep(0.1)

    def kill_all(self, sig: signal.Signals = signal.SIGKILL, timeout: float = 15.0) -> None:
        """Send ``sig`` to every process group, wait; whatever still runs after ``timeout`` is SIGKILLed."""
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@dataclass
class World:
    stack: Stack
    sim: EvolutionSimulator
    clock: ScaledClock
    headers: dict[str, str]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.stack.api_url, headers=self.headers, timeout=10)

    def scaled(self, message: ReceivedMessage) -> datetime:
        """The instant the shared clock read when the simulator received ``message``."""
        return self.clock.at(message.received_at.timestamp())


@pytest.fixture
def launch(database_url: str, amqp_url: str, tmp_path: Path) -> Iterator[Any]:
    """``launch(clock, policy, workers=2)`` → a :class:`World`: a tenant with ``policy`` and an API key set
    up in process, the simulator serving, api, projections, relay and the workers started and ready.
    Everything stops in teardown."""
    prefix = f"e2e-proc-{uuid.uuid4().hex[:8]}"
    simulator = SimulatorServer()
    stacks: list[Stack] = []

    def start(clock: ScaledClock, policy: dict[str, Any], workers: int = 2) -> World:
        _, api_key = make_tenant(database_url, prefix, clock, simulator.url, policy)
        api_port = free_port()
        env = process_env(
            database_url=database_url, amqp_url=amqp_url, prefix=prefix, clock=clock, api_port=api_port
        )
        names = (*PROCESSES[:3], *(f"worker-{n}" for n in range(1, workers + 1)))
        stack = Stack(tmp_path, env, f"http://127.0.0.1:{api_port}", names)
        stacks.append(stack)
        stack.start_all()
        return World(stack, simulator.sim, clock, {"X-Billing-API-Key": api_key})

    simulator.start()
    try:
        yield start
    finally:
        for stack in stacks:
            stack.kill_all(signal.SIGTERM)
        simulator.stop()
        asyncio.run(delete_topology(amqp_url, Topology(prefix)))


def poll_status(world: World, queue_id: str, want: str, *, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    with world.client() as client:
        while time.monotonic() < deadline:
            world.stack.assert_alive()
            response = client.get(f"{BASE}/queue/{queue_id}/status")
            if response.status_code == 200:
                body = response.json()
                if body["status"] == want:
                    return body
            time.sleep(0.1)
    raise AssertionError(
        f"queue never reached {want!r} in {timeout} s; last status: {body}\n{world.stack.logs()}"
    )


def busiest_window(instants: list[datetime], width: timedelta = timedelta(seconds=60)) -> int:
    """The most instants any closed window of ``width`` holds (one starting at some instant is the worst)."""
    ordered = sorted(instants)
    return max((sum(1 for u in ordered if t <= u <= t + width) for t in ordered), default=0)


def phone(i: int) -> str:
    return f"+55119876540{i:02d}"


# --- throttle across two worker processes ---------------------------------------------------------------

RATE = 6
THROTTLE_SCALE = 20.0
TUESDAY_10 = datetime(2025, 1, 21, 10, 0, tzinfo=SP)


def test_two_workers_never_exceed_messages_per_minute_in_any_60_s_window_at_the_gateway(launch: Any) -> None:
    # Given a tenant allowed 6 messages per minute, no pause between them, and two worker processes on a
    # clock running 20 times faster than real time
    policy = {**default_policy_spec(), "messages_per_minute": RATE, "pause_min_s": 0, "pause_max_s": 0}
    world: World = launch(ScaledClock(TUESDAY_10, time.time(), THROTTLE_SCALE), policy)

    # When 24 notifications are posted at once
    contacts = [{"nome": f"Cliente {i}", "telefone": phone(i), "mensagem": "Aviso."} for i in range(24)]
    with world.client() as client:
        response = client.post(
            f"{BASE}/send/notification", json={"external_id": "aviso", "contacts": contacts}
        )
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["contacts"] == {"total": 24, "accepted": 24, "rejected": 0}
    status = poll_status(world, accepted["queue_id"], "completed", timeout=60)

    # Then each contact is sent exactly once
    sent = world.sim.sent
    assert sorted(m.digits for m in sent) == sorted(phone(i).lstrip("+") for i in range(24))
    assert status["contacts"]["sent"] == 24
    # and no 60-second window of the gateway's receive log (in the shared clock's time) holds more than 6
    # (a grant reaches the gateway some real milliseconds after it was decided, up to ~0.6 s on a busy
    # 2-core machine; the throttle's margin of one real second, 20 clock seconds here, absorbs that)
    received = [world.scaled(m) for m in sent]
    assert busiest_window(received) == RATE, sorted(received)
    # (24 sends at 6 per minute take at least three minutes)
    assert max(received) - min(received) >= timedelta(minutes=3)
    # and both worker processes sent some of them
    per_worker = {
        name: sum(
            1
            for e in world.stack.events(name)
            if e.get("event") == "job_handled" and e.get("outcome") == "sent"
        )
        for name in ("worker-1", "worker-2")
    }
    assert sum(per_worker.values()) == 24, per_worker
    assert all(per_worker.values()), per_worker


ARRIVAL_SCALE = 4.0


def test_three_workers_with_default_pauses_never_let_7_messages_reach_the_gateway_in_60_s(
    launch: Any,
) -> None:
    # Given a tenant allowed 6 messages per minute with the default 1–3 s typing pause, three worker
    # processes, and a gateway that spends the pause before it sends (on a clock 4× real time, so the
    # throttle's one real second of margin is 4 clock seconds: about the spread of the pauses)
    policy = {**default_policy_spec(), "messages_per_minute": RATE}
    assert (policy["pause_min_s"], policy["pause_max_s"]) == (1.0, 3.0)
    world: World = launch(ScaledClock(TUESDAY_10, time.time(), ARRIVAL_SCALE), policy, workers=3)
    world.sim.time_scale = 1.0  # the worker passes the pause in real milliseconds

    # When 13 notifications are posted at once
    contacts = [{"nome": f"Cliente {i}", "telefone": phone(i), "mensagem": "Aviso."} for i in range(13)]
    with world.client() as client:
        response = client.post(
            f"{BASE}/send/notification", json={"external_id": "aviso", "contacts": contacts}
        )
    assert response.status_code == 202, response.text
    status = poll_status(world, response.json()["queue_id"], "completed", timeout=120)

    # Then each is sent once, and no 60 s window (clock time) holds more than 6 messages as they leave the
    # gateway after its typing pause — the instant the throttle counts
    sent = world.sim.sent
    assert status["contacts"]["sent"] == 13
    assert sorted(m.digits for m in sent) == sorted(phone(i).lstrip("+") for i in range(13))
    assert all(m.delay_ms for m in sent)
    delivered = [world.clock.at(m.received_at.timestamp() + (m.delay_ms or 0) / 1000) for m in sent]
    assert busiest_window(delivered) == RATE, sorted(delivered)
    assert max(delivered) - min(delivered) >= timedelta(minutes=2)
    handled = [
        e
        for name in ("worker-1", "worker-2", "worker-3")
        for e in world.stack.events(name)
        if e.get("event") == "job_handled" and e.get("outcome") == "sent"
    ]
    assert len(handled) == 13


# --- kill and restart every process while a queue is paused ----------------------------------------------

RESTART_SCALE = 30.0
OPENING = datetime(2025, 1, 20, 8, 0, tzinfo=SP)  # a Monday
LEAD_S = 24.0
"""Real seconds from the start of the test to the opening: room to start, post, pause, kill and restart
(starting the five processes takes 8 s on a busy 2-core machine, and they are started twice)."""


def test_paused_queue_survives_killing_every_process_and_resumes_at_resume_at_sending_each_once(
    launch: Any,
) -> None:
    # Given a tenant open Monday to Friday 08:00-18:00, and a clock that reaches Monday 08:00 (São Paulo)
    # LEAD_S real seconds from now, running 30 times faster than real time
    policy = {**default_policy_spec(), "windows": {"mon-fri": [["08:00", "18:00"]]}}
    start = OPENING - timedelta(seconds=LEAD_S * RESTART_SCALE)
    world: World = launch(ScaledClock(start, time.time(), RESTART_SCALE), policy)
    assert world.clock.now() < OPENING - timedelta(minutes=2), "the processes took too long to start"

    # When 5 overdue reminders are posted before the opening
    contacts = [
        {"nome": f"Cliente {i}", "telefone": phone(i), "valor": "R$ 10,00", "data_vencimento": "2025-01-10"}
        for i in range(5)
    ]
    with world.client() as client:
        response = client.post(f"{BASE}/send/overdue", json={"external_id": "fatura", "contacts": contacts})
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["contacts"] == {"total": 5, "accepted": 5, "rejected": 0}

    # Then the queue is paused outside business hours until Monday 08:00
    status = poll_status(world, accepted["queue_id"], "paused", timeout=15)
    assert status["paused_reason"] == "outside_business_hours"
    resume_at = datetime.fromisoformat(status["resume_at"])
    assert resume_at.utcoffset() is not None
    assert resume_at == OPENING

    # When every process is killed (SIGKILL) and all are started again, still before the opening
    world.stack.kill_all(signal.SIGKILL)
    assert world.sim.sent == []
    world.stack.start_all()
    restarted_at = world.clock.now()
    assert restarted_at < OPENING, f"restarted at {restarted_at}, after the opening: raise LEAD_S"

    # Then the queue resumes by itself at the opening and each contact is sent exactly once
    status = poll_status(world, accepted["queue_id"], "completed", timeout=LEAD_S + 30)
    sent = world.sim.sent
    assert sorted(m.digits for m in sent) == sorted(phone(i).lstrip("+") for i in range(5))
    received = sorted(world.scaled(m) for m in sent)
    assert received[0] >= OPENING, f"sent before the opening: {received}"
    # promptly: within a few real seconds (the scheduler ticks every 2 s) of resume_at
    assert received[0] - OPENING < timedelta(seconds=5 * RESTART_SCALE), received
    counts = {k: v for k, v in status["contacts"].items() if k not in ("delivered", "read", "replied")}
    assert counts == {
        "total": 5,
        "pending": 0,
        "sent": 5,
        "failed": 0,
        "skipped": 0,
        "rejected": 0,
        "cancelled": 0,
    }
    assert (status["paused_reason"], status["resume_at"]) == (None, None)
    with world.client() as client:
        items = client.get(f"{BASE}/campaign/{accepted['campaign_id']}/contacts").json()["items"]
    assert [(i["status"], i["attempts"]) for i in items] == [("sent", 1)] * 5
    # and it was a restarted worker's scheduler that resumed it
    resumed_by = [
        name
        for name in ("worker-1", "worker-2")
        if any(e.get("event") == "queue_resumed" for e in world.stack.events(name, 2))
    ]
    assert resumed_by, world.stack.logs()
