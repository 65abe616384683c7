"""Cancellation end to end against the real PostgreSQL and RabbitMQ (issue 4 §6): a whole queue
(``POST /queue/{id}/cancel``) or every unsent reminder of one invoice (``POST /contacts/cancel``).

Every process body (api, projections, relay, worker with its scheduler) runs as a task of this test's event
loop, wired as in production, with the in-process Evolution API simulator and a :class:`FakeClock` the
tests move by hand. The worker can be stopped and started, so a job can sit in the broker while its contact
is cancelled; its handler records what it did with every job.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import httpx
import pytest
from litestar import Litestar

from billing.api.app import create_app
from billing.api.deps import Services
from billing.bootstrap import Container, build_container
from billing.domain.policy import default_policy_spec
from billing.gateway.simulator import EvolutionSimulator
from billing.outbox.jobs import SendJob
from billing.outbox.rabbitmq import RabbitBroker
from billing.outbox.relay import run_relay
from billing.projections.views import project_pending, run_projections
from billing.services.clock import FakeClock
from billing.services.tenants import TenantService
from billing.settings import Settings
from billing.worker.handler import JobHandler
from billing.worker.outcomes import Handled, Result
from billing.worker.runner import run_worker
from tests.integration.test_broker_contract import delete_topology, queue_depth

pytestmark = pytest.mark.e2e

BASE = "/api/billing/v1/billing"
SP = ZoneInfo("America/Sao_Paulo")
GATEWAY = {"base_url": "http://sim", "instance": "loja", "api_key": "gw-key", "api_version": "v2"}
#: Monday to Friday 08:00-18:00 only (no Saturday window), no pause between messages.
WEEKDAYS_POLICY: dict[str, Any] = {
    **default_policy_spec(),
    "windows": {"mon-fri": [["08:00", "18:00"]]},
    "pause_min_s": 0,
    "pause_max_s": 0,
}
FRIDAY_18_05 = datetime(2025, 1, 24, 18, 5, tzinfo=SP)
MONDAY_08_00 = datetime(2025, 1, 27, 8, 0, tzinfo=SP)
TUESDAY_10_00 = datetime(2025, 1, 21, 10, 0, tzinfo=SP)
WAIT = 30.0  # seconds any expected state may take to appear


class RecordingHandler(JobHandler):
    """The production handler, recording ``(contact_id, job reason, outcome)`` of every job it handled."""

    def __init__(self, container: Container) -> None:
        super().__init__(container)
        self.handled: list[tuple[UUID, str, Handled]] = []

    async def handle(self, job: SendJob) -> Result:
        result = await super().handle(job)
        self.handled.append((job.contact_id, job.reason, result.outcome))
        return result

    def outcomes(self, contact_ids: set[UUID]) -> list[Handled]:
        return [outcome for cid, _, outcome in self.handled if cid in contact_ids]


class System:
    """The running system: API client, clock, simulator, and the worker to stop and start."""

    def __init__(self, container: Container, clock: FakeClock, simulator: EvolutionSimulator) -> None:
        self.container = container
        self.clock = clock
        self.simulator = simulator
        self.tenants = TenantService(container.store, container.clock)
        self.client: httpx.AsyncClient  # set by running_system()
        self.app: Litestar  # set by running_system()
        self.headers: dict[str, str] = {}
        self.handler = RecordingHandler(container)
        self._worker: tuple[asyncio.Event, asyncio.Task[None]] | None = None
        self._projections: tuple[asyncio.Event, asyncio.Task[None]] | None = None

    def app_services(self) -> Services:
        """The API's services (to tune them in a test)."""
        services: Services = self.app.state.services
        return services

    def add_tenant(self, name: str, policy: dict[str, Any]) -> dict[str, str]:
        """A tenant on the simulator's instance; returns the headers of its API key."""
        tenant_id = self.tenants.create_tenant(name=name, gateway=GATEWAY, policy=policy)
        return {"X-Billing-API-Key": self.tenants.issue_api_key(tenant_id, "erp")}

    def start_worker(self) -> None:
        assert self._worker is None
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_worker(self.container, stop, handler=self.handler, scheduler_interval_s=0.1)
        )
        self._worker = (stop, task)

    async def stop_worker(self) -> None:
        assert self._worker is not None
        stop, task = self._worker
        self._worker = None
        stop.set()
        await asyncio.wait_for(task, 30)

    def start_projections(self) -> None:
        assert self._projections is None
        stop = asyncio.Event()
        self._projections = (stop, asyncio.create_task(run_projections(self.container, stop)))

    async def stop_projections(self) -> None:
        assert self._projections is not None
        stop, task = self._projections
        self._projections = None
        stop.set()
        await asyncio.wait_for(task, 30)

    async def stop_all(self) -> None:
        if self._worker is not None:
            await self.stop_worker()
        if self._projections is not None:
            await self.stop_projections()

    async def post(
        self,
        kind: str,
        external_id: str,
        contacts: list[dict[str, Any]],
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        response = await self.client.post(
            f"{BASE}/send/{kind}",
            json={"external_id": external_id, "contacts": contacts},
            headers=headers or self.headers,
        )
        assert response.status_code == 202, response.text
        body: dict[str, Any] = response.json()
        return body

    async def status(self, queue_id: str, headers: dict[str, str] | None = None) -> httpx.Response:
        response: httpx.Response = await self.client.get(
            f"{BASE}/queue/{queue_id}/status", headers=headers or self.headers
        )
        return response

    async def wait_status(
        self, queue_id: str, check: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        """Poll the status endpoint until ``check(document)`` holds."""
        body: dict[str, Any] = {}
        async with asyncio.timeout(WAIT):
            while True:
                response = await self.status(queue_id)
                if response.status_code == 200:
                    body = response.json()
                    if check(body):
                        return body
                await asyncio.sleep(0.1)
        raise AssertionError(f"queue never reached {what}; last status: {body}")  # pragma: no cover

    async def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        """Wait until ``condition()`` holds (checked every 50 ms)."""
        try:
            async with asyncio.timeout(WAIT):
                while True:
                    if condition():
                        return
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None

    async def contacts(self, campaign_id: str) -> list[dict[str, Any]]:
        response = await self.client.get(f"{BASE}/campaign/{campaign_id}/contacts", headers=self.headers)
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def depth(self, kind: str) -> int:
        broker = self.container.broker
        assert broker is not None
        return sum([await queue_depth(broker, q) for q in broker.topology.shard_queues(kind)])

    def sent_numbers(self) -> list[str]:
        return sorted(m.number for m in self.simulator.sent)


@asynccontextmanager
async def running_system(
    database_url: str, amqp_url: str, *, start: datetime, policy: dict[str, Any], worker: bool = True
) -> AsyncIterator[System]:
    """Projections, relay (and the worker unless ``worker=False``) running, one tenant with ``policy``."""
    prefix = f"e2e-{uuid.uuid4().hex[:8]}"
    settings = Settings.from_env(
        {}, database_url=database_url, jwt_secret="e" * 32, broker_prefix=prefix, poll_interval_s=0.5
    )
    broker = await RabbitBroker.connect(amqp_url, prefix=prefix)
    clock = FakeClock(start)
    container: Container = build_container(settings, broker=broker, clock=clock)
    simulator = EvolutionSimulator(time_scale=0.0)
    simulator.add_instance("loja", api_key="gw-key", api_version="v2")
    container.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=simulator.asgi_app))
    system = System(container, clock, simulator)
    system.headers = system.add_tenant("Loja", policy)
    project_pending(container)
    await broker.declare_topology()
    stop = asyncio.Event()
    relay = asyncio.create_task(run_relay(container, stop))
    system.start_projections()
    if worker:
        system.start_worker()
    try:
        # The app runs in this event loop (litestar's AsyncTestClient would block it during each request,
        # freezing the projections, relay and worker tasks while the API waits for them).
        system.app = create_app(container)
        transport = httpx.ASGITransport(app=system.app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            system.client = client
            yield system
    finally:
        stop.set()
        await system.stop_all()
        await asyncio.wait_for(relay, 30)
        await container.aclose()
        await delete_topology(amqp_url, broker.topology)


def contact(n: int, due: str = "2025-01-15") -> dict[str, Any]:
    """A valid contact whose phone is ``+55119876543<n:02d>``."""
    return {
        "nome": f"Cliente {n}",
        "telefone": f"+55119876543{n:02d}",
        "valor": "R$ 150,00",
        "data_vencimento": due,
    }


def number(n: int) -> str:
    """The gateway number of :func:`contact` ``n``."""
    return f"55119876543{n:02d}"


def counters(**given: int) -> dict[str, int]:
    """The status document's ``contacts``: the given counters, 0 for the rest."""
    names = ("total", "pending", "sent", "failed", "skipped", "rejected", "cancelled")
    return {name: given.get(name, 0) for name in names}


def contact_ids(campaign_id: str, count: int) -> set[UUID]:
    """The ids of a campaign's first ``count`` contacts (ingestion derives them from campaign and index)."""
    return {uuid.uuid5(UUID(campaign_id), str(i)) for i in range(count)}


# --- (a) cancelling a queue paused outside business hours -------------------------------------------------


async def test_cancel_queue_paused_outside_business_hours_is_never_sent_after_the_opening(
    database_url: str, amqp_url: str
) -> None:
    async with running_system(database_url, amqp_url, start=FRIDAY_18_05, policy=WEEKDAYS_POLICY) as system:
        bad = {"nome": "Sem Telefone", "telefone": "abc", "valor": "R$ 1,00", "data_vencimento": "2025-01-15"}
        doomed = await system.post("overdue", "fatura-1", [contact(1), contact(2), bad, contact(3)])
        control = await system.post("overdue", "fatura-2", [contact(4)])
        assert doomed["contacts"] == {"total": 4, "accepted": 3, "rejected": 1}
        doomed_ids = contact_ids(doomed["campaign_id"], 4)

        # Friday 18:05, after the window closed: every job is taken, deferred to Monday 08:00, acknowledged.
        for queue in (doomed, control):
            paused = await system.wait_status(
                queue["queue_id"], lambda s: s["status"] == "paused", "paused outside business hours"
            )
            assert (paused["paused_reason"], paused["resume_at"]) == (
                "outside_business_hours",
                "2025-01-27T11:00:00+00:00",
            )
        await system.wait_for(lambda: len(system.handler.outcomes(doomed_ids)) == 3, "the 3 jobs handled")
        assert set(system.handler.outcomes(doomed_ids)) <= {
            Handled.OUTSIDE_BUSINESS_HOURS,
            Handled.QUEUE_PAUSED,
        }

        response = await system.client.post(
            f"{BASE}/queue/{doomed['queue_id']}/cancel", headers=system.headers
        )
        assert response.status_code == 200
        assert response.json() == {"queue_id": doomed["queue_id"], "cancelled": 3}

        status = await system.wait_status(
            doomed["queue_id"],
            lambda s: s["status"] == "cancelled" and s["contacts"]["pending"] == 0,
            "cancelled",
        )
        assert status["contacts"] == counters(total=4, rejected=1, cancelled=3)
        assert status["progress"] == 100.0
        assert status["cancelled_at"] == "2025-01-24T21:05:00+00:00"
        assert status["completed_at"] is None
        assert (status["paused_reason"], status["resume_at"]) == (None, None)  # it will never resume
        items = await system.contacts(doomed["campaign_id"])
        assert [(i["index"], i["status"]) for i in items] == [
            (0, "cancelled"),
            (1, "cancelled"),
            (2, "rejected"),
            (3, "cancelled"),
        ]

        # A second cancel finds nothing left to cancel.
        again = await system.client.post(f"{BASE}/queue/{doomed['queue_id']}/cancel", headers=system.headers)
        assert again.json() == {"queue_id": doomed["queue_id"], "cancelled": 0}

        # Monday 08:00: the scheduler resumes the control queue, which is sent; the cancelled one is silent.
        handled_before = len(system.handler.handled)
        system.clock.set(MONDAY_08_00)
        done = await system.wait_status(
            control["queue_id"], lambda s: s["status"] == "completed", "completed"
        )
        assert done["contacts"] == counters(total=1, sent=1)
        await asyncio.sleep(1.0)  # ten more scheduler ticks at Monday 08:00
        assert system.sent_numbers() == [number(4)]
        assert system.handler.outcomes(doomed_ids)[3:] == []  # no job of a cancelled contact came back
        assert len(system.handler.handled) > handled_before
        final = (await system.status(doomed["queue_id"])).json()
        assert final["status"] == "cancelled"
        assert final["contacts"] == counters(total=4, rejected=1, cancelled=3)


# --- (b) a job already in the broker when its contact is cancelled ------------------------------------------


async def test_job_in_the_broker_for_a_cancelled_contact_is_never_sent(
    database_url: str, amqp_url: str
) -> None:
    async with running_system(
        database_url, amqp_url, start=TUESDAY_10_00, policy=WEEKDAYS_POLICY, worker=False
    ) as system:
        by_queue = await system.post("overdue", "fatura-1", [contact(1), contact(2)])
        by_invoice = await system.post("overdue", "fatura-2", [contact(3)])
        control = await system.post("overdue", "fatura-3", [contact(4)])
        for queue in (by_queue, by_invoice, control):
            await system.wait_status(queue["queue_id"], lambda s: s["status"] == "queued", "queued")
        # The relay published the four jobs; no worker is consuming.
        depth = 0
        async with asyncio.timeout(WAIT):
            while depth < 4:
                depth = await system.depth("overdue")
                await asyncio.sleep(0.05)
        assert depth == 4

        cancel_queue = await system.client.post(
            f"{BASE}/queue/{by_queue['queue_id']}/cancel", headers=system.headers
        )
        assert cancel_queue.json() == {"queue_id": by_queue["queue_id"], "cancelled": 2}
        cancel_invoice = await system.client.post(
            f"{BASE}/contacts/cancel", json={"external_id": "fatura-2"}, headers=system.headers
        )
        assert cancel_invoice.json() == {"external_id": "fatura-2", "cancelled": 1}
        assert await system.depth("overdue") == 4  # still waiting in the broker

        system.start_worker()
        done = await system.wait_status(
            control["queue_id"], lambda s: s["status"] == "completed", "completed"
        )
        assert done["contacts"] == counters(total=1, sent=1)
        cancelled = contact_ids(by_queue["campaign_id"], 2) | contact_ids(by_invoice["campaign_id"], 1)
        await system.wait_for(lambda: len(system.handler.outcomes(cancelled)) == 3, "the 3 old jobs handled")
        await asyncio.sleep(0.5)  # five scheduler ticks
        assert system.handler.outcomes(cancelled) == [Handled.ALREADY_FINAL] * 3
        assert system.sent_numbers() == [number(4)]
        assert await system.depth("overdue") == 0

        first = (await system.status(by_queue["queue_id"])).json()
        assert (first["status"], first["contacts"]) == ("cancelled", counters(total=2, cancelled=2))
        second = (await system.status(by_invoice["queue_id"])).json()
        assert (second["status"], second["contacts"]) == ("completed", counters(total=1, cancelled=1))
        assert second["completed_at"] == "2025-01-21T13:00:00+00:00"


# --- (c) cancelling an invoice across queues ---------------------------------------------------------------


async def test_cancel_by_external_id_cancels_the_invoice_across_queues_only(
    database_url: str, amqp_url: str
) -> None:
    async with running_system(database_url, amqp_url, start=TUESDAY_10_00, policy=WEEKDAYS_POLICY) as system:
        sent = await system.post("overdue", "fatura-9", [contact(1), contact(2)])
        await system.wait_status(sent["queue_id"], lambda s: s["status"] == "completed", "completed")
        await system.stop_worker()

        overdue = await system.post("overdue", "fatura-9", [contact(3), contact(4)])
        upcoming = await system.post("upcoming", "fatura-9", [contact(5, due="2025-01-25")])
        other = await system.post("overdue", "fatura-10", [contact(6)])
        for queue in (overdue, upcoming, other):
            await system.wait_status(queue["queue_id"], lambda s: s["status"] == "queued", "queued")

        # Another tenant: the queue is not found, and its own invoice of the same name has no contacts.
        stranger = system.add_tenant("Outra", WEEKDAYS_POLICY)
        foreign = await system.client.post(f"{BASE}/queue/{other['queue_id']}/cancel", headers=stranger)
        assert foreign.status_code == 404
        assert foreign.json() == {
            "code": "queue_not_found",
            "message": "queue not found",
            "field": "queue_id",
        }
        nothing = await system.client.post(
            f"{BASE}/contacts/cancel", json={"external_id": "fatura-10"}, headers=stranger
        )
        assert nothing.json() == {"external_id": "fatura-10", "cancelled": 0}

        for bad in ("", "   "):
            refused = await system.client.post(
                f"{BASE}/contacts/cancel", json={"external_id": bad}, headers=system.headers
            )
            assert refused.status_code == 422
            assert refused.json() == {
                "code": "invalid_request",
                "message": "external_id is required",
                "field": "external_id",
            }
        for body, message in (
            ({}, "invalid request: Object missing required field `external_id`"),
            ({"external_id": None}, "invalid request: Expected `str`, got `null` - at `$.external_id`"),
            ({"external_id": 9}, "invalid request: Expected `str`, got `int` - at `$.external_id`"),
        ):
            refused = await system.client.post(f"{BASE}/contacts/cancel", json=body, headers=system.headers)
            assert refused.status_code == 422
            assert refused.json() == {"code": "invalid_request", "message": message, "field": "external_id"}
        not_json = await system.client.post(
            f"{BASE}/contacts/cancel", content=b"{nope", headers=system.headers
        )
        assert not_json.status_code == 400
        assert not_json.json()["code"] == "invalid_json"

        response = await system.client.post(
            f"{BASE}/contacts/cancel", json={"external_id": "fatura-9"}, headers=system.headers
        )
        assert response.status_code == 200
        assert response.json() == {"external_id": "fatura-9", "cancelled": 3}
        again = await system.client.post(
            f"{BASE}/contacts/cancel", json={"external_id": "fatura-9"}, headers=system.headers
        )
        assert again.json() == {"external_id": "fatura-9", "cancelled": 0}

        system.start_worker()
        done = await system.wait_status(other["queue_id"], lambda s: s["status"] == "completed", "completed")
        assert done["contacts"] == counters(total=1, sent=1)
        cancelled = contact_ids(overdue["campaign_id"], 2) | contact_ids(upcoming["campaign_id"], 1)
        await system.wait_for(lambda: len(system.handler.outcomes(cancelled)) == 3, "the 3 old jobs handled")
        await asyncio.sleep(0.5)
        assert system.handler.outcomes(cancelled) == [Handled.ALREADY_FINAL] * 3
        assert system.sent_numbers() == [number(1), number(2), number(6)]

        expected = {
            sent["queue_id"]: ("completed", counters(total=2, sent=2)),
            overdue["queue_id"]: ("completed", counters(total=2, cancelled=2)),
            upcoming["queue_id"]: ("completed", counters(total=1, cancelled=1)),
            other["queue_id"]: ("completed", counters(total=1, sent=1)),
        }
        for queue_id, want in expected.items():
            body = (await system.status(queue_id)).json()
            assert (body["status"], body["contacts"]) == want
        assert [i["status"] for i in await system.contacts(sent["campaign_id"])] == ["sent", "sent"]

        # Cancelling a queue that already completed stops nothing and leaves it completed.
        late = await system.client.post(f"{BASE}/queue/{sent['queue_id']}/cancel", headers=system.headers)
        assert late.json() == {"queue_id": sent["queue_id"], "cancelled": 0}
        assert system.container.store.repository.get(UUID(sent["queue_id"])).cancelled is False
        body = (await system.status(sent["queue_id"])).json()
        assert (body["status"], body["contacts"], body["cancelled_at"]) == (
            "completed",
            counters(total=2, sent=2),
            None,
        )


async def test_cancellation_does_not_depend_on_the_projections_lag(database_url: str, amqp_url: str) -> None:
    """Contacts stored but not projected yet are cancelled too: the answer is never short, and never a
    silent partial cancellation. A queue's contacts are known from the event store; an invoice's contacts
    only through the views, so that call waits for them (or answers 503 when they stay behind)."""
    async with running_system(
        database_url, amqp_url, start=TUESDAY_10_00, policy=WEEKDAYS_POLICY, worker=False
    ) as system:
        await system.stop_projections()
        by_queue = await system.post("overdue", "fatura-76", [contact(1), contact(2)])
        by_invoice = await system.post("overdue", "fatura-77", [contact(3), contact(4)])

        response = await system.client.post(
            f"{BASE}/queue/{by_queue['queue_id']}/cancel", headers=system.headers
        )
        assert response.json() == {"queue_id": by_queue["queue_id"], "cancelled": 2}

        system.app_services().cancel.catch_up_timeout_s = 0.3
        behind = await system.client.post(
            f"{BASE}/contacts/cancel", json={"external_id": "fatura-77"}, headers=system.headers
        )
        assert behind.status_code == 503
        assert behind.headers["Retry-After"] == "1"
        assert behind.json() == {
            "code": "projections_behind",
            "message": "the contact views are still catching up with recent requests; retry shortly",
            "details": {"retry_after_s": 1},
        }

        system.app_services().cancel.catch_up_timeout_s = WAIT
        cancelling = asyncio.create_task(
            system.client.post(
                f"{BASE}/contacts/cancel", json={"external_id": "fatura-77"}, headers=system.headers
            )
        )
        await asyncio.sleep(0.5)
        assert not cancelling.done()  # waiting for the views to show what was stored before it
        system.start_projections()
        response = await asyncio.wait_for(cancelling, WAIT)
        assert response.json() == {"external_id": "fatura-77", "cancelled": 2}

        system.start_worker()
        first = await system.wait_status(
            by_queue["queue_id"], lambda s: s["contacts"]["pending"] == 0, "done"
        )
        assert (first["status"], first["contacts"]) == ("cancelled", counters(total=2, cancelled=2))
        second = await system.wait_status(
            by_invoice["queue_id"], lambda s: s["contacts"]["pending"] == 0, "done"
        )
        assert (second["status"], second["contacts"]) == ("completed", counters(total=2, cancelled=2))
        ids = contact_ids(by_queue["campaign_id"], 2) | contact_ids(by_invoice["campaign_id"], 2)
        await system.wait_for(lambda: len(system.handler.outcomes(ids)) == 4, "the 4 jobs handled")
        assert system.handler.outcomes(ids) == [Handled.ALREADY_FINAL] * 4
        assert system.simulator.sent == []
