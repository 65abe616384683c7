"""Async access to the (synchronous) event store for the worker: load, save, and read-modify-write a Queue.

The ``eventsourcing`` library is synchronous, so every call goes through ``asyncio.to_thread``. A save
whose aggregate version was taken by another writer raises the library's ``IntegrityError`` (optimistic
concurrency on ``(originator_id, originator_version)``): that is how a claim held by another worker, or a
cancellation racing a send, is detected.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import structlog
from eventsourcing.persistence import IntegrityError
from eventsourcing.postgres import PostgresApplicationRecorder

from billing.domain.errors import Conflict
from billing.domain.queue import Queue
from billing.eventstore import EventStore, events_of_many, fold, get_owned, load_many

__all__ = [
    "IntegrityError", "load", "pause_queue", "read_each", "read_many", "resume_queue", "save",
    "update_queue",
]  # fmt: skip

log = structlog.get_logger(__name__)

A = TypeVar("A")

QUEUE_UPDATE_ATTEMPTS = 5
"""How many times a queue command is retried on a version conflict (other workers pause the same queue)."""


async def load(store: EventStore, aggregate_id: UUID, kind: type[A]) -> A | None:
    """The aggregate ``aggregate_id`` if it exists and is a ``kind``, else None.

    Raises:
        Exception: the database is unreachable (a transient failure for the caller).
    """
    return await asyncio.to_thread(get_owned, store, aggregate_id, kind)


def read_many(store: EventStore, aggregate_ids: Iterable[UUID]) -> dict[UUID, Any]:
    """The aggregates that exist among ``aggregate_ids``, **blocking**: ``{id: aggregate}``. On PostgreSQL
    one query (:func:`billing.eventstore.load_many`); on another recorder one read each.

    Raises:
        Exception: the database is unreachable.
    """
    if isinstance(store.recorder, PostgresApplicationRecorder):
        return load_many(store, aggregate_ids)
    found: dict[UUID, Any] = {}
    for aggregate_id in dict.fromkeys(aggregate_ids):
        aggregate = get_owned(store, aggregate_id, object)
        if aggregate is not None:
            found[aggregate_id] = aggregate
    return found


def read_each(store: EventStore, wanted: Sequence[Sequence[UUID]]) -> list[dict[UUID, Any]]:
    """For each list of ids in ``wanted``, the aggregates that exist among them, **blocking**: one
    ``{id: aggregate}`` per list, in order. Every list gets aggregate objects of its own, also where
    several lists name the same id: two handlings of one contact (a redelivered job beside its copy)
    must not share an object that one of them commands, or the other would see — and could save — its
    pending events; with objects of their own the second claim conflicts on its version, as with
    separate loads. On PostgreSQL one query
    for all (:func:`billing.eventstore.events_of_many`, then :func:`~billing.eventstore.fold` per list);
    on another recorder one read per id of each list.

    Raises:
        Exception: the database is unreachable.
    """
    if not isinstance(store.recorder, PostgresApplicationRecorder):
        return [read_many(store, ids) for ids in wanted]
    events = events_of_many(store, [i for ids in wanted for i in ids])
    return [{i: fold(events[i]) for i in dict.fromkeys(ids) if i in events} for ids in wanted]


async def save(store: EventStore, *aggregates: Any) -> None:
    """Save the aggregates' pending events in one transaction.

    Raises:
        IntegrityError: another writer recorded an event at the same version first.
    """
    await asyncio.to_thread(store.save, *aggregates)


async def update_queue(
    store: EventStore, queue_id: UUID, command: Callable[[Queue], None], *, loaded: Queue | None = None
) -> Queue | None:
    """Load the queue (or use ``loaded``, the caller's fresh copy, on the first try), apply ``command``
    and save; on a version conflict reload and retry.

    Returns the queue as saved, or None when it does not exist or stayed conflicted after
    :data:`QUEUE_UPDATE_ATTEMPTS` tries (logged; the caller's own work is not undone by this).
    ``command`` may raise :class:`~billing.domain.errors.Conflict` (e.g. the queue was cancelled): the
    queue is then returned unchanged.
    """
    for _ in range(QUEUE_UPDATE_ATTEMPTS):
        queue, loaded = loaded or await load(store, queue_id, Queue), None
        if queue is None:
            return None
        try:
            command(queue)
        except Conflict:
            return queue
        if not queue.pending_events:
            return queue
        try:
            await save(store, queue)
        except IntegrityError:
            continue
        return queue
    log.warning("queue_update_conflicted", queue_id=str(queue_id))
    return None


async def pause_queue(
    store: EventStore,
    queue_id: UUID,
    *,
    reason: str,
    resume_at: datetime | None,
    at: datetime,
    loaded: Queue | None = None,
) -> Queue | None:
    """Pause ``queue_id`` for ``reason`` until ``resume_at`` (None: until lifted by a condition).

    A repeated identical pause records nothing (:meth:`Queue.pause`); a cancelled queue is left alone.
    """
    return await update_queue(
        store, queue_id, lambda q: q.pause(reason=reason, resume_at=resume_at, at=at), loaded=loaded
    )


async def resume_queue(
    store: EventStore,
    queue_id: UUID,
    *,
    at: datetime,
    when: Callable[[Queue], bool] | None = None,
    loaded: Queue | None = None,
) -> Queue | None:
    """Lift the pause of ``queue_id`` if ``when(queue)`` holds on the freshly loaded queue (default: its
    ``resume_at`` has come). Records nothing when it is not paused or the condition fails (e.g. another
    worker renewed the pause meanwhile)."""

    def due(queue: Queue) -> bool:
        return queue.resume_at is not None and queue.resume_at <= at

    condition = when or due

    def command(queue: Queue) -> None:
        if queue.paused and condition(queue):
            queue.resume(at=at)

    return await update_queue(store, queue_id, command, loaded=loaded)
