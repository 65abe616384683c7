"""The worker process body: consume the job queues and run the scheduler beside it (``billing worker``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import structlog

from billing.bootstrap import Container, build_handler, build_scheduler
from billing.worker.handler import JobHandler
from billing.worker.scheduler import Scheduler

__all__ = ["run_worker"]

log = structlog.get_logger(__name__)


async def run_worker(
    container: Container,
    stop: asyncio.Event,
    *,
    queues: Sequence[str] | None = None,
    handler: JobHandler | None = None,
    scheduler: Scheduler | None = None,
    scheduler_interval_s: float = 2.0,
) -> None:
    """Consume ``queues`` (default: every job queue of the broker's topology, i.e. every shard of the
    three kinds) with a :class:`~billing.worker.handler.JobHandler`, up to ``settings.worker_prefetch``
    unsettled deliveries per queue — so up to ``shards × 3 × worker_prefetch`` per process (8 × 3 × 2 = 48
    by default) — and tick a :class:`~billing.worker.scheduler.Scheduler` every ``scheduler_interval_s``
    wall-clock seconds, until ``stop`` is set. Declares the broker topology first (idempotent).

    On ``stop`` the consumer is cancelled (in-flight handlers get the broker's drain grace, unsettled
    deliveries return to their queues) and the scheduler finishes its tick.

    Raises:
        ValueError: the container has no broker.
        Exception: the consumer stopped by itself (e.g. the in-memory broker was closed, a queue is
            missing); the scheduler is stopped first.
    """
    broker = container.broker
    if broker is None:
        raise ValueError("the worker needs a broker")
    await broker.declare_topology()
    names = list(queues) if queues is not None else list(broker.topology.job_queues)
    handler = handler or build_handler(container)
    scheduler = scheduler or build_scheduler(container)
    prefetch = container.settings.worker_prefetch
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
        left = await handler.drain(container.settings.dispatch_lease_s)
        log.info("worker_stopped", unfinished=left)
    error = results[0]
    if (
        not stop.is_set()
        and isinstance(error, BaseException)
        and not isinstance(error, asyncio.CancelledError)
    ):
        raise error
