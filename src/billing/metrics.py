"""Prometheus metrics (``prometheus-client``), one scrape endpoint per process.

The processes are separate (containers, hosts), so each one is its own scrape target, the library's
ordinary single-process model: the API serves ``GET /metrics`` on its own port (litestar's Prometheus
plugin, which also counts HTTP requests by route template and status); ``worker``, ``relay`` and
``projections`` serve the same registry on ``BILLING_METRICS_PORT`` (:func:`serve`). Prometheus adds
``instance`` to every series and ``sum by (...)`` adds the processes up. The library's multiprocess mode
(one shared ``PROMETHEUS_MULTIPROC_DIR``) is for workers forked on one host and would not see other
containers; it is not used.

Labels are bounded: outcomes and reasons are enums of the code, error codes are the classification
codes of :mod:`billing.domain.delivery` and the renderer (anything else reads ``other``), followers and
queue statuses are fixed names. No phone numbers, no ids.

Hooks are one-liners at the instrumented spots (worker handler, gateway call, relay publish, event-store
save); the state of the database (queues by status, follower lag) is read at scrape time by
:class:`DatabaseCollector`, registered by the ``projections`` process only (one per database), and by
``billing dev``, where the projections share the API's process and its ``/metrics``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class ConnectionSource(Protocol):
    """What the collector reads through: a pool lending a connection with dict rows (the views pool)."""

    def connection(self) -> AbstractContextManager[Any]: ...


__all__ = [
    "DEAD_LETTERED",
    "DEFERRED",
    "GATEWAY_LATENCY",
    "JOBS",
    "RELAY_CONFIRM",
    "RELAY_PUBLISHED",
    "SAVE_GROUP_SIZE",
    "SAVE_LATENCY",
    "SENDS",
    "DatabaseCollector",
    "record_job",
    "serve",
    "timed_publish",
]

T = TypeVar("T")

SENDS = Counter(
    "billing_sends",
    "Send attempts that reached the gateway, by outcome (sent, skipped, retry_scheduled, failed, "
    "gateway_misconfigured, outcome_not_recorded) and classified code (sent, not_on_whatsapp, timed_out...)",
    ["outcome", "code"],
)
JOBS = Counter("billing_jobs_handled", "Job deliveries handled by the worker, by outcome", ["outcome"])
DEFERRED = Counter(
    "billing_jobs_deferred",
    "Jobs deferred instead of sent, by reason (outside_business_hours, throttled, daily_limit_reached, "
    "queue_paused, gateway_disconnected, gateway_misconfigured, lease_too_short)",
    ["reason"],
)
DEAD_LETTERED = Counter(
    "billing_jobs_dead_lettered",
    "Jobs the worker rejected to a dead-letter queue (poison: malformed, unknown contact/queue/tenant)",
    ["reason"],
)
GATEWAY_LATENCY = Histogram(
    "billing_gateway_request_seconds",
    "Duration of one Evolution API sendText call (typing delay included), seconds",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60),
)
RELAY_PUBLISHED = Counter("billing_relay_published", "Jobs the outbox relay published and had confirmed")
RELAY_CONFIRM = Histogram(
    "billing_relay_confirm_seconds",
    "Time from publishing a relay batch to the broker's last publisher confirm, seconds",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SAVE_LATENCY = Histogram(
    "billing_eventstore_save_seconds",
    "Duration of one event-store save (one transaction), seconds",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
SAVE_GROUP_SIZE = Histogram(
    "billing_worker_save_group_size",
    "Aggregates written by one grouped save of the worker (one transaction)",
    buckets=(2, 4, 8, 16, 32, 64, 128),
)

_SENT_OUTCOMES = frozenset(
    {"sent", "skipped", "retry_scheduled", "failed", "gateway_misconfigured", "outcome_not_recorded"}
)
_DEFERRED_OUTCOMES = frozenset(
    {
        "outside_business_hours",
        "throttled",
        "daily_limit_reached",
        "queue_paused",
        "gateway_disconnected",
        "gateway_misconfigured",
        "lease_too_short",
    }
)
_CODE = re.compile(r"^[a-z][a-z_]{0,39}$")


def _code(value: object) -> str:
    return value if isinstance(value, str) and _CODE.match(value) else "other"


def record_job(result: Any) -> None:
    """Count one handled delivery (a :class:`~billing.worker.handler.Result`: ``outcome`` and
    ``fields``): every outcome in ``billing_jobs_handled``; attempts that reached the gateway in
    ``billing_sends`` with their code; deferrals in ``billing_jobs_deferred``; poison in
    ``billing_jobs_dead_lettered``."""
    outcome = str(getattr(result.outcome, "value", result.outcome))
    fields = getattr(result, "fields", {})
    JOBS.labels(outcome).inc()
    if outcome in _SENT_OUTCOMES and "code" in fields:
        SENDS.labels(outcome, _code(fields.get("code"))).inc()
    elif outcome in _DEFERRED_OUTCOMES:
        DEFERRED.labels(outcome).inc()
    elif outcome == "poison":
        DEAD_LETTERED.labels(_code(fields.get("reason"))).inc()


async def timed_publish(publish: Awaitable[T], count: int) -> T:
    """Await a relay ``publish`` (which returns after the last confirm), observing its duration and
    counting ``count`` published jobs when it succeeded."""
    start = time.perf_counter()
    result = await publish
    if count:  # a batch with no job (the log moved on past other events) publishes nothing
        RELAY_CONFIRM.observe(time.perf_counter() - start)
        RELAY_PUBLISHED.inc(count)
    return result


_QUEUE_STATUS = """
SELECT CASE WHEN cancelled_at IS NOT NULL THEN 'cancelled'
            WHEN completed_at IS NOT NULL THEN 'completed'
            WHEN paused_reason IS NOT NULL THEN 'paused'
            WHEN started_at IS NOT NULL THEN 'running'
            ELSE 'queued' END AS status,
       count(*) AS n,
       coalesce(sum(pending), 0) AS open
FROM queue_status GROUP BY 1
"""
QUEUE_STATUSES = ("queued", "running", "paused", "completed", "cancelled")
OPEN_QUEUE_STATUSES = ("queued", "running", "paused")
FOLLOWERS = ("projections", "relay")


class DatabaseCollector(Collector):
    """Reads, at scrape time, the sending queues by status (``billing_queues``), each follower's
    position and lag behind the notification log (``billing_follower_position``,
    ``billing_follower_lag_events``), its recorded errors (``billing_follower_errors``) and the contacts
    still to be sent (pending or in flight) of the queues that are not over, by the queue's status
    (``billing_contacts_open``). A failed read yields nothing (the scrape still answers)."""

    def __init__(self, head: Callable[[], int | None], pool: ConnectionSource) -> None:
        """``head``: the notification log's last id (the event store recorder's ``max_notification_id``);
        ``pool``: the views pool."""
        self.head = head
        self.pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            facts = self._read()
        except Exception:  # the database is down: report no database metrics rather than fail the scrape
            return
        queues = GaugeMetricFamily("billing_queues", "Sending queues by status", labels=["status"])
        open_contacts = GaugeMetricFamily(
            "billing_contacts_open",
            "Contacts still to be sent (pending or in flight) in queues not completed or cancelled",
            labels=["queue_status"],
        )
        for status in QUEUE_STATUSES:
            queues.add_metric([status], facts["queues"].get(status, 0))
            if status in OPEN_QUEUE_STATUSES:
                open_contacts.add_metric([status], facts["open"].get(status, 0))
        yield queues
        yield open_contacts
        position = GaugeMetricFamily(
            "billing_follower_position", "Last notification id handled, per follower", labels=["follower"]
        )
        lag = GaugeMetricFamily(
            "billing_follower_lag_events",
            "Notifications stored but not yet handled, per follower (head - position)",
            labels=["follower"],
        )
        errors = GaugeMetricFamily(
            "billing_follower_errors", "Notifications a follower recorded as errors", labels=["follower"]
        )
        for name in FOLLOWERS:
            at = facts["positions"].get(name, 0)
            position.add_metric([name], at)
            lag.add_metric([name], max(0, facts["head"] - at))
            errors.add_metric([name], facts["errors"].get(name, 0))
        yield position
        yield lag
        yield errors

    def _read(self) -> dict[str, Any]:
        head = self.head() or 0
        with self.pool.connection() as conn:
            rows = conn.execute(_QUEUE_STATUS).fetchall()
            queues = {r["status"]: int(r["n"]) for r in rows}
            open_contacts = {r["status"]: int(r["open"]) for r in rows}
            positions = {
                r["name"]: int(r["position"])
                for r in conn.execute("SELECT name, position FROM tracking").fetchall()
            }
            errors = {
                r["projection"]: int(r["n"])
                for r in conn.execute(
                    "SELECT projection, count(*) AS n FROM projection_errors GROUP BY projection"
                ).fetchall()
            }
        return {
            "head": head,
            "queues": queues,
            "open": open_contacts,
            "positions": positions,
            "errors": errors,
        }


_collector: DatabaseCollector | None = None


def register_database_collector(head: Callable[[], int | None], pool: ConnectionSource) -> None:
    """Register one :class:`DatabaseCollector` over ``head`` and ``pool`` in this process's registry
    (once; later calls do nothing): by the ``projections`` process, and by ``billing dev``, whose API
    serves it on ``/metrics`` since the projections run in the same process."""
    global _collector
    if _collector is None:
        _collector = DatabaseCollector(head, pool)
        REGISTRY.register(_collector)


def serve(
    command: str,
    *,
    port: int,
    host: str,
    head: Callable[[], int | None],
    pool: ConnectionSource,
) -> Sequence[Any]:
    """Expose this process's metrics on ``host``:``port`` (0 = off) with the library's HTTP server (a
    daemon thread), and register a :class:`DatabaseCollector` over ``head`` and ``pool`` in the
    ``projections`` process only (so database state is counted once). Returns what
    :func:`prometheus_client.start_http_server` started (empty when off). The API process serves
    ``/metrics`` itself and needs no port.

    Raises:
        OSError: the port is taken.
    """
    if command == "projections":
        register_database_collector(head, pool)
    if not port:
        return ()
    return start_http_server(port, addr=host)
