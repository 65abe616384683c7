"""Cancellation use cases: a whole queue (the ERP gave up) or every unsent reminder of one invoice across
queues (the customer paid). Cancelled contacts are never sent afterwards: a job already in the broker finds
the contact terminal (or its queue cancelled) and does nothing."""

from __future__ import annotations

from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from psycopg_pool import ConnectionPool

from billing.domain.contact import Contact
from billing.domain.errors import InvalidValue, NotFound
from billing.domain.queue import Queue
from billing.eventstore import EventStore
from billing.services.clock import Clock

SAVE_CHUNK = 500


class CancelService:
    """Cancels queues and contacts (synchronous)."""

    def __init__(self, store: EventStore, pool: ConnectionPool, clock: Clock) -> None:
        self.store = store
        self.pool = pool
        self.clock = clock

    def _open_contacts(self, sql: str, params: tuple[object, ...]) -> list[UUID]:
        with self.pool.connection() as conn:
            return [row["contact_id"] for row in conn.execute(sql, params).fetchall()]  # type: ignore[arg-type]

    def _cancel_contacts(self, contact_ids: list[UUID], reason: str) -> int:
        now = self.clock.now()
        cancelled = 0
        batch: list[Contact] = []
        for contact_id in contact_ids:
            try:
                contact = self.store.repository.get(contact_id)
            except AggregateNotFoundError:
                continue
            if contact.cancel(reason=reason, at=now):
                batch.append(contact)
                cancelled += 1
            if len(batch) >= SAVE_CHUNK:
                self.store.save(*batch)
                batch = []
        if batch:
            self.store.save(*batch)
        return cancelled

    def cancel_queue(self, tenant_id: UUID, queue_id: UUID) -> int:
        """Cancel the queue and its unsent contacts. Returns how many contacts were cancelled.

        The queue's own ``Cancelled`` event is saved first, so a worker that takes a job of this queue
        from then on cancels the contact itself even if it was not projected yet.

        Raises:
            NotFound: unknown queue or another tenant's.
        """
        try:
            queue = self.store.repository.get(queue_id)
        except AggregateNotFoundError:
            raise NotFound("queue not found", code="queue_not_found") from None
        if not isinstance(queue, Queue) or queue.tenant_id != tenant_id:
            raise NotFound("queue not found", code="queue_not_found")
        queue.cancel(reason="cancelled_by_client", at=self.clock.now())
        self.store.save(queue)
        ids = self._open_contacts(
            "SELECT contact_id FROM campaign_contacts WHERE queue_id = %s AND tenant_id = %s "
            "AND status IN ('pending', 'dispatched')",
            (queue_id, tenant_id),
        )
        return self._cancel_contacts(ids, "queue_cancelled")

    def cancel_by_external_id(self, tenant_id: UUID, external_id: str) -> int:
        """Cancel every unsent contact of the tenant whose batch carried ``external_id``. Returns the count.

        Raises:
            InvalidValue: empty external_id.
        """
        if not external_id or not external_id.strip():
            raise InvalidValue("external_id is required", code="invalid_request", field="external_id")
        ids = self._open_contacts(
            "SELECT contact_id FROM campaign_contacts WHERE tenant_id = %s AND external_id = %s "
            "AND status IN ('pending', 'dispatched')",
            (tenant_id, external_id),
        )
        return self._cancel_contacts(ids, "paid")
