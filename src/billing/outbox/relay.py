"""The outbox relay (``billing relay``): each ``Contact.Added`` event becomes a ``SendJob`` on the broker.

It follows the notification log filtered to the topic ``billing.Contact.Added`` (the database skips the
other events), builds one job per event, routed to the batch's shard of the job queues of the contact's
template type (``broker.topology.queue_for(kind, queue_id)``: tenant fairness, see
:mod:`billing.outbox.broker`), with message id ``<contact_id>:<notification_id>``
(:func:`~billing.outbox.jobs.job_message_id`), and publishes each batch with publisher confirms.

Promise 2 and case Q03: the position (``tracking.name = 'relay'``) is recorded only after
:meth:`Publisher.publish` returned, i.e. after the broker confirmed every message of the batch. On a
:class:`~billing.outbox.broker.PublishError` or a lost connection nothing is recorded; the follower
backs off (exponentially, capped) and publishes the batch again from the recorded position — the relay
never stops for good. Batches are published one after the other, so jobs reach the broker in
notification-log order.

Case Q04: if the relay dies between the confirm and the recording of its position, it publishes those
jobs again after a restart (same message ids). Delivery is at-least-once; the worker makes a duplicate
job a no-op.

An ``Added`` event that cannot be decoded is recorded in ``projection_errors`` (projection ``'relay'``),
logged at error level, and skipped, in the same transaction as the position: it cannot become a job,
and it must not block every job behind it.

Run exactly one relay per database: two would publish every job twice (harmless, but wasteful).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from eventsourcing.persistence import Mapper, Notification

from billing import metrics
from billing.db import ViewsPool
from billing.domain.contact import Contact
from billing.domain.types import TemplateType
from billing.outbox.broker import Broker, OutgoingMessage, Publisher
from billing.outbox.jobs import SendJob, job_message
from billing.projections.follower import DEFAULT_BATCH_SIZE, NotificationFollower, read_after
from billing.projections.tracking import load_position, record_error, save_position

if TYPE_CHECKING:
    from billing.eventstore import EventStore

log = logging.getLogger(__name__)

RELAY = "relay"
"""The relay's row in ``tracking`` (and ``projection_errors.projection`` of the events it skipped)."""
TOPICS = (Contact.Added.TOPIC,)
"""The only events the relay forwards."""


def to_message(mapper: Mapper[Any], notification: Notification, broker: Broker) -> OutgoingMessage:
    """The broker message of one ``Contact.Added`` notification.

    Raises:
        Exception: the event cannot be decoded, or its template type has no job queue.
    """
    event: Any = mapper.to_domain_event(notification)
    job = SendJob(
        contact_id=event.originator_id,
        tenant_id=event.tenant_id,
        queue_id=event.queue_id,
        template_type=TemplateType(event.template_type),
        reason="added",
    )
    return job_message(job, str(notification.id), broker.topology)


class OutboxRelay:
    """Publishes the ``Contact.Added`` notifications of one event store to one broker.

    Args:
        store: the event store (its recorder is read, its mapper decodes the notifications).
        pool: the views pool (the relay's ``tracking`` position and its ``projection_errors``).
        broker: where the jobs go.
        database_url: the database the follower LISTENs on for new notifications.
        poll_interval_s: seconds between polls when no notification wakes the follower.
        publisher: the publisher to use (default: ``broker.publisher()``, made on first use).
        batch_size: notifications per published batch, at most.
    """

    def __init__(
        self,
        store: EventStore,
        pool: ViewsPool,
        broker: Broker,
        *,
        database_url: str,
        poll_interval_s: float,
        publisher: Publisher | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        self.store = store
        self.pool = pool
        self.broker = broker
        self.database_url = database_url
        self.poll_interval_s = poll_interval_s
        self.batch_size = batch_size
        self._publisher = publisher

    @property
    def publisher(self) -> Publisher:
        """The publisher (made on first use)."""
        if self._publisher is None:
            self._publisher = self.broker.publisher()
        return self._publisher

    async def handle_batch(self, batch: Sequence[Notification], after: int, upto: int) -> int:
        """Publish ``batch`` (the Added notifications in ``(after, upto]``), wait for the confirms, then
        record ``upto`` as the position. Returns the recorded position.

        Raises:
            PublishError: the broker did not confirm the batch (the position is unchanged).
            psycopg.Error: the position could not be recorded (the batch will be published again).
        """
        messages: list[OutgoingMessage] = []
        failures: list[tuple[Notification, BaseException]] = []
        for notification in batch:
            try:
                messages.append(to_message(self.store.mapper, notification, self.broker))
            except Exception as exc:
                failures.append((notification, exc))
        await metrics.timed_publish(self.publisher.publish(messages), len(messages))  # after every confirm
        return await asyncio.to_thread(self._record, upto, failures)

    def _record(self, upto: int, failures: Sequence[tuple[Notification, BaseException]]) -> int:
        with self.pool.connection() as conn, conn.transaction():
            for notification, exc in failures:
                record_error(conn, RELAY, notification, exc)
            return save_position(conn, RELAY, upto)

    async def load_position(self) -> int:
        """The recorded position (0 before the first batch)."""
        return await asyncio.to_thread(load_position, self.pool, RELAY)

    async def publish_pending(self) -> int:
        """Publish everything the log holds now; returns how many jobs were published (duplicates of a
        previous run that died before recording its position included).

        Raises:
            PublishError / psycopg.Error: as :meth:`handle_batch` (nothing after the failed batch is
                published, and its position is not recorded).
        """
        position = await self.load_position()
        published = 0
        while True:
            batch, upto = await asyncio.to_thread(
                read_after, self.store.recorder, position, self.batch_size, TOPICS
            )
            if upto <= position:
                return published
            position = await self.handle_batch(batch, position, upto)
            published += len(batch)

    def follower(self) -> NotificationFollower:
        """The notification-log follower that drives :meth:`handle_batch` (LISTEN + poll, backoff)."""
        return NotificationFollower(
            name=RELAY,
            recorder=self.store.recorder,
            database_url=self.database_url,
            load_position=self.load_position,
            handle_batch=self.handle_batch,
            topics=TOPICS,
            batch_size=self.batch_size,
            poll_interval_s=self.poll_interval_s,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Declare the broker topology (best effort) and relay until ``stop`` is set. Never returns on
        an error: publish failures and lost connections are retried with backoff."""
        try:
            await self.broker.declare_topology()
        except Exception:
            log.exception("relay could not declare the broker topology; publishing will retry")
        await self.follower().run(stop)
