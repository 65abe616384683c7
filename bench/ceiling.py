"""Benchmark: the ceiling of one PostgreSQL for this design — event-store saves per second across all
writers, with the ``eventsourcing`` library's table lock (``docs/scaling.md``).

Every save of the library takes an EXCLUSIVE lock on the events table (so notification ids commit in
order) and holds it until its COMMIT, WAL flush included: saves of all writers are serialised, whatever
the number of processes. Measured, for ``--writers`` 1, 2, 4, 8 processes writing as fast as they can
for ``--duration`` seconds each:

- ``library``: ``EventStore.save`` of one contact event per save (what a worker does per step), through
  the real recorder (the whole Python stack in each writer);
- ``sql``: the same statements straight from psycopg (``LOCK TABLE … IN EXCLUSIVE MODE``,
  ``INSERT … RETURNING``, ``NOTIFY``, ``COMMIT``): the database's own limit, with almost no client cost;
  also with 10 events per save (a batched save: outcomes, cancellations);
- baseline ``no lock``: the same INSERT + COMMIT without the table lock (what PostgreSQL does when
  commits can share WAL flushes): the price of the ordering guarantee.

Run: ``.venv/bin/python bench/ceiling.py [--duration 5] [--writers 1,2,4,8]`` (PostgreSQL at 127.0.0.1).
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import scratch_database

STATE = (
    b'{"reason":"rate_limited","not_before":{"_type_":"datetime_iso","_data_":"2025-01-27T11:00:00+00:00"}}'
)


def library_writer(url: str, seconds: float, start: float, out: multiprocessing.Queue) -> None:
    from datetime import UTC, datetime, timedelta

    from billing.eventstore import open_event_store
    from tests.integration.test_cancel_batch import posted

    store = open_event_store(url, pool_size=1, create_table=False)
    campaign, queue, contacts = posted(uuid.uuid4(), accepted=1, rejected=0)
    store.save(campaign, queue, *contacts)
    contact = contacts[0]
    at = datetime(2025, 1, 27, tzinfo=UTC)
    while time.time() < start:
        time.sleep(0.001)
    count, deadline = 0, start + seconds
    while time.time() < deadline:
        contact.defer(reason="rate_limited", not_before=at + timedelta(minutes=count), at=at)
        store.save(contact)
        count += 1
    store.close()
    out.put(count)


def sql_writer(
    url: str, seconds: float, start: float, out: multiprocessing.Queue, lock: bool, events: int = 1
) -> None:
    with psycopg.connect(url, autocommit=False) as conn:
        cur = conn.cursor()
        oid, version = uuid.uuid4(), 0
        while time.time() < start:
            time.sleep(0.001)
        count, deadline = 0, start + seconds
        while time.time() < deadline:
            if lock:
                cur.execute("LOCK TABLE billing_events IN EXCLUSIVE MODE")
            for _ in range(events):
                version += 1
                cur.execute(
                    "INSERT INTO billing_events (originator_id, originator_version, topic, state) "
                    "VALUES (%s, %s, 'billing.Contact.Deferred', %s) RETURNING notification_id",
                    (oid, version, STATE),
                    prepare=True,
                )
            if lock:
                cur.execute("NOTIFY billing_events")
            conn.commit()
            count += 1
    out.put(count)


def run(kind: str, url: str, writers: int, seconds: float, events: int = 1) -> float:
    out: multiprocessing.Queue = multiprocessing.Queue()
    start = time.time() + 1.5 + 0.3 * writers  # every writer connected before the clock starts
    if kind == "library":
        procs = [
            multiprocessing.Process(target=library_writer, args=(url, seconds, start, out))
            for _ in range(writers)
        ]
    else:
        procs = [
            multiprocessing.Process(target=sql_writer, args=(url, seconds, start, out, kind == "sql", events))
            for _ in range(writers)
        ]
    for p in procs:
        p.start()
    total = sum(out.get(timeout=seconds + 60) for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--writers", default="1,2,4,8")
    args = parser.parse_args()
    counts = [int(w) for w in args.writers.split(",")]
    from billing.db import migrate

    with scratch_database() as url:
        migrate(url)
        print(f"event-store saves/s, all writers together ({args.duration:.0f} s each; one event per save)")
        print(f"{'writers':>8} {'library':>10} {'sql+lock':>10} {'no lock':>10}   (baseline: no lock)")
        batched = []
        for writers in counts:
            library = run("library", url, writers, args.duration)
            sql = run("sql", url, writers, args.duration)
            free = run("free", url, writers, args.duration)
            print(
                f"{writers:>8} {library:>10,.0f} {sql:>10,.0f} {free:>10,.0f}   "
                f"library = {library / free:.0%}, sql+lock = {sql / free:.0%} of no lock"
            )
            batched.append((writers, run("sql", url, writers, args.duration, events=10)))
        for writers, saves in batched:
            print(
                f"sql+lock, 10 events per save, {writers} writers: {saves:,.0f} saves/s "
                f"= {saves * 10:,.0f} events/s"
            )


if __name__ == "__main__":
    main()
