"""A RabbitMQ restart in the middle of a batch sends no message twice.

Two workers consume from the real RabbitMQ; the Evolution API simulator is served over real HTTP (so a
request whose client went away still completes at the gateway, as a real gateway's does) and takes 3 s
per message (the typing pause). While messages are at the gateway, ``rabbitmqctl stop_app`` /
``start_app`` closes every channel; aio-pika cancels the consumers' callbacks. A call that reached the
gateway must still get its outcome saved: afterwards the claims' leases are let run out and the scheduler
republishes every contact still claimed, and the gateway's receive log must hold each number once.

Restarts the shared broker: run under ``flock -x /tmp/billing-rabbit.lock``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from datetime import timedelta

import httpx
import pytest

from billing.domain.types import ContactStatus
from billing.outbox.rabbitmq import RabbitBroker
from billing.services.clock import FakeClock
from tests.e2e.test_processes import GATEWAY_KEY, INSTANCE, SimulatorServer
from tests.integration.test_broker_contract import delete_topology
from tests.integration.test_rabbitmq_restart import rabbitmqctl
from tests.integration.test_worker import WEDNESDAY_10, Worker, World, create_batch, create_tenant

pytestmark = pytest.mark.integration

CONTACTS = 20
LEASE_S = 60.0
PAUSE_S = 3.0


async def settled(sim: SimulatorServer, quiet_s: float, limit_s: float) -> None:
    """Until the gateway's receive log has not grown for ``quiet_s`` real seconds."""
    deadline = time.monotonic() + limit_s
    seen, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = len(sim.sim.requests) + len(sim.sim.sent)
        if count != seen:
            seen, since = count, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the gateway never went quiet ({seen} requests)")


async def test_a_broker_restart_mid_batch_with_a_slow_gateway_sends_each_contact_once(
    database_url: str, amqp_url: str
) -> None:
    # Given two workers on RabbitMQ and a gateway that takes 3 s per message
    sim = SimulatorServer()
    sim.sim.time_scale = 1.0
    sim.start()
    prefix = f"test-restart-{uuid.uuid4().hex[:8]}"
    broker = await RabbitBroker.connect(
        amqp_url, prefix=prefix, reconnect_interval=0.5, drain_timeout=1.0, connection_name=prefix
    )
    world = World(database_url, broker, FakeClock(WEDNESDAY_10))
    try:
        await broker.declare_topology()
        for _ in range(2):
            container = world.container(gateway_timeout_s=10.0, dispatch_lease_s=LEASE_S, worker_prefetch=2)
            assert container.gateway_transport is not None
            await container.gateway_transport.aclose()  # the simulator in process: not used here
            container.gateway_transport = httpx.AsyncHTTPTransport()  # the real HTTP gateway
            worker = Worker(container)
            world.workers.append(worker)
            await worker.start()
        tenant_id = create_tenant(
            world,
            api_key=GATEWAY_KEY,
            instance=INSTANCE,
            base_url=sim.url,
            pause_min_s=PAUSE_S,
            pause_max_s=PAUSE_S,
            messages_per_minute=100,
        )
        batch = create_batch(world, tenant_id, CONTACTS, kind="notification")

        # When the jobs are flowing and RabbitMQ restarts while messages are at the gateway
        await world.publish(batch.jobs())
        deadline = time.monotonic() + 30
        while len(sim.sim.sent) < 2:
            assert time.monotonic() < deadline, "no message reached the gateway"
            await asyncio.sleep(0.05)
        try:
            await rabbitmqctl("stop_app")
            await asyncio.sleep(2.0)
        finally:
            await rabbitmqctl("start_app")
            await rabbitmqctl("await_startup")

        # and, once everything settled, every claim's lease runs out and the scheduler republishes what
        # is still claimed (a worker that lost its outcome would leave its contact claimed)
        await settled(sim, quiet_s=2 * PAUSE_S + 2, limit_s=120)
        world.clock.advance(timedelta(seconds=LEASE_S + 1))
        await world.project()
        await world.main.scheduler.tick()
        await settled(sim, quiet_s=2 * PAUSE_S + 2, limit_s=60)

        # Then every contact was sent exactly once, as the gateway's receive log counts it
        numbers = Counter(m.digits for m in sim.sim.sent)
        assert len(numbers) == CONTACTS
        assert sorted(numbers) == sorted(phone[1:] for _, phone in batch.contacts)
        assert [n for n, times in numbers.items() if times > 1] == []
        assert [world.contact(cid).status for cid in batch.ids] == [ContactStatus.SENT] * CONTACTS
    finally:
        for worker in world.workers:
            await worker.shutdown()
        await broker.close()
        await delete_topology(amqp_url, broker.topology)
        sim.stop()
