"""The read-model projection: follows the notification log and writes every table of ``sql/001_views.sql``.

Exactly once (promise 6; issue 2 item 4). Each batch is applied in ONE PostgreSQL transaction together
with the tracking record ``tracking.name = 'projections'``: the transaction locks that row
(``SELECT … FOR UPDATE``), re-reads the position, applies only the notifications with a greater id,
moves the position and commits. Two projection processes may run side by side: the second waits for the
lock, then finds the batch already applied and skips it; after a rebuild's swap (which moves the position
forward, to the rebuild's) only the notifications past it are applied. If the position went *back*
meanwhile (reset by hand), the batch is not applied and the follower re-reads from the new position.

Speed: contacts are folded in memory and written with ``executemany``; queue counters are recomputed
with one set-based statement per batch (:mod:`billing.projections.writers`).

What happens to an event the projection cannot apply (decision; issue 2, "Known traps": a projection
that raises stops its runner for good, and it must not silently stall the status endpoints):

1. Transient database errors (``psycopg.OperationalError``/``InterfaceError``: connection lost,
   serialization failure, deadlock, lock or pool timeout) retry the whole batch, :data:`ATTEMPTS` times
   with backoff; after that the error goes to the follower, which backs off and retries forever — a
   database outage pauses the views, it never skips events.
2. An error confined to one event — it cannot be decoded (unknown topic, corrupt state), it refers to a
   row that was never projected, or its write fails with a non-transient database error — is recorded in
   ``projection_errors`` (notification id, topic, error text), logged at error level, and the projection
   moves past it in the same transaction as the other events of the batch. When the batch fails as a
   whole with a non-transient error, it is applied again one notification per savepoint to find the
   culprit(s). Nothing is dropped silently and nothing stalls; fixing the cause and running
   ``billing projections rebuild`` replays every event, the skipped ones included.
3. Events of known types that no view needs are ignored; an unresolvable topic is an error (case 2).

A rebuild (:mod:`billing.projections.rebuild`) replays the log from the start into copies of the views
and swaps them in; every value is taken from the events, never from the clock, so it gives the same rows
(promise 6).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from eventsourcing.persistence import Mapper, Notification
from eventsourcing.utils import resolve_topic

from billing.db import ViewsPool
from billing.projections import history
from billing.projections.follower import DEFAULT_BATCH_SIZE, Backoff, NotificationFollower, read_after
from billing.projections.tracking import load_position, lock_position, record_error, save_position
from billing.projections.writers import CONTACT_CREATE_TOPICS, CONTACT_UPDATE_TOPICS, ViewWriter

if TYPE_CHECKING:
    from billing.eventstore import EventStore

log = logging.getLogger(__name__)

PROJECTION = "projections"
"""The name of this projection's row in ``tracking`` and in ``projection_errors.projection``."""
ATTEMPTS = 3
"""Tries of a batch on transient database errors before the follower's own backoff takes over."""
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (psycopg.OperationalError, psycopg.InterfaceError)
REBUILD_BATCH_SIZE = 50_000
"""Notifications per batch of a rebuild (one transaction each). A batch holds ~3 KB per event at its peak
(read, decoded and folded: ``bench/rebuild.py --posts 6``, 150 MB more for batches of 100,000)."""
VIEW_TABLES = (
    "tenants", "api_keys", "templates", "campaigns", "queue_status", "campaign_contacts", "opt_outs",
    "default_templates", "outcome_counts", "users", "admin_actions", "contact_history",
)  # fmt: skip


@dataclass(frozen=True)
class BatchResult:
    """What :func:`apply_batch` did.

    Attributes:
        applied: notifications handled by this call (written, ignored or recorded as errors).
        errors: of those, how many were recorded in ``projection_errors``.
        position: the tracking position after the call.
    """

    applied: int
    errors: int
    position: int


def apply_batch(
    pool: ViewsPool,
    mapper: Mapper[Any],
    batch: Sequence[Notification],
    after: int,
    upto: int,
    *,
    name: str = PROJECTION,
) -> BatchResult:
    """Apply ``batch`` (the notifications with id in ``(after, upto]``) exactly once; see module docstring.

    Synchronous (one transaction on a ``pool`` connection); run it in a thread from async code.

    Raises:
        psycopg.OperationalError / psycopg.InterfaceError: still failing after :data:`ATTEMPTS` tries.
    """
    backoff = Backoff(0.1, 2.0)
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return _apply_in_transaction(pool, mapper, batch, after, upto, name=name, isolate=False)
        except TRANSIENT_ERRORS as exc:
            if attempt == ATTEMPTS:
                raise
            delay = backoff.next()
            log.warning("%s batch (%d, %d] failed (%r); retry in %.1f s", name, after, upto, exc, delay)
            time.sleep(delay)
        except Exception as exc:
            log.warning("%s batch (%d, %d] failed (%r); isolating the culprit", name, after, upto, exc)
            break
    return _apply_in_transaction(pool, mapper, batch, after, upto, name=name, isolate=True)


@contextlib.contextmanager
def paused_cyclic_gc() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block, back on after it if it was on before.

    Applying a batch allocates a few objects per event (decoded events, rows, tuples) and frees them by
    reference counting: no cycles. The collector still ran on every 700 allocations and walked the young
    objects each time, a third of a rebuild's CPU (``bench/rebuild.py``: 60,000 events, 4.1 s → 2.3–3.0
    s of CPU, read and apply paused). It is process-wide, so it is paused only for one batch (bounded:
    one transaction's events); cycles made meanwhile, if any, are collected once it is back on (Python's
    ``gc`` documentation: "automatic collection can be disabled if you are sure your program does not
    create reference cycles"). Replays pause it across a batch's read as well, and drop the batch before
    the block ends: the collector's first pass after it walks every object allocated meanwhile that is
    still alive (``bench/rebuild.py``, 60,000 events, four alternating runs: 1.75–2.06 s of CPU with the
    read left outside the pause, 1.60–1.73 s with it inside)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _apply_in_transaction(
    pool: ViewsPool,
    mapper: Mapper[Any],
    batch: Sequence[Notification],
    after: int,
    upto: int,
    *,
    name: str,
    isolate: bool,
) -> BatchResult:
    with paused_cyclic_gc(), pool.connection() as conn, conn.transaction():
        position = lock_position(conn, name)
        if position < after:  # rebuilt meanwhile: this batch does not start at the position
            return BatchResult(applied=0, errors=0, position=position)
        todo = [n for n in batch if n.id > position]
        failures: list[tuple[Notification, BaseException]] = []
        if not isolate:
            failures = _apply(conn, mapper, todo)
        else:
            for notification in todo:
                try:
                    with conn.transaction():  # a savepoint
                        failures.extend(_apply(conn, mapper, [notification]))
                except TRANSIENT_ERRORS:
                    raise
                except Exception as exc:
                    failures.append((notification, exc))
        for failed, error in failures:
            record_error(conn, name, failed, error)
        new_position = save_position(conn, name, max(upto, position))
    return BatchResult(applied=len(todo), errors=len(failures), position=new_position)


def _apply(
    conn: psycopg.Connection[Any], mapper: Mapper[Any], notifications: Sequence[Notification]
) -> list[tuple[Notification, BaseException]]:
    """Apply ``notifications`` on ``conn``; returns the ones that failed alone (nothing of them written).

    Raises:
        psycopg.Error: a write failed (the transaction is aborted; the caller isolates the culprit).
    """
    writer = ViewWriter(conn)
    failures: list[tuple[Notification, BaseException]] = []
    decoded: list[tuple[Notification, Any]] = []
    for n in notifications:
        try:
            if writer.handles(n.topic) or history.handles(n.topic):
                decoded.append((n, mapper.to_domain_event(n)))
            else:
                resolve_topic(n.topic)  # a known event that no view needs is skipped, an unknown one is not
        except Exception as exc:
            failures.append((n, exc))
    created = {event.originator_id for n, event in decoded if n.topic in CONTACT_CREATE_TOPICS}
    writer.preload(
        event.originator_id
        for n, event in decoded
        if n.topic in CONTACT_UPDATE_TOPICS and event.originator_id not in created
    )
    applied: list[tuple[int, Any]] = []
    for n, event in decoded:
        try:
            writer.apply(event)
        except psycopg.Error:
            raise
        except Exception as exc:
            failures.append((n, exc))
        else:
            applied.append((n.id, event))
    writer.flush()
    history.write_history(conn, applied, writer.contacts)  # its rows give the tenants of later events
    return failures


Progress = Callable[[int, int, int], None]
"""``progress(handled, position, head)``: notifications handled so far, the position reached and the
log's last notification id (ids have gaps, so ``position``/``head`` is the fraction done)."""


def project_pending(
    store: EventStore,
    pool: ViewsPool,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
) -> int:
    """Apply everything ``store``'s notification log holds now to the views of ``pool``, synchronously, in
    batches of ``batch_size``.

    Returns how many notifications this call handled (0 when another process had applied them all).
    ``progress``, when given, is called after each batch.

    Raises:
        psycopg.Error: the database is unreachable (transient errors were retried first).
    """
    position = load_position(pool, PROJECTION)
    handled = 0
    while (result := apply_next_batch(store, pool, position, batch_size)) is not None:
        handled += result.applied
        position = result.position
        if progress is not None:
            progress(handled, position, max(store.recorder.max_notification_id() or 0, position))
    return handled


def apply_next_batch(
    store: EventStore, pool: ViewsPool, position: int, batch_size: int, *, upto: int | None = None
) -> BatchResult | None:
    """Read the next batch of at most ``batch_size`` notifications after ``position`` (none past ``upto``
    when given) and :func:`apply_batch` it, Python's cyclic collector paused across the read and the
    apply (:func:`paused_cyclic_gc`; one Notification per event: no cycles either). None when the log
    holds nothing new (up to ``upto``).

    Raises:
        psycopg.Error: the database is unreachable (transient errors were retried first).
    """
    with paused_cyclic_gc():
        batch, end = read_after(store.recorder, position, batch_size)
        if upto is not None and end > upto:
            batch, end = [n for n in batch if n.id <= upto], upto
        if end <= position:
            return None
        result = apply_batch(pool, store.mapper, batch, position, end)
        del batch  # freed before the collector is back on: its first pass would walk every notification
        return result


def projection_follower(
    store: EventStore,
    pool: ViewsPool,
    *,
    database_url: str,
    poll_interval_s: float,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> NotificationFollower:
    """The :class:`NotificationFollower` of the projection over ``store``'s notification log, writing
    the views of ``pool``; it LISTENs on ``database_url`` and polls every ``poll_interval_s`` seconds
    (its ``position``/``listening`` serve health)."""

    async def load() -> int:
        return await asyncio.to_thread(load_position, pool, PROJECTION)

    async def handle(batch: Sequence[Notification], after: int, upto: int) -> int:
        result = await asyncio.to_thread(apply_batch, pool, store.mapper, batch, after, upto)
        if result.applied:
            log.debug("projected %d notifications up to %d", result.applied, result.position)
        return result.position

    return NotificationFollower(
        name=PROJECTION,
        recorder=store.recorder,
        database_url=database_url,
        load_position=load,
        handle_batch=handle,
        batch_size=batch_size,
        poll_interval_s=poll_interval_s,
    )
