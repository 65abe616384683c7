"""The notification follower's linger: after a NOTIFY it waits ``linger_s`` (only for ``stop``) before it
reads, so the saves of the next moments come in the same read; a poll timeout reads at once. A scripted
``wait_any`` stands in for the clock, a fake recorder for the log, and no LISTEN connection is opened."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import billing.projections.follower as follower_module
from billing.projections.follower import DEFAULT_LINGER_S, NotificationFollower


class EmptyLog:
    """The recorder calls :func:`~billing.projections.follower.read_after` makes: a log with no events."""

    def __init__(self, steps: list[Any]) -> None:
        self.steps = steps

    def max_notification_id(self) -> int | None:
        self.steps.append("read")
        return None


async def _no_listen() -> None:
    await asyncio.Event().wait()  # the LISTEN task: NOTIFYs are scripted below


async def _run(monkeypatch: pytest.MonkeyPatch, **linger: float) -> list[Any]:
    """Run a follower through: read, wait (a NOTIFY arrives), [linger], read, wait (stop is set)."""
    steps: list[Any] = []
    stop = asyncio.Event()

    async def position() -> int:
        return 0

    async def handle(batch: Any, after: int, upto: int) -> int:
        raise AssertionError("the log is empty")

    follower = NotificationFollower(
        name="test",
        recorder=EmptyLog(steps),  # type: ignore[arg-type]
        database_url="postgresql://unused",
        load_position=position,
        handle_batch=handle,
        poll_interval_s=1.0,
        **linger,
    )
    monkeypatch.setattr(follower, "_listen", _no_listen)
    names = {id(follower._wakeup): "wakeup", id(stop): "stop"}
    waits = 0

    async def wait_any(*events: asyncio.Event, within: float | None) -> None:
        nonlocal waits
        steps.append(("wait", tuple(names[id(e)] for e in events), within))
        if "wakeup" in steps[-1][1]:
            waits += 1
            (follower._wakeup if waits == 1 else stop).set()  # first a NOTIFY, then the end

    monkeypatch.setattr(follower_module, "wait_any", wait_any)
    await asyncio.wait_for(follower.run(stop), timeout=5)
    return steps


async def test_after_a_notify_the_follower_lingers_before_it_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    assert DEFAULT_LINGER_S == 0.05
    assert await _run(monkeypatch) == [
        "read",
        ("wait", ("wakeup", "stop"), 1.0),  # a NOTIFY wakes it...
        ("wait", ("stop",), 0.05),  # ...and it lingers DEFAULT_LINGER_S, for stop only
        "read",
        ("wait", ("wakeup", "stop"), 1.0),  # stop: no linger
    ]


async def test_a_linger_of_zero_reads_at_once_after_a_notify(monkeypatch: pytest.MonkeyPatch) -> None:
    assert await _run(monkeypatch, linger_s=0.0) == [
        "read",
        ("wait", ("wakeup", "stop"), 1.0),
        "read",
        ("wait", ("wakeup", "stop"), 1.0),
    ]


def test_a_projection_batch_pauses_the_cyclic_gc_and_restores_its_state() -> None:
    import gc

    from billing.projections.views import paused_cyclic_gc

    assert gc.isenabled()
    with paused_cyclic_gc():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), paused_cyclic_gc():
        raise RuntimeError("a failed batch")
    assert gc.isenabled()
    gc.disable()
    try:
        with paused_cyclic_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()  # it was off before: left off
    finally:
        gc.enable()
