"""The pools' check before a lend: a round trip only for a connection not lent for ``recheck_s``, or with
something waiting on its socket (the server's FATAL before it closes); a closed or broken one is refused
without one. A socket pair stands in for the connection's socket."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import billing.db
from billing.db import READ_RETRY_PAUSES_S, read_retrying, read_retrying_async
from billing.pgcheck import AsyncConnectionCheck, ConnectionCheck


class FakePgConn:
    def __init__(self, fd: int) -> None:
        self.socket = fd


class FakeConnection:
    """What the check reads of a psycopg connection; the server's end of its socket is ``server``."""

    def __init__(self, sock: socket.socket) -> None:
        self.pgconn = FakePgConn(sock.fileno())
        self.closed = False
        self.broken = False


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    client, server = socket.socketpair()
    yield client, server
    client.close()
    server.close()


def checker(clock: Clock, pings: list[Any], *, dead: bool = False) -> ConnectionCheck:
    def full(conn: Any) -> None:
        pings.append(conn)
        if dead:
            raise psycopg.OperationalError("server closed the connection unexpectedly")

    return ConnectionCheck(recheck_s=5.0, clock=clock, full=full)


def test_a_connection_lent_again_within_recheck_s_is_not_pinged(pair: tuple[socket.socket, ...]) -> None:
    clock, pings = Clock(), list[Any]()
    check = checker(clock, pings)
    conn = FakeConnection(pair[0])
    check(conn)  # first lend: never checked before
    clock.now += 4.9
    check(conn)
    clock.now += 4.9
    check(conn)
    assert (len(pings), check.full_checks, check.quick_checks) == (1, 1, 2)


def test_a_connection_idle_longer_than_recheck_s_is_pinged(pair: tuple[socket.socket, ...]) -> None:
    clock, pings = Clock(), list[Any]()
    check = checker(clock, pings)
    conn = FakeConnection(pair[0])
    check(conn)
    clock.now += 5.1
    check(conn)
    assert (check.full_checks, check.quick_checks) == (2, 0)


def test_something_waiting_on_the_socket_gets_the_full_check_which_refuses_a_dead_one(
    pair: tuple[socket.socket, ...],
) -> None:
    clock, pings = Clock(), list[Any]()
    conn = FakeConnection(pair[0])
    checker(clock, pings)(conn)
    pair[1].sendall(b"E")  # the backend's FATAL (pg_terminate_backend), then it closes
    pair[1].close()
    clock.now += 0.1
    with pytest.raises(psycopg.OperationalError):
        checker(clock, pings, dead=True)(conn)
    assert len(pings) == 2


def test_a_closed_or_broken_connection_is_refused_without_a_round_trip(
    pair: tuple[socket.socket, ...],
) -> None:
    clock, pings = Clock(), list[Any]()
    check = checker(clock, pings)
    closed, broken = FakeConnection(pair[0]), FakeConnection(pair[0])
    closed.closed = True
    broken.broken = True
    for conn in (closed, broken):
        with pytest.raises(psycopg.OperationalError, match="closed"):
            check(conn)
    assert pings == []


def test_a_socket_that_cannot_be_polled_gets_the_full_check() -> None:
    clock, pings = Clock(), list[Any]()
    check = checker(clock, pings)
    with socket.socket() as unused:
        conn = FakeConnection(unused)
    conn.pgconn.socket = -1
    check(conn)
    clock.now += 1
    check(conn)
    assert check.full_checks == 2


async def test_the_async_check_pings_only_when_the_sync_one_would(pair: tuple[socket.socket, ...]) -> None:
    clock, pings = Clock(), list[Any]()

    async def full(conn: Any) -> None:
        pings.append(conn)

    check = AsyncConnectionCheck(recheck_s=5.0, clock=clock, full=full)
    conn = FakeConnection(pair[0])
    await check(conn)  # first lend: the full check
    clock.now += 4.9
    await check(conn)  # in steady use: none
    clock.now += 5.1
    await check(conn)  # idle too long: the full check
    assert (len(pings), check.full_checks, check.quick_checks) == (2, 2, 1)
    conn.closed = True
    with pytest.raises(psycopg.OperationalError, match="closed"):
        await check(conn)
    assert len(pings) == 2


async def test_an_async_read_is_repeated_after_each_failure_then_the_last_error_raised() -> None:
    calls: list[int] = []

    @read_retrying_async
    async def read(fail_times: int) -> str:
        calls.append(fail_times)
        if len(calls) <= fail_times:
            raise psycopg.OperationalError(f"terminated #{len(calls)}")
        return "row"

    assert await read(3) == "row"  # three failures, three repeats
    assert len(calls) == 4
    calls.clear()
    with pytest.raises(psycopg.OperationalError, match="#4"):
        await read(4)
    assert len(calls) == 1 + len(READ_RETRY_PAUSES_S)


def test_a_read_is_repeated_three_times_with_the_pauses_then_the_last_error_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(billing.db.time, "sleep", pauses.append)
    calls: list[int] = []

    @read_retrying
    def read(fail_times: int) -> str:
        calls.append(fail_times)
        if len(calls) <= fail_times:
            raise psycopg.OperationalError(f"terminated #{len(calls)}")
        return "row"

    assert READ_RETRY_PAUSES_S == (0.0, 0.05, 0.2)
    assert read(0) == "row"
    assert (len(calls), pauses) == (1, [])
    calls.clear()
    assert read(3) == "row"  # three failures, three repeats, each after its pause
    assert (len(calls), pauses) == (4, [0.0, 0.05, 0.2])
    calls.clear()
    pauses.clear()
    with pytest.raises(psycopg.OperationalError, match="#4"):
        read(4)
    assert (len(calls), pauses) == (4, [0.0, 0.05, 0.2])
