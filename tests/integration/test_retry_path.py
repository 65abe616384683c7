"""Retries and a tenant's next batch do not queue behind the tenant's own large backlog.

Fresh jobs go to their batch's shard (``Topology.queue_for(kind, queue_id)``), republished jobs (retries
come due, deferrals, expired leases) to the kind's retry queue, which every worker consumes beside the
shards. One tenant with no throttle to speak of posts a large batch; a retry of the same tenant, and a
small second batch of it, are handled before the worker got through a fifth of the backlog. On the
in-memory broker and on RabbitMQ.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta

from billing.bootstrap import build_relay
from billing.domain.contact import Contact
from billing.domain.sending import Handled
from billing.domain.types import ContactStatus
from billing.services.clock import FakeClock
from tests.integration.test_tenant_fairness import BrokerFactory, make_broker  # noqa: F401  (fixture)
from tests.integration.test_worker import WEDNESDAY_10, World, create_batch, create_tenant

BACKLOG = 600
FEW = 5
WAIT_S = 120.0


async def wait_handled(world: World, ids: set[uuid.UUID]) -> int:
    """Until every contact of ``ids`` was sent; returns how many other jobs were handled before the last."""
    handler = world.main.handler
    deadline = time.monotonic() + WAIT_S
    while not ids <= {job.contact_id for job, r in handler.results if r.outcome is Handled.SENT}:
        assert time.monotonic() < deadline, f"not all sent; {len(handler.results)} results"
        await asyncio.sleep(0.05)
    results = list(handler.results)
    last = max(i for i, (job, _) in enumerate(results) if job.contact_id in ids)
    return sum(1 for job, _ in results[:last] if job.contact_id not in ids)


async def test_a_retry_is_handled_ahead_of_its_tenants_backlog(
    database_url: str,
    make_broker: BrokerFactory,  # noqa: F811
) -> None:
    broker = await make_broker()
    world = World(database_url, broker, FakeClock(WEDNESDAY_10))
    await world.add_worker(worker_prefetch=2)
    try:
        # Given a tenant's contact whose first attempt failed and whose retry is due in a minute
        tenant = create_tenant(world, messages_per_minute=1_000)
        retry = create_batch(world, tenant, 1, first=BACKLOG)
        contact = world.contact(retry.ids[0])
        now = world.clock.now()
        contact.dispatch(at=now, lease=timedelta(seconds=120))
        contact.record_failure(
            code="gateway_unavailable",
            message="503",
            retryable=True,
            retry_at=now + timedelta(minutes=1),
            at=now,
        )
        world.store.save(contact)
        # and a backlog of the same tenant already queued
        backlog = await asyncio.to_thread(create_batch, world, tenant, BACKLOG)
        await world.publish(backlog.jobs())

        # When the retry comes due and the scheduler republishes it
        world.clock.advance(timedelta(minutes=1))
        await world.project()
        report = await world.main.scheduler.tick()
        assert report.due == 1

        # Then it is sent before a fifth of the backlog was handled
        before = await wait_handled(world, set(retry.ids))
        assert before < BACKLOG // 5, f"the retry waited for {before} of {BACKLOG} jobs"
        assert world.contact(retry.ids[0]).status is ContactStatus.SENT
        assert isinstance(world.contact(retry.ids[0]), Contact)
        print(f"\nthe retry was sent after {before} of the backlog's {BACKLOG} jobs")
    finally:
        for worker in world.workers:
            await worker.shutdown()


async def test_a_tenants_small_batch_is_not_behind_its_own_large_batch(
    database_url: str,
    make_broker: BrokerFactory,  # noqa: F811
) -> None:
    broker = await make_broker()
    world = World(database_url, broker, FakeClock(WEDNESDAY_10))
    await world.add_worker(worker_prefetch=2)
    try:
        # Given one tenant's large batch and, a moment later, its small one (on another shard, as 7 in
        # 8 batches are)
        tenant = create_tenant(world, messages_per_minute=1_000)
        topology = broker.topology
        large_id, small_id = uuid.uuid4(), uuid.uuid4()
        while topology.queue_for("overdue", small_id) == topology.queue_for("overdue", large_id):
            small_id = uuid.uuid4()
        await asyncio.to_thread(create_batch, world, tenant, BACKLOG, queue_id=large_id)
        small = create_batch(world, tenant, FEW, first=BACKLOG, queue_id=small_id)
        await world.project()

        # When the relay publishes both, in that order
        assert await build_relay(world.main.container).publish_pending() == BACKLOG + FEW

        # Then the small batch is sent before a fifth of the large one was handled
        before = await wait_handled(world, set(small.ids))
        assert before < BACKLOG // 5, f"the small batch waited for {before} of {BACKLOG} jobs"
        print(f"\nthe small batch was sent after {before} of the large batch's {BACKLOG} jobs")
    finally:
        for worker in world.workers:
            await worker.shutdown()
