"""The key check's cache misses of one event-loop turn are read together: one thread hop and one read
for all of them, each waiter gets its own key's answer, a failure reaches every waiter, and a waiter
that goes away does not cancel the read the others wait for."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest

from billing.api.deps import KeyLookups

TENANTS = {f"{n:064x}": uuid.UUID(int=n) for n in range(1, 11)}


class FakeTenants:
    """``authenticate_digests`` over a dict, recording each call's digests (and its thread)."""

    def __init__(self, *, fail: Exception | None = None, gate: threading.Event | None = None) -> None:
        self.calls: list[list[str]] = []
        self.threads: set[int] = set()
        self.fail = fail
        self.gate = gate

    def authenticate_digests(self, digests: list[str]) -> dict[str, uuid.UUID | None]:
        self.calls.append(list(digests))
        self.threads.add(threading.get_ident())
        if self.gate is not None:
            self.gate.wait(5)
        if self.fail is not None:
            raise self.fail
        return {d: TENANTS.get(d) for d in digests}


async def test_the_misses_of_one_turn_are_read_once_each_waiter_getting_its_answer() -> None:
    tenants = FakeTenants()
    lookups = KeyLookups(tenants)  # type: ignore[arg-type]
    digests = [*TENANTS, *TENANTS, "f" * 64]  # every key twice, and an unknown one
    answers = await asyncio.gather(*(lookups.tenant_of(d) for d in digests))
    assert answers == [*TENANTS.values(), *TENANTS.values(), None]
    assert tenants.calls == [[*TENANTS, "f" * 64]]
    assert threading.get_ident() not in tenants.threads  # read in a worker thread

    assert await lookups.tenant_of(f"{1:064x}") == uuid.UUID(int=1)  # a later turn: a read of its own
    assert tenants.calls[1:] == [[f"{1:064x}"]]


async def test_a_failed_read_reaches_every_waiter_and_the_next_miss_reads_again() -> None:
    tenants = FakeTenants(fail=OSError("database unreachable"))
    lookups = KeyLookups(tenants)  # type: ignore[arg-type]
    results = await asyncio.gather(*(lookups.tenant_of(d) for d in list(TENANTS)[:3]), return_exceptions=True)
    assert [type(r) for r in results] == [OSError, OSError, OSError]
    tenants.fail = None
    assert await lookups.tenant_of(f"{2:064x}") == uuid.UUID(int=2)
    assert len(tenants.calls) == 2


async def test_a_waiter_that_goes_away_does_not_cancel_the_others_read() -> None:
    gate = threading.Event()
    tenants = FakeTenants(gate=gate)
    lookups = KeyLookups(tenants)  # type: ignore[arg-type]
    digest = f"{3:064x}"
    leaving = asyncio.create_task(lookups.tenant_of(digest))
    staying = asyncio.create_task(lookups.tenant_of(digest))
    await asyncio.sleep(0.05)  # both wait for the same read
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    gate.set()
    assert await staying == uuid.UUID(int=3)
    assert tenants.calls == [[digest]]


async def test_waiters_of_a_read_cancelled_at_shutdown_are_cancelled_too() -> None:
    gate = threading.Event()
    lookups = KeyLookups(FakeTenants(gate=gate))  # type: ignore[arg-type]
    waiter = asyncio.create_task(lookups.tenant_of(f"{4:064x}"))
    await asyncio.sleep(0.05)
    [read] = lookups._reads
    read.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiter, 2)  # not left waiting forever (TimeoutError)
    gate.set()
