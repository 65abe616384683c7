"""The message-broker port: what the outbox relay publishes and what the worker consumes.

Two adapters implement it and one contract suite (``tests/integration/test_broker_contract.py``) runs
against both: :class:`billing.outbox.rabbitmq.RabbitBroker` (aio-pika, production) and
:class:`billing.outbox.memory.InMemoryBroker` (in-process, for ``billing dev`` and tests). Nothing here
imports aio-pika.

Topology (names shown for the default prefix ``"billing"`` and 8 shards)::

    exchange billing (direct, durable)
      ├─ billing.overdue.0 … billing.overdue.7            ─┐  durable quorum queues, routing key =
      ├─ billing.upcoming.0 … billing.upcoming.7           ├─ queue name, x-delivery-limit = 5,
      └─ billing.notification.0 … billing.notification.7  ─┘  x-dead-letter-exchange = billing.dlx
    exchange billing.dlx (direct, durable)
      ├─ billing.overdue.dead       (one per kind, shared by its shards: x-dead-letter-routing-key;
      ├─ billing.upcoming.dead       durable quorum queues, no limit)
      └─ billing.notification.dead

Why shards (tenant fairness, issue 4 §3): a queue is FIFO, so with one queue per kind a tenant's backlog
(10,000 jobs, each costing worker time even when it is only deferred by the tenant's throttle) delayed
every job another tenant published after it. Each kind therefore has ``shards`` job queues and a job goes
to shard ``tenant_id.int % shards`` (:meth:`Topology.queue_for`). A worker consumes every shard with a
consumer (and a prefetch) per queue, and RabbitMQ delivers from each queue independently: a backlog in
one tenant's shard does not hold back the deliveries of another shard. Tenants sharing a shard still share
its FIFO order; with ``shards`` queues a backlog delays about ``1/shards`` of the other tenants.

Why quorum queues with a delivery limit and a dead-letter exchange (case Q02): a message that can never
be handled (undecodable, unknown contact) must not block the queue. The consumer *rejects* such a
message, which dead-letters it at once (never requeued to the head). A *transient* failure is
*requeued*; a quorum queue counts every return in the ``x-delivery-count`` header, and once that count
exceeds ``x-delivery-limit`` the broker dead-letters the message instead of delivering it again
(RabbitMQ docs, "Quorum Queues: Poison Message Handling"). So a message is delivered at most
``delivery_limit + 1`` times and then ends in its kind's dead-letter queue; everything behind it keeps
flowing.
Dead-lettering uses the ``at-least-once`` strategy (RabbitMQ >= 3.10), so a dead-lettered message is
not lost if the broker stops while moving it.

Delivery guarantees: publishing is at-least-once (publisher confirms: :meth:`Publisher.publish`
returns only after the broker took responsibility for every message; a failed batch is retried whole,
so consumers see duplicates and must be idempotent, case Q04). Consumption is at-least-once: a delivery
not acknowledged before the channel or connection drops is delivered again.

Consumers must settle each delivery promptly: RabbitMQ closes a channel holding a delivery
unacknowledged longer than ``consumer_timeout`` (30 min by default) with 406 PRECONDITION_FAILED and
redelivers (RabbitMQ docs, "Delivery Acknowledgement Timeout"; case Q01). A job that has to wait (e.g.
outside business hours) is acknowledged and rescheduled by the application, never held.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol
from uuid import UUID

log = logging.getLogger(__name__)

#: Job kinds; each has job queues ``<prefix>.<kind>.<shard>`` and one dead-letter queue
#: ``<prefix>.<kind>.dead``.
JOB_KINDS: Final[tuple[str, ...]] = ("overdue", "upcoming", "notification")

DEFAULT_PREFIX: Final = "billing"
#: Returns (requeues, consumer losses) a quorum queue allows before it dead-letters a message.
DEFAULT_DELIVERY_LIMIT: Final = 5
#: Job queues per kind; a tenant's jobs all go to one of them (see "Why shards" above).
DEFAULT_SHARDS: Final = 8

DEAD_LETTER_SUFFIX: Final = ".dead"
RETRY_SUFFIX: Final = "retry"
"""Last part of a kind's retry queue, ``<prefix>.<kind>.retry`` (see :meth:`Topology.retry_queue`)."""


def dead_letter_queue(queue: str) -> str:
    """The dead-letter queue of job queue ``queue``: one per kind, shared by the kind's shards
    (``"billing.overdue.3"`` -> ``"billing.overdue.dead"``; an unsharded name gets the suffix:
    ``"billing.overdue"`` -> ``"billing.overdue.dead"``)."""
    base, _, last = queue.rpartition(".")
    if (last.isdigit() or last == RETRY_SUFFIX) and base.rpartition(".")[2] in JOB_KINDS:
        queue = base
    return f"{queue}{DEAD_LETTER_SUFFIX}"


@dataclass(frozen=True)
class Topology:
    """The names and queue arguments of one broker topology.

    ``prefix`` namespaces every name (tests use a unique prefix per test for isolation); production uses
    the default ``"billing"``, which yields the module constants above.

    Attributes:
        prefix: name of the job exchange and prefix of every queue and of the dead-letter exchange.
        delivery_limit: ``x-delivery-limit`` of the job queues: how many times a message may be returned
            to its queue (requeued, or unacknowledged when its consumer went away) before the broker
            dead-letters it. A message is delivered at most ``delivery_limit + 1`` times.
        shards: job queues per kind; a job goes to its tenant's shard (:meth:`queue_for`). Changing it
            moves tenants between shards: jobs already queued stay where they are and are still consumed
            only if their queue still exists, so drain the queues before changing it.
    """

    prefix: str = DEFAULT_PREFIX
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT
    shards: int = DEFAULT_SHARDS

    def __post_init__(self) -> None:
        if not self.prefix or any(c.isspace() for c in self.prefix):
            raise ValueError(f"invalid topology prefix {self.prefix!r}")
        if self.delivery_limit < 0:
            raise ValueError(f"delivery_limit must be >= 0, got {self.delivery_limit}")
        if self.shards < 1:
            raise ValueError(f"shards must be >= 1, got {self.shards}")

    @property
    def exchange(self) -> str:
        """The direct, durable exchange jobs are published to."""
        return self.prefix

    @property
    def dead_letter_exchange(self) -> str:
        """The direct, durable exchange the job queues dead-letter to."""
        return f"{self.prefix}.dlx"

    def queue_for(self, kind: str, key: UUID) -> str:
        """The job queue (and routing key) of a fresh job of ``kind`` (one of :data:`JOB_KINDS`) whose
        routing ``key`` is ``key`` (the relay uses the contact's queue id: one batch → one shard, so a
        tenant's next batch is not behind its first): shard ``key.int % shards``, stable across processes
        and restarts."""
        return self._shard(kind, key.int % self.shards)

    def retry_queue(self, kind: str) -> str:
        """The queue of ``kind``'s republished jobs (retries, deferrals come due, expired leases): consumed
        beside the shards, so a retry never waits behind a fresh backlog."""
        if kind not in JOB_KINDS:
            raise ValueError(f"unknown job kind {kind!r}; expected one of {JOB_KINDS}")
        return f"{self.prefix}.{kind}.{RETRY_SUFFIX}"

    def kind_queues(self, kind: str) -> tuple[str, ...]:
        """Every queue jobs of ``kind`` wait in: its shards, then its retry queue."""
        return (*self.shard_queues(kind), self.retry_queue(kind))

    def queue(self, kind: str) -> str:
        """Shard 0 of ``kind``'s job queues — a valid queue and routing key for callers that do not
        route by tenant (tools, tests). Jobs of a tenant go to :meth:`queue_for`."""
        return self._shard(kind, 0)

    def shard_queues(self, kind: str) -> tuple[str, ...]:
        """Every job queue of ``kind``, shard 0 first."""
        return tuple(self._shard(kind, n) for n in range(self.shards))

    def _shard(self, kind: str, n: int) -> str:
        if kind not in JOB_KINDS:
            raise ValueError(f"unknown job kind {kind!r}; expected one of {JOB_KINDS}")
        return f"{self.prefix}.{kind}.{n}"

    @property
    def job_queues(self) -> tuple[str, ...]:
        """Every job queue: each kind's shards and retry queue, in :data:`JOB_KINDS` order."""
        return tuple(q for kind in JOB_KINDS for q in self.kind_queues(kind))

    def dead_letter_queue(self, kind: str) -> str:
        """The dead-letter queue of ``kind`` (shared by its shards)."""
        return dead_letter_queue(self.queue(kind))

    @property
    def dead_letter_queues(self) -> tuple[str, ...]:
        """All dead-letter queues, one per kind, in :data:`JOB_KINDS` order."""
        return tuple(self.dead_letter_queue(kind) for kind in JOB_KINDS)

    def job_queue_arguments(self, queue: str) -> dict[str, Any]:
        """``queue.declare`` arguments of job queue ``queue``.

        ``x-dead-letter-routing-key`` names the kind's dead-letter queue, so dead letters are routed by
        the queue they left, not by whatever key they were published with. ``x-dead-letter-strategy:
        at-least-once`` needs ``x-overflow: reject-publish`` (RabbitMQ docs, "Quorum Queues:
        Dead Lettering"); with no length limit set, the overflow mode has no other effect.
        """
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": self.dead_letter_exchange,
            "x-dead-letter-routing-key": dead_letter_queue(queue),
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    @staticmethod
    def dead_letter_queue_arguments() -> dict[str, Any]:
        """``queue.declare`` arguments of a dead-letter queue (a plain durable quorum queue)."""
        return {"x-queue-type": "quorum"}


@dataclass(frozen=True)
class OutgoingMessage:
    """One message to publish.

    Attributes:
        routing_key: the job queue's name (direct exchange); a key no queue is bound to is refused.
        body: the payload, opaque bytes (the application's own encoding, e.g. msgspec JSON).
        message_id: unique id (e.g. the outbox event's UUID); consumers deduplicate on it. It must be
            unique within a batch: the broker reports an unroutable message by its id.
        headers: extra AMQP headers (string values), e.g. a tenant id or a trace id. No personal data.
    """

    routing_key: str
    body: bytes
    message_id: str
    headers: Mapping[str, str] = field(default_factory=dict)


class PublishError(Exception):
    """A batch was not entirely confirmed by the broker; the caller must not advance its position.

    Some messages of the batch may have been delivered anyway (those confirmed before the failure), so
    retrying the batch produces duplicates: consumers are idempotent on ``message_id``.

    Attributes:
        failed_ids: ids of the messages known not to be confirmed (nacked, returned as unroutable, or
            whose confirm never came). Empty when the failure concerns the whole batch.
    """

    def __init__(self, message: str, *, failed_ids: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.failed_ids: tuple[str, ...] = tuple(failed_ids)


class DeliveryAlreadySettled(RuntimeError):
    """``ack``/``reject``/``requeue`` was called on a delivery that was already settled."""


class Delivery(Protocol):
    """One message handed to a consumer's handler, to be settled exactly once.

    Attributes:
        body: the payload as published.
        message_id: the publisher's ``message_id``.
        routing_key: the key it was published with (its job queue's name).
        queue: the queue it was consumed from.
        headers: the AMQP headers as received: the publisher's, plus broker headers such as
            ``x-delivery-count`` (values may be non-strings).
        redelivered: the broker delivered it before (to this or another consumer).
        delivery_count: how many times it was returned to the queue before this delivery, from the
            quorum queue's ``x-delivery-count`` header: 0 on first delivery, at most the delivery limit.
        settled: True once ``ack``, ``reject`` or ``requeue`` was called; settling twice raises
            :class:`DeliveryAlreadySettled`.
    """

    body: bytes
    message_id: str
    routing_key: str
    queue: str
    headers: Mapping[str, Any]
    redelivered: bool
    delivery_count: int
    settled: bool

    async def ack(self) -> None:
        """Done with it: the broker forgets the message."""

    async def reject(self) -> None:
        """A permanent failure: the broker dead-letters it to its kind's dead-letter queue (never
        requeued)."""

    async def requeue(self) -> None:
        """A transient failure: deliver it again later.

        The broker counts the return; past the queue's delivery limit it dead-letters the message
        instead. RabbitMQ 3.10 quorum queues with a delivery limit (ours) put a requeued message back
        at the head, so it is redelivered at once, ahead of the messages behind it (verified on 3.10.8;
        without a limit, and on RabbitMQ 4, it goes to the back). Requeue only what may succeed on the
        very next try; reschedule (ack and record) anything that has to wait.
        """


Handler = Callable[[Delivery], Awaitable[None]]


async def dispatch(delivery: Delivery, handler: Handler) -> None:
    """Run ``handler`` on ``delivery`` for a consumer adapter; dead-letter it if the handler failed.

    A handler that raises, or returns without settling, gets its delivery rejected (dead-lettered) and
    the error logged with the message id, queue and delivery count, never the body (personal data).
    A failure to reject (the channel is gone) is logged: the broker then redelivers the message.
    """
    try:
        await handler(delivery)
    except Exception:
        log.exception(
            "handler failed; dead-lettering message_id=%s queue=%s delivery_count=%d",
            delivery.message_id,
            delivery.queue,
            delivery.delivery_count,
        )
    else:
        if delivery.settled:
            return
        log.error(
            "handler returned without settling; dead-lettering message_id=%s queue=%s",
            delivery.message_id,
            delivery.queue,
        )
    if delivery.settled:
        return
    try:
        await delivery.reject()
    except Exception:
        log.warning("could not dead-letter message_id=%s", delivery.message_id, exc_info=True)


class Publisher(Protocol):
    """Publishes batches of persistent messages with publisher confirms."""

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish ``messages`` (all at once, not one round-trip each) and wait for every confirm.

        Returns only after the broker confirmed every message (RabbitMQ docs, "Consumer
        Acknowledgements and Publisher Confirms": a confirmed persistent message routed to a durable
        quorum queue has been written to disk). An empty batch returns at once.

        Raises:
            PublishError: any message was nacked, returned as unroutable (published mandatory: no queue
                is bound to its routing key), not confirmed in time, or the connection failed. The
                batch is then to be retried whole.
            ValueError: two messages of the batch share a ``message_id``.
        """
        ...


class Consumer(Protocol):
    """Consumes job queues and hands each delivery to a handler."""

    async def run(self, queues: Sequence[str], handler: Handler, *, prefetch: int) -> None:
        """Consume ``queues`` until cancelled.

        ``handler`` is awaited once per delivery, concurrently up to ``prefetch`` unsettled deliveries
        per queue (AMQP ``basic.qos``, applied per consumer by RabbitMQ). Each queue is served on its
        own: a queue with a backlog does not hold back the deliveries of another queue. The handler must
        settle the delivery (``ack``, ``reject`` or ``requeue``) and should do so within seconds: see
        ``consumer_timeout`` above. If the handler raises, or returns without settling, the adapter
        rejects the delivery (dead-letters it) and logs the error, without the body (it may hold
        personal data).

        On cancellation the consumer stops taking new deliveries, lets in-flight handlers finish for a
        short grace period, then closes; deliveries still unsettled are returned to their queues.

        Raises:
            Exception: a queue does not exist (adapter-specific error), or the broker is closed.
        """
        ...


class Broker(Protocol):
    """What a process needs from a broker: topology, publishers, consumers, readiness, shutdown."""

    @property
    def topology(self) -> Topology:
        """The names this broker uses."""
        ...

    async def declare_topology(self) -> None:
        """Declare the exchanges, queues and bindings (idempotent)."""

    def publisher(self) -> Publisher:
        """A new publisher (RabbitMQ: its own confirm channel, opened on first use)."""
        ...

    def consumer(self) -> Consumer:
        """A new consumer (RabbitMQ: its own channel per :meth:`Consumer.run`)."""
        ...

    async def ping(self) -> bool:
        """Readiness: True when the broker is reachable and the topology is declared."""
        ...

    async def close(self) -> None:
        """Close publishers, consumers and the connection."""
