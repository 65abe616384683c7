"""The worker process body: consume the job queues and run the scheduler beside it (``billing worker``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import structlog

from billing.outbox.broker import Broker
from billing.worker.handler import JobHandler
from billing.worker.scheduler import Scheduler

__all__ = ["run_worker"]

log = structlog.get_logger(__name__)


async def run_worker(
    broker: Broker,
    stop: asyncio.Event,
    *,
    handler: JobHandler,
    scheduler: Scheduler,
    prefetch: int,
    drain_s: float,
    queues: Sequence[str] | None = None,
    scheduler_interval_s: float = 2.0,
) -> None:
    """Consume ``queues`` (default: every job queue of the broker's topology: every shard and the retry
    queue of the three kinds) with ``handler``, up to ``prefetch`` unsettled deliveries per queue — so up
    to ``(shards + 1) × 3 × prefetch`` per process (27 × 2 = 54 by default) — and tick ``scheduler`` every
    ``scheduler_interval_s`` wall-clock seconds, until ``stop`` is set. Declares the broker topology first
    (idempotent).

    On ``stop`` the consumer is cancelled (in-flight handlers get the broker's drain grace, unsettled
    deliveries return to their queues), the scheduler finishes its tick, and handlings whose delivery was
    given up still get up to ``drain_s`` real seconds to save their outcome.

    Raises:
        Exception: the consumer stopped by itself (e.g. the in-memory broker was closed, a queue is
            missing); the scheduler is stopped first.
    """
    await broker.declare_topology()
    names = list(queues) if queues is not None else list(broker.topology.job_queues)
    log.info("worker_started", queues=names, prefetch=prefetch, max_in_flight=prefetch * len(names))
    ticking = asyncio.Event()
    consuming = asyncio.create_task(broker.consumer().run(names, handler, prefetch=prefetch), name="consumer")
    scheduling = asyncio.create_task(
        scheduler.run(ticking, interval_s=scheduler_interval_s), name="scheduler"
    )
    stopping = asyncio.create_task(stop.wait(), name="stop")
    try:
        await asyncio.wait({consuming, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ticking.set()
        stopping.cancel()
        if not consuming.done():
            consuming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await scheduling
        results = await asyncio.gather(consuming, stopping, return_exceptions=True)
        # handlings whose delivery the consumer gave up on still save their outcome (no double send)
        left = await handler.drain(drain_s)
        log.info("worker_stopped", unfinished=left)
    error = results[0]
    if (
        not stop.is_set()
        and isinstance(error, BaseException)
        and not isinstance(error, asyncio.CancelledError)
    ):
        raise error
