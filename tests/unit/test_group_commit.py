"""The worker's group commit over an in-memory store: concurrent saves share one transaction, a version
conflict fails only its own waiter, a group rolled back whole is saved one by one, any other failure
reaches every waiter of the group, and two saves of one aggregate never share a group. Also
:func:`billing.eventstore.save_group` on the library's in-memory recorder.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.application import AggregateNotFoundError

from billing.domain.contact import Contact
from billing.eventstore import EventStore, save_group
from billing.worker.groupcommit import GroupCommitter, IntegrityError
from tests.unit.test_aggregates import CREATION_VALUES, T0, new_contact

ADDED = CREATION_VALUES["added"]


class Agg:
    """A stand-in aggregate: ``version`` is the version its pending event would take."""

    def __init__(self, aggregate_id: UUID | None = None, version: int = 1) -> None:
        self.id = aggregate_id or uuid4()
        self.version = version


class FakeStore:
    """Versions per id; ``group`` checks and writes under one lock (the table lock of PostgreSQL)."""

    def __init__(self) -> None:
        self.versions: dict[UUID, int] = {}
        self.transactions: list[list[UUID]] = []
        self.fail_next: Exception | None = None
        self.roll_back_groups = False
        self.gate: threading.Event | None = None
        self._lock = threading.Lock()

    def group(self, aggregates: Sequence[Agg]) -> set[UUID]:
        if self.gate is not None:
            self.gate.wait(5)
        with self._lock:
            if self.fail_next is not None:
                exc, self.fail_next = self.fail_next, None
                raise exc
            if self.roll_back_groups:
                raise IntegrityError("duplicate key (rolled back)")
            moved = {a.id for a in aggregates if self.versions.get(a.id, 0) != a.version - 1}
            for a in aggregates:
                if a.id not in moved:
                    self.versions[a.id] = a.version
            self.transactions.append([a.id for a in aggregates if a.id not in moved])
            return moved

    def single(self, aggregate: Agg) -> None:
        with self._lock:
            if self.versions.get(aggregate.id, 0) != aggregate.version - 1:
                raise IntegrityError(f"version {aggregate.version} of {aggregate.id} taken")
            self.versions[aggregate.id] = aggregate.version
            self.transactions.append([aggregate.id])


def committer(store: FakeStore, **kw: Any) -> GroupCommitter:
    return GroupCommitter(store.group, store.single, **kw)


async def test_concurrent_saves_share_one_transaction() -> None:
    store = FakeStore()
    saves = committer(store)
    aggregates = [Agg() for _ in range(20)]
    await asyncio.gather(*(saves.save(a) for a in aggregates))
    assert store.transactions == [[a.id for a in aggregates]]
    assert saves.groups == 1 and saves.saved == 20


async def test_a_lone_save_is_written_at_once_alone() -> None:
    store = FakeStore()
    saves = committer(store)
    one = Agg()
    await saves.save(one)
    assert store.transactions == [[one.id]]


async def test_saves_arriving_during_a_transaction_form_the_next_group() -> None:
    store = FakeStore()
    store.gate = threading.Event()
    saves = committer(store)
    first = [Agg() for _ in range(2)]
    running = [asyncio.create_task(saves.save(a)) for a in first]
    await asyncio.sleep(0.05)  # the first group is in its transaction (held at the gate)
    later = [Agg() for _ in range(5)]
    running += [asyncio.create_task(saves.save(a)) for a in later]
    await asyncio.sleep(0.01)
    assert saves.queued == 5
    store.gate.set()
    await asyncio.gather(*running)
    assert store.transactions == [[a.id for a in first], [a.id for a in later]]


async def test_a_linger_takes_saves_that_arrive_during_it_into_the_same_group() -> None:
    async def two_saves_10_ms_apart(saves: GroupCommitter) -> None:
        first = asyncio.create_task(saves.save(Agg()))
        await asyncio.sleep(0.01)
        await asyncio.gather(first, saves.save(Agg()))

    quick, lingering = FakeStore(), FakeStore()
    await two_saves_10_ms_apart(committer(quick))
    await two_saves_10_ms_apart(committer(lingering, linger_s=0.2))
    assert [len(t) for t in quick.transactions] == [1, 1]
    assert [len(t) for t in lingering.transactions] == [2]


async def test_max_items_bounds_a_group() -> None:
    store = FakeStore()
    saves = committer(store, max_items=3)
    aggregates = [Agg() for _ in range(7)]
    await asyncio.gather(*(saves.save(a) for a in aggregates))
    assert [len(t) for t in store.transactions] == [3, 3, 1]


async def test_a_conflict_fails_only_its_own_waiter() -> None:
    store = FakeStore()
    taken = Agg()
    store.versions[taken.id] = 1  # another writer already wrote version 1
    saves = committer(store)
    others = [Agg() for _ in range(4)]
    results = await asyncio.gather(
        *(saves.save(a) for a in [others[0], taken, *others[1:]]), return_exceptions=True
    )
    assert results[0] is None and all(r is None for r in results[2:])
    assert isinstance(results[1], IntegrityError)
    assert store.transactions == [[a.id for a in others]]
    assert all(store.versions[a.id] == 1 for a in others)


async def test_a_group_rolled_back_whole_is_saved_one_by_one() -> None:
    store = FakeStore()
    store.roll_back_groups = True
    taken = Agg()
    store.versions[taken.id] = 1
    saves = committer(store)
    others = [Agg() for _ in range(3)]
    results = await asyncio.gather(*(saves.save(a) for a in [*others, taken]), return_exceptions=True)
    assert results[:3] == [None, None, None]
    assert isinstance(results[3], IntegrityError)
    assert store.transactions == [[a.id] for a in others]


async def test_any_other_failure_reaches_every_waiter_of_the_group() -> None:
    store = FakeStore()
    store.fail_next = ConnectionError("server closed the connection unexpectedly")
    saves = committer(store)
    aggregates = [Agg() for _ in range(4)]
    results = await asyncio.gather(*(saves.save(a) for a in aggregates), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert store.transactions == []  # not saved one by one: the group may have committed
    await saves.save(Agg())  # the committer goes on afterwards
    assert len(store.transactions) == 1


async def test_two_saves_of_one_aggregate_never_share_a_group() -> None:
    store = FakeStore()
    saves = committer(store)
    same = uuid4()
    first, second, other = Agg(same), Agg(same), Agg()  # both loaded at version 0: a duplicate job
    results = await asyncio.gather(
        saves.save(first), saves.save(second), saves.save(other), return_exceptions=True
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], IntegrityError)  # it conflicts in the next group, as it would alone
    assert store.transactions == [[same, other.id]]


async def test_a_waiter_cancelled_before_its_group_is_left_out() -> None:
    store = FakeStore()
    store.gate = threading.Event()
    saves = committer(store)
    running = [asyncio.create_task(saves.save(Agg())) for _ in range(2)]
    await asyncio.sleep(0.05)  # that group is in its transaction (held at the gate)
    given_up = Agg()
    cancelled = asyncio.create_task(saves.save(given_up))
    kept = Agg()
    waiting = asyncio.create_task(saves.save(kept))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    store.gate.set()
    await asyncio.gather(*running, waiting)
    assert given_up.id not in store.versions and store.versions[kept.id] == 1


def test_bad_arguments_are_refused() -> None:
    store = FakeStore()
    with pytest.raises(ValueError, match="max_items"):
        committer(store, max_items=0)
    with pytest.raises(ValueError, match="linger_s"):
        committer(store, linger_s=-1)


# --- save_group on the library's in-memory recorder ------------------------------------------------------


def memory_store() -> EventStore:
    return EventStore(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


def test_save_group_writes_every_aggregate_in_one_go_and_clears_their_events() -> None:
    store = memory_store()
    first, second = new_contact(), new_contact()
    assert save_group(store, [first, second]) == set()
    assert not first.pending_events and not second.pending_events
    assert store.repository.get(first.id).version == first.version
    assert store.repository.get(second.id).version == second.version


def test_save_group_keeps_the_events_when_the_group_conflicts() -> None:
    store = memory_store()
    contact = new_contact()
    store.save(contact)
    stale = store.repository.get(contact.id)
    contact.defer(reason="throttled", not_before=T0, at=T0)
    store.save(contact)  # another writer took the next version
    stale.defer(reason="queue_paused", not_before=T0, at=T0)
    fresh = new_contact()
    with pytest.raises(IntegrityError):
        save_group(store, [fresh, stale])
    assert fresh.pending_events and stale.pending_events  # nothing lost: each can be saved alone
    store.save(fresh)
    assert store.repository.get(fresh.id).version == fresh.version


def test_the_store_saves_aggregates_and_bare_creation_events_together_or_nothing() -> None:
    store = memory_store()
    contact, taken = new_contact(), new_contact()
    store.save(taken)
    alone = Contact.creation_event(Contact.Added, id=uuid4(), at=T0, **ADDED)
    assert len(store.save(contact, alone)) == 2
    assert not contact.pending_events
    assert store.repository.get(contact.id).version == 1
    assert store.repository.get(alone.originator_id).phone == "+5511987654321"
    again = Contact.creation_event(Contact.Added, id=taken.id, at=T0, **ADDED)  # version 1 is taken
    fresh = new_contact()
    with pytest.raises(IntegrityError):
        store.save(fresh, again)
    with pytest.raises(AggregateNotFoundError):
        store.repository.get(fresh.id)


async def test_the_committer_over_a_store_saves_contacts_and_reports_the_stale_one() -> None:
    store = memory_store()
    contact = new_contact()
    store.save(contact)
    stale = store.repository.get(contact.id)
    contact.defer(reason="throttled", not_before=T0, at=T0)
    store.save(contact)
    stale.defer(reason="queue_paused", not_before=T0, at=T0)
    fresh = [new_contact() for _ in range(3)]
    saves = GroupCommitter.for_store(store)
    results = await asyncio.gather(*(saves.save(c) for c in [*fresh, stale]), return_exceptions=True)
    assert results[:3] == [None, None, None] and isinstance(results[3], IntegrityError)
    assert all(store.repository.get(c.id).version == c.version for c in fresh)


async def test_the_flusher_does_not_carry_the_first_callers_log_context() -> None:
    import contextvars

    bound: contextvars.ContextVar[str | None] = contextvars.ContextVar("bound", default=None)
    seen: list[str | None] = []
    store = FakeStore()

    def group(aggregates: Sequence[Agg]) -> set[UUID]:
        seen.append(bound.get())
        return store.group(aggregates)

    saves = GroupCommitter(group, store.single)

    async def handling(name: str) -> None:
        bound.set(name)  # as structlog's bound_contextvars does per delivery
        await saves.save(Agg())

    await asyncio.gather(handling("contact-1"), handling("contact-2"))
    assert seen == [None]
