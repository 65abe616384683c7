"""Group commit of the worker's single-aggregate saves: the saves that the concurrent handlers of one
process ask for at about the same time are written in ONE event-store transaction.

Why: every event-store save takes the events table's EXCLUSIVE lock through its WAL flush
(``docs/scaling.md``), so one database does ~150–190 saves/s whatever the number of writers, and each
message costs the worker two saves (the claim, the outcome). A save of 20 events costs about as much
lock time as a save of one, so the worker asks for fewer, larger saves.

How: :meth:`GroupCommitter.save` queues the aggregate for a :class:`~billing.worker.batching.Batcher`,
which takes what is queued — after yielding to the event loop once, so every handler that is ready to
save joins (``linger_s`` can widen the window), at most ``max_items`` — and writes it in one transaction
in a thread. While that transaction runs, new saves queue up for the next one: the busier
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

from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

import structlog
from eventsourcing.persistence import IntegrityError

from billing.eventstore import EventStore, save_group
from billing.metrics import SAVE_GROUP_SIZE
from billing.worker.batching import Batcher

__all__ = ["GroupCommitter", "IntegrityError"]

log = structlog.get_logger(__name__)

GroupSave = Callable[[Sequence[Any]], set[UUID]]
"""Saves the pending events of several aggregates in one transaction, leaving out those another writer
moved; returns the ids left out. Raises ``IntegrityError`` when the transaction was rolled back whole."""
SingleSave = Callable[[Any], None]
"""Saves one aggregate in its own transaction; raises ``IntegrityError`` on a version conflict."""


class GroupCommitter:
    """Collects the saves of concurrent callers in one event loop and writes them in groups (a
    :class:`~billing.worker.batching.Batcher` keyed by aggregate id).

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
        self._group = group
        self._single = single
        self._batcher: Batcher[Any, None] = Batcher(
            self._write, max_items=max_items, linger_s=linger_s, key=lambda aggregate: aggregate.id
        )
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
        await self._batcher(aggregate)

    @property
    def queued(self) -> int:
        """Saves waiting for the next group."""
        return self._batcher.queued

    def _write(self, aggregates: list[Any]) -> list[Exception | None]:
        """One group, blocking (in the batcher's thread): each aggregate's outcome, None when saved. A
        failure other than a conflict is raised to every waiter (the commit may or may not have happened:
        each caller already handles an uncertain save)."""
        if len(aggregates) == 1:
            return self._one_by_one(aggregates)
        try:
            moved = self._group(aggregates)
        except IntegrityError:  # rolled back whole: one transaction per aggregate
            log.warning("save_group_conflict_one_by_one", size=len(aggregates), exc_info=True)
            return self._one_by_one(aggregates)
        except Exception:
            self.groups += 1
            raise
        self.groups += 1
        SAVE_GROUP_SIZE.observe(len(aggregates))
        self.saved += len(aggregates) - len(moved)
        return [
            IntegrityError(f"aggregate {a.id} was moved by another writer") if a.id in moved else None
            for a in aggregates
        ]

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
                self.saved += 1
            self.groups += 1
        return outcomes


def _save_one(store: EventStore, aggregate: Any) -> None:
    store.save(aggregate)
