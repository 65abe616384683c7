"""Q03 at the relay level: the outbox relay (``run_relay``, as ``billing relay`` runs it) forwards 1,000
``Contact.Added`` events from the real event store to RabbitMQ while the broker restarts, and every job
arrives once the broker is back, with no process restarted by hand.

The 1,000 notification contacts are saved in chunks: the first ones before the restart, more at a pace
while the broker shuts down (batches in flight), the rest while it is down. The RabbitMQ application is
stopped and started with ``rabbitmqctl stop_app`` / ``start_app`` (as in ``test_rabbitmq_restart.py``), and
always started again in a ``finally``. It needs ``rabbitmqctl`` and the right to run it (root here); it
fails, never skips, when RabbitMQ, ``rabbitmqctl`` or PostgreSQL is unavailable. It briefly disconnects every
other client of this broker.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import suppress
from typing import Any
from uuid import UUID

import pytest

from billing.bootstrap import Container, build_container, run_relay_process
from billing.domain.contact import Contact
from billing.outbox.broker import Delivery, OutgoingMessage, Publisher
from billing.outbox.jobs import decode_job
from billing.outbox.rabbitmq import RabbitBroker
from billing.outbox.relay import RELAY
from billing.projections.tracking import load_position
from billing.settings import Settings
from tests.integration.test_broker_contract import delete_topology
from tests.integration.test_projections import post
from tests.integration.test_rabbitmq_restart import rabbitmqctl

pytestmark = pytest.mark.integration

TOTAL = 1_000
CHUNK = 50  # contacts per saved campaign
BEFORE = 300  # contacts saved, published and consumed before the restart begins
PACED = 500  # at most this many saved at PACE while the broker shuts down
PACE = 0.1  # seconds between those saves
DOWN_FOR = 7.0  # seconds between stop_app returning and start_app: longer than publish_timeout
TIME_LIMIT = 60.0


class WatchedPublisher:
    """The broker's publisher, noting when each ``publish`` began and ended and whether it was confirmed."""

    def __init__(self, inner: Publisher) -> None:
        self.inner = inner
        self.attempts: list[tuple[float, float, bool]] = []

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        began, confirmed = time.monotonic(), False
        try:
            await self.inner.publish(messages)
            confirmed = True
        finally:
            self.attempts.append((began, time.monotonic(), confirmed))


@pytest.fixture
async def container(database_url: str, amqp_url: str) -> AsyncIterator[Container]:
    prefix = f"test-q03-{uuid.uuid4().hex[:10]}"
    broker = await RabbitBroker.connect(
        amqp_url,
        prefix=prefix,
        reconnect_interval=0.5,
        publish_timeout=5.0,
        drain_timeout=1.0,
        connection_name=f"billing-test {prefix}",
    )
    settings = Settings(database_url=database_url, poll_interval_s=0.5)
    made = await asyncio.to_thread(build_container, settings, broker=broker)
    try:
        await broker.declare_topology()
        yield made
    finally:
        with suppress(Exception):
            await rabbitmqctl("start_app")  # whatever happened, leave the broker running
        await rabbitmqctl("await_startup")
        await made.aclose()
        await delete_topology(amqp_url, broker.topology)


async def test_q03_relay_publishes_1000_jobs_through_a_broker_restart(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = container.broker
    assert broker is not None
    watched = WatchedPublisher(broker.publisher())
    monkeypatch.setattr(broker, "publisher", lambda: watched)  # the one the relay will make
    store, pool = container.store, container.pool
    tenant_id = uuid.uuid4()
    chunks = [post(tenant_id, accepted=CHUNK, template_type="notification") for _ in range(TOTAL // CHUNK)]
    expected = {c.id for chunk in chunks for c in chunk.contacts}
    assert len(expected) == TOTAL
    consumed: dict[UUID, int] = {}
    all_consumed = asyncio.Event()
    saved = 0

    async def handler(delivery: Delivery) -> None:
        job = decode_job(delivery.body)
        consumed[job.contact_id] = consumed.get(job.contact_id, 0) + 1
        await delivery.ack()
        if expected <= consumed.keys():
            all_consumed.set()

    async def save_next() -> None:
        nonlocal saved
        await asyncio.to_thread(store.save, *chunks[saved // CHUNK].aggregates())
        saved += CHUNK

    async def wait_until(condition: Any, what: str) -> None:
        while not condition():
            if consumer.done() or relay.done():
                raise AssertionError(f"a process stopped while waiting for {what}")
            await asyncio.sleep(0.05)

    started = time.monotonic()
    stop = asyncio.Event()
    queues = broker.topology.shard_queues("notification")  # each batch goes to its own shard
    consumer = asyncio.create_task(broker.consumer().run(queues, handler, prefetch=100))
    relay = asyncio.create_task(run_relay_process(container, stop))
    try:
        async with asyncio.timeout(TIME_LIMIT):
            while saved < BEFORE:
                await save_next()
            await wait_until(lambda: len(consumed) >= BEFORE, f"the first {BEFORE} jobs")
            consumed_before = len(consumed)

            stopping = asyncio.create_task(rabbitmqctl("stop_app"))
            while not stopping.done() and saved < BEFORE + PACED:  # the relay publishes as it shuts down
                await save_next()
                await asyncio.sleep(PACE)
            await stopping
            down = time.monotonic()
            head_at_stop = await asyncio.to_thread(store.recorder.max_notification_id)
            consumed_at_stop = len(consumed)
            saved_at_stop = saved
            while saved < TOTAL:  # the rest while the broker is down
                await save_next()
            await asyncio.sleep(DOWN_FOR)
            position_while_down = await asyncio.to_thread(load_position, pool, RELAY)
            assert not relay.done() and not consumer.done()
            await rabbitmqctl("start_app")
            await rabbitmqctl("await_startup")
            back = time.monotonic()

            await wait_until(all_consumed.is_set, f"all {TOTAL} jobs")
            head = await asyncio.to_thread(store.recorder.max_notification_id)
            position = await asyncio.to_thread(load_position, pool, RELAY)
            while position != head:  # the last batch was confirmed; its position is recorded right after
                assert not relay.done(), "the relay stopped"
                await asyncio.sleep(0.05)
                position = await asyncio.to_thread(load_position, pool, RELAY)
            still_running = not relay.done() and not consumer.done()
    finally:
        stop.set()
        consumer.cancel()
        with suppress(asyncio.CancelledError):
            await consumer
        with suppress(TimeoutError):
            await asyncio.wait_for(relay, 10)
    elapsed = time.monotonic() - started
    assert still_running, "the relay or the consumer stopped by itself"
    assert expected <= consumed.keys(), f"{len(expected - consumed.keys())} jobs never consumed"
    assert consumed.keys() == expected  # and nothing else
    (last,) = store.recorder.select_notifications(head, 1)
    assert last.topic == Contact.Added.TOPIC  # the last notification of the log is the last contact saved
    assert last.originator_id == chunks[-1].contacts[-1].id
    assert position == last.id == head
    # Nothing saved while the broker was down was recorded as published before it came back.
    assert head_at_stop is not None
    assert position_while_down <= head_at_stop < head
    assert saved_at_stop < TOTAL  # some contacts were saved only while the broker was down
    assert consumed_at_stop < TOTAL
    assert elapsed < TIME_LIMIT
    overlapping = [a for a in watched.attempts if a[0] < back and a[1] > down]
    failed = [a for a in watched.attempts if not a[2]]
    assert overlapping, "no publish of the relay overlapped the outage"
    assert failed, "no publish failed: the outage was shorter than the publish timeout"  # retried, not fatal
    print(
        f"\n{consumed_before} consumed before the restart, {consumed_at_stop} when stop_app returned "
        f"({saved_at_stop} saved); relay position while down {position_while_down} "
        f"(log head {head_at_stop}); "
        f"all {TOTAL} consumed {elapsed - (back - started):.1f} s after start_app, {elapsed:.1f} s in all; "
        f"duplicates: {sum(n - 1 for n in consumed.values())}; {len(watched.attempts)} publishes, "
        f"{len(overlapping)} overlapping the outage, {len(failed)} failed"
    )
