"""Tenant fairness (issue 4 §3): one tenant's backlog never delays another tenant's sends.

Tenant A posts 2,000 reminders with ``messages_per_minute = 2``, so nearly all of its jobs are only
deferred by its throttle (each still costs the worker a few milliseconds); tenant B posts 5 right after.
The real relay publishes them in that order, each job to its tenant's shard of the job queues
(``Topology.queue_for``), and one worker consumes every shard. B's 5 contacts must all be sent before the
worker handled half of A's backlog — with one FIFO queue per kind they came after all 2,000 of A's jobs.
Run on the in-memory broker and on RabbitMQ (unique topology prefix, deleted afterwards).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from billing.bootstrap import build_relay
from billing.domain.sending import Handled
from billing.outbox.broker import Broker, Delivery, OutgoingMessage
from billing.outbox.memory import InMemoryBroker
from billing.outbox.rabbitmq import RabbitBroker
from billing.services.clock import FakeClock
from tests.integration.test_broker_contract import Recorder, consuming, delete_topology
from tests.integration.test_worker import WEDNESDAY_10, World, create_batch, create_tenant

BACKLOG = 2_000
FEW = 5
WAIT_S = 120.0  # real seconds B's sends may take (generous: the machine may be shared)

BrokerFactory = Callable[[], Awaitable[Broker]]


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.integration)])
async def make_broker(request: pytest.FixtureRequest, amqp_url: str) -> AsyncIterator[BrokerFactory]:
    """Makes brokers of the adapter under test (topology not declared); closes and deletes them after."""
    made: list[Broker] = []

    async def make() -> Broker:
        prefix = f"test-fair-{uuid.uuid4().hex[:10]}"
        new: Broker
        if request.param == "memory":
            new = InMemoryBroker(prefix=prefix, delivery_limit=2, drain_timeout=1.0)
        else:
            new = await RabbitBroker.connect(
                amqp_url, prefix=prefix, delivery_limit=2, drain_timeout=1.0, connection_name=prefix
            )
        made.append(new)
        return new

    try:
        yield make
    finally:
        for broker in made:
            await broker.close()
            if isinstance(broker, RabbitBroker):
                await delete_topology(amqp_url, broker.topology)


async def test_a_tenants_backlog_does_not_delay_another_tenants_sends(
    database_url: str, make_broker: BrokerFactory
) -> None:
    broker = await make_broker()
    world = World(database_url, broker, FakeClock(WEDNESDAY_10))
    await world.add_worker(worker_prefetch=2)
    try:
        # Given tenant A (2 messages per minute) and tenant B, whose batches land on different shards
        topology = broker.topology
        a = create_tenant(world, messages_per_minute=2)
        b = create_tenant(world)
        queue_a, queue_b = uuid.uuid4(), uuid.uuid4()
        while topology.queue_for("overdue", queue_b) == topology.queue_for("overdue", queue_a):
            queue_b = uuid.uuid4()
        await asyncio.to_thread(create_batch, world, a, BACKLOG, queue_id=queue_a)
        few = create_batch(world, b, FEW, first=BACKLOG, queue_id=queue_b)
        await world.project()

        # When the relay publishes A's 2,000 jobs, then B's 5, and one worker consumes
        assert await build_relay(world.main.container).publish_pending() == BACKLOG + FEW
        handler = world.main.handler
        deadline = time.monotonic() + WAIT_S
        while sum(1 for job, _ in handler.results if job.tenant_id == b) < FEW:
            assert time.monotonic() < deadline, f"B not handled; {len(handler.results)} results"
            assert world.main.task is not None and not world.main.task.done()
            await asyncio.sleep(0.05)

        # Then B's 5 were all sent, before the worker got through half of A's backlog
        results = list(handler.results)
        last_b = max(i for i, (job, _) in enumerate(results) if job.tenant_id == b)
        a_before = sum(1 for job, _ in results[:last_b] if job.tenant_id == a)
        assert [r.outcome for job, r in results if job.tenant_id == b] == [Handled.SENT] * FEW
        assert a_before < BACKLOG // 2, f"B finished after {a_before} of A's jobs"
        # as the simulator received them: B's 5 numbers, among A's first (throttled) sends
        b_numbers = {phone[1:] for _, phone in few.contacts}
        received = [m.digits for m in world.sim.sent]
        assert b_numbers <= set(received)
        assert len(received) <= 2 + FEW  # A's throttle let 2 through; everything else of A is deferred
        print(f"\nB's {FEW} sent after {a_before} of A's {BACKLOG} jobs were handled")
    finally:
        for worker in world.workers:
            await worker.shutdown()


async def test_a_shard_dead_letters_to_its_kinds_dead_letter_queue(make_broker: BrokerFactory) -> None:
    broker = await make_broker()
    await broker.declare_topology()
    shard = broker.topology.shard_queues("upcoming")[-1]
    await broker.publisher().publish([OutgoingMessage(routing_key=shard, body=b"poison", message_id="p")])

    async def reject(delivery: Delivery) -> None:
        await delivery.reject()

    rejecting = Recorder(reject)
    async with consuming(broker, [shard], rejecting) as task:
        await rejecting.wait_for(lambda: len(rejecting.deliveries) == 1, task)
    dead = Recorder()
    async with consuming(broker, [broker.topology.dead_letter_queue("upcoming")], dead) as task:
        await dead.wait_for(lambda: len(dead.deliveries) == 1, task)
    assert dead.deliveries[0].message_id == "p"
    assert dead.deliveries[0].headers["x-first-death-queue"] == shard
