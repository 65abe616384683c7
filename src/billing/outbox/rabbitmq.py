"""RabbitMQ adapter of the broker port (:mod:`billing.outbox.broker`), on aio-pika.

One robust connection per process (``aio_pika.connect_robust``): after a broker restart it reconnects
by itself every ``reconnect_interval`` seconds and reopens its channels, re-registering their QoS,
queues and consumers (case Q03). A publish that was in flight when the connection dropped is *not*
replayed by aio-pika ("Connection or channel loss can make publication fail, including on robust
connections", ``Exchange.publish`` docstring): :meth:`Publisher.publish` raises
:class:`~billing.outbox.broker.PublishError` and the caller retries the batch. A publish issued while
the connection is down would wait for the reconnection indefinitely (aio-pika issue #636), so every
publish is bounded by ``publish_timeout``.

Each publisher owns a channel in confirm mode (``publisher_confirms=True``) that raises on a returned
message (``on_return_raises=True``); messages are published ``mandatory`` and persistent. Each
:meth:`Consumer.run` owns a channel with ``basic.qos(prefetch_count)``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping, Sequence
from contextlib import suppress
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
    ConsumerTag,
    DeliveryMode,
    ExchangeType,
)

from billing.outbox.broker import (
    DEFAULT_DELIVERY_LIMIT,
    DEFAULT_PREFIX,
    DEFAULT_SHARDS,
    JOB_KINDS,
    Consumer,
    DeliveryAlreadySettled,
    Handler,
    OutgoingMessage,
    Publisher,
    PublishError,
    Topology,
    dispatch,
)

log = logging.getLogger(__name__)

PING_TIMEOUT = 5.0  # seconds a readiness check may take
CLEAN_UP_TIMEOUT = 2.0  # seconds each clean-up step of a stopping consumer may take


class RabbitBroker:
    """The broker port on RabbitMQ. Create with :meth:`connect`, end with :meth:`close`.

    Attributes:
        topology: the exchange and queue names in use.
    """

    def __init__(
        self,
        connection: AbstractRobustConnection,
        topology: Topology,
        *,
        publish_timeout: float,
        drain_timeout: float,
    ) -> None:
        self._connection = connection
        self._topology = topology
        self._publish_timeout = publish_timeout
        self._drain_timeout = drain_timeout
        self._closed = asyncio.Event()

    @property
    def topology(self) -> Topology:
        """The names this broker uses."""
        return self._topology

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        delivery_limit: int = DEFAULT_DELIVERY_LIMIT,
        shards: int = DEFAULT_SHARDS,
        reconnect_interval: float = 2.0,
        publish_timeout: float = 30.0,
        drain_timeout: float = 10.0,
        connection_name: str = "billing",
    ) -> RabbitBroker:
        """Connect to ``url`` (``amqp://user:password@host:port/vhost``).

        Args:
            prefix: topology prefix (see :class:`~billing.outbox.broker.Topology`).
            delivery_limit: ``x-delivery-limit`` of the job queues.
            shards: job queues per kind (see :class:`~billing.outbox.broker.Topology`).
            reconnect_interval: seconds between reconnection attempts after the connection dropped.
            publish_timeout: seconds one :meth:`Publisher.publish` call may take, confirms included,
                before it raises :class:`PublishError`.
            drain_timeout: seconds a cancelled :meth:`Consumer.run` waits for in-flight handlers.
            connection_name: shown in the RabbitMQ management UI.

        Raises:
            aio_pika.exceptions.AMQPConnectionError (an ``OSError``/``ConnectionError``): the first
                connection attempt failed; a process should stop with that message.
        """
        connection = await aio_pika.connect_robust(
            url,
            reconnect_interval=reconnect_interval,
            client_properties={"connection_name": connection_name},
        )
        return cls(
            connection,
            Topology(prefix=prefix, delivery_limit=delivery_limit, shards=shards),
            publish_timeout=publish_timeout,
            drain_timeout=drain_timeout,
        )

    async def declare_topology(self) -> None:
        """Declare exchanges, quorum queues and bindings (idempotent; see :mod:`billing.outbox.broker`).

        Raises:
            aio_pika.exceptions.ChannelPreconditionFailed: a queue exists with other arguments (e.g. a
                different delivery limit); RabbitMQ cannot change them in place, use a policy or recreate.
        """
        t = self._topology
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            exchange = await channel.declare_exchange(
                t.exchange, ExchangeType.DIRECT, durable=True, robust=False
            )
            dlx = await channel.declare_exchange(
                t.dead_letter_exchange, ExchangeType.DIRECT, durable=True, robust=False
            )
            for kind in JOB_KINDS:
                dead_name = t.dead_letter_queue(kind)
                dead = await channel.declare_queue(
                    dead_name, durable=True, arguments=t.dead_letter_queue_arguments(), robust=False
                )
                await dead.bind(dlx, routing_key=dead_name, robust=False)
                for name in t.kind_queues(kind):
                    queue = await channel.declare_queue(
                        name, durable=True, arguments=t.job_queue_arguments(name), robust=False
                    )
                    await queue.bind(exchange, routing_key=name, robust=False)
        finally:
            await channel.close()

    def publisher(self) -> Publisher:
        """A new publisher; its confirm channel opens on the first :meth:`Publisher.publish`."""
        self._check_open()
        return _RabbitPublisher(
            self._connection, self._closed, self._topology.exchange, self._publish_timeout
        )

    def consumer(self) -> Consumer:
        """A new consumer; each :meth:`Consumer.run` opens its own channel."""
        self._check_open()
        return _RabbitConsumer(self._connection, self._closed, self._drain_timeout)

    async def ping(self) -> bool:
        """Readiness: connected, and the job exchange exists (checked on a short-lived channel)."""
        if self._closed.is_set() or self._connection.is_closed or not self._connection.connected.is_set():
            return False
        try:
            async with asyncio.timeout(PING_TIMEOUT):
                channel = await self._connection.channel(publisher_confirms=False)
                try:
                    await channel.declare_exchange(self._topology.exchange, passive=True, robust=False)
                finally:
                    await channel.close()
        except Exception:  # any failure means "not ready"; the reason is logged at debug level
            log.debug("broker ping failed", exc_info=True)
            return False
        return True

    async def close(self) -> None:
        """Close the connection; running consumers stop with ``ConnectionError``."""
        self._closed.set()
        await self._connection.close()

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise RuntimeError("broker is closed")


class _RabbitPublisher:
    """:class:`~billing.outbox.broker.Publisher` on one confirm channel (see module docstring)."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        broker_closed: asyncio.Event,
        exchange: str,
        timeout: float,
    ) -> None:
        self._connection = connection
        self._broker_closed = broker_closed
        self._exchange_name = exchange
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._channel: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        if not messages:
            return
        ids = [m.message_id for m in messages]
        if len(set(ids)) != len(ids):
            raise ValueError("message_id must be unique within a batch")
        try:
            async with asyncio.timeout(self._timeout):
                exchange = await self._ready_exchange()
                results = await asyncio.gather(
                    *(self._publish_one(exchange, m) for m in messages), return_exceptions=True
                )
        except TimeoutError as exc:
            raise PublishError(
                f"{len(messages)} messages not all confirmed within {self._timeout} s"
            ) from exc
        except Exception as exc:  # channel/connection failures, whatever their aio-pika class
            raise PublishError(f"cannot publish: {exc!r}") from exc
        failed = [(m.message_id, r) for m, r in zip(messages, results, strict=True) if r is not None]
        if failed:
            first = failed[0][1]
            raise PublishError(
                f"{len(failed)} of {len(messages)} messages not confirmed; first: {first!r}",
                failed_ids=[message_id for message_id, _ in failed],
            ) from (first if isinstance(first, BaseException) else None)

    async def _ready_exchange(self) -> AbstractExchange:
        if self._broker_closed.is_set():
            raise RuntimeError("broker is closed")
        async with self._lock:
            if self._channel is None or self._exchange is None:
                channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
                # Not declared here (declare_topology does that); publishing to a missing exchange fails
                # with 404 NOT_FOUND, which surfaces as PublishError.
                self._exchange = await channel.get_exchange(self._exchange_name, ensure=False)
                self._channel = channel
            channel, exchange = self._channel, self._exchange
        # The channel is robust: after a reconnection, or after the broker closed it (e.g. 404), it
        # reopens itself. Wait for that (bounded by the caller's timeout) rather than open another one
        # or fail on the stale underlying channel.
        await channel.ready()
        return exchange

    @staticmethod
    async def _publish_one(exchange: AbstractExchange, m: OutgoingMessage) -> object | None:
        """Publish one message; None when confirmed, else what went wrong (an exception or a frame)."""
        message = aio_pika.Message(
            body=m.body,
            message_id=m.message_id,
            headers=dict(m.headers),
            delivery_mode=DeliveryMode.PERSISTENT,
        )
        result = await exchange.publish(message, routing_key=m.routing_key, mandatory=True)
        if isinstance(result, aiormq.spec.Basic.Ack):
            return None
        return result or "no confirmation"


class _RabbitDelivery:
    """:class:`~billing.outbox.broker.Delivery` wrapping one aio-pika incoming message."""

    __slots__ = (
        "_message",
        "body",
        "delivery_count",
        "headers",
        "message_id",
        "queue",
        "redelivered",
        "routing_key",
        "settled",
    )

    def __init__(self, message: AbstractIncomingMessage, queue: str) -> None:
        self._message = message
        self.queue: str = queue
        self.body: bytes = message.body
        self.message_id: str = message.message_id or ""
        self.routing_key: str = message.routing_key or ""
        self.headers: Mapping[str, Any] = dict(message.headers or {})
        self.redelivered: bool = bool(message.redelivered)
        self.delivery_count: int = _int_header(self.headers.get("x-delivery-count"))
        self.settled: bool = False

    def _settle(self) -> None:
        if self.settled:
            raise DeliveryAlreadySettled(f"delivery {self.message_id!r} is already settled")
        self.settled = True

    async def ack(self) -> None:
        self._settle()
        await self._message.ack()

    async def reject(self) -> None:
        self._settle()
        await self._message.reject(requeue=False)

    async def requeue(self) -> None:
        self._settle()
        await self._message.reject(requeue=True)


def _int_header(value: object) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str | bytes):
        with suppress(ValueError):
            return int(value)
    return 0


class _RabbitConsumer:
    """:class:`~billing.outbox.broker.Consumer` on a robust channel per :meth:`run`."""

    def __init__(
        self, connection: AbstractRobustConnection, broker_closed: asyncio.Event, drain_timeout: float
    ) -> None:
        self._connection = connection
        self._broker_closed = broker_closed
        self._drain_timeout = drain_timeout

    async def run(self, queues: Sequence[str], handler: Handler, *, prefetch: int) -> None:
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        if not queues:
            raise ValueError("no queues to consume")
        channel = await self._connection.channel(publisher_confirms=False)
        in_flight: set[asyncio.Task[Any]] = set()
        consuming: list[tuple[AbstractQueue, ConsumerTag]] = []
        try:
            await channel.set_qos(prefetch_count=prefetch)
            for name in queues:
                # Passive: a missing queue is an error (declare_topology first), not silently created.
                queue = await channel.get_queue(name, ensure=True)

                async def on_message(message: AbstractIncomingMessage, queue_name: str = name) -> None:
                    task = asyncio.current_task()
                    if task is not None:
                        in_flight.add(task)
                    try:
                        await dispatch(_RabbitDelivery(message, queue_name), handler)
                    finally:
                        if task is not None:
                            in_flight.discard(task)

                consuming.append((queue, await queue.consume(on_message)))
            await self._broker_closed.wait()
            raise ConnectionError("broker closed")
        finally:
            await self._stop(channel, consuming, in_flight)

    async def _stop(
        self,
        channel: AbstractRobustChannel,
        consuming: list[tuple[AbstractQueue, ConsumerTag]],
        in_flight: set[asyncio.Task[Any]],
    ) -> None:
        """Stop taking deliveries, let in-flight handlers finish (bounded), close the channel."""
        for queue, tag in consuming:
            await _quietly(channel, queue.cancel(tag))
        if in_flight:
            _, pending = await asyncio.wait(set(in_flight), timeout=self._drain_timeout)
            if pending:
                log.warning(
                    "consumer stopping with %d deliveries unsettled; they return to the queue", len(pending)
                )
        await _quietly(channel, channel.close())


async def _quietly(channel: AbstractRobustChannel, step: Awaitable[Any]) -> None:
    """Await a clean-up ``step``, ignoring its failure and the cancellation a closed channel raises."""
    try:
        async with asyncio.timeout(CLEAN_UP_TIMEOUT):
            await step
    except asyncio.CancelledError:
        if not channel.is_closed:
            raise
        log.debug("clean-up step cancelled by the closed channel")
    except Exception:
        log.debug("clean-up step failed", exc_info=True)
