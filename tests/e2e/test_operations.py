"""What an operator relies on, with every production process as a real subprocess (``billing api``,
``projections``, ``relay`` and two ``billing worker``) on the real PostgreSQL and RabbitMQ, the Evolution API
simulator served over HTTP from this test process:

- ``/metrics``: each process serves its own Prometheus metrics (the API on its port, the others on
  ``BILLING_METRICS_PORT``); the values move as a batch is sent by two worker processes — sends by
  outcome and code add up to the batch across the two workers, gateway latency observations, relay
  publishes, queues by status, follower lag back to 0, deferrals by reason, HTTP requests by route;
- SIGTERM on each process in turn, mid-batch, makes it exit 0 within the grace period, and after each is
  restarted nothing is lost: every accepted contact reaches the gateway exactly once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from billing.cli_errors import SHUTDOWN_GRACE_S
from billing.domain.policy import default_policy_spec
from billing.gateway.simulator import EvolutionSimulator
from billing.outbox.broker import Topology
from billing.services.clock import ScaledClock
from tests.e2e.test_processes import (
    BASE,
    BILLING,
    GATEWAY_KEY,
    INSTANCE,
    PROCESSES,
    SP,
    SimulatorServer,
    Stack,
    World,
    free_port,
    make_tenant,
    phone,
    poll_status,
    process_env,
)
from tests.integration.test_broker_contract import delete_topology

pytestmark = pytest.mark.e2e

SUNDAY_10 = datetime(2025, 1, 19, 10, 0, tzinfo=SP)
OPEN_POLICY: dict[str, Any] = {
    **default_policy_spec(),
    "messages_per_minute": 1000,
    "max_messages_per_day": 100000,
    "pause_min_s": 0,
    "pause_max_s": 0,
}


@dataclass
class MetricStack(Stack):
    """A :class:`Stack` whose processes other than the API each serve metrics on their own port."""

    ports: dict[str, int] = field(default_factory=dict)

    def start(self, name: str) -> None:
        if name != "api":
            self.ports.setdefault(name, free_port())
        base = self.env
        self.env = {**base, "BILLING_METRICS_PORT": str(self.ports.get(name, 0))}
        try:
            super().start(name)
        finally:
            self.env = base

    def scrape(self, name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """``{(sample name, sorted labels): value}`` of one process's metrics."""
        url = f"{self.api_url}/metrics" if name == "api" else f"http://127.0.0.1:{self.ports[name]}/metrics"
        text = httpx.get(url, timeout=5).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    """The value of one series (0 when absent)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: dict[Any, float], name: str, **labels: str) -> float:
    """The sum of every series of ``name`` whose labels include ``labels``."""
    return sum(
        v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(dict(ls).items())
    )


def launch_stack(
    database_url: str,
    amqp_url: str,
    tmp_path: Path,
    simulator: SimulatorServer,
    clock: ScaledClock,
    prefix: str,
) -> tuple[MetricStack, dict[str, str]]:
    """A tenant on the simulator, and the five processes started (with metrics ports) and ready."""
    _, api_key = make_tenant(database_url, prefix, clock, simulator.url, OPEN_POLICY)
    api_port = free_port()
    env = process_env(
        database_url=database_url, amqp_url=amqp_url, prefix=prefix, clock=clock, api_port=api_port
    )
    stack = MetricStack(tmp_path, env, f"http://127.0.0.1:{api_port}")
    stack.start_all()
    return stack, {"X-Billing-API-Key": api_key}


@pytest.fixture
def stack_of(database_url: str, amqp_url: str, tmp_path: Path) -> Iterator[Any]:
    """``stack_of(clock, time_scale)`` → (stack, headers, simulator); everything stops in teardown."""
    prefix = f"e2e-ops-{uuid.uuid4().hex[:8]}"
    started: list[tuple[MetricStack, SimulatorServer]] = []

    def start(
        clock: ScaledClock, time_scale: float = 0.0
    ) -> tuple[MetricStack, dict[str, str], EvolutionSimulator]:
        simulator = SimulatorServer()
        simulator.sim = EvolutionSimulator(time_scale=time_scale)
        simulator.sim.add_instance(INSTANCE, api_key=GATEWAY_KEY)
        simulator.start()
        stack, headers = launch_stack(database_url, amqp_url, tmp_path, simulator, clock, prefix)
        started.append((stack, simulator))
        return stack, headers, simulator.sim

    try:
        yield start
    finally:
        for stack, simulator in started:
            stack.kill_all(signal.SIGTERM)
            simulator.stop()
        asyncio.run(delete_topology(amqp_url, Topology(prefix)))


def post(stack: Stack, headers: dict[str, str], kind: str, numbers: range) -> dict[str, Any]:
    contacts = [
        {"nome": f"Cliente {i}", "telefone": phone(i), "valor": "R$ 10,00", "data_vencimento": "2025-01-10"}
        for i in numbers
    ]
    response = httpx.post(
        f"{stack.api_url}{BASE}/send/{kind}", json={"contacts": contacts}, headers=headers, timeout=30
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_until(check: Any, what: str, stack: Stack, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        stack.assert_alive()
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{stack.logs()}"
        time.sleep(0.1)


def test_metrics_move_as_a_batch_is_sent_by_two_worker_processes(stack_of: Any) -> None:
    stack, headers, sim = stack_of(ScaledClock(SUNDAY_10, time.time(), 1.0))
    workers = ("worker-1", "worker-2")
    before = {name: stack.scrape(name) for name in ("api", "projections", "relay", *workers)}
    assert all(total(before[w], "billing_sends_total") == 0 for w in workers)
    assert value(before["projections"], "billing_queues", status="completed") == 0

    world = World(stack, sim, ScaledClock(SUNDAY_10, time.time(), 1.0), headers)
    batch = post(stack, headers, "notification", range(12))
    poll_status(world, batch["queue_id"], "completed", timeout=60)
    sunday = post(stack, headers, "overdue", range(20, 21))  # Sunday: outside business hours
    poll_status(world, sunday["queue_id"], "paused", timeout=60)

    def settled() -> bool:
        p = stack.scrape("projections")
        return (
            value(p, "billing_follower_lag_events", follower="projections") == 0
            and value(p, "billing_follower_lag_events", follower="relay") == 0
        )

    wait_until(settled, "both followers at the head of the log", stack)
    after = {name: stack.scrape(name) for name in ("api", "projections", "relay", *workers)}

    sends = [value(after[w], "billing_sends_total", outcome="sent", code="sent") for w in workers]
    assert sum(sends) == 12  # each worker counts its own; together, the batch
    assert sum(total(after[w], "billing_gateway_request_seconds_count") for w in workers) == 12
    assert (
        sum(total(after[w], "billing_jobs_deferred_total", reason="outside_business_hours") for w in workers)
        == 1
    )
    assert sum(total(after[w], "billing_jobs_handled_total") for w in workers) == 13
    assert all(total(after[w], "billing_eventstore_save_seconds_count") > 0 for w in workers)
    assert len(sim.sent) == 12

    assert value(after["relay"], "billing_relay_published_total") == 13
    assert total(after["relay"], "billing_relay_confirm_seconds_count") >= 1
    projections = after["projections"]
    assert value(projections, "billing_queues", status="completed") == 1
    assert value(projections, "billing_queues", status="paused") == 1
    assert value(projections, "billing_contacts_open", queue_status="paused") == 1  # the Sunday contact
    assert projections[("billing_contacts_open", (("queue_status", "running"),))] == 0  # present, empty
    assert value(projections, "billing_follower_position", follower="projections") > 0
    assert value(projections, "billing_follower_errors", follower="projections") == 0

    api = after["api"]
    route = f"{BASE}/send/notification"
    assert total(api, "billing_http_requests_total", path=route, status_code="202") == 1
    assert total(api, "billing_http_requests_total", path=f"{BASE}/send/overdue", status_code="202") == 1
    status_route = f"{BASE}/queue/{{queue_id}}/status"
    assert total(api, "billing_http_requests_total", path=status_route, status_code="200") >= 2
    assert total(api, "billing_eventstore_save_seconds_count") >= 2  # the two POSTs
    labels = {dict(ls).get("path") for (n, ls) in api if n == "billing_http_requests_total"}
    assert not any(batch["queue_id"] in (p or "") for p in labels)  # route templates, never ids


# --- graceful shutdown ---------------------------------------------------------------------------------

SEND_PAUSE_S = 0.3


def terminate(stack: MetricStack, name: str) -> float:
    """SIGTERM one process (its group); returns how long it took to exit. It must exit 0 in the grace."""
    process = stack.processes[name]
    start = time.monotonic()
    os.killpg(process.pid, signal.SIGTERM)
    try:
        code = process.wait(timeout=SHUTDOWN_GRACE_S + 5)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{name} did not exit within the grace period\n{stack.logs()}") from None
    assert code == 0, f"{name} exited {code} on SIGTERM\n{stack.log(name)[-3000:]}"
    return time.monotonic() - start


def test_sigterm_on_each_process_mid_batch_loses_nothing(stack_of: Any) -> None:
    # every send takes ~0.3 s at the gateway ("typing…"), so the batch is in flight when signals arrive
    stack, headers, sim = stack_of(
        ScaledClock(datetime(2025, 1, 21, 10, 0, tzinfo=SP), time.time(), 1.0), 1.0
    )
    # the policy's pause is set through the admin API of the running system
    token = subprocess.run(
        [str(BILLING), "admin", "token", "--tenant", _tenant_of(stack, headers)],
        env=stack.env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    answer = httpx.patch(
        f"{stack.api_url}{BASE}/config/",
        json={"policy": {"pause_min_s": SEND_PAUSE_S, "pause_max_s": SEND_PAUSE_S}},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text

    accepted: list[dict[str, Any]] = []
    accepted.append(post(stack, headers, "notification", range(0, 10)))
    took = {"relay": terminate(stack, "relay")}  # right after the POST: mid-publish
    stack.start("relay")
    accepted.append(post(stack, headers, "notification", range(10, 20)))
    took["projections"] = terminate(stack, "projections")
    stack.start("projections")
    wait_until(lambda: len(sim.sent) >= 3, "sends under way", stack)
    took["worker-1"] = terminate(stack, "worker-1")  # holding deliveries, some mid gateway call
    stack.start("worker-1")
    wait_until(lambda: len(sim.sent) >= 8, "more sends", stack)
    took["worker-2"] = terminate(stack, "worker-2")
    stack.start("worker-2")

    # a POST whose body is still arriving when the API is told to stop: it is answered, then the API exits
    contacts = [
        {"nome": f"C{i}", "telefone": phone(i), "valor": "R$ 1,00", "data_vencimento": "2025-01-10"}
        for i in range(20, 30)
    ]
    body = json.dumps({"contacts": contacts}).encode()
    reading = threading.Event()
    answers: list[httpx.Response | BaseException] = []

    def slow_body() -> Iterator[bytes]:
        yield body[: len(body) // 2]
        reading.set()
        time.sleep(1.0)
        yield body[len(body) // 2 :]

    def send() -> None:
        try:
            answers.append(
                httpx.post(
                    f"{stack.api_url}{BASE}/send/notification",
                    content=slow_body(),
                    headers={**headers, "Content-Type": "application/json"},
                    timeout=30,
                )
            )
        except BaseException as exc:
            answers.append(exc)

    poster = threading.Thread(target=send)
    poster.start()
    assert reading.wait(10), "the POST did not start"
    took["api"] = terminate(stack, "api")
    poster.join(30)
    assert len(answers) == 1 and isinstance(answers[0], httpx.Response), answers
    assert answers[0].status_code == 202, answers[0].text
    accepted.append(answers[0].json())
    stack.start("api")
    stack.wait_ready()

    world = World(stack, sim, ScaledClock(datetime(2025, 1, 21, 10, 0, tzinfo=SP), time.time(), 1.0), headers)
    for batch in accepted:
        status = poll_status(world, batch["queue_id"], "completed", timeout=120)
        assert status["contacts"]["sent"] == batch["contacts"]["accepted"]
    expected = sum(b["contacts"]["accepted"] for b in accepted)
    numbers = Counter(m.number for m in sim.sent)
    assert len(numbers) == expected and set(numbers.values()) == {1}, numbers  # each exactly once
    assert all(seconds < SHUTDOWN_GRACE_S for seconds in took.values()), took
    for name in PROCESSES:
        assert '"process stopped"' in stack.log(name, 1), stack.log(name, 1)[-2000:]  # a clean stop, logged


def _tenant_of(stack: Stack, headers: dict[str, str]) -> str:
    """The tenant id of the API key (read from the event log by the CLI)."""
    result = subprocess.run(
        [str(BILLING), "tenant", "list"], env=stack.env, capture_output=True, text=True, check=True
    )
    return result.stdout.split()[0]
