"""The whole system wired for end-to-end tests, against the real PostgreSQL and RabbitMQ.

Every process body (api, projections, relay, worker with its scheduler) runs as a task of the test's event
loop, wired as in production, with the in-process Evolution API simulator, a unique exchange/queue prefix
and a :class:`FakeClock` the tests may move by hand. The worker (and the projections) can be stopped and
started, so a job can sit in the broker while a test acts; the worker's handler records what it did with
every job.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID
from zoneinfo import ZoneInfo

import httpx
from litestar import Litestar

from billing.api.auth import mint_token
from billing.api.deps import Services
from billing.api.hooks import GATEWAY_SECRET_HEADER
from billing.bootstrap import (
    Container,
    build_container,
    build_handler,
    run_hooks_process,
    run_projections_process,
    run_relay_process,
    run_worker_process,
)
from billing.domain.policy import default_policy_spec
from billing.domain.sending import Handled
from billing.gateway.simulator import EvolutionSimulator
from billing.outbox.jobs import SendJob
from billing.outbox.rabbitmq import RabbitBroker
from billing.projections.views import project_pending
from billing.services.clock import FakeClock
from billing.services.tenants import TenantService
from billing.settings import Settings
from billing.webapp import create_app
from billing.worker.handler import JobHandler, Result
from tests.integration.test_broker_contract import delete_topology, queue_depth

BASE = "/api/billing/v1/billing"
SP = ZoneInfo("America/Sao_Paulo")
GATEWAY = {"base_url": "http://sim", "instance": "loja", "api_key": "gw-key", "api_version": "v2"}
#: The tenant's default calendar with no pause between messages.
NO_PAUSE_POLICY: dict[str, Any] = {**default_policy_spec(), "pause_min_s": 0, "pause_max_s": 0}
WAIT = 30.0  # seconds any expected state may take to appear
T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T | None]], what: str, timeout_s: float = WAIT, interval_s: float = 0.1
) -> T:
    """Poll ``probe`` until it returns something other than None."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        result = await probe()
        if result is not None:
            return result
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out waiting for {what}")


async def poll_status(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    queue_id: str,
    check: Callable[[dict[str, Any]], bool],
    what: str,
    timeout_s: float = WAIT,
) -> dict[str, Any]:
    """Poll the queue's status endpoint until ``check(document)`` holds; returns that document."""
    last: dict[str, Any] = {}

    async def probe() -> dict[str, Any] | None:
        nonlocal last
        response = await client.get(f"{BASE}/queue/{queue_id}/status", headers=headers)
        if response.status_code == 200:
            last = response.json()
            if check(last):
                return last
        return None

    try:
        return await eventually(probe, what, timeout_s)
    except AssertionError:
        raise AssertionError(f"queue never reached {what}; last status: {last}") from None


class RecordingHandler(JobHandler):
    """The production handler, recording ``(contact_id, job reason, outcome)`` of every job it handled."""

    def __init__(self, container: Container) -> None:
        # caches off: the tests change policies and templates and expect the next message to use them
        built = build_handler(container, cache_ttl_s=0)
        super().__init__(**_parts(built))
        self.handled: list[tuple[UUID, str, Handled]] = []

    async def handle(self, job: SendJob) -> Result:
        result = await super().handle(job)
        self.handled.append((job.contact_id, job.reason, result.outcome))
        return result

    def outcomes(self, contact_ids: set[UUID]) -> list[Handled]:
        return [outcome for cid, _, outcome in self.handled if cid in contact_ids]


def _parts(handler: JobHandler) -> dict[str, Any]:
    """The constructor arguments of a built handler (to subclass it with the same parts)."""
    return {
        "store": handler.store,
        "tenants": handler.tenants,
        "ledger": handler.ledger,
        "renderer": handler.renderer,
        "health": handler.health,
        "gateways": handler.gateways,
        "clock": handler.clock,
        "lease_s": handler.lease.total_seconds(),
        "gateway_timeout_s": handler.gateway_timeout_s,
        "recipient": handler.recipient,
        "rng": handler.rng,
        "block_ttl_s": handler.block_ttl_s,
    }


class System:
    """The running system: API client, clock, simulator, and the worker to stop and start."""

    def __init__(
        self, container: Container, clock: FakeClock, simulator: EvolutionSimulator, jwt_secret: str
    ) -> None:
        self.container = container
        self.clock = clock
        self.simulator = simulator
        self.jwt_secret = jwt_secret
        self.tenants = TenantService(container.store, container.clock)
        self.client: httpx.AsyncClient  # set by running_system()
        self.app: Litestar  # set by running_system()
        self.tenant_id: UUID  # set by running_system()
        self.headers: dict[str, str] = {}
        self.handler = RecordingHandler(container)
        self._worker: tuple[asyncio.Event, asyncio.Task[None]] | None = None
        self._projections: tuple[asyncio.Event, asyncio.Task[None]] | None = None

    def app_services(self) -> Services:
        """The API's services (to tune them in a test)."""
        services: Services = self.app.state.services
        return services

    def create_tenant(self, name: str, policy: dict[str, Any]) -> tuple[UUID, dict[str, str]]:
        """A tenant on the simulator's instance: its id and the headers of its API key."""
        tenant_id = self.tenants.create_tenant(name=name, gateway=GATEWAY, policy=policy)
        return tenant_id, {"X-Billing-API-Key": self.tenants.issue_api_key(tenant_id, "erp")}

    def add_tenant(self, name: str, policy: dict[str, Any]) -> dict[str, str]:
        """A tenant on the simulator's instance; returns the headers of its API key."""
        return self.create_tenant(name, policy)[1]

    def admin_headers(self) -> dict[str, str]:
        """The headers of an admin token of the system's tenant."""
        return {"Authorization": f"Bearer {mint_token(self.jwt_secret, self.tenant_id)}"}

    def start_worker(self) -> None:
        assert self._worker is None
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_worker_process(self.container, stop, handler=self.handler, scheduler_interval_s=0.1)
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
        self._projections = (stop, asyncio.create_task(run_projections_process(self.container, stop)))

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
        **body: Any,
    ) -> dict[str, Any]:
        response = await self.client.post(
            f"{BASE}/send/{kind}",
            json={"external_id": external_id, "contacts": contacts, **body},
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
        return await poll_status(self.client, self.headers, queue_id, check, what)

    async def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        """Wait until ``condition()`` holds (checked every 50 ms)."""

        async def probe() -> bool | None:
            return True if condition() else None

        await eventually(probe, what, interval_s=0.05)

    async def contacts(self, campaign_id: str) -> list[dict[str, Any]]:
        response = await self.client.get(f"{BASE}/campaign/{campaign_id}/contacts", headers=self.headers)
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def depth(self, kind: str) -> int:
        broker = self.container.broker
        assert broker is not None
        return sum([await queue_depth(broker, q) for q in broker.topology.kind_queues(kind)])

    def sent_numbers(self) -> list[str]:
        return sorted(m.digits for m in self.simulator.sent)


@asynccontextmanager
async def running_system(
    database_url: str,
    amqp_url: str,
    *,
    start: datetime,
    policy: dict[str, Any],
    worker: bool = True,
    prefix: str = "e2e",
    jwt_secret: str = "e" * 32,
    hooks: bool = False,
) -> AsyncIterator[System]:
    """Projections, relay (and the worker unless ``worker=False``) running, one tenant with ``policy``.

    With ``hooks``, ``billing hooks`` runs too and the simulator's webhook calls the API back (with the
    tenant's secret header), so receipts, replies and ERP webhooks flow; ERP endpoints on 127.0.0.1 are
    allowed."""
    prefix = f"{prefix}-{uuid.uuid4().hex[:8]}"
    settings = Settings.from_env(
        {},
        database_url=database_url,
        jwt_secret=jwt_secret,
        broker_prefix=prefix,
        poll_interval_s=0.5,
        webhooks_allow_private=hooks,
    )
    broker = await RabbitBroker.connect(amqp_url, prefix=prefix)
    clock = FakeClock(start)
    container: Container = build_container(settings, broker=broker, clock=clock)
    simulator = EvolutionSimulator(time_scale=0.0)
    simulator.add_instance("loja", api_key="gw-key", api_version="v2")
    container.gateway_transport = httpx.ASGITransport(app=simulator.asgi_app)
    system = System(container, clock, simulator, jwt_secret)
    system.tenant_id, system.headers = system.create_tenant("Loja", policy)
    project_pending(container.store, container.pool)
    await broker.declare_topology()
    stop = asyncio.Event()
    relay = asyncio.create_task(run_relay_process(container, stop))
    system.start_projections()
    if worker:
        system.start_worker()
    hooks_task: asyncio.Task[None] | None = None
    try:
        # The app runs in this event loop (litestar's AsyncTestClient would block it during each request,
        # freezing the projections, relay and worker tasks while the API waits for them).
        system.app = create_app(container)
        transport = httpx.ASGITransport(app=system.app)  # type: ignore[arg-type]
        if hooks:
            secret = system.app_services().engagement.new_gateway_secret(system.tenant_id)
            simulator.webhook_http = httpx.AsyncClient(transport=transport, base_url="http://api")
            simulator.set_webhook(
                "loja",
                f"http://api{BASE}/gateway/events/{system.tenant_id}",
                headers={GATEWAY_SECRET_HEADER: secret},
            )
            hooks_task = asyncio.create_task(run_hooks_process(container, stop, interval_s=0.2))
        # ASGITransport sends no lifespan events, and litestar's lifespan must end in the task it began
        # in (a fixture's teardown runs in another): open and close the pool the app's startup opens.
        status_pool = system.app_services().status.pool
        await status_pool.open(wait=True, timeout=30)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                system.client = client
                yield system
        finally:
            await status_pool.close()
    finally:
        stop.set()
        await system.stop_all()
        if hooks_task is not None:
            await asyncio.wait_for(hooks_task, 30)
            await simulator.drain_webhooks()
            await simulator.webhook_http.aclose()
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
    names = (
        "total",
        "pending",
        "sent",
        "failed",
        "skipped",
        "rejected",
        "cancelled",
        "delivered",
        "read",
        "replied",
    )
    return {name: given.get(name, 0) for name in names}


def contact_ids(campaign_id: str, count: int) -> set[UUID]:
    """The ids of a campaign's first ``count`` contacts (ingestion derives them from campaign and index)."""
    return {uuid.uuid5(UUID(campaign_id), str(i)) for i in range(count)}
