"""Cancellation use cases: a whole queue (the ERP gave up) or every unsent reminder of one invoice across
queues (the customer paid). Cancelled contacts are never sent afterwards: a job already in the broker finds
the contact terminal (or its queue cancelled) and does nothing.

Which contacts are cancelled must not depend on how far the projections got (the views lag behind the
event store):

- a queue's contacts are known without the views: ingestion gives contact ``i`` of a campaign the id
  ``uuid5(campaign_id, str(i))`` and the queue records its ``total``: all of them are loaded from the
  event store in one query;
- an invoice's contacts can only be found through the views, so the call first waits (bounded) until the
  projections have applied every event stored before it; when they stay behind it answers
  :class:`ProjectionsBehind` rather than a short count.

The cancellations are one save (:meth:`CancelService.cancel_contacts`). A worker may change a contact while
it is being cancelled (a deferral, a claim): that contact is left out of the save (its version moved), then
re-loaded and cancelled again if it is still not final.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError
from psycopg.rows import dict_row

from billing.db import ViewsPool
from billing.domain.contact import Contact
from billing.domain.errors import DomainError, InvalidValue, NotFound
from billing.domain.ingestion import contact_ids
from billing.domain.queue import Queue
from billing.domain.types import ContactStatus
from billing.eventstore import EventStore, get_owned, load_many, save_unless_moved
from billing.projections.tracking import load_position
from billing.projections.views import PROJECTION
from billing.services.clock import Clock

SAVE_ATTEMPTS = 10
"""Rounds of re-loading contacts that other writers keep changing while they are cancelled."""
CATCH_UP_TIMEOUT_S = 10.0
"""Seconds :meth:`CancelService.cancel_by_external_id` waits for the projections to catch up."""

OPEN_STATUSES = ("pending", "dispatched")
"""Statuses of the contacts that may still be sent (the views' ``campaign_contacts.status``)."""


@dataclass
class Cancellation:
    """What :meth:`CancelService.cancel_contacts` did.

    Attributes:
        cancelled: ids of the contacts this call cancelled.
        found: ids found already cancelled with the same reason (not by this call).
    """

    cancelled: set[UUID] = field(default_factory=set)
    found: set[UUID] = field(default_factory=set)


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

    def cancel_contacts(self, tenant_id: UUID, contact_ids: Iterable[UUID], reason: str) -> Cancellation:
        """Cancel every contact of ``contact_ids`` that belongs to the tenant and is not final yet, with
        ``reason`` (``queue_cancelled``, ``paid``...). The one fast path of every cancellation.

        The contacts are loaded with one query (:func:`~billing.eventstore.load_many`) and their
        ``Cancelled`` events written with one save under the event store's table lock, skipping any
        contact another writer (a worker's claim, outcome or own cancellation) changed since it was
        loaded (:func:`~billing.eventstore.save_unless_moved`); those are re-loaded and decided again, up
        to :data:`SAVE_ATTEMPTS` rounds. Unknown ids and other tenants' contacts are ignored.

        Returns the ids this call cancelled and the ids found already cancelled with the same reason
        (e.g. by a worker that saw the queue's cancellation first).

        Raises:
            IntegrityError: some contacts still kept changing after :data:`SAVE_ATTEMPTS` rounds.
        """
        todo = list(dict.fromkeys(contact_ids))
        result = Cancellation()
        for attempt in range(SAVE_ATTEMPTS):
            now = self.clock.now()
            loaded = load_many(self.store, todo)
            batch: list[Contact] = []
            for contact_id in todo:
                contact = loaded.get(contact_id)
                if not isinstance(contact, Contact) or contact.tenant_id != tenant_id:
                    continue
                if contact.cancel(reason=reason, at=now):
                    batch.append(contact)
                elif contact.status is ContactStatus.CANCELLED and contact.cancel_reason == reason:
                    result.found.add(contact_id)
            moved = save_unless_moved(self.store, batch) if batch else set()
            result.cancelled.update(c.id for c in batch if c.id not in moved)
            if not moved:
                return result
            todo = [contact_id for contact_id in todo if contact_id in moved]
            time.sleep(0.01 * (attempt + 1))
        raise IntegrityError(f"{len(todo)} contacts kept changing while being cancelled")

    def _get_queue(self, tenant_id: UUID, queue_id: UUID) -> Queue:
        queue = get_owned(self.store, queue_id, Queue, tenant_id)
        if queue is None:
            raise NotFound("queue not found", code="queue_not_found", field="queue_id")
        return queue

    def _cancel_queue_itself(self, tenant_id: UUID, queue_id: UUID) -> tuple[Queue, bool]:
        """Record the queue's ``Cancelled`` (nothing when it already is), re-loading it after a conflict
        with a worker that paused or resumed it meanwhile. Returns the queue and whether this call
        recorded the cancellation.

        Raises:
            NotFound: unknown queue or another tenant's.
            IntegrityError: it still conflicted after :data:`SAVE_ATTEMPTS` tries.
        """
        for attempt in range(SAVE_ATTEMPTS):
            queue = self._get_queue(tenant_id, queue_id)
            if queue.cancelled:
                return queue, False
            queue.cancel(reason="cancelled_by_client", at=self.clock.now())
            try:
                self.store.save(queue)
            except IntegrityError:
                if attempt == SAVE_ATTEMPTS - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))
            else:
                return queue, True
        raise AssertionError("unreachable")

    def cancel_queue(self, tenant_id: UUID, queue_id: UUID) -> int:
        """Cancel the queue and its unsent contacts. Returns how many contacts were cancelled.

        The queue's own ``Cancelled`` event is saved first, so a worker that takes a job of this queue
        from then on cancels the contact itself; such contacts are counted too, so the answer is exactly
        the number of contacts this request stopped (the status's ``cancelled`` counter, less any contact
        cancelled earlier for its invoice).

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
        queue, recorded = self._cancel_queue_itself(tenant_id, queue_id)
        # Ingestion gives contact i of a campaign the id uuid5(campaign_id, str(i)): every contact of the
        # queue is known without the (lagging) views.
        derived = contact_ids(queue.campaign_id, queue.total)
        result = self.cancel_contacts(tenant_id, derived, "queue_cancelled")
        # A worker that took a job of this queue after its Cancelled was saved cancels the contact itself
        # (same reason): that contact was cancelled by this request too.
        return len(result.cancelled) + (len(result.found) if recorded else 0)

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
        return len(self.cancel_contacts(tenant_id, (row["contact_id"] for row in rows), "paid").cancelled)
