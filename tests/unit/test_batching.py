"""The batcher that groups the blocking calls of concurrent handlings: requests that arrive together share
one call in a thread, each waiter gets its own answer or exception, a call that raises fails its whole
group, requests with one key never share a group, and a waiter that gave up is left out."""

from __future__ import annotations

import asyncio
import threading

import pytest

from billing.worker.batching import Batcher


class Recorder:
    """``run`` for a batcher: doubles each number, answers a ValueError for negatives; records each group
    and the thread it ran in; ``gate`` holds the call until set; ``fail`` makes the next call raise."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.threads: list[str] = []
        self.gate: threading.Event | None = None
        self.fail: Exception | None = None
        self.started = threading.Event()

    def __call__(self, requests: list[int]) -> list[int | Exception]:
        self.groups.append(list(requests))
        self.threads.append(threading.current_thread().name)
        self.started.set()
        if self.gate is not None:
            self.gate.wait(5)
        if self.fail is not None:
            exc, self.fail = self.fail, None
            raise exc
        return [ValueError(f"negative: {r}") if r < 0 else 2 * r for r in requests]


async def test_requests_that_arrive_together_share_one_call_in_a_thread() -> None:
    run = Recorder()
    batcher: Batcher[int, int] = Batcher(run)
    assert await asyncio.gather(*(batcher(i) for i in (1, 2, 3))) == [2, 4, 6]
    assert run.groups == [[1, 2, 3]]
    assert run.threads[0] != threading.current_thread().name
    assert (batcher.calls, batcher.requests, batcher.queued) == (1, 3, 0)


async def test_requests_arriving_during_a_call_wait_for_the_next_one() -> None:
    run = Recorder()
    run.gate = threading.Event()
    batcher: Batcher[int, int] = Batcher(run)
    first = asyncio.ensure_future(batcher(1))
    assert await asyncio.to_thread(run.started.wait, 5)  # the first call is running in its thread
    later = [asyncio.ensure_future(batcher(i)) for i in (2, 3)]
    await asyncio.sleep(0.01)
    assert batcher.queued == 2
    run.gate.set()
    assert await asyncio.gather(first, *later) == [2, 4, 6]
    assert run.groups == [[1], [2, 3]]


async def test_an_answer_that_is_an_exception_reaches_its_own_waiter_only() -> None:
    batcher: Batcher[int, int] = Batcher(Recorder())
    results = await asyncio.gather(batcher(1), batcher(-5), batcher(3), return_exceptions=True)
    assert results[0] == 2 and results[2] == 6
    assert isinstance(results[1], ValueError) and str(results[1]) == "negative: -5"


async def test_a_call_that_raises_fails_every_waiter_of_its_group_and_the_next_group_runs() -> None:
    run = Recorder()
    run.fail = ConnectionError("server closed the connection")
    batcher: Batcher[int, int] = Batcher(run)
    results = await asyncio.gather(batcher(1), batcher(2), return_exceptions=True)
    assert [type(r) for r in results] == [ConnectionError, ConnectionError]
    assert await batcher(4) == 8
    assert run.groups == [[1, 2], [4]]


async def test_requests_with_one_key_never_share_a_group_and_max_items_bounds_it() -> None:
    run = Recorder()
    batcher: Batcher[int, int] = Batcher(run, max_items=3, key=lambda r: r % 10)
    answers = await asyncio.gather(*(batcher(r) for r in (1, 11, 2, 3, 4, 5)))
    assert answers == [2, 22, 4, 6, 8, 10]
    assert run.groups == [[1, 2, 3], [11, 4, 5]]  # 11 shares 1's key; 4 is past max_items


async def test_a_waiter_cancelled_before_its_group_is_left_out() -> None:
    run = Recorder()
    batcher: Batcher[int, int] = Batcher(run, linger_s=0.05)
    gone = asyncio.ensure_future(batcher(7))
    kept = asyncio.ensure_future(batcher(8))
    await asyncio.sleep(0)
    gone.cancel()
    assert await kept == 16
    assert run.groups == [[8]]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_items must be >= 1, got 0"):
        Batcher(Recorder(), max_items=0)
    with pytest.raises(ValueError, match="linger_s must be >= 0, got -1"):
        Batcher(Recorder(), linger_s=-1)
