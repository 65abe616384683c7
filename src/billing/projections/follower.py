"""A reusable async follower of the event store's notification log (projections, outbox relay).

How it wakes up: a dedicated psycopg ``AsyncConnection`` LISTENs on channel ``billing_events`` (the
library NOTIFYs it on every insert) **and** a poll timer fires every ``poll_interval_s``, because a
NOTIFY can be lost (issue 2, "Known traps": the library has no fallback). The listening connection is
re-opened with exponential backoff when it drops, and every (re)connection triggers a read, since
notifications sent while it was down are gone.

How it reads: "greater than the last position", never "last + 1" — notification ids have permanent gaps
after rolled-back saves. :func:`read_after` first takes the log's current maximum id, then reads at most
``batch_size`` notifications in ``(position, maximum]`` (optionally only some ``topics``). The library
inserts under an EXCLUSIVE table lock, so ids commit in order and nothing below the maximum can still
appear; a short batch therefore covers the whole range up to the maximum, and a topic-filtered follower
may advance past events it does not care about (``upto``) instead of re-scanning them on every poll.

Who records the position: the batch handler, durably (tracking table), and returns it. The follower
keeps it in memory only as the next read's start; after any error it backs off and re-loads it from the
durable store, so a batch that failed half-way is read again. The follower itself never stops on an
error (issue 2: "a projection that raises stops its runner for good: supervise it"): it logs, backs off
and retries until ``stop`` is set or its task is cancelled.

The ``eventsourcing`` library is synchronous: its calls run in worker threads (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress

import psycopg
from eventsourcing.persistence import ApplicationRecorder, Notification
from psycopg import sql

from billing.eventstore import NOTIFY_CHANNEL

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 500
KEEPALIVE_S = 10.0  # seconds without a NOTIFY after which the listening connection is probed
DEFAULT_LINGER_S = 0.05
"""Seconds a follower waits after a NOTIFY before it reads. Every save NOTIFYs, and each read costs two
queries plus the handler's transaction: under load (a worker commits a group every few milliseconds) the
wait lets the saves of the next 50 ms come in the same read instead of one read each. The cost is at most
50 ms more before a status shows a change or a job is published."""

#: ``handler(batch, after, upto) -> new position``. ``batch`` holds the notifications read with id in
#: ``(after, upto]`` (all of them, or those of the follower's topics), in id order; it may be empty when a
#: topic-filtered read found nothing but the log moved on. The handler applies/publishes them, records
#: the new position durably and returns it. Raising makes the follower back off and re-read.
BatchHandler = Callable[[Sequence[Notification], int, int], Awaitable[int]]
#: Loads the durable position (the id of the last notification handled, 0 before the first).
PositionLoader = Callable[[], Awaitable[int]]


class Backoff:
    """Exponential backoff with jitter: ``initial_s``, doubled per failure, capped at ``max_s`` seconds.

    Each delay is drawn uniformly in [50 %, 100 %] of the nominal value, so processes that failed
    together do not retry in lockstep.
    """

    def __init__(self, initial_s: float = 0.2, max_s: float = 30.0) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self._next = initial_s

    def next(self) -> float:
        """The delay (seconds) before the next attempt; grows until :meth:`reset`."""
        delay = self._next
        self._next = min(self.max_s, self._next * 2)
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        """After a success: the next failure waits ``initial_s`` again."""
        self._next = self.initial_s


def read_after(
    recorder: ApplicationRecorder, position: int, limit: int, topics: Sequence[str] = ()
) -> tuple[list[Notification], int]:
    """Read up to ``limit`` notifications with id > ``position`` (of ``topics`` only, when given).

    Returns ``(batch, upto)``: ``batch`` in id order, and the id up to which the log was covered — the
    last id of a full batch, else the log's maximum id at the time of the read (so a filtered reader
    skips the events it does not want). ``upto == position`` means nothing new. Synchronous (run it in a
    thread from async code).

    Raises:
        psycopg.Error: the database is unreachable (after the library's own retries).
    """
    maximum = recorder.max_notification_id()
    if maximum is None or maximum <= position:
        return [], position
    batch = list(
        recorder.select_notifications(
            position, limit, stop=maximum, topics=tuple(topics), inclusive_of_start=False
        )
    )
    upto = batch[-1].id if len(batch) == limit else maximum
    return batch, upto


async def wait_any(*events: asyncio.Event, within: float | None) -> None:
    """Return when any of ``events`` is set, or after ``within`` seconds (None: no limit)."""
    if any(e.is_set() for e in events):
        return
    tasks = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(tasks, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class NotificationFollower:
    """Follows the notification log and hands batches to a handler (see the module docstring).

    Args:
        name: for logs (e.g. ``"projections"``, ``"relay"``).
        recorder: the event store's application recorder (``store.recorder``).
        database_url: libpq URL of the same database, for the LISTEN connection.
        load_position: loads the durable position (called at start and after every error).
        handle_batch: see :data:`BatchHandler`.
        topics: only these topics (empty: every notification).
        batch_size: notifications per read, at most.
        poll_interval_s: seconds between reads when no NOTIFY arrives (lost NOTIFYs are caught then).
        backoff_initial_s / backoff_max_s: backoff after an error, seconds.
        channel: the NOTIFY channel (the events table's name).
        linger_s: seconds to wait after a NOTIFY before reading (:data:`DEFAULT_LINGER_S`; 0: read at once).

    Attributes:
        position: the last position a handler returned (None before the first load).
        listening: True while the LISTEN connection is up.
        listen_name: the ``application_name`` of the LISTEN connection (``billing-<name>-listen``).
        handled: notifications handed to the handler since start (re-reads after errors included).
    """

    def __init__(
        self,
        *,
        name: str,
        recorder: ApplicationRecorder,
        database_url: str,
        load_position: PositionLoader,
        handle_batch: BatchHandler,
        topics: Sequence[str] = (),
        batch_size: int = DEFAULT_BATCH_SIZE,
        poll_interval_s: float = 1.0,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 30.0,
        channel: str = NOTIFY_CHANNEL,
        linger_s: float = DEFAULT_LINGER_S,
    ) -> None:
        if linger_s < 0:
            raise ValueError(f"linger_s must be >= 0, got {linger_s}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if poll_interval_s <= 0:
            raise ValueError(f"poll_interval_s must be > 0, got {poll_interval_s}")
        self.name = name
        self.recorder = recorder
        self.database_url = database_url
        self.load_position = load_position
        self.handle_batch = handle_batch
        self.topics = tuple(topics)
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.channel = channel
        self.linger_s = linger_s
        self.listen_name = f"billing-{name}-listen"
        self.position: int | None = None
        self.listening = False
        self.handled = 0
        self._wakeup = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Follow until ``stop`` is set (or the task is cancelled). Never returns on an error.

        A handler call already running when ``stop`` is set is awaited to its end (its thread could not
        be interrupted anyway); cancellation interrupts the await, and the handler's transaction then
        commits or rolls back on its own — the durable position stays consistent either way.
        """
        listener = asyncio.create_task(self._listen(), name=f"{self.name}-listen")
        backoff = Backoff(self.backoff_initial_s, self.backoff_max_s)
        try:
            while not stop.is_set():
                self._wakeup.clear()  # cleared before reading: a NOTIFY during the read wakes us again
                try:
                    await self.catch_up(stop)
                except Exception:
                    delay = backoff.next()
                    log.exception("%s follower failed; retrying in %.1f s", self.name, delay)
                    self.position = None  # re-load the durable position: the batch is read again
                    await wait_any(stop, within=delay)
                    continue
                backoff.reset()
                await wait_any(self._wakeup, stop, within=self.poll_interval_s)
                if self._wakeup.is_set() and self.linger_s > 0:  # a NOTIFY: let the next saves join
                    await wait_any(stop, within=self.linger_s)
        finally:
            listener.cancel()
            with suppress(asyncio.CancelledError):
                await listener

    async def catch_up(self, stop: asyncio.Event | None = None) -> int:
        """Read and handle batches until the log has nothing new (or ``stop`` is set).

        Returns the number of notifications handed to the handler.

        Raises:
            Exception: whatever reading or the handler raised (the position then is not advanced).
        """
        if self.position is None:
            self.position = await self.load_position()
        count = 0
        while stop is None or not stop.is_set():
            after = self.position
            batch, upto = await asyncio.to_thread(
                read_after, self.recorder, after, self.batch_size, self.topics
            )
            if upto <= after:
                break
            self.position = await self.handle_batch(batch, after, upto)
            count += len(batch)
            self.handled += len(batch)
            if self.position < after:  # the durable position went back (reset by hand): read from there
                log.info("%s position moved back from %d to %d", self.name, after, self.position)
            elif len(batch) < self.batch_size:
                break  # the read covered the whole log as it was
        return count

    async def _listen(self) -> None:
        """Keep a LISTEN connection up; set the wake-up event on every NOTIFY and every (re)connection."""
        backoff = Backoff(self.backoff_initial_s, self.backoff_max_s)
        listen = sql.SQL("LISTEN {0}").format(sql.Identifier(self.channel))
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.database_url, autocommit=True, connect_timeout=10, application_name=self.listen_name
                )
                async with conn:
                    await conn.execute(listen)
                    self.listening = True
                    backoff.reset()
                    self._wakeup.set()  # NOTIFYs sent while we were not listening are lost
                    while True:
                        async for _ in conn.notifies(timeout=KEEPALIVE_S):
                            self._wakeup.set()
                        async with asyncio.timeout(KEEPALIVE_S):  # a silent network loss surfaces here
                            await conn.execute("SELECT 1")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.listening = False
                delay = backoff.next()
                log.warning("%s LISTEN connection lost (%r); reconnecting in %.1f s", self.name, exc, delay)
                await asyncio.sleep(delay)
            finally:
                self.listening = False
