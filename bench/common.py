"""Helpers the benchmarks share: a scratch database (bare, or migrated with a container over it), the API
served over real HTTP, contact rows, a raw ``COPY`` baseline, and the PostgreSQL server's CPU."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import uvicorn

from billing.bootstrap import Container, build_container
from billing.db import migrate
from billing.services.clock import Clock
from billing.settings import Settings

ADMIN_URL = "postgresql://root@127.0.0.1:5432/postgres"
GATEWAY = {"base_url": "http://127.0.0.1:9", "instance": "bench", "api_key": "k", "api_version": "v2"}
BASE = "/api/billing/v1/billing"


@contextlib.contextmanager
def scratch_database(prefix: str = "billing_bench") -> Iterator[str]:
    """A fresh database (its URL), dropped at the end."""
    dbname = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + "/" + dbname
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


@contextlib.contextmanager
def scratch_container(
    prefix: str = "billing_bench", *, clock: Clock | None = None, **settings: Any
) -> Iterator[tuple[str, Container]]:
    """A fresh, migrated database and a container over it (``settings`` as ``Settings`` fields, beside its
    URL; ``clock`` as :func:`billing.bootstrap.build_container` takes it): yields ``(url, container)``;
    the container's store and pool are closed, and the database dropped, at the end."""
    with scratch_database(prefix) as url:
        migrate(url)
        container = build_container(Settings.from_env({}, database_url=url, **settings), clock=clock)
        try:
            yield url, container
        finally:
            container.pool.close()
            container.store.close()


def _stat(pid: int | str) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (Linux): ``[0]`` state, ``[1]`` parent
    pid, ``[11]``/``[12]`` user/system clock ticks, ``[13]``/``[14]`` those of its waited-for children.

    Raises:
        OSError: no such process (it ended).
    """
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (``/proc``, Linux); None once it has ended."""
    try:
        fields = _stat(pid)
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_s() -> float | None:
    """CPU seconds the local PostgreSQL server's processes have used so far: each running one's own (user +
    system) plus what the postmaster's exited children used (its ``cutime`` + ``cstime``), so backends that
    ended between two readings still count (``/proc/<pid>/stat``, Linux; None elsewhere or with no
    PostgreSQL process). The whole server: other databases' work counts too, so read it on a quiet
    machine."""
    if not os.path.isdir("/proc"):
        return None
    total, found, tick = 0.0, False, os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() != "postgres":
                continue
            fields = _stat(pid)
            parent = Path(f"/proc/{fields[1]}/comm").read_text().strip()
        except (OSError, IndexError):
            continue  # ended meanwhile: its time is in the postmaster's children's time
        found = True
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        if parent != "postgres":  # the postmaster: its reaped backends' time
            total += (int(fields[13]) + int(fields[14])) / tick  # cutime, cstime
    return total if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(app: Any, port: int | None = None) -> Iterator[int]:
    """Serve an ASGI app with uvicorn in a thread on 127.0.0.1; yields the port."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def contacts(n: int, seed: int) -> list[dict[str, object]]:
    """``n`` valid overdue contacts (distinct phones)."""
    return [
        {
            "nome": f"Cliente {seed}-{i} da Silva",
            "telefone": f"+55119{(87000000 + i) % 100000000:08d}",
            "valor": "R$ 1.234,56",
            "valor_total": "R$ 1.234,56",
            "data_vencimento": "2025-01-15",
            "numero_fatura": f"NF-{seed}-{i:06d}",
        }
        for i in range(n)
    ]


def copy_baseline(url: str, n: int, row_size: int, topic: str = "billing.Contact.Added") -> float:
    """Seconds a raw psycopg ``COPY`` of ``n`` event-like rows of ``row_size`` bytes takes (one transaction)
    into a temporary table shaped like the events table: the physical limit of one save of ``n`` events."""
    payload = b"x" * row_size
    with psycopg.connect(url) as conn:
        conn.execute(
            "CREATE TEMP TABLE scratch (id bigserial PRIMARY KEY, originator_id uuid, "
            "originator_version int, topic text, state bytea)"
        )
        started = time.perf_counter()
        with (
            conn.cursor() as cur,
            cur.copy("COPY scratch (originator_id, originator_version, topic, state) FROM STDIN") as copy,
        ):
            for _ in range(n):
                copy.write_row((uuid.uuid4(), 1, topic, payload))
        conn.commit()
        return time.perf_counter() - started


def average_state_size(url: str, topic: str) -> int:
    """The average ``state`` size (bytes) of the stored events of ``topic`` (400 when there are none)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT avg(length(state))::int FROM billing_events WHERE topic = %s", (topic,)
        ).fetchone()
    return int(row[0]) if row and row[0] else 400
