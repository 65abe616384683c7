"""PostgreSQL drops every connection of the database mid-batch (``pg_terminate_backend``): the API answers
no 5xx, and every contact is still sent exactly once.

Each pool checks a connection before lending it (the views pool with ``ConnectionPool.check_connection``,
the event store's with ``POSTGRES_PRE_PING``), so a dead connection is replaced instead of failing the
request that drew it. The followers (projections, relay) lose their LISTEN connection and reconnect.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime
from typing import Any

import psycopg

from tests.conftest import ADMIN_URL
from tests.e2e.harness import BASE, NO_PAUSE_POLICY, SP, running_system

TOTAL = 200
POLICY: dict[str, Any] = {**NO_PAUSE_POLICY, "messages_per_minute": 100_000, "max_messages_per_day": 100_000}
TUESDAY_10 = datetime(2025, 1, 21, 10, 0, tzinfo=SP)


def terminate_backends(dbname: str) -> int:
    """Terminate every backend connected to ``dbname``; returns how many were."""
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        ).fetchall()
    return len(rows)


async def test_terminating_every_backend_mid_batch_gives_no_5xx_and_loses_nothing(
    database_url: str, amqp_url: str
) -> None:
    dbname = database_url.rsplit("/", 1)[1]
    async with running_system(database_url, amqp_url, start=TUESDAY_10, policy=POLICY) as system:
        contacts = [
            {"nome": f"C{i}", "telefone": f"+551198765{i:04d}", "mensagem": "Aviso."} for i in range(TOTAL)
        ]
        posted = await system.post("notification", "aviso", contacts)
        queue_id = posted["queue_id"]
        codes: Counter[int] = Counter()
        stop = asyncio.Event()

        async def poll() -> None:  # the ERP polling status and contacts all along
            while not stop.is_set():
                for path in (
                    f"/queue/{queue_id}/status",
                    f"/campaign/{posted['campaign_id']}/contacts?limit=5",
                ):
                    response = await system.client.get(f"{BASE}{path}", headers=system.headers)
                    codes[response.status_code] += 1
                await asyncio.sleep(0.02)

        await system.wait_status(queue_id, lambda s: s["contacts"]["total"] == TOTAL, "the queue projected")
        poller = asyncio.create_task(poll())
        await system.wait_for(lambda: len(system.simulator.sent) >= 5, "the first sends")
        # When every connection of the database is dropped, twice, while the batch is being sent
        terminated = await asyncio.to_thread(terminate_backends, dbname)
        await asyncio.sleep(0.3)
        terminated += await asyncio.to_thread(terminate_backends, dbname)
        assert len(system.simulator.sent) < TOTAL, "the batch was over before the connections dropped"

        # Then the batch completes, each contact sent once, and no request answered 5xx
        done = await system.wait_status(queue_id, lambda s: s["status"] == "completed", "completed")
        stop.set()
        await poller
        assert terminated > 0
        assert done["contacts"]["sent"] == TOTAL
        numbers = Counter(m.number for m in system.simulator.sent)
        assert len(numbers) == TOTAL
        assert max(numbers.values()) == 1
        assert sorted(codes) == [200], codes
