"""Grouped blocking calls: what the concurrent handlings of one event loop ask for at about the same time
runs as ONE call in a thread (one hand-off, one query or transaction) instead of one each.

The worker's database reads and writes are blocking (psycopg, the ``eventsourcing`` library), so each one
costs a thread hand-off and a round trip. Handlings run concurrently (the consumer's prefetch), and under
load several of them reach the same step together; a :class:`Batcher` gives them one call.

How: :meth:`Batcher.__call__` queues the request and waits on a future. One flusher task takes what is
queued — after one turn of the event loop (``linger_s`` can widen the window), at most ``max_items``,
and never two requests with the same ``key`` — and runs ``run`` on that list in a thread. While it runs,
new requests queue for the next call: the busier the process, the larger the groups; an idle process
runs a lone request at once. Each waiter gets its own item of the answer: a value, or an exception
raised to that waiter only; when ``run`` itself raises, every waiter of the group gets that exception.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

__all__ = ["Batcher"]

Q = TypeVar("Q")
R = TypeVar("R")


class _Item(Generic[Q, R]):
    __slots__ = ("future", "request")

    def __init__(self, request: Q, future: asyncio.Future[R]) -> None:
        self.request = request
        self.future = future


class Batcher(Generic[Q, R]):
    """Runs concurrent requests of one event loop in groups (module docstring).

    Args:
        run: answers a group, **blocking** (called in a thread): one item per request, in order — the
            value, or an ``Exception`` instance to raise to that request's waiter. Raising fails the whole
            group.
        max_items: the most requests in one call (≥ 1).
        linger_s: real seconds the flusher waits before taking a group (0: one turn of the event loop,
            which already collects every handling that was ready).
        key: requests with the same key never share a group (the later one waits for the next call);
            None: any requests may.

    Raises:
        ValueError: ``max_items`` < 1 or ``linger_s`` < 0.
    """

    def __init__(
        self,
        run: Callable[[list[Q]], Sequence[R | Exception]],
        *,
        max_items: int = 64,
        linger_s: float = 0.0,
        key: Callable[[Q], Hashable] | None = None,
    ) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        if linger_s < 0:
            raise ValueError(f"linger_s must be >= 0, got {linger_s}")
        self._run = run
        self.max_items = max_items
        self.linger_s = linger_s
        self._key = key
        self._queued: list[_Item[Q, R]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.calls = 0
        """Calls of ``run`` made so far."""
        self.requests = 0
        """Requests answered so far (values and per-request exceptions)."""

    async def __call__(self, request: Q) -> R:
        """Queue ``request``, wait for its group's call, and return its answer.

        Raises:
            Exception: the one ``run`` gave for this request, or the one ``run`` raised for the group.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queued.append(_Item(request, future))
        if self._flusher is None or self._flusher.done():
            # a context of its own: the flusher serves every handling, so it must not carry (and log with)
            # the ids that the first one bound to structlog's context
            self._flusher = loop.create_task(self._flush_all(), context=contextvars.Context())
        return await future

    @property
    def queued(self) -> int:
        """Requests waiting for the next call."""
        return len(self._queued)

    async def _flush_all(self) -> None:
        batch: list[_Item[Q, R]] = []
        try:
            while self._queued:
                await asyncio.sleep(self.linger_s)
                batch = self._take()
                if batch:
                    await self._flush(batch)
                batch = []
        except BaseException as exc:  # the loop is shutting down: no waiter may hang
            failure = exc if isinstance(exc, Exception) else RuntimeError(f"batcher stopped: {exc!r}")
            for item in [*batch, *self._queued]:
                if not item.future.done():
                    item.future.set_exception(failure)
            self._queued.clear()
            raise

    def _take(self) -> list[_Item[Q, R]]:
        """The next group: queued requests in order, skipping waiters that gave up, at most ``max_items``,
        one per key (later requests of a key stay queued)."""
        batch: list[_Item[Q, R]] = []
        keys: set[Hashable] = set()
        rest: list[_Item[Q, R]] = []
        for item in self._queued:
            if item.future.done():  # the waiter was cancelled before its group: nothing was done
                continue
            if len(batch) >= self.max_items:
                rest.append(item)
                continue
            if self._key is not None:
                key = self._key(item.request)
                if key in keys:
                    rest.append(item)
                    continue
                keys.add(key)
            batch.append(item)
        self._queued = rest
        return batch

    async def _flush(self, batch: list[_Item[Q, R]]) -> None:
        requests = [item.request for item in batch]
        self.calls += 1
        try:
            answers = await asyncio.to_thread(self._run, requests)
        except Exception as exc:
            for item in batch:
                _resolve(item, exc)
            return
        if len(answers) != len(batch):
            mismatch = RuntimeError(f"batch answered {len(answers)} items for {len(batch)} requests")
            for item in batch:
                _resolve(item, mismatch)
            return
        for item, answer in zip(batch, answers, strict=True):
            self.requests += 1
            _resolve(item, answer)


def _resolve(item: _Item[Q, R], answer: R | Exception) -> None:
    if item.future.done():  # the waiter was cancelled meanwhile; the call happened (or not) regardless
        return
    if isinstance(answer, Exception):
        item.future.set_exception(answer)
    else:
        item.future.set_result(answer)
