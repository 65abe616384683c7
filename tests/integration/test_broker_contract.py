"""Contract of the broker port, run against both adapters (in-memory and RabbitMQ).

RabbitMQ runs at ``BILLING_TEST_AMQP_URL`` (default ``amqp://guest:guest@127.0.0.1:5672/``); when it is
unreachable the RabbitMQ cases error out, they are never skipped. Each case uses its own topology prefix
and deletes its queues and exchanges afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress

import aio_pika
import pytest

from billing.outbox.broker import (
    JOB_KINDS,
    Broker,
    Delivery,
    DeliveryAlreadySettled,
    OutgoingMessage,
    PublishError,
    Topology,
    dead_letter_queue,
)
from billing.outbox.memory import InMemoryBroker
from billing.outbox.rabbitmq import RabbitBroker

AMQP_URL = os.environ.get("BILLING_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
DELIVERY_LIMIT = 2  # small, so the limit is reached quickly
WAIT = 10.0  # seconds any expected delivery may take


async def delete_topology(url: str, topology: Topology) -> None:
    """Delete every queue and exchange of ``topology`` (test clean-up)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        for name in (*topology.job_queues, *topology.dead_letter_queues):
            await channel.queue_delete(name)
        for name in (topology.exchange, topology.dead_letter_exchange):
            await channel.exchange_delete(name)
    finally:
        await connection.close()


async def queue_depth(broker: Broker, queue: str) -> int:
    """Messages ready in ``queue``, asked of the broker itself."""
    if isinstance(broker, InMemoryBroker):
        return broker.depth(queue)
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        assert declared.declaration_result.message_count is not None
        return declared.declaration_result.message_count
    finally:
        await connection.close()


BrokerFactory = Callable[[], Awaitable[Broker]]


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.integration)])
async def make_broker(request: pytest.FixtureRequest) -> AsyncIterator[BrokerFactory]:
    """Makes brokers of the adapter under test, topology not declared; closes and deletes them after."""
    made: list[Broker] = []

    async def make() -> Broker:
        prefix = f"test-{uuid.uuid4().hex[:12]}"
        new: Broker
        if request.param == "memory":
            new = InMemoryBroker(prefix=prefix, delivery_limit=DELIVERY_LIMIT, drain_timeout=0.5)
        else:
            new = await RabbitBroker.connect(
                AMQP_URL,
                prefix=prefix,
                delivery_limit=DELIVERY_LIMIT,
                reconnect_interval=1.0,
                publish_timeout=15.0,
                drain_timeout=0.5,
                connection_name=f"billing-test {prefix}",
            )
        made.append(new)
        return new

    try:
        yield make
    finally:
        for made_broker in made:
            await made_broker.close()
            if isinstance(made_broker, RabbitBroker):
                await delete_topology(AMQP_URL, made_broker.topology)


@pytest.fixture
async def broker(make_broker: BrokerFactory) -> Broker:
    new = await make_broker()
    await new.declare_topology()
    return new


def msg(routing_key: str, message_id: str, body: bytes | None = None, **headers: str) -> OutgoingMessage:
    return OutgoingMessage(
        routing_key=routing_key,
        body=body if body is not None else message_id.encode(),
        message_id=message_id,
        headers=headers,
    )


class Recorder:
    """A handler that records every delivery and settles it by ``decide(delivery)``."""

    def __init__(self, decide: Callable[[Delivery], Awaitable[None]] | None = None) -> None:
        self.deliveries: list[Delivery] = []
        self._decide = decide
        self._changed = asyncio.Event()

    async def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        self._changed.set()
        if self._decide is None:
            await delivery.ack()
        else:
            await self._decide(delivery)

    def ids(self) -> list[str]:
        return [d.message_id for d in self.deliveries]

    def of(self, message_id: str) -> list[Delivery]:
        return [d for d in self.deliveries if d.message_id == message_id]

    async def wait_for(
        self, predicate: Callable[[], bool], task: asyncio.Task[None], within: float = WAIT
    ) -> None:
        """Wait until ``predicate()`` holds; fail on timeout, or if the consumer task ended."""
        deadline = time.monotonic() + within
        while not predicate():
            if task.done():
                task.result()
                pytest.fail("consumer stopped")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"timed out; deliveries so far: {self.ids()}")
            self._changed.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.2))


@asynccontextmanager
async def consuming(
    broker: Broker, queues: Sequence[str], handler: Recorder, *, prefetch: int = 10
) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(broker.consumer().run(queues, handler, prefetch=prefetch))
    try:
        yield task
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


async def test_default_topology_names() -> None:
    t = Topology()
    assert t.exchange == "billing"
    assert t.dead_letter_exchange == "billing.dlx"
    assert t.job_queues == tuple(
        q for kind in JOB_KINDS for q in (*(f"billing.{kind}.{n}" for n in range(8)), f"billing.{kind}.retry")
    )
    assert t.retry_queue("upcoming") == "billing.upcoming.retry"
    assert dead_letter_queue("billing.upcoming.retry") == "billing.upcoming.dead"
    assert t.queue("overdue") == "billing.overdue.0"
    assert t.queue_for("overdue", uuid.UUID(int=8 * 1000 + 3)) == "billing.overdue.3"
    assert t.dead_letter_queues == (
        "billing.overdue.dead",
        "billing.upcoming.dead",
        "billing.notification.dead",
    )
    assert {dead_letter_queue(q) for q in t.job_queues} == set(t.dead_letter_queues)
    assert dead_letter_queue("billing.overdue.7") == "billing.overdue.dead"
    assert t.job_queue_arguments("billing.overdue.3")["x-delivery-limit"] == 5
    assert t.job_queue_arguments("billing.overdue.3")["x-dead-letter-routing-key"] == "billing.overdue.dead"


async def test_ping(broker: Broker) -> None:
    assert await broker.ping()
    await broker.close()
    assert not await broker.ping()


async def test_publishing_needs_the_topology(make_broker: BrokerFactory) -> None:
    broker = await make_broker()
    assert not await broker.ping()
    publisher = broker.publisher()
    queue = broker.topology.queue("overdue")
    with pytest.raises(PublishError):
        await publisher.publish([msg(queue, "early")])

    await broker.declare_topology()
    await broker.declare_topology()  # idempotent
    assert await broker.ping()
    await publisher.publish([msg(queue, "later")])  # the same publisher recovers
    assert await queue_depth(broker, queue) == 1


async def test_closing_the_broker_stops_publishers_and_consumers(broker: Broker) -> None:
    queue = broker.topology.queue("overdue")
    publisher = broker.publisher()
    task = asyncio.create_task(broker.consumer().run([queue], Recorder(), prefetch=1))
    await asyncio.sleep(0.2)
    await broker.close()
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(task, WAIT)
    with pytest.raises(PublishError):
        await publisher.publish([msg(queue, "too-late")])


async def test_publish_consume_ack(broker: Broker) -> None:
    queue = broker.topology.queue("overdue")
    await broker.publisher().publish([msg(queue, "m1", b'{"n": 1}', tenant="t-1")])

    recorder = Recorder()
    async with consuming(broker, [queue], recorder) as task:
        await recorder.wait_for(lambda: len(recorder.deliveries) == 1, task)
    (d,) = recorder.deliveries
    assert (d.body, d.message_id, d.routing_key, d.queue) == (b'{"n": 1}', "m1", queue, queue)
    assert d.headers["tenant"] == "t-1"
    assert (d.redelivered, d.delivery_count, d.settled) == (False, 0, True)

    # m1 was acked: a new consumer gets m2 only (an unacked m1 would come back first).
    await broker.publisher().publish([msg(queue, "m2")])
    again = Recorder()
    async with consuming(broker, [queue], again) as task:
        await again.wait_for(lambda: len(again.deliveries) == 1, task)
        await asyncio.sleep(0.2)
    assert again.ids() == ["m2"]
    assert await queue_depth(broker, queue) == 0


async def test_batch_of_200_is_routed_when_publish_returns(broker: Broker) -> None:
    queues = tuple(broker.topology.queue(kind) for kind in JOB_KINDS)
    batch = [msg(queues[i % 3], f"b{i:03d}") for i in range(200)]
    started = time.monotonic()
    await broker.publisher().publish(batch)
    elapsed = time.monotonic() - started

    depths = [await queue_depth(broker, q) for q in queues]
    assert depths == [67, 67, 66]
    assert elapsed < 10

    recorder = Recorder()
    async with consuming(broker, queues, recorder, prefetch=50) as task:
        await recorder.wait_for(lambda: len(recorder.deliveries) >= 200, task)
        await asyncio.sleep(0.2)
    assert sorted(recorder.ids()) == sorted(m.message_id for m in batch)
    by_id = {d.message_id: d for d in recorder.deliveries}
    assert all(by_id[m.message_id].queue == m.routing_key for m in batch)


async def test_unknown_routing_key_raises_publish_error(broker: Broker) -> None:
    publisher = broker.publisher()
    with pytest.raises(PublishError) as err:
        await publisher.publish([msg(f"{broker.topology.prefix}.nowhere", "lost")])
    assert err.value.failed_ids == ("lost",)

    queue = broker.topology.queue("upcoming")
    with pytest.raises(PublishError) as err:
        await publisher.publish([msg(queue, "ok-1"), msg("nowhere", "lost-2"), msg(queue, "ok-2")])
    assert err.value.failed_ids == ("lost-2",)

    # The publisher is still usable after a failure.
    await publisher.publish([msg(queue, "ok-3")])


async def test_duplicate_message_ids_in_a_batch_are_refused(broker: Broker) -> None:
    queue = broker.topology.queue("overdue")
    with pytest.raises(ValueError, match="unique"):
        await broker.publisher().publish([msg(queue, "same"), msg(queue, "same")])


async def test_empty_batch_is_a_no_op(broker: Broker) -> None:
    await broker.publisher().publish([])


async def test_poison_message_is_dead_lettered_without_blocking_the_queue(broker: Broker) -> None:
    """Q02: queue [m1 poison, m2 valid], prefetch 1 -> m1 dead after one delivery, m2 handled once."""
    queue = broker.topology.queue("overdue")
    await broker.publisher().publish([msg(queue, "m1", b"\xff not json"), msg(queue, "m2", b"{}")])

    async def decide(d: Delivery) -> None:
        if d.body.startswith(b"\xff"):
            await d.reject()
        else:
            await d.ack()

    recorder = Recorder(decide)
    async with consuming(broker, [queue], recorder, prefetch=1) as task:
        await recorder.wait_for(lambda: "m2" in recorder.ids(), task)
        await asyncio.sleep(0.3)  # nothing else arrives
    assert recorder.ids() == ["m1", "m2"]

    dead = Recorder()
    async with consuming(broker, [dead_letter_queue(queue)], dead) as task:
        await dead.wait_for(lambda: len(dead.deliveries) == 1, task)
    (d,) = dead.deliveries
    assert (d.message_id, d.body) == ("m1", b"\xff not json")
    assert d.headers["x-first-death-reason"] == "rejected"
    assert d.headers["x-first-death-queue"] == queue


async def test_requeue_counts_deliveries_then_dead_letters_at_the_limit(broker: Broker) -> None:
    queue = broker.topology.queue("notification")
    await broker.publisher().publish([msg(queue, "flaky")])

    async def always_requeue(d: Delivery) -> None:
        await d.requeue()

    recorder = Recorder(always_requeue)
    async with consuming(broker, [queue], recorder, prefetch=1) as task:
        await recorder.wait_for(lambda: len(recorder.deliveries) == DELIVERY_LIMIT + 1, task)
        await asyncio.sleep(0.3)  # no further delivery
    assert [d.delivery_count for d in recorder.deliveries] == list(range(DELIVERY_LIMIT + 1))
    assert [d.redelivered for d in recorder.deliveries] == [False] + [True] * DELIVERY_LIMIT

    dead = Recorder()
    async with consuming(broker, [dead_letter_queue(queue)], dead) as task:
        await dead.wait_for(lambda: len(dead.deliveries) == 1, task)
    assert dead.deliveries[0].message_id == "flaky"
    assert dead.deliveries[0].headers["x-first-death-reason"] == "delivery_limit"
    assert await queue_depth(broker, queue) == 0


async def test_a_requeued_message_is_redelivered_and_the_others_still_handled(broker: Broker) -> None:
    queue = broker.topology.queue("overdue")
    await broker.publisher().publish([msg(queue, "a"), msg(queue, "b"), msg(queue, "c")])

    async def requeue_a_once(d: Delivery) -> None:
        if d.message_id == "a" and d.delivery_count == 0:
            await d.requeue()
        else:
            await d.ack()

    recorder = Recorder(requeue_a_once)
    async with consuming(broker, [queue], recorder, prefetch=1) as task:
        await recorder.wait_for(lambda: len(recorder.deliveries) == 4, task)
    # Order is the broker's choice (RabbitMQ 3.10 with a delivery limit: a, a, b, c); counts are not.
    assert sorted(recorder.ids()) == ["a", "a", "b", "c"]
    assert [d.delivery_count for d in recorder.of("a")] == [0, 1]
    assert [d.delivery_count for d in recorder.of("b") + recorder.of("c")] == [0, 0]


async def test_handler_raising_dead_letters_and_logs(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    queue = broker.topology.queue("upcoming")
    await broker.publisher().publish([msg(queue, "boom", b"secret-body"), msg(queue, "fine")])

    async def decide(d: Delivery) -> None:
        if d.message_id == "boom":
            raise RuntimeError("cannot handle")
        await d.ack()

    recorder = Recorder(decide)
    with caplog.at_level(logging.ERROR):
        async with consuming(broker, [queue], recorder, prefetch=1) as task:
            await recorder.wait_for(lambda: "fine" in recorder.ids(), task)
            await asyncio.sleep(0.3)
    assert recorder.ids() == ["boom", "fine"]
    failures = [r for r in caplog.records if "boom" in r.getMessage()]
    assert failures
    assert failures[0].exc_info is not None
    assert all("secret-body" not in r.getMessage() for r in caplog.records)

    dead = Recorder()
    async with consuming(broker, [dead_letter_queue(queue)], dead) as task:
        await dead.wait_for(lambda: len(dead.deliveries) == 1, task)
    assert dead.deliveries[0].message_id == "boom"
    assert dead.deliveries[0].headers["x-first-death-reason"] == "rejected"


async def test_handler_not_settling_dead_letters(broker: Broker) -> None:
    queue = broker.topology.queue("overdue")
    await broker.publisher().publish([msg(queue, "forgotten")])

    async def forget(d: Delivery) -> None:
        return None

    recorder = Recorder(forget)
    async with consuming(broker, [queue], recorder, prefetch=1) as task:
        await recorder.wait_for(lambda: len(recorder.deliveries) == 1, task)
    dead = Recorder()
    async with consuming(broker, [dead_letter_queue(queue)], dead) as task:
        await dead.wait_for(lambda: len(dead.deliveries) == 1, task)
    assert dead.deliveries[0].message_id == "forgotten"


async def test_settling_twice_raises(broker: Broker) -> None:
    queue = broker.topology.queue("overdue")
    await broker.publisher().publish([msg(queue, "once")])
    errors: list[BaseException] = []

    async def twice(d: Delivery) -> None:
        await d.ack()
        try:
            await d.reject()
        except DeliveryAlreadySettled as exc:
            errors.append(exc)

    recorder = Recorder(twice)
    async with consuming(broker, [queue], recorder) as task:
        await recorder.wait_for(lambda: len(errors) == 1, task)
    assert await queue_depth(broker, dead_letter_queue(queue)) == 0


async def test_cancelled_consumer_returns_unsettled_deliveries(broker: Broker) -> None:
    queue = broker.topology.queue("overdue")
    await broker.publisher().publish([msg(queue, "slow")])
    release = asyncio.Event()

    async def stuck(d: Delivery) -> None:
        await release.wait()

    recorder = Recorder(stuck)
    async with consuming(broker, [queue], recorder, prefetch=1) as task:
        await recorder.wait_for(lambda: len(recorder.deliveries) == 1, task)
    # Cancelled while the handler was stuck past the drain timeout: the delivery goes back, counted.
    again = Recorder()
    async with consuming(broker, [queue], again) as task:
        await again.wait_for(lambda: len(again.deliveries) == 1, task)
    assert again.deliveries[0].message_id == "slow"
    assert again.deliveries[0].redelivered
    assert again.deliveries[0].delivery_count == 1


async def test_consuming_a_missing_queue_fails(broker: Broker) -> None:
    with pytest.raises(Exception):  # noqa: B017 - the error class is the adapter's own
        await asyncio.wait_for(
            broker.consumer().run([f"{broker.topology.prefix}.missing"], Recorder(), prefetch=1), WAIT
        )
