"""The outbox relay against the real PostgreSQL, with the in-memory broker and with RabbitMQ.

Every case runs on both adapters; the RabbitMQ cases use their own topology prefix and delete it
afterwards. They fail, never skip, when PostgreSQL or RabbitMQ is down.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
import pytest

from billing.bootstrap import Container, build_container, build_relay, run_relay_process
from billing.domain.contact import Contact
from billing.outbox.broker import Broker, OutgoingMessage, Publisher, PublishError
from billing.outbox.jobs import decode_job
from billing.outbox.memory import InMemoryBroker
from billing.outbox.rabbitmq import RabbitBroker
from billing.outbox.relay import OutboxRelay
from billing.settings import Settings
from tests.integration.test_broker_contract import Recorder, consuming, delete_topology, queue_depth
from tests.integration.test_projections import INSERT_EVENT, LEASE, at, position, post, rows

pytestmark = pytest.mark.integration


@pytest.fixture(params=["memory", "rabbitmq"])
async def broker(request: pytest.FixtureRequest, amqp_url: str) -> AsyncIterator[Broker]:
    """A broker of the adapter under test, topology declared under a unique prefix (deleted after)."""
    prefix = f"test-relay-{uuid.uuid4().hex[:10]}"
    made: Broker
    if request.param == "memory":
        made = InMemoryBroker(prefix=prefix, drain_timeout=0.5)
    else:
        made = await RabbitBroker.connect(
            amqp_url,
            prefix=prefix,
            reconnect_interval=0.5,
            publish_timeout=10.0,
            drain_timeout=0.5,
            connection_name=f"billing-test {prefix}",
        )
    try:
        await made.declare_topology()
        yield made
    finally:
        await made.close()
        if isinstance(made, RabbitBroker):
            await delete_topology(amqp_url, made.topology)


@pytest.fixture
async def container(database_url: str, broker: Broker) -> AsyncIterator[Container]:
    settings = Settings(database_url=database_url, poll_interval_s=30.0)
    made = await asyncio.to_thread(build_container, settings, broker=broker)
    try:
        yield made
    finally:
        await asyncio.to_thread(made.pool.close)
        await asyncio.to_thread(made.store.close)


class FlakyPublisher:
    """Raises :class:`PublishError` (publishing nothing) on its first ``failures`` calls."""

    def __init__(self, inner: Publisher, failures: int) -> None:
        self.inner = inner
        self.failures = failures
        self.calls = 0

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise PublishError("broker unreachable (simulated)")
        await self.inner.publish(messages)


def dying_relay(container: Container) -> OutboxRelay:
    """The container's relay, dying after the broker confirmed a batch, before its position is recorded
    (case Q04)."""

    def die(upto: int, failures: Sequence[Any]) -> int:
        raise RuntimeError("killed between confirm and position")

    relay = build_relay(container)
    relay._record = die  # type: ignore[method-assign]
    return relay


def added_ids(container: Container) -> list[str]:
    """The expected message ids, ``<contact_id>:<notification_id>``, in notification-log order."""
    notifications = container.store.recorder.select_notifications(0, 10_000, topics=[Contact.Added.TOPIC])
    return [f"{n.originator_id}:{n.id}" for n in notifications]


async def consume(broker: Broker, count: int, *, settle: float = 0.3) -> Recorder:
    """Consume every job queue until ``count`` deliveries arrived, then ``settle`` seconds more."""
    recorder = Recorder()
    async with consuming(broker, broker.topology.job_queues, recorder, prefetch=100) as task:
        await recorder.wait_for(lambda: len(recorder.deliveries) >= count, task)
        await asyncio.sleep(settle)
    return recorder


async def save(container: Container, *aggregates: Any) -> None:
    await asyncio.to_thread(container.store.save, *aggregates)


async def test_one_job_per_added_contact_in_log_order(
    container: Container, broker: Broker, database_url: str
) -> None:
    tenant_id = uuid.uuid4()
    first = post(tenant_id, accepted=3, rejected=1)
    notices = post(tenant_id, accepted=2, template_type="notification")
    await save(container, *first.aggregates())
    await save(container, *notices.aggregates())
    first.contacts[0].dispatch(at=at(1), lease=LEASE)  # not an Added event: not relayed
    await save(container, first.contacts[0])
    last = post(tenant_id, accepted=2)
    await save(container, *last.aggregates())

    assert await build_relay(container).publish_pending() == 7
    expected = await asyncio.to_thread(added_ids, container)
    assert position(database_url, "relay") == container.store.recorder.max_notification_id()

    recorder = await consume(broker, 7)
    assert len(recorder.deliveries) == 7
    # each batch's jobs go to its own shard (Topology.queue_for(kind, queue_id)), in log order
    for batch, kind in ((first, "overdue"), (notices, "notification"), (last, "overdue")):
        shard = broker.topology.queue_for(kind, batch.queue.id)
        ids = {str(c.id) for c in batch.contacts}
        assert [d.message_id for d in recorder.deliveries if d.message_id.split(":")[0] in ids] == [
            i for i in expected if i.split(":")[0] in ids
        ]
        assert {d.queue for d in recorder.deliveries if d.message_id.split(":")[0] in ids} == {shard}
    by_contact = {c.id: c for c in first.contacts + notices.contacts + last.contacts}
    for delivery in recorder.deliveries:
        job = decode_job(delivery.body)
        contact = by_contact[job.contact_id]
        assert (job.tenant_id, job.queue_id, job.template_type, job.reason) == (
            tenant_id,
            contact.queue_id,
            contact.template_type,
            "added",
        )
        assert delivery.headers["tenant_id"] == str(tenant_id)

    assert await build_relay(container).publish_pending() == 0  # nothing twice
    assert await queue_depth(broker, broker.topology.queue_for("overdue", first.queue.id)) == 0


async def test_position_moves_only_after_the_confirm(
    container: Container, broker: Broker, database_url: str
) -> None:
    tenant_id = uuid.uuid4()
    batch = post(tenant_id, accepted=2)
    queue = broker.topology.queue_for("overdue", batch.queue.id)
    await save(container, *batch.aggregates())
    relay = build_relay(container, publisher=FlakyPublisher(broker.publisher(), failures=1))

    with pytest.raises(PublishError):
        await relay.publish_pending()
    assert position(database_url, "relay") == 0
    assert await queue_depth(broker, queue) == 0

    assert await relay.publish_pending() == 2  # the retry publishes the same batch
    assert position(database_url, "relay") == container.store.recorder.max_notification_id()
    assert await queue_depth(broker, queue) == 2


async def test_q04_restart_between_confirm_and_position_publishes_again(
    container: Container, broker: Broker, database_url: str
) -> None:
    await save(container, *post(uuid.uuid4(), accepted=2).aggregates())
    with pytest.raises(RuntimeError, match="killed"):
        await dying_relay(container).publish_pending()
    assert position(database_url, "relay") == 0

    assert await build_relay(container).publish_pending() == 2  # the restarted relay publishes them again
    recorder = await consume(broker, 4)
    ids = await asyncio.to_thread(added_ids, container)
    # At-least-once: each job twice, with the same message id (the worker makes the second a no-op).
    assert sorted(recorder.ids()) == sorted(ids * 2)
    assert position(database_url, "relay") == container.store.recorder.max_notification_id()


async def test_an_undecodable_event_is_recorded_and_skipped(
    container: Container, broker: Broker, database_url: str
) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(INSERT_EVENT, (uuid.uuid4(), Contact.Added.TOPIC, b"not json"))
    good = post(uuid.uuid4(), accepted=1)
    await save(container, *good.aggregates())

    assert await build_relay(container).publish_pending() == 2  # read: the bad one and the good one
    recorder = await consume(broker, 1)
    assert [decode_job(d.body).contact_id for d in recorder.deliveries] == [good.contacts[0].id]
    errors = rows(database_url, "SELECT projection, topic FROM projection_errors")
    assert errors == [{"projection": "relay", "topic": Contact.Added.TOPIC}]
    assert position(database_url, "relay") == container.store.recorder.max_notification_id()


async def test_running_relay_retries_until_confirmed(container: Container, broker: Broker) -> None:
    flaky = FlakyPublisher(broker.publisher(), failures=3)
    stop = asyncio.Event()
    task = asyncio.create_task(build_relay(container, publisher=flaky).run(stop))
    try:
        await save(container, *post(uuid.uuid4(), accepted=3).aggregates())
        recorder = await consume(broker, 3)
        assert sorted(recorder.ids()) == sorted(await asyncio.to_thread(added_ids, container))
        assert flaky.calls >= 4
        assert not task.done()  # it never gave up
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_relay_wakes_on_notify(container: Container, broker: Broker) -> None:
    assert container.settings.poll_interval_s == 30.0
    stop = asyncio.Event()
    task = asyncio.create_task(run_relay_process(container, stop))
    try:
        await asyncio.sleep(1.0)  # caught up and listening; the next poll is 30 s away
        recorder = Recorder()
        async with consuming(broker, broker.topology.job_queues, recorder) as consumer:
            started = time.monotonic()
            await save(container, *post(uuid.uuid4(), accepted=1).aggregates())
            await recorder.wait_for(lambda: len(recorder.deliveries) == 1, consumer, within=5.0)
            latency = time.monotonic() - started
        print(f"\nsaved → delivered in {latency * 1000:.0f} ms")
        assert latency < 1.0
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
