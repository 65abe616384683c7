"""Q03: jobs published while RabbitMQ restarts are all delivered once it is back, with no manual restart.

The RabbitMQ application is stopped and started with ``rabbitmqctl stop_app`` / ``start_app`` (the
Erlang node keeps running), so this test needs ``rabbitmqctl`` and the right to run it (root here). It
fails, never skips, when RabbitMQ or ``rabbitmqctl`` is unavailable. It briefly disconnects every other
client of this broker, so do not run it against a shared production broker.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import suppress

import pytest

from billing.outbox.broker import Delivery, OutgoingMessage, PublishError
from billing.outbox.rabbitmq import RabbitBroker
from tests.integration.test_broker_contract import AMQP_URL, delete_topology

pytestmark = pytest.mark.integration

TOTAL = 1_000
BATCH = 50
STOP_AFTER = 300  # messages confirmed before the restart begins
PACE = 0.1  # seconds between batches from then until the broker is down, so batches are in flight
PACED = 200  # messages published at that pace at most; the rest wait for the broker to be down
DOWN_FOR = 2.0  # seconds between stop_app returning and start_app
TIME_LIMIT = 60.0


async def rabbitmqctl(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, f"rabbitmqctl {' '.join(args)} failed: {output.decode(errors='replace')}"


async def test_publish_1000_through_a_broker_restart() -> None:
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    broker = await RabbitBroker.connect(
        AMQP_URL,
        prefix=prefix,
        reconnect_interval=0.5,
        publish_timeout=5.0,
        drain_timeout=1.0,
        connection_name=f"billing-test {prefix}",
    )
    queue = broker.topology.queue("overdue")
    ids = [f"job-{i:04d}" for i in range(TOTAL)]
    seen: dict[str, int] = {}
    all_seen = asyncio.Event()
    failed_attempts: list[str] = []
    stopped = asyncio.Event()
    back = asyncio.Event()
    overlapping_attempts = 0
    restarting: list[asyncio.Task[None]] = []

    async def handler(d: Delivery) -> None:
        seen[d.message_id] = seen.get(d.message_id, 0) + 1
        await d.ack()
        if len(seen) == TOTAL:
            all_seen.set()

    async def restart() -> None:
        await rabbitmqctl("stop_app")
        stopped.set()
        await asyncio.sleep(DOWN_FOR)
        await rabbitmqctl("start_app")
        back.set()

    async def publish_all() -> None:
        nonlocal overlapping_attempts
        publisher = broker.publisher()
        for start in range(0, TOTAL, BATCH):
            if start == STOP_AFTER:
                restarting.append(asyncio.create_task(restart()))
            if restarting and not stopped.is_set():
                if start < STOP_AFTER + PACED:
                    await asyncio.sleep(PACE)  # batches in flight while the broker shuts down
                else:
                    await stopped.wait()  # and the rest published while it is down, then back
            batch = [OutgoingMessage(queue, i.encode(), i) for i in ids[start : start + BATCH]]
            while True:  # the relay's loop: retry the batch until confirmed, position moves only then
                began_before_back = not back.is_set()
                try:
                    await publisher.publish(batch)
                    break
                except PublishError as exc:
                    failed_attempts.append(f"{exc} <- {exc.__cause__!r}")
                    await asyncio.sleep(0.2)
                finally:
                    # This attempt overlapped the outage (failed, or waited for the reconnection).
                    overlapping_attempts += began_before_back and stopped.is_set()

    started = time.monotonic()
    published = float("nan")
    consumer: asyncio.Task[None] | None = None
    try:
        await broker.declare_topology()
        consumer = asyncio.create_task(broker.consumer().run([queue], handler, prefetch=100))
        with suppress(TimeoutError):  # reported below as the jobs that never arrived
            async with asyncio.timeout(TIME_LIMIT):
                await publish_all()
                published = time.monotonic() - started
                await asyncio.gather(*restarting)
                waiting = asyncio.create_task(all_seen.wait())
                await asyncio.wait([consumer, waiting], return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
                if consumer.done():
                    consumer.result()  # the consumer must not stop by itself
    finally:
        if consumer is not None:
            consumer.cancel()
            with suppress(asyncio.CancelledError):
                await consumer
        for task in restarting:
            with suppress(Exception):
                await task
        await rabbitmqctl("start_app")  # whatever happened, leave the broker running
        await rabbitmqctl("await_startup")
        await broker.close()
        await delete_topology(AMQP_URL, broker.topology)

    elapsed = time.monotonic() - started
    missing = [i for i in ids if i not in seen]
    assert not missing, f"{len(missing)} jobs never delivered, e.g. {missing[:5]}"
    assert overlapping_attempts, "the restart did not interrupt publishing"
    print(*failed_attempts[:3], sep="\n")
    print(
        f"published {TOTAL} in {published:.1f} s; {overlapping_attempts} attempts overlapped the outage, "
        f"{len(failed_attempts)} failed; "
        f"all consumed after {elapsed:.1f} s; duplicates: {sum(n - 1 for n in seen.values())}"
    )
