"""Benchmark: the outbox relay (``Contact.Added`` events → jobs on RabbitMQ, publisher confirms, position
recorded per batch) against a raw pipelined confirm-publish of the same messages.

``--contacts`` Added events (over 20 tenants, so every shard queue is used) are stored first. Each run
then purges the job queues and times, in the same run: the relay publishing everything from position 0
(``OutboxRelay.publish_pending``: read the log, decode, build the jobs, publish each batch with confirms,
record the position), and the baseline — the very same messages (bodies, routing keys, ids, headers)
published with aio-pika on one confirm channel, as many in flight at a time as the relay's batch
(500), every confirm awaited (the broker's own limit at that pipelining depth). Goal: the relay
≥ 70 % of the baseline's rate.

Run: ``.venv/bin/python bench/relay.py [--contacts 10000] [--runs 3]`` (PostgreSQL at 127.0.0.1:5432,
RabbitMQ at 127.0.0.1:5672; the database and the uniquely prefixed topology are removed at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

import aio_pika
import aiormq
from aio_pika import DeliveryMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import scratch_database

from billing.bootstrap import build_container, build_relay
from billing.db import migrate
from billing.outbox.broker import OutgoingMessage, Topology
from billing.outbox.rabbitmq import RabbitBroker
from billing.outbox.relay import TOPICS, to_message
from billing.projections.follower import read_after
from billing.settings import Settings
from tests.integration.test_cancel_batch import posted

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
TENANTS = 20


async def raw_publish(messages: list[OutgoingMessage], exchange_name: str, window: int) -> float:
    """Seconds to publish ``messages`` on one confirm channel, ``window`` in flight at a time (the
    relay's batch size: the same pipelining depth), every confirm awaited."""
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(exchange_name, ensure=False)
        started = time.perf_counter()
        results = []
        for start in range(0, len(messages), window):
            results += await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            body=m.body,
                            message_id=m.message_id,
                            headers=dict(m.headers),
                            delivery_mode=DeliveryMode.PERSISTENT,
                        ),
                        routing_key=m.routing_key,
                        mandatory=True,
                    )
                    for m in messages[start : start + window]
                )
            )
        elapsed = time.perf_counter() - started
        assert all(isinstance(r, aiormq.spec.Basic.Ack) for r in results)
        return elapsed
    finally:
        await connection.close()


async def purge(topology: Topology) -> int:
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        total = 0
        for name in topology.job_queues:
            queue = await channel.declare_queue(name, passive=True)
            total += queue.declaration_result.message_count or 0
            await queue.purge()
        return total
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


async def run(url: str, contacts: int, runs: int) -> None:
    prefix = f"bench-relay-{uuid.uuid4().hex[:8]}"
    broker = await RabbitBroker.connect(AMQP_URL, prefix=prefix)
    settings = Settings(database_url=url, broker_prefix=prefix)
    container = build_container(settings, broker=broker)
    try:
        await broker.declare_topology()
        for _ in range(TENANTS):
            campaign, queue, added = posted(uuid.uuid4(), accepted=contacts // TENANTS, rejected=0)
            container.store.save(campaign, queue, *added)
        batch, _ = read_after(container.store.recorder, 0, contacts * 2, TOPICS)
        messages = [to_message(container.store.mapper, n, broker) for n in batch]
        relay = build_relay(container)
        relayed, raw = [], []
        for _ in range(runs):
            with container.pool.connection() as conn, conn.transaction():  # replay from the start
                conn.execute("DELETE FROM tracking WHERE name = 'relay'")
            started = time.perf_counter()
            published = await relay.publish_pending()
            relayed.append(time.perf_counter() - started)
            assert published == len(messages)
            assert await purge(broker.topology) == len(messages)
            raw.append(await raw_publish(messages, broker.topology.exchange, relay.batch_size))
            assert await purge(broker.topology) == len(messages)
        n = len(messages)
        r, b = statistics.median(relayed), statistics.median(raw)
        print(
            f"relay, {n:,} Added events → confirmed jobs: median {r:.2f} s = {n / r:,.0f} msg/s ({runs} runs)"
        )
        print(f"  baseline: raw pipelined confirm-publish, same messages: {b:.2f} s = {n / b:,.0f} msg/s")
        print(f"  ratio: {b / r:.0%} of the raw rate; goal ≥ 70 % -> {'met' if b / r >= 0.7 else 'NOT met'}")
    finally:
        await delete_topology(broker.topology)
        await container.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with scratch_database() as url:
        migrate(url)
        asyncio.run(run(url, args.contacts, args.runs))


if __name__ == "__main__":
    main()
