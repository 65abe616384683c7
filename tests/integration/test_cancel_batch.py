"""Cancelling a large queue on the real PostgreSQL: one query to load, one save, the exact count — also
while a worker changes some contacts at the same time."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid5

import psycopg
import pytest

from billing.bootstrap import Container, build_container
from billing.domain.campaign import Campaign
from billing.domain.contact import Contact
from billing.domain.queue import Queue
from billing.domain.types import ContactStatus
from billing.eventstore import get_owned, load_many, save_unless_moved
from billing.projections.views import project_pending
from billing.services import cancel as cancel_module
from billing.services.cancel import CancelService
from billing.services.clock import FakeClock
from billing.settings import Settings

pytestmark = pytest.mark.integration

T0 = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
LEASE = timedelta(minutes=2)


@pytest.fixture
def container(database_url: str) -> Iterator[Container]:
    made = build_container(Settings(database_url=database_url), clock=FakeClock(T0 + timedelta(hours=1)))
    try:
        yield made
    finally:
        made.pool.close()
        made.store.close()


def posted(tenant_id: UUID, accepted: int, rejected: int) -> tuple[Campaign, Queue, list[Contact]]:
    """A campaign whose contact ``i`` has the id ingestion gives it: ``uuid5(campaign_id, str(i))``."""
    campaign_id, queue_id = uuid.uuid4(), uuid.uuid4()
    contacts = []
    for index in range(accepted + rejected):
        common: dict[str, Any] = {
            "id": uuid5(campaign_id, str(index)),
            "tenant_id": tenant_id,
            "campaign_id": campaign_id,
            "queue_id": queue_id,
            "index": index,
            "template_type": "overdue",
            "external_id": f"fatura-{index}",
            "fields": {"nome": f"Cliente {index}"},
            "timestamp": T0,
        }
        if index < accepted:
            contacts.append(
                Contact._create(
                    Contact.Added,
                    telefone=f"119{index:08d}",
                    phone=f"+55119{index:08d}",
                    gateway_number=f"55119{index:08d}",
                    amount=Decimal("150.00"),
                    amount_total=None,
                    due_date=date(2025, 3, 1),
                    ordinal=index,
                    **common,
                )
            )
        else:
            contacts.append(
                Contact._create(
                    Contact.Rejected,
                    telefone="123",
                    code="invalid_phone",
                    message="bad",
                    field="telefone",
                    **common,
                )
            )
    queue = Queue.open(
        queue_id=queue_id,
        tenant_id=tenant_id,
        campaign_id=campaign_id,
        template_type="overdue",
        total=accepted + rejected,
        at=T0,
    )
    campaign = Campaign.start(
        campaign_id=campaign_id,
        tenant_id=tenant_id,
        template_type="overdue",
        external_id=None,
        queue_id=queue_id,
        accepted=accepted,
        rejected=rejected,
        idempotency_key=None,
        request_hash="0" * 64,
        rejections=[],
        at=T0,
    )
    return campaign, queue, contacts


def cancelled_events(database_url: str, ids: Iterable[UUID]) -> dict[UUID, int]:
    """How many ``Contact.Cancelled`` events each of ``ids`` has."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT originator_id, count(*) FROM billing_events "
            "WHERE topic = 'billing.Contact.Cancelled' AND originator_id = ANY(%s) GROUP BY 1",
            (list(ids),),
        ).fetchall()
    return {row[0]: row[1] for row in rows}


def test_cancel_queue_answers_the_exact_count_while_a_worker_writes(
    container: Container, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, tenant_id = container.store, uuid.uuid4()
    campaign, queue, contacts = posted(tenant_id, accepted=2_998, rejected=2)
    paid, sent, claimed = contacts[5], contacts[6], contacts[7]
    paid.cancel(reason="paid", at=T0)
    sent.dispatch(at=T0, lease=LEASE)
    sent.record_sent(gateway_message_id="WA-6", remote_jid=None, text="Olá", at=T0)
    claimed.dispatch(at=T0, lease=LEASE)  # in flight: cancelled too (its outcome is still recorded)
    store.save(campaign, queue, *contacts)
    worker_cancels, worker_defers = contacts[8].id, contacts[9].id

    # A worker acts between the service's load and its save: it cancels one contact on seeing the
    # queue's Cancelled (as the handler does) and defers another. Both writes are real saves.
    real_load = cancel_module.load_many
    rounds: list[int] = []

    def racing_load(store_: Any, ids: Iterable[UUID]) -> dict[UUID, Any]:
        loaded = real_load(store_, ids)
        rounds.append(len(loaded))
        if len(rounds) == 1:
            first = get_owned(store, worker_cancels, Contact)
            second = get_owned(store, worker_defers, Contact)
            assert first is not None and second is not None
            first.cancel(reason="queue_cancelled", at=T0)
            second.defer(reason="rate_limited", not_before=T0 + timedelta(minutes=5), at=T0)
            store.save(first, second)
        return loaded

    monkeypatch.setattr(cancel_module, "load_many", racing_load)
    service = CancelService(store, container.pool, container.clock)

    # 3,000 - 2 rejected - 1 paid - 1 sent; the worker's own cancellation counts (caused by this request).
    assert service.cancel_queue(tenant_id, queue.id) == 2_996
    assert rounds == [3_000, 2]  # the two contacts the worker moved are re-loaded, alone

    ids = [c.id for c in contacts]
    events = cancelled_events(database_url, ids)
    expected = {c.id for c in contacts[:2_998]} - {sent.id}
    assert set(events) == expected
    assert set(events.values()) == {1}  # exactly one cancellation each
    final = load_many(store, ids)
    assert final[paid.id].cancel_reason == "paid"
    assert final[claimed.id].status is ContactStatus.CANCELLED and final[claimed.id].cancelled_in_flight
    assert final[sent.id].status is ContactStatus.SENT
    assert final[worker_defers].status is ContactStatus.CANCELLED

    project_pending(container.store, container.pool)
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT cancelled, sent, rejected FROM queue_status WHERE queue_id = %s", (queue.id,)
        ).fetchone()
    assert row == (2_997, 1, 2)  # the paid one is cancelled too, before this request

    monkeypatch.setattr(cancel_module, "load_many", real_load)
    assert service.cancel_queue(tenant_id, queue.id) == 0  # nothing left to cancel


def test_cancel_contacts_ignores_unknown_and_foreign_ids(container: Container) -> None:
    store = container.store
    mine, other = uuid.uuid4(), uuid.uuid4()
    campaign, queue, contacts = posted(mine, accepted=3, rejected=0)
    store.save(campaign, queue, *contacts)
    service = CancelService(store, container.pool, container.clock)

    result = service.cancel_contacts(other, [c.id for c in contacts], "paid")
    assert (result.cancelled, result.found) == (set(), set())
    result = service.cancel_contacts(mine, [contacts[0].id, uuid.uuid4(), contacts[0].id], "paid")
    assert (result.cancelled, result.found) == ({contacts[0].id}, set())
    result = service.cancel_contacts(mine, [c.id for c in contacts], "paid")
    assert (result.cancelled, result.found) == ({contacts[1].id, contacts[2].id}, {contacts[0].id})


def test_save_unless_moved_skips_only_the_aggregates_changed_since_their_load(container: Container) -> None:
    store, tenant_id = container.store, uuid.uuid4()
    campaign, queue, contacts = posted(tenant_id, accepted=3, rejected=0)
    store.save(campaign, queue, *contacts)
    loaded = load_many(store, [c.id for c in contacts])
    meanwhile = get_owned(store, contacts[1].id, Contact)
    assert meanwhile is not None
    meanwhile.dispatch(at=T0, lease=LEASE)
    store.save(meanwhile)

    batch = [loaded[c.id] for c in contacts]
    for contact in batch:
        contact.cancel(reason="paid", at=T0)
    assert save_unless_moved(store, batch) == {contacts[1].id}
    after = load_many(store, [c.id for c in contacts])
    assert [after[c.id].status for c in contacts] == [
        ContactStatus.CANCELLED,
        ContactStatus.DISPATCHED,
        ContactStatus.CANCELLED,
    ]
    assert [after[c.id].version for c in contacts] == [2, 2, 2]
