"""In-process adapter of the broker port (:mod:`billing.outbox.broker`), for ``billing dev`` and tests.

It models what the application relies on in RabbitMQ's quorum queues, and nothing is persisted:

- a direct exchange: a message is routed to the job queue named by its routing key; a key with no queue
  (also before :meth:`InMemoryBroker.declare_topology`) is refused with
  :class:`~billing.outbox.broker.PublishError`, like a mandatory publish that is returned unroutable;
- FIFO job queues (every shard of every kind), each with a delivery limit, dead-lettering to its kind's
  dead-letter queue ``<prefix>.<kind>.dead``;
- ``delivery_count`` (also as header ``x-delivery-count``): 0 on first delivery, +1 each time the
  delivery is requeued or its consumer stops without settling it; a return that takes the count past the
  limit dead-letters the message instead (reason ``delivery_limit``), as RabbitMQ 3.10 does;
- ``reject`` dead-letters at once (reason ``rejected``); dead letters carry the headers
  ``x-first-death-reason`` and ``x-first-death-queue``, as in RabbitMQ;
- a requeued message goes back to the head of a queue with a delivery limit (to the back of one
  without), as RabbitMQ 3.10.8 quorum queues do;
- prefetch: at most ``prefetch`` unsettled deliveries per consumed queue;
- fairness between queues, as RabbitMQ's per-queue consumers: a consumer runs one pump per queue, each
  bounded by its own prefetch, so queues with work are served in turn (round-robin on the event loop),
  never queue after queue — a backlog in one tenant's shard does not delay another shard's deliveries.

There is no consumer timeout and no redelivery across a process restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from billing.outbox.broker import (
    DEAD_LETTER_SUFFIX,
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
    dead_letter_queue,
    dispatch,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeadLetter:
    """A message waiting in a dead-letter queue.

    Attributes:
        message_id, routing_key, body: as published.
        headers: as published, plus ``x-first-death-reason`` and ``x-first-death-queue``.
        reason: ``"rejected"`` or ``"delivery_limit"``.
        queue: the job queue it was dead-lettered from.
    """

    message_id: str
    routing_key: str
    body: bytes
    headers: Mapping[str, Any]
    reason: str
    queue: str


@dataclass
class _Entry:
    message_id: str
    routing_key: str
    body: bytes
    headers: dict[str, Any]
    delivery_count: int = 0
    redelivered: bool = False


@dataclass
class _Queue:
    name: str
    delivery_limit: int | None
    dead_letter: _Queue | None
    ready: deque[_Entry] = field(default_factory=deque)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)

    def put(self, entry: _Entry, *, front: bool = False) -> None:
        if front:
            self.ready.appendleft(entry)
        else:
            self.ready.append(entry)
        # Wake every waiter: each rechecks, so a waiter cancelled after its wake-up loses nothing.
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def get(self) -> _Entry:
        while not self.ready:
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self.waiters:
                    self.waiters.remove(waiter)
        return self.ready.popleft()

    def give_back(self, entry: _Entry) -> None:
        """A delivery returned (requeue, or its consumer went away): count it, maybe dead-letter it."""
        entry.delivery_count += 1
        entry.redelivered = True
        if self.delivery_limit is not None and entry.delivery_count > self.delivery_limit:
            self.kill(entry, "delivery_limit")
        else:
            self.put(entry, front=self.delivery_limit is not None)

    def kill(self, entry: _Entry, reason: str) -> None:
        """Dead-letter ``entry``; without a dead-letter queue it is dropped, as RabbitMQ does."""
        if self.dead_letter is None:
            log.warning(
                "dropping message_id=%s from %s (%s): no dead-letter queue",
                entry.message_id,
                self.name,
                reason,
            )
            return
        headers = {k: v for k, v in entry.headers.items() if k != "x-delivery-count"}
        headers.setdefault("x-first-death-reason", reason)
        headers.setdefault("x-first-death-queue", self.name)
        self.dead_letter.put(_Entry(entry.message_id, entry.routing_key, entry.body, headers))


class _MemoryDelivery:
    """:class:`~billing.outbox.broker.Delivery` of the in-memory broker."""

    def __init__(self, queue: _Queue, entry: _Entry, on_settled: asyncio.Semaphore) -> None:
        self._queue = queue
        self._entry = entry
        self._slot = on_settled
        self.body: bytes = entry.body
        self.message_id: str = entry.message_id
        self.routing_key: str = entry.routing_key
        self.queue: str = queue.name
        self.headers: Mapping[str, Any] = {**entry.headers, "x-delivery-count": entry.delivery_count}
        self.redelivered: bool = entry.redelivered
        self.delivery_count: int = entry.delivery_count
        self.settled: bool = False

    def _settle(self) -> None:
        if self.settled:
            raise DeliveryAlreadySettled(f"delivery {self.message_id!r} is already settled")
        self.settled = True
        self._slot.release()

    async def ack(self) -> None:
        self._settle()

    async def reject(self) -> None:
        self._settle()
        self._queue.kill(self._entry, "rejected")

    async def requeue(self) -> None:
        self._settle()
        self._queue.give_back(self._entry)

    def abandon(self) -> None:
        """Its consumer stopped without settling it: return it to the queue, counted."""
        if not self.settled:
            self._settle()
            self._queue.give_back(self._entry)


class InMemoryBroker:
    """The broker port in process memory (see module docstring). Single event loop, not thread-safe.

    Args:
        prefix: topology prefix (see :class:`~billing.outbox.broker.Topology`).
        delivery_limit: the job queues' delivery limit.
        shards: job queues per kind (see :class:`~billing.outbox.broker.Topology`).
        drain_timeout: seconds a cancelled :meth:`Consumer.run` waits for in-flight handlers.
    """

    def __init__(
        self,
        *,
        prefix: str = DEFAULT_PREFIX,
        delivery_limit: int = DEFAULT_DELIVERY_LIMIT,
        shards: int = DEFAULT_SHARDS,
        drain_timeout: float = 10.0,
    ) -> None:
        self._topology = Topology(prefix=prefix, delivery_limit=delivery_limit, shards=shards)
        self._drain_timeout = drain_timeout
        self._queues: dict[str, _Queue] = {}
        self._bindings: dict[str, _Queue] = {}
        self._closed = asyncio.Event()

    @property
    def topology(self) -> Topology:
        """The names this broker uses."""
        return self._topology

    async def declare_topology(self) -> None:
        """Create the job and dead-letter queues and bind the job queues (idempotent)."""
        self._check_open()
        t = self._topology
        for kind in JOB_KINDS:
            dead_name = t.dead_letter_queue(kind)
            dead = self._queues.setdefault(
                dead_name, _Queue(dead_name, delivery_limit=None, dead_letter=None)
            )
            for name in t.kind_queues(kind):
                if name not in self._queues:
                    queue = _Queue(name, delivery_limit=t.delivery_limit, dead_letter=dead)
                    self._queues[name] = queue
                    self._bindings[name] = queue

    def publisher(self) -> Publisher:
        """A new publisher."""
        self._check_open()
        return _MemoryPublisher(self)

    def consumer(self) -> Consumer:
        """A new consumer."""
        self._check_open()
        return _MemoryConsumer(self)

    async def ping(self) -> bool:
        """True while open and the topology is declared."""
        return not self._closed.is_set() and bool(self._bindings)

    async def close(self) -> None:
        """Close: publishing fails, running consumers stop with ``ConnectionError``. Messages are lost."""
        self._closed.set()

    def dead_letters(self, queue: str) -> list[DeadLetter]:
        """The messages waiting in the dead-letter queue of job queue ``queue`` (any shard of a kind: the
        kind's shards share it), or named directly.

        Raises:
            LookupError: no such queue.
        """
        name = queue if queue.endswith(DEAD_LETTER_SUFFIX) else dead_letter_queue(queue)
        dead = self._queue(name)
        return [
            DeadLetter(
                message_id=e.message_id,
                routing_key=e.routing_key,
                body=e.body,
                headers=dict(e.headers),
                reason=str(e.headers.get("x-first-death-reason", "")),
                queue=str(e.headers.get("x-first-death-queue", "")),
            )
            for e in dead.ready
        ]

    def depth(self, queue: str) -> int:
        """Messages ready (not delivered) in ``queue``."""
        return len(self._queue(queue).ready)

    def _queue(self, name: str) -> _Queue:
        try:
            return self._queues[name]
        except KeyError:
            raise LookupError(f"no queue {name!r}; declare the topology first") from None

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise RuntimeError("broker is closed")


class _MemoryPublisher:
    def __init__(self, broker: InMemoryBroker) -> None:
        self._broker = broker

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Route every routable message; raise PublishError naming the unroutable ones (the rest stay)."""
        if not messages:
            return
        ids = [m.message_id for m in messages]
        if len(set(ids)) != len(ids):
            raise ValueError("message_id must be unique within a batch")
        if self._broker._closed.is_set():
            raise PublishError("broker is closed")
        unroutable: list[str] = []
        for m in messages:
            queue = self._broker._bindings.get(m.routing_key)
            if queue is None:
                unroutable.append(m.message_id)
                continue
            queue.put(_Entry(m.message_id, m.routing_key, bytes(m.body), dict(m.headers)))
        await asyncio.sleep(0)  # a publish is a suspension point, as on the wire
        if unroutable:
            raise PublishError(
                f"{len(unroutable)} of {len(messages)} messages unroutable (no queue bound to the key)",
                failed_ids=unroutable,
            )


class _MemoryConsumer:
    def __init__(self, broker: InMemoryBroker) -> None:
        self._broker = broker

    async def run(self, queues: Sequence[str], handler: Handler, *, prefetch: int) -> None:
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        if not queues:
            raise ValueError("no queues to consume")
        self._broker._check_open()
        resolved = [self._broker._queue(name) for name in queues]
        in_flight: dict[asyncio.Task[None], _MemoryDelivery] = {}
        pumps = [asyncio.create_task(self._pump(q, handler, prefetch, in_flight)) for q in resolved]
        closed = asyncio.create_task(self._broker._closed.wait())
        try:
            done, _ = await asyncio.wait([*pumps, closed], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not closed:
                    task.result()  # a pump only ends by raising
            raise ConnectionError("broker closed")
        finally:
            for task in [*pumps, closed]:
                task.cancel()
            await asyncio.gather(*pumps, closed, return_exceptions=True)
            await self._drain(in_flight)

    async def _drain(self, in_flight: dict[asyncio.Task[None], _MemoryDelivery]) -> None:
        if in_flight:
            _, pending = await asyncio.wait(set(in_flight), timeout=self._broker._drain_timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for delivery in list(in_flight.values()):
            delivery.abandon()
        in_flight.clear()

    @staticmethod
    async def _pump(
        queue: _Queue, handler: Handler, prefetch: int, in_flight: dict[asyncio.Task[None], _MemoryDelivery]
    ) -> None:
        slots = asyncio.Semaphore(prefetch)
        while True:
            await slots.acquire()
            try:
                entry = await queue.get()
            except BaseException:
                slots.release()
                raise
            delivery = _MemoryDelivery(queue, entry, slots)
            task = asyncio.create_task(dispatch(delivery, handler))
            in_flight[task] = delivery

            def finished(t: asyncio.Task[None], d: _MemoryDelivery = delivery) -> None:
                in_flight.pop(t, None)
                d.abandon()  # no-op when settled; dispatch settles unless cancelled

            task.add_done_callback(finished)
