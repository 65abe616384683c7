"""Group commit of the worker's single-aggregate saves: the saves that the concurrent handlers of one
process ask for at about the same time are written in ONE event-store transaction.

Why: every event-store save takes the events table's EXCLUSIVE lock through its WAL flush
(``docs/scaling.md``), so one database does ~150–190 saves/s whatever the number of writers, and each
message costs the worker two saves (the claim, the outcome). A save of 20 events costs about as much
lock time as a save of one, so the worker asks for fewer, larger saves.

How: :meth:`GroupCommitter.save` queues the aggregate and waits on a future. One flusher task per
committer takes what is queued — after yielding to the event loop once, so every handler that is ready
to save joins (``linger_s`` can widen the window), at most ``max_items`` — and writes it in one
transaction in a thread. While that transaction runs, new saves queue up for the next one: the busier
the process, the larger the groups; an idle process saves a lone aggregate at once.

Guarantees, per waiter:
- its future resolves only after the transaction holding its events committed (so a claim is stored
  before its gateway call, an outcome before its delivery is acked);
- another writer's version on its aggregate → **that** waiter gets :class:`IntegrityError` and its events
  are dropped (reload and decide again, as after a single save); the others of the group are saved;
- a group that fails whole with ``IntegrityError`` (rolled back) is saved again one aggregate per
  transaction, so one bad aggregate cannot lose the others;
- any other failure (database unreachable, connection lost — the commit may or may not have happened)
  is given to every waiter of the group, unchanged: each caller already handles an uncertain save;
- two saves of the same aggregate never share a group (the second waits for the next one, where it
  conflicts as it would alone).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

import structlog
from eventsourcing.persistence import IntegrityError

from billing.eventstore import EventStore, save_group
from billing.metrics import SAVE_GROUP_SIZE

__all__ = ["GroupCommitter", "IntegrityError"]

log = structlog.get_logger(__name__)

GroupSave = Callable[[Sequence[Any]], set[UUID]]
"""Saves the pending events of several aggregates in one transaction, leaving out those another writer
moved; returns the ids left out. Raises ``IntegrityError`` when the transaction was rolled back whole."""
SingleSave = Callable[[Any], None]
"""Saves one aggregate in its own transaction; raises ``IntegrityError`` on a version conflict."""


class _Item:
    __slots__ = ("aggregate", "future")

    def __init__(self, aggregate: Any, future: asyncio.Future[None]) -> None:
        self.aggregate = aggregate
        self.future = future


class GroupCommitter:
    """Collects the saves of concurrent callers in one event loop and writes them in groups.

    Args:
        group: writes a group in one transaction (:data:`GroupSave`; called in a thread).
        single: writes one aggregate (:data:`SingleSave`; called in a thread, for a lone save and for the
            one-by-one fallback).
        max_items: the most aggregates in one transaction (≥ 1).
        linger_s: real seconds the flusher waits before taking a group (0: one turn of the event loop,
            which already collects every handler that was ready).

    Raises:
        ValueError: ``max_items`` < 1 or ``linger_s`` < 0.
    """

    def __init__(
        self, group: GroupSave, single: SingleSave, *, max_items: int = 64, linger_s: float = 0.0
    ) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        if linger_s < 0:
            raise ValueError(f"linger_s must be >= 0, got {linger_s}")
        self._group = group
        self._single = single
        self.max_items = max_items
        self.linger_s = linger_s
        self._queued: list[_Item] = []
        self._flusher: asyncio.Task[None] | None = None
        self.groups = 0
        """Transactions written so far (a one-by-one fallback counts each of its transactions)."""
        self.saved = 0
        """Aggregates saved so far."""

    @classmethod
    def for_store(cls, store: EventStore, *, max_items: int = 64, linger_s: float = 0.0) -> GroupCommitter:
        """A committer over ``store``: groups through :func:`billing.eventstore.save_group`, single saves
        through ``store.save``."""
        return cls(
            lambda aggregates: save_group(store, aggregates),
            lambda aggregate: _save_one(store, aggregate),
            max_items=max_items,
            linger_s=linger_s,
        )

    async def save(self, aggregate: Any) -> None:
        """Save ``aggregate``'s pending events; returns once the transaction holding them committed.

        Raises:
            IntegrityError: another writer recorded an event at the same version first (the aggregate's
                pending events are dropped: reload it).
            Exception: the save failed otherwise (it may have committed, as with a lost connection).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queued.append(_Item(aggregate, future))
        if self._flusher is None or self._flusher.done():
            # a context of its own: the flusher serves every handling, so it must not log with the ids
            # that the first one bound to structlog's context
            self._flusher = loop.create_task(self._run(), context=contextvars.Context())
        await future

    @property
    def queued(self) -> int:
        """Saves waiting for the next group."""
        return len(self._queued)

    async def _run(self) -> None:
        batch: list[_Item] = []
        try:
            while self._queued:
                if self.linger_s > 0:
                    await asyncio.sleep(self.linger_s)
                else:
                    await asyncio.sleep(0)
                batch = self._take()
                if batch:
                    await self._flush(batch)
                batch = []
        except BaseException as exc:  # the loop is shutting down: no waiter may hang
            for item in [*batch, *self._queued]:
                if not item.future.done():
                    item.future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
            self._queued.clear()
            raise

    def _take(self) -> list[_Item]:
        """The next group: queued items in order, skipping waiters that gave up, at most ``max_items``,
        one per aggregate id (later saves of an aggregate stay queued)."""
        batch: list[_Item] = []
        ids: set[Any] = set()
        rest: list[_Item] = []
        for item in self._queued:
            if item.future.done():  # the waiter was cancelled before its group: nothing was written
                continue
            aggregate_id = item.aggregate.id
            if len(batch) >= self.max_items or aggregate_id in ids:
                rest.append(item)
                continue
            ids.add(aggregate_id)
            batch.append(item)
        self._queued = rest
        return batch

    async def _flush(self, batch: list[_Item]) -> None:
        aggregates = [item.aggregate for item in batch]
        if len(batch) == 1:
            outcomes = await asyncio.to_thread(self._one_by_one, aggregates)
        else:
            try:
                moved = await asyncio.to_thread(self._group, aggregates)
            except IntegrityError:  # rolled back whole: one transaction per aggregate
                log.warning("save_group_conflict_one_by_one", size=len(batch), exc_info=True)
                outcomes = await asyncio.to_thread(self._one_by_one, aggregates)
            except Exception as exc:  # may or may not have committed: every waiter decides itself
                self.groups += 1
                for item in batch:
                    _resolve(item, exc)
                return
            else:
                self.groups += 1
                SAVE_GROUP_SIZE.observe(len(batch))
                outcomes = [
                    IntegrityError(f"aggregate {a.id} was moved by another writer") if a.id in moved else None
                    for a in aggregates
                ]
        for item, outcome in zip(batch, outcomes, strict=True):
            if outcome is None:
                self.saved += 1
            _resolve(item, outcome)

    def _one_by_one(self, aggregates: Sequence[Any]) -> list[Exception | None]:
        """Each aggregate in its own transaction (in the calling thread); the exception of each, or None."""
        outcomes: list[Exception | None] = []
        for aggregate in aggregates:
            try:
                self._single(aggregate)
            except Exception as exc:
                outcomes.append(exc)
            else:
                outcomes.append(None)
            self.groups += 1
        return outcomes


def _resolve(item: _Item, outcome: Exception | None) -> None:
    if item.future.done():  # the waiter was cancelled meanwhile; the write happened (or not) regardless
        return
    if outcome is None:
        item.future.set_result(None)
    else:
        item.future.set_exception(outcome)


def _save_one(store: EventStore, aggregate: Any) -> None:
    store.save(aggregate)
