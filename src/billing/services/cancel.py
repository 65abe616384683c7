"""Cancellation use cases: a whole queue (the ERP gave up) or every unsent reminder of one invoice across
queues (the customer paid). Cancelled contacts are never sent afterwards: a job already in the broker finds
the contact terminal (or its queue cancelled) and does nothing.

Which contacts are cancelled must not depend on how far the projections got (the views lag behind the
event store):

- a queue's contacts are known without the views: ingestion gives contact ``i`` of a campaign the id
  ``uuid5(campaign_id, str(i))`` and the queue records its ``total``. Every such contact that the views do
  not already show as final is loaded from the event store (plus any open one the views show);
- an invoice's contacts can only be found through the views, so the call first waits (bounded) until the
  projections have applied every event stored before it; when they stay behind it answers
  :class:`ProjectionsBehind` rather than a short count.

A worker may change a contact while it is being cancelled (a deferral, a claim): the save then conflicts on
the aggregate's version, and the contact is re-loaded and cancelled again if it is still not final.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.persistence import IntegrityError
from psycopg.rows import dict_row

from billing.db import ViewsPool
from billing.domain.contact import Contact
from billing.domain.errors import DomainError, InvalidValue, NotFound
from billing.domain.queue import Queue
from billing.eventstore import EventStore, get_owned
from billing.projections.tracking import load_position
from billing.projections.views import PROJECTION
from billing.services.clock import Clock

SAVE_CHUNK = 500
SAVE_ATTEMPTS = 10
"""Tries to save one cancellation that keeps conflicting with other writers before giving up."""
CATCH_UP_TIMEOUT_S = 10.0
"""Seconds :meth:`CancelService.cancel_by_external_id` waits for the projections to catch up."""

OPEN_STATUSES = ("pending", "dispatched")
"""Statuses of the contacts that may still be sent (the views' ``campaign_contacts.status``)."""


class ProjectionsBehind(DomainError):
    """The views do not show everything stored yet, so the answer would be incomplete; retry later."""

    code = "projections_behind"


class CancelService:
    """Cancels queues and contacts (synchronous)."""

    def __init__(
        self,
        store: EventStore,
        pool: ViewsPool,
        clock: Clock,
        *,
        catch_up_timeout_s: float = CATCH_UP_TIMEOUT_S,
    ) -> None:
        self.store = store
        self.pool = pool
        self.clock = clock
        self.catch_up_timeout_s = catch_up_timeout_s

    def _rows(self, sql: str, params: tuple[object, ...]) -> list[dict[str, Any]]:
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(sql, params).fetchall()

    def _load_contact(self, contact_id: UUID, tenant_id: UUID) -> Contact | None:
        return get_owned(self.store, contact_id, Contact, tenant_id)

    def _cancel_contacts(self, tenant_id: UUID, contact_ids: Iterable[UUID], reason: str) -> int:
        """Cancel the contacts not final yet, saving them in chunks; returns how many were cancelled."""
        ids = list(dict.fromkeys(contact_ids))
        now = self.clock.now()
        cancelled = 0
        for start in range(0, len(ids), SAVE_CHUNK):
            batch: list[Contact] = []
            for contact_id in ids[start : start + SAVE_CHUNK]:
                contact = self._load_contact(contact_id, tenant_id)
                if contact is not None and contact.cancel(reason=reason, at=now):
                    batch.append(contact)
            if not batch:
                continue
            try:
                self.store.save(*batch)
            except IntegrityError:  # a worker changed one of them meanwhile: one by one, re-loaded
                cancelled += sum(self._cancel_one(tenant_id, c.id, reason) for c in batch)
            else:
                cancelled += len(batch)
        return cancelled

    def _cancel_one(self, tenant_id: UUID, contact_id: UUID, reason: str) -> int:
        """Cancel one contact, re-loading it after each conflict; 1 when a cancellation was recorded.

        Raises:
            IntegrityError: it still conflicted after :data:`SAVE_ATTEMPTS` tries.
        """
        for attempt in range(SAVE_ATTEMPTS):
            contact = self._load_contact(contact_id, tenant_id)
            if contact is None or not contact.cancel(reason=reason, at=self.clock.now()):
                return 0
            try:
                self.store.save(contact)
            except IntegrityError:
                if attempt == SAVE_ATTEMPTS - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))
            else:
                return 1
        raise AssertionError("unreachable")

    def _get_queue(self, tenant_id: UUID, queue_id: UUID) -> Queue:
        queue = get_owned(self.store, queue_id, Queue, tenant_id)
        if queue is None:
            raise NotFound("queue not found", code="queue_not_found", field="queue_id")
        return queue

    def _cancel_queue_itself(self, tenant_id: UUID, queue_id: UUID) -> Queue:
        """Record the queue's ``Cancelled`` (nothing when it already is), re-loading it after a conflict
        with a worker that paused or resumed it meanwhile.

        Raises:
            NotFound: unknown queue or another tenant's.
            IntegrityError: it still conflicted after :data:`SAVE_ATTEMPTS` tries.
        """
        for attempt in range(SAVE_ATTEMPTS):
            queue = self._get_queue(tenant_id, queue_id)
            queue.cancel(reason="cancelled_by_client", at=self.clock.now())
            try:
                self.store.save(queue)
            except IntegrityError:
                if attempt == SAVE_ATTEMPTS - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))
            else:
                return queue
        raise AssertionError("unreachable")

    def cancel_queue(self, tenant_id: UUID, queue_id: UUID) -> int:
        """Cancel the queue and its unsent contacts. Returns how many contacts were cancelled.

        The queue's own ``Cancelled`` event is saved first, so a worker that takes a job of this queue
        from then on cancels the contact itself.

        A queue already completed (every contact final) is left as it is: nothing could be stopped, and
        its status stays ``completed`` rather than turning ``cancelled``.

        Raises:
            NotFound: unknown queue or another tenant's.
        """
        if not self._get_queue(tenant_id, queue_id).cancelled and self._rows(
            "SELECT 1 FROM queue_status WHERE queue_id = %s AND tenant_id = %s AND completed_at IS NOT NULL",
            (queue_id, tenant_id),
        ):
            return 0  # completed_at is set only once no contact can be sent any more: it is final
        queue = self._cancel_queue_itself(tenant_id, queue_id)
        rows = self._rows(
            "SELECT contact_id, status FROM campaign_contacts WHERE queue_id = %s AND tenant_id = %s",
            (queue_id, tenant_id),
        )
        final = {row["contact_id"] for row in rows if row["status"] not in OPEN_STATUSES}
        open_in_views = [row["contact_id"] for row in rows if row["status"] in OPEN_STATUSES]
        derived = [uuid5(queue.campaign_id, str(index)) for index in range(queue.total)]
        candidates = [cid for cid in (*open_in_views, *derived) if cid not in final]
        return self._cancel_contacts(tenant_id, candidates, "queue_cancelled")

    def _wait_for_projections(self) -> None:
        """Return once the projections applied every event stored before this call.

        Raises:
            ProjectionsBehind: they did not within :attr:`catch_up_timeout_s`.
        """
        head = self.store.recorder.max_notification_id() or 0
        deadline = time.monotonic() + self.catch_up_timeout_s
        while load_position(self.pool, PROJECTION) < head:
            if time.monotonic() >= deadline:
                raise ProjectionsBehind(
                    "the contact views are still catching up with recent requests; retry shortly",
                    details={"retry_after_s": 1},
                )
            time.sleep(0.05)

    def cancel_by_external_id(self, tenant_id: UUID, external_id: str) -> int:
        """Cancel every unsent contact of the tenant about invoice ``external_id`` — its own invoice
        reference (``invoice_ref``) or its batch's ``external_id`` — across batches and campaigns.
        Returns the count.

        Raises:
            InvalidValue: empty external_id.
            ProjectionsBehind: the views did not catch up with the events stored before the call in time.
        """
        if not external_id or not external_id.strip():
            raise InvalidValue("external_id is required", code="invalid_request", field="external_id")
        self._wait_for_projections()
        rows = self._rows(
            "SELECT contact_id FROM campaign_contacts WHERE tenant_id = %s "
            "AND (invoice_ref = %s OR external_id = %s) AND status = ANY(%s)",
            (tenant_id, external_id, external_id, list(OPEN_STATUSES)),
        )
        return self._cancel_contacts(tenant_id, (row["contact_id"] for row in rows), "paid")
