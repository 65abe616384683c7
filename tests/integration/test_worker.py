"""The worker (handler + scheduler + runner) against the real PostgreSQL, the in-memory broker (one case on
the real RabbitMQ), the Evolution API simulator in process, and a fake clock.

The clock is injected and moved by hand: no test sleeps for policy time. Views are brought up to date by
the real projection (``project_pending``), and the scheduler is ticked by the test, so every step is
deterministic. Cases of ``tests/cases/messaging.json`` that concern the worker (Q01, Q02, Q04) carry
their id in the test name.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4, uuid5
from zoneinfo import ZoneInfo

import aio_pika
import httpx
import pytest
from psycopg.rows import dict_row

from billing.bootstrap import Container, build_container, build_handler, build_scheduler
from billing.domain.campaign import Campaign
from billing.domain.contact import Contact
from billing.domain.policy import default_policy_spec
from billing.domain.queue import Queue
from billing.domain.sending import Handled
from billing.domain.template import MessageTemplate
from billing.domain.tenant import Tenant
from billing.domain.types import ContactStatus, TemplateType
from billing.gateway.simulator import EvolutionSimulator
from billing.outbox.broker import Broker, Delivery, OutgoingMessage
from billing.outbox.jobs import SendJob, encode_job
from billing.outbox.memory import InMemoryBroker
from billing.outbox.rabbitmq import RabbitBroker
from billing.projections.views import project_pending
from billing.services.clock import FakeClock
from billing.settings import Settings
from billing.worker.handler import JobHandler, Result
from billing.worker.runner import run_worker
from billing.worker.scheduler import TickReport
from tests.e2e.harness import _parts as parts
from tests.integration.test_broker_contract import delete_topology

JID = "@s.whatsapp.net"

TZ = ZoneInfo("America/Sao_Paulo")
WEDNESDAY_10 = datetime(2025, 3, 12, 10, 0, tzinfo=TZ)
THURSDAY_08 = datetime(2025, 3, 13, 8, 0, tzinfo=TZ)
FRIDAY_18_05 = datetime(2025, 3, 14, 18, 5, tzinfo=TZ)
MONDAY_08 = datetime(2025, 3, 17, 8, 0, tzinfo=TZ)
INSTANCE = "loja-1"
KEY = "instance-key-1"
TEMPLATE = "Olá {{nome}}, sua fatura de {{valor}} venceu em {{data_vencimento}}."
WAIT_S = 10.0  # real seconds any expected handling may take


# --- the world: database, simulator, broker, clock, worker processes ------------------------------


class RecordingHandler(JobHandler):
    """The real handler, recording each job's result and how long each delivery took to settle."""

    def __init__(self, container: Container) -> None:
        super().__init__(**parts(build_handler(container, rng=random.Random(7), cache_ttl_s=0)))
        self.results: list[tuple[SendJob, Result]] = []
        self.settle_s: list[float] = []
        self.calls = 0

    async def handle(self, job: SendJob) -> Result:
        """Run the real handler and remember the result."""
        result = await super().handle(job)
        self.results.append((job, result))
        return result

    async def __call__(self, delivery: Delivery) -> None:
        started = time.monotonic()
        try:
            await super().__call__(delivery)
        finally:
            self.settle_s.append(time.monotonic() - started)
            self.calls += 1


class Worker:
    """One worker "process": its own container (event store, pool, HTTP client), handler and scheduler."""

    def __init__(self, container: Container) -> None:
        self.container = container
        self.handler = RecordingHandler(container)
        self.scheduler = build_scheduler(container)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Run the worker (consumer + scheduler loop) in a task."""
        self.task = asyncio.create_task(
            run_worker(
                self.container.broker,
                self.stop,
                handler=self.handler,
                scheduler=self.scheduler,
                prefetch=self.container.settings.worker_prefetch,
                drain_s=self.container.settings.dispatch_lease_s,
                scheduler_interval_s=3600,  # the test ticks by hand
            )
        )
        await asyncio.sleep(0.05)

    async def shutdown(self) -> None:
        """Stop the worker and close its container."""
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, WAIT_S)
        assert self.container.gateway_transport is not None
        await self.container.gateway_transport.aclose()
        self.container.pool.close()
        self.container.store.close()


class World:
    """Everything a test touches. ``expected`` counts the deliveries published so far."""

    def __init__(self, database_url: str, broker: Broker, clock: FakeClock) -> None:
        self.database_url = database_url
        self.broker = broker
        self.clock = clock
        self.sim = EvolutionSimulator(time_scale=0, seed=7)
        self.sim.add_instance(INSTANCE, api_key=KEY)
        self.workers: list[Worker] = []
        self.retired: list[Worker] = []
        self.expected = 0

    def container(self, **settings_overrides: Any) -> Container:
        """A new container on the test database, sharing the broker, the clock and the simulator."""
        values: dict[str, Any] = {"worker_prefetch": 4, "gateway_timeout_s": 5.0, **settings_overrides}
        settings = Settings(database_url=self.database_url, **values)
        container = build_container(settings, broker=self.broker, clock=self.clock)
        container.gateway_transport = httpx.ASGITransport(app=self.sim.asgi_app)
        return container

    async def add_worker(self, **settings_overrides: Any) -> Worker:
        """Start one more worker process."""
        worker = Worker(self.container(**settings_overrides))
        self.workers.append(worker)
        await worker.start()
        return worker

    async def retire(self, worker: Worker) -> None:
        """Stop a worker "process" for good (its history still counts)."""
        self.workers.remove(worker)
        self.retired.append(worker)
        await worker.shutdown()

    @property
    def main(self) -> Worker:
        """The first worker: its container sets up data, projects, and ticks its scheduler."""
        return self.workers[0]

    @property
    def store(self) -> Any:
        """The main worker's event store."""
        return self.main.container.store

    def results(self) -> list[Result]:
        """Every job result so far, of every worker."""
        return [result for w in [*self.retired, *self.workers] for _, result in w.handler.results]

    def outcomes(self) -> list[Handled]:
        """The outcome of every job so far."""
        return [r.outcome for r in self.results()]

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish jobs as the relay would, after the views caught up with the events (as they do long
        before a tenant's first batch: its templates exist)."""
        await self.project()
        await self.broker.publisher().publish(messages)
        self.expected += len(messages)

    async def project(self) -> None:
        """Apply every pending event to the views (the real projection)."""
        await asyncio.to_thread(project_pending, self.main.container.store, self.main.container.pool)

    async def tick(self) -> TickReport:
        """Project, then tick the scheduler, then wait until every job it published was handled."""
        await self.project()
        report = await self.main.scheduler.tick()
        self.expected += report.due + report.stale + report.leases
        await self.idle()
        return report

    async def idle(self) -> None:
        """Wait until every published delivery was settled, then bring the views up to date."""
        deadline = time.monotonic() + WAIT_S
        while sum(w.handler.calls for w in [*self.retired, *self.workers]) < self.expected:
            assert time.monotonic() < deadline, f"{self.expected} deliveries expected, {self.outcomes()}"
            await asyncio.sleep(0.01)
        await self.project()

    async def at(self, instant: datetime) -> TickReport:
        """Move the clock to ``instant`` and tick."""
        self.clock.set(instant)
        return await self.tick()

    def contact(self, contact_id: UUID) -> Contact:
        """The Contact aggregate, freshly loaded."""
        contact = self.store.repository.get(contact_id)
        assert isinstance(contact, Contact)
        return contact

    def queue(self, queue_id: UUID) -> Queue:
        """The Queue aggregate, freshly loaded."""
        queue = self.store.repository.get(queue_id)
        assert isinstance(queue, Queue)
        return queue

    def sends(self) -> list[tuple[str, str, int]]:
        """Every sendText request the simulator answered: ``(method, path, status)``."""
        return [r for r in self.sim.requests if r[1].startswith("/message/sendText/")]

    def ledger_times(self, tenant_id: UUID) -> list[datetime]:
        """The tenant's send-ledger instants (fake clock), oldest first."""
        with self.main.container.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(
                "SELECT sent_at FROM send_ledger WHERE tenant_id = %s ORDER BY sent_at", (tenant_id,)
            ).fetchall()
        return [row["sent_at"] for row in rows]

    def view_row(self, contact_id: UUID) -> dict[str, Any]:
        """The contact's ``campaign_contacts`` row."""
        with self.main.container.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(
                "SELECT * FROM campaign_contacts WHERE contact_id = %s", (contact_id,)
            ).fetchone()
        assert row is not None
        return row


async def open_world(database_url: str, broker: Broker, start: datetime) -> World:
    """A world at ``start`` with one worker running."""
    world = World(database_url, broker, FakeClock(start))
    await world.add_worker()
    return world


@pytest.fixture
async def world(database_url: str) -> AsyncIterator[World]:
    """A world on the in-memory broker, Wednesday 10:00 (inside business hours), one worker."""
    broker = InMemoryBroker(prefix=f"t{uuid.uuid4().hex[:8]}", delivery_limit=2, drain_timeout=1.0)
    built = await open_world(database_url, broker, WEDNESDAY_10)
    try:
        yield built
    finally:
        for worker in built.workers:
            await worker.shutdown()
        await broker.close()


# --- data: tenants, campaigns and jobs, made the way the api makes them -----------------------------


def create_tenant(
    world: World, *, api_key: str = KEY, instance: str = INSTANCE, base_url: str = "http://sim", **policy: Any
) -> UUID:
    """A tenant open Mon–Fri 08:00–18:00 (São Paulo, BR holidays), no pause between messages, one active
    template per type, all saved in one transaction."""
    spec = default_policy_spec()
    spec.update({"windows": {"mon-fri": [["08:00", "18:00"]]}, "pause_min_s": 0, "pause_max_s": 0})
    spec.update(policy)
    now = world.clock.now()
    tenant = Tenant.register(
        tenant_id=uuid4(),
        name="Loja Exemplo",
        gateway={"base_url": base_url, "instance": instance, "api_key": api_key, "api_version": "v2"},
        policy=spec,
        at=now,
    )
    templates = [
        MessageTemplate.create(
            template_id=uuid4(),
            tenant_id=tenant.id,
            name=f"{kind.value} test",
            template_type=kind.value,
            description="",
            variations=[TEMPLATE],
            active=True,
            at=now,
        )
        for kind in TemplateType
    ]
    for template in templates:
        tenant.choose_default_template(
            template_id=template.id,
            template_tenant=tenant.id,
            template_type=template.template_type,
            active=True,
            at=now,
        )
    world.store.save(tenant, *templates)
    return tenant.id


class Batch:
    """A saved campaign: its queue and its contacts' ids and phones."""

    def __init__(
        self, tenant_id: UUID, queue_id: UUID, kind: str, contacts: list[tuple[UUID, str]], routing_key: str
    ) -> None:
        self.tenant_id = tenant_id
        self.queue_id = queue_id
        self.kind = kind
        self.contacts = contacts
        self.routing_key = routing_key

    @property
    def ids(self) -> list[UUID]:
        """The contacts' ids, in request order."""
        return [cid for cid, _ in self.contacts]

    def jobs(self, *, reason: str = "added", only: Sequence[UUID] | None = None) -> list[OutgoingMessage]:
        """The SendJobs the relay would publish for these contacts."""
        messages = []
        for cid in only if only is not None else self.ids:
            job = SendJob(
                contact_id=cid,
                tenant_id=self.tenant_id,
                queue_id=self.queue_id,
                template_type=TemplateType(self.kind),
                reason=reason,
            )
            messages.append(
                OutgoingMessage(
                    routing_key=self.routing_key,
                    body=encode_job(job),
                    message_id=f"{cid}:{uuid4().hex}",
                )
            )
        return messages


def create_batch(
    world: World,
    tenant_id: UUID,
    n: int,
    *,
    kind: str = "overdue",
    first: int = 0,
    queue_id: UUID | None = None,
) -> Batch:
    """A campaign of ``n`` valid contacts (Brazilian mobiles), saved with its queue in one transaction."""
    now = world.clock.now()
    campaign_id, queue_id = uuid4(), queue_id or uuid4()
    contacts: list[Contact] = []
    phones: list[tuple[UUID, str]] = []
    for index in range(n):
        phone = f"+55119876{54000 + first + index:05d}"
        contact = Contact._create(
            Contact.Added,
            id=uuid5(campaign_id, str(index)),
            tenant_id=tenant_id,
            campaign_id=campaign_id,
            queue_id=queue_id,
            index=index,
            template_type=kind,
            external_id="fatura-123",
            fields={
                "nome": f"Cliente {first + index}",
                "telefone": phone,
                "valor": "150,00",
                "data_vencimento": "2025-03-01",
            },
            telefone=phone,
            phone=phone,
            gateway_number=phone[1:],
            amount=Decimal("150.00"),
            amount_total=None,
            due_date=date(2025, 3, 1),
            timestamp=now,
        )
        contacts.append(contact)
        phones.append((contact.id, phone))
    queue = Queue.open(
        queue_id=queue_id, tenant_id=tenant_id, campaign_id=campaign_id, template_type=kind, total=n, at=now
    )
    campaign = Campaign.start(
        campaign_id=campaign_id,
        tenant_id=tenant_id,
        template_type=kind,
        external_id="fatura-123",
        queue_id=queue_id,
        accepted=n,
        rejected=0,
        idempotency_key=None,
        request_hash="0" * 64,
        rejections=[],
        at=now,
    )
    world.store.save(campaign, queue, *contacts)
    return Batch(tenant_id, queue_id, kind, phones, world.broker.topology.queue(kind))


def count(items: Sequence[Handled], outcome: Handled) -> int:
    """How many of ``items`` are ``outcome``."""
    return sum(1 for item in items if item is outcome)


# --- business hours -----------------------------------------------------------------------------------


async def test_Q01_job_after_window_closed_is_deferred_to_monday_acked_at_once_and_sent_once_after_restart(
    database_url: str,
) -> None:
    # Given a reminder taken by a worker on Friday 18:05, after the 08:00–18:00 window closed
    broker = InMemoryBroker(prefix=f"t{uuid.uuid4().hex[:8]}", delivery_limit=2, drain_timeout=1.0)
    world = await open_world(database_url, broker, FRIDAY_18_05)
    try:
        tenant_id = create_tenant(world)
        batch = create_batch(world, tenant_id, 1)
        (contact_id,) = batch.ids

        # When the job arrives
        await world.publish(batch.jobs())
        await world.idle()

        # Then it is acknowledged at once, nothing is sent, and the send is scheduled for Monday 08:00
        assert world.outcomes() == [Handled.OUTSIDE_BUSINESS_HOURS]
        assert max(world.main.handler.settle_s) < 5.0
        assert broker.depth(broker.topology.queue("overdue")) == 0
        assert world.sends() == []
        contact = world.contact(contact_id)
        assert contact.status is ContactStatus.PENDING
        assert contact.not_before == MONDAY_08.astimezone(UTC)
        queue = world.queue(batch.queue_id)
        assert (queue.paused_reason, queue.resume_at) == ("outside_business_hours", MONDAY_08.astimezone(UTC))

        # and nothing happens over the weekend
        assert await world.at(datetime(2025, 3, 16, 23, 59, tzinfo=TZ)) == TickReport()

        # When every process restarts (all state is in PostgreSQL) and the clock reaches Monday 08:00
        await world.retire(world.main)
        await world.add_worker()
        report = await world.at(MONDAY_08)

        # Then the queue resumes by itself and exactly one send happens
        assert (report.resumed, report.due) == (1, 1)
        assert world.queue(batch.queue_id).paused_reason is None
        assert len(world.sim.sent) == 1
        assert world.sim.sent[0].number == batch.contacts[0][1][1:] + JID  # the account the lookup found
        assert world.contact(contact_id).status is ContactStatus.SENT
        assert await world.at(MONDAY_08 + timedelta(minutes=10)) == TickReport()
        assert len(world.sends()) == 1
    finally:
        for worker in world.workers:
            await worker.shutdown()
        await broker.close()


async def test_notification_is_sent_outside_business_hours(database_url: str) -> None:
    broker = InMemoryBroker(prefix=f"t{uuid.uuid4().hex[:8]}", delivery_limit=2, drain_timeout=1.0)
    world = await open_world(database_url, broker, FRIDAY_18_05 + timedelta(hours=5))
    try:
        tenant_id = create_tenant(world)
        batch = create_batch(world, tenant_id, 1, kind="notification")

        await world.publish(batch.jobs())
        await world.idle()

        assert world.outcomes() == [Handled.SENT]
        assert world.queue(batch.queue_id).paused_reason is None
    finally:
        for worker in world.workers:
            await worker.shutdown()
        await broker.close()


# --- poison, duplicates, leases -------------------------------------------------------------------


async def test_Q02_poison_message_is_dead_lettered_and_next_valid_job_sent_once(world: World) -> None:
    # Given a queue holding [m1 (undecodable), m1b (unknown contact), m2 (valid)], one consumer
    tenant_id = create_tenant(world)
    batch = create_batch(world, tenant_id, 1)
    queue_name = world.broker.topology.queue("overdue")
    unknown = SendJob(
        contact_id=uuid4(), tenant_id=tenant_id, queue_id=batch.queue_id, template_type=TemplateType.OVERDUE
    )
    poison = [
        OutgoingMessage(routing_key=queue_name, body=b"\x00not json", message_id="m1"),
        OutgoingMessage(routing_key=queue_name, body=encode_job(unknown), message_id="m1b"),
    ]

    # When they are consumed
    await world.publish([*poison, *batch.jobs()])
    await world.idle()

    # Then both poison messages are dead-lettered after one delivery each, and m2 is sent exactly once
    assert isinstance(world.broker, InMemoryBroker)
    dead = world.broker.dead_letters(queue_name)
    assert sorted(d.message_id for d in dead) == ["m1", "m1b"]
    assert {d.reason for d in dead} == {"rejected"}
    assert world.main.handler.calls == 3
    assert world.outcomes() == [Handled.POISON, Handled.SENT]
    assert len(world.sends()) == 1
    assert world.contact(batch.ids[0]).status is ContactStatus.SENT


async def test_Q04_duplicate_delivery_of_a_sent_contact_sends_only_once(world: World) -> None:
    # Given a job that was sent
    tenant_id = create_tenant(world)
    batch = create_batch(world, tenant_id, 1)
    await world.publish(batch.jobs())
    await world.idle()
    assert world.outcomes() == [Handled.SENT]

    # When the relay publishes it again (it died before recording its position)
    await world.publish(batch.jobs())
    await world.idle()

    # Then the second delivery is acknowledged and does nothing
    assert world.outcomes() == [Handled.SENT, Handled.ALREADY_FINAL]
    assert len(world.sends()) == 1
    row = world.view_row(batch.ids[0])
    assert row["status"] == "sent"
    assert row["message_text"] == world.sim.sent[0].text
    assert row["message_text"].startswith("Olá Cliente 0, sua fatura de R$")
    assert "01/03/2025" in row["message_text"]
    assert row["gateway_message_id"] == world.sim.sent[0].message_id
    assert row["attempts"] == 1


async def test_redelivery_during_an_inflight_lease_does_not_send_again(world: World) -> None:
    # Given a contact claimed by another worker (lease of 120 s in force)
    tenant_id = create_tenant(world)
    batch = create_batch(world, tenant_id, 1)
    contact = world.contact(batch.ids[0])
    contact.dispatch(at=world.clock.now(), lease=timedelta(seconds=120))
    world.store.save(contact)

    # When its job is delivered again
    await world.publish(batch.jobs())
    await world.idle()

    # Then nothing is sent
    assert world.outcomes() == [Handled.IN_FLIGHT]
    assert world.sends() == []

    # When that worker died and the lease expired, the scheduler republishes it and it is sent once
    assert await world.at(world.clock.now() + timedelta(seconds=60)) == TickReport()
    report = await world.at(world.clock.now() + timedelta(seconds=61))
    assert report.leases == 1
    assert world.outcomes() == [Handled.IN_FLIGHT, Handled.SENT]
    assert len(world.sends()) == 1
    assert world.contact(batch.ids[0]).attempts == 2


async def test_pending_contact_whose_job_was_lost_is_republished_after_the_stale_delay(world: World) -> None:
    # Given a contact whose job never arrived (dead-lettered after repeated transient failures, say)
    tenant_id = create_tenant(world)
    batch = create_batch(world, tenant_id, 1)
    assert await world.at(world.clock.now() + timedelta(minutes=9)) == TickReport()

    # When it has waited 10 minutes, the scheduler publishes it again and it is sent
    report = await world.at(world.clock.now() + timedelta(minutes=1, seconds=1))
    assert report.stale == 1
    assert world.outcomes() == [Handled.SENT]
    assert world.contact(batch.ids[0]).status is ContactStatus.SENT


async def test_unexpected_error_requeues_the_delivery_and_the_retry_sends_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the database fails once while the throttle decides
    tenant_id = create_tenant(world)
    batch = create_batch(world, tenant_id, 1)
    ledger = world.main.handler.ledger
    real_locked = ledger.locked_many
    failures = [RuntimeError("connection lost")]

    def flaky_locked(tenant_ids: Any) -> Any:
        if failures:
            raise failures.pop()
        return real_locked(tenant_ids)

    monkeypatch.setattr(ledger, "locked_many", flaky_locked)

    # When the job is handled: the first delivery fails and is requeued, the redelivery succeeds
    await world.publish(batch.jobs())
    world.expected += 1  # the redelivery
    await world.idle()

    # Then exactly one message went out and nothing was dead-lettered
    assert world.main.handler.calls == 2
    assert world.outcomes() == [Handled.SENT]
    assert len(world.sends()) == 1
    assert isinstance(world.broker, InMemoryBroker)
    assert world.broker.dead_letters(batch.routing_key) == []


def fail_saves(world: World, monkeypatch: pytest.MonkeyPatch, failing: set[int]) -> list[int]:
    """Make the main worker's event-store saves number ``failing`` (1-based) raise a transient error;
    returns the list that counts every save call."""
    store = world.main.container.store
    real_save = store.save
    calls: list[int] = []

    def flaky_save(*aggregates: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) in failing:
            raise RuntimeError("connection lost")
        return real_save(*aggregates, **kwargs)

    monkeypatch.setattr(store, "save", flaky_save)
    return calls


async def test_transient_failure_saving_the_claim_gives_the_throttle_grant_back(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the event store fails once when the claim is saved
    tenant_id = create_tenant(world)
    batch = create_batch(world, tenant_id, 1)
    fail_saves(world, monkeypatch, {1})

    # When the job is handled: the first delivery fails and is requeued, the redelivery sends
    await world.publish(batch.jobs())
    world.expected += 1
    await world.idle()

    # Then one message went out and the ledger counts exactly that one send
    assert world.outcomes() == [Handled.SENT]
    assert len(world.sends()) == 1
    assert len(world.ledger_times(tenant_id)) == 1


async def test_transient_failures_saving_the_outcome_are_retried_without_a_second_send(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the event store fails four times in a row right after the gateway accepted the message
    tenant_id = create_tenant(world)
    batch = create_batch(world, tenant_id, 1)
    calls = fail_saves(world, monkeypatch, {2, 3, 4, 5})  # call 1 is the claim; 2..5 the outcome

    await world.publish(batch.jobs())
    await world.idle()

    # Then the outcome is stored by the same delivery (retried within the lease) and sent once
    assert world.outcomes() == [Handled.SENT]
    assert len(world.sends()) == 1
    assert world.contact(batch.ids[0]).status is ContactStatus.SENT
    assert len(calls) == 6


# --- gateway outcomes ---------------------------------------------------------------------------------


async def test_retryable_failure_is_retried_after_backoff_and_then_sent(world: World) -> None:
    # Given the gateway answers 500 "Connection Closed" once
    tenant_id = create_tenant(world)
    batch = create_batch(world, tenant_id, 1)
    world.sim.script_failure("connection_closed_500", times=1)

    # When the job is handled
    await world.publish(batch.jobs())
    await world.idle()

    # Then the failure is recorded with a retry after the backoff (attempt 1: 24..30 s)
    assert world.outcomes() == [Handled.RETRY_SCHEDULED]
    contact = world.contact(batch.ids[0])
    assert (contact.status, contact.error_code, contact.attempts) == (
        ContactStatus.PENDING,
        "connection_closed",
        1,
    )
    assert contact.not_before is not None
    delay = (contact.not_before - world.clock.now()).total_seconds()
    assert 24 <= delay <= 30
    assert await world.at(world.clock.now() + timedelta(seconds=20)) == TickReport()

    # When the backoff is over, the scheduler republishes it and it is sent
    report = await world.at(contact.not_before)
    assert report.due == 1
    assert world.outcomes() == [Handled.RETRY_SCHEDULED, Handled.SENT]
    assert len(world.sim.sent) == 1
    sent = world.contact(batch.ids[0])
    assert (sent.status, sent.attempts) == (ContactStatus.SENT, 2)


async def test_number_not_on_whatsapp_is_skipped(world: World) -> None:
    tenant_id = create_tenant(world)
    batch = create_batch(world, tenant_id, 1)
    world.sim.mark_not_on_whatsapp(batch.contacts[0][1])

    await world.publish(batch.jobs())
    await world.idle()

    assert world.outcomes() == [Handled.SKIPPED]
    contact = world.contact(batch.ids[0])
    assert (contact.status, contact.error_code) == (ContactStatus.SKIPPED, "not_on_whatsapp")
    assert world.view_row(batch.ids[0])["status"] == "skipped"
    assert await world.at(world.clock.now() + timedelta(hours=1)) == TickReport()


async def test_claim_too_short_for_the_gateway_call_is_given_back_without_sending(database_url: str) -> None:
    broker = InMemoryBroker(prefix=f"t{uuid.uuid4().hex[:8]}", delivery_limit=2, drain_timeout=1.0)
    world = World(database_url, broker, FakeClock(WEDNESDAY_10))
    # lease 35 s; the call may take 31 s of typing delay + 5 s of timeout = 36 s: it could outlive the claim
    await world.add_worker(dispatch_lease_s=35.0)
    try:
        tenant_id = create_tenant(world, pause_min_s=31, pause_max_s=31)
        batch = create_batch(world, tenant_id, 1)

        await world.publish(batch.jobs())
        await world.idle()

        assert world.outcomes() == [Handled.LEASE_TOO_SHORT]
        assert world.sends() == []
        contact = world.contact(batch.ids[0])
        assert (contact.status, contact.attempts, contact.not_before) == (
            ContactStatus.PENDING,
            0,
            WEDNESDAY_10.astimezone(UTC),
        )
        assert world.ledger_times(tenant_id) == []
    finally:
        for worker in world.workers:
            await worker.shutdown()
        await broker.close()


async def test_401_on_send_pauses_gateway_misconfigured_until_the_gateway_settings_change(
    world: World,
) -> None:
    # Given a tenant whose first message went out (connectionState "open" is cached)
    tenant_id = create_tenant(world)
    batch = create_batch(world, tenant_id, 3)
    await world.publish(batch.jobs(only=batch.ids[:1]))
    await world.idle()

    # When the instance's key is rotated on the gateway only, and the next two jobs arrive
    world.sim.add_instance(INSTANCE, api_key="rotated-key-2")
    for cid in batch.ids[1:]:
        world.clock.advance(1)
        await world.publish(batch.jobs(only=[cid]))
        await world.idle()

    # Then one sendText got 401, the queue is paused gateway_misconfigured with no resume_at, and the
    # next job is held back without calling the gateway
    assert world.outcomes() == [Handled.SENT, Handled.GATEWAY_MISCONFIGURED, Handled.QUEUE_PAUSED]
    assert [status for _, _, status in world.sends()] == [201, 401]
    queue = world.queue(batch.queue_id)
    assert (queue.paused_reason, queue.resume_at) == ("gateway_misconfigured", None)
    assert {world.contact(cid).status for cid in batch.ids[1:]} == {ContactStatus.PENDING}

    # and it stays so while the settings are unchanged
    assert await world.at(world.clock.now() + timedelta(hours=1)) == TickReport()

    # When the admin fixes the gateway settings, the queue resumes by itself and both are sent
    tenant = world.store.repository.get(tenant_id)
    tenant.configure_gateway({**tenant.gateway, "api_key": "rotated-key-2"}, at=world.clock.now())
    world.store.save(tenant)
    report = await world.at(world.clock.now() + timedelta(seconds=5))
    assert (report.resumed, report.due) == (1, 2)
    assert world.queue(batch.queue_id).paused_reason is None
    assert {world.contact(cid).status for cid in batch.ids} == {ContactStatus.SENT}
    assert len(world.sim.sent) == 3


async def test_unknown_instance_on_connection_state_pauses_gateway_misconfigured(world: World) -> None:
    tenant_id = create_tenant(world, instance="no-such-instance")
    batch = create_batch(world, tenant_id, 1)

    await world.publish(batch.jobs())
    await world.idle()

    assert world.outcomes() == [Handled.GATEWAY_MISCONFIGURED]
    assert world.sends() == []
    queue = world.queue(batch.queue_id)
    assert (queue.paused_reason, queue.resume_at) == ("gateway_misconfigured", None)


async def test_gateway_not_open_pauses_gateway_disconnected_and_resumes_after_backoff(world: World) -> None:
    # Given the instance reports "close"
    tenant_id = create_tenant(world)
    batch = create_batch(world, tenant_id, 2)
    world.sim.set_state(INSTANCE, "close")

    await world.publish(batch.jobs())
    await world.idle()

    # Then the queue pauses for the first backoff (30 s) and nothing is sent
    resume_at = world.clock.now() + timedelta(seconds=30)
    outcomes = world.outcomes()
    assert Handled.GATEWAY_DISCONNECTED in outcomes
    assert set(outcomes) <= {Handled.GATEWAY_DISCONNECTED, Handled.QUEUE_PAUSED}  # handled concurrently
    assert {world.contact(cid).not_before for cid in batch.ids} == {resume_at}
    queue = world.queue(batch.queue_id)
    assert (queue.paused_reason, queue.resume_at) == ("gateway_disconnected", resume_at)
    assert world.sends() == []

    # When the connection is back and the backoff is over, both are sent
    world.sim.set_state(INSTANCE, "open")
    report = await world.at(resume_at)
    assert (report.resumed, report.due) == (1, 2)
    assert {world.contact(cid).status for cid in batch.ids} == {ContactStatus.SENT}


# --- throttle and daily cap ----------------------------------------------------------------------------


async def test_throttle_two_workers_never_exceed_messages_per_minute_in_any_60_s_window(world: World) -> None:
    # Given two worker processes and a tenant allowed 5 messages per minute, with 12 reminders
    await world.add_worker()
    tenant_id = create_tenant(world, messages_per_minute=5)
    batch = create_batch(world, tenant_id, 12)
    start = world.clock.now()

    # When the jobs arrive together and time passes in 10 s steps
    await world.publish(batch.jobs())
    await world.idle()
    assert count(world.outcomes(), Handled.SENT) == 5
    assert count(world.outcomes(), Handled.THROTTLED) == 7
    for _ in range(30):
        if len(world.sim.sent) == 12:
            break
        await world.at(world.clock.now() + timedelta(seconds=10))

    # Then all 12 are sent, each once, both workers took part, and no 60 s window holds more than 5 sends
    assert len(world.sim.sent) == 12
    assert len({m.digits for m in world.sim.sent}) == 12
    assert all(w.handler.results for w in world.workers)
    times = world.ledger_times(tenant_id)
    assert len(times) == 12
    worst = max(sum(1 for u in times if t <= u < t + timedelta(seconds=60)) for t in times)
    assert worst == 5
    assert times[-1] - start == timedelta(seconds=140)  # 60 s + 1 s margin, next 10 s step


async def test_throttled_backlog_is_republished_no_faster_than_the_tenants_budget(world: World) -> None:
    # Given a tenant allowed 5 messages per minute with a backlog of 30 reminders in two queues
    tenant_id = create_tenant(world, messages_per_minute=5)
    first = create_batch(world, tenant_id, 15)
    second = create_batch(world, tenant_id, 15, first=15)

    # When all jobs arrive at once, 5 go out and 25 are deferred once
    await world.publish(first.jobs() + second.jobs())
    await world.idle()
    assert count(world.outcomes(), Handled.SENT) == 5
    assert count(world.outcomes(), Handled.THROTTLED) == 25

    # Then each minute the scheduler republishes only what can go out, shared between the queues
    # (steps of 62 s: the window is 60 s + the 1 s margin, closed at both ends)
    reports = []
    for _ in range(12):
        reports.append(await world.at(world.clock.now() + timedelta(seconds=62)))
        if len(world.sim.sent) == 30:
            break
    assert [r.due for r in reports] == [5, 5, 5, 5, 5]
    assert len(world.sim.sent) == 30
    assert count(world.outcomes(), Handled.THROTTLED) == 25  # nobody was deferred twice
    numbers = [m.digits for m in world.sim.sent[5:15]]
    from_first = {p[1:] for _, p in first.contacts}
    # two ticks of 5 republished sends, round-robin between the queues: 2 or 3 of each per tick
    for tick in (numbers[:5], numbers[5:]):
        assert sum(1 for n in tick if n in from_first) in (2, 3)


async def test_two_workers_with_every_job_twice_send_each_contact_once(world: World) -> None:
    # Given two worker processes and 20 reminders whose jobs are each published twice at once
    await world.add_worker()
    tenant_id = create_tenant(world, messages_per_minute=100)
    batch = create_batch(world, tenant_id, 20)

    # When both copies are handled concurrently
    await world.publish(batch.jobs() + batch.jobs())
    await world.idle()

    # Then WhatsApp receives each contact exactly once (promise 3)
    assert len(world.sim.sent) == 20
    assert len({m.digits for m in world.sim.sent}) == 20
    assert count(world.outcomes(), Handled.SENT) == 20
    assert all(world.contact(cid).status is ContactStatus.SENT for cid in batch.ids)


async def test_one_worker_reading_both_copies_of_a_job_together_sends_the_contact_once(world: World) -> None:
    # Given one worker and 10 reminders whose jobs are each published twice, back to back: both copies
    # of a job reach the grouped read together (one query for the group)
    tenant_id = create_tenant(world, messages_per_minute=100)
    batch = create_batch(world, tenant_id, 10)
    jobs = batch.jobs()

    # When they are handled concurrently by the same process
    await world.publish(
        [copy for job in jobs for copy in (job, replace(job, message_id=job.message_id + "'"))]
    )
    await world.idle()

    # Then each copy got a contact object of its own: the second claim conflicts, each is sent once
    assert len(world.sim.sent) == 10
    assert len({m.digits for m in world.sim.sent}) == 10
    assert count(world.outcomes(), Handled.SENT) == 10
    assert all(world.contact(cid).attempts == 1 for cid in batch.ids)


def test_read_each_gives_every_list_aggregate_objects_of_its_own_from_one_query(world: World) -> None:
    from billing.worker.persistence import read_each

    tenant_id = create_tenant(world)
    batch = create_batch(world, tenant_id, 2)
    first, second = read_each(world.store, [[batch.ids[0], batch.queue_id], [batch.ids[0], batch.ids[1]]])
    assert sorted(first) == sorted([batch.ids[0], batch.queue_id])
    assert sorted(second) == sorted([batch.ids[0], batch.ids[1]])
    one, other = first[batch.ids[0]], second[batch.ids[0]]
    assert one is not other  # a command on one is not seen by the other
    assert (one.version, one.status) == (other.version, other.status) == (1, ContactStatus.PENDING)


async def test_daily_cap_pauses_the_queue_with_daily_limit_reached_until_next_days_opening(
    world: World,
) -> None:
    # Given a tenant allowed 2 messages per day and 3 reminders
    tenant_id = create_tenant(world, max_messages_per_day=2)
    batch = create_batch(world, tenant_id, 3)

    # When they are handled one after the other
    for cid in batch.ids:
        await world.publish(batch.jobs(only=[cid]))
        await world.idle()
        world.clock.advance(5)

    # Then two are sent and the queue pauses with daily_limit_reached until Thursday 08:00
    assert world.outcomes() == [Handled.SENT, Handled.SENT, Handled.DAILY_LIMIT_REACHED]
    queue = world.queue(batch.queue_id)
    assert (queue.paused_reason, queue.resume_at) == ("daily_limit_reached", THURSDAY_08.astimezone(UTC))
    assert world.contact(batch.ids[2]).not_before == THURSDAY_08.astimezone(UTC)
    assert await world.at(datetime(2025, 3, 13, 7, 59, tzinfo=TZ)) == TickReport()

    # When the next day opens, the queue resumes and the third is sent
    report = await world.at(THURSDAY_08)
    assert (report.resumed, report.due) == (1, 1)
    assert len(world.sim.sent) == 3


# --- cancellation -------------------------------------------------------------------------------------


async def test_cancelled_queue_contact_is_cancelled_and_never_sent(world: World) -> None:
    tenant_id = create_tenant(world)
    batch = create_batch(world, tenant_id, 2)
    queue = world.queue(batch.queue_id)
    queue.cancel(reason="erp_request", at=world.clock.now())
    world.store.save(queue)

    await world.publish(batch.jobs())
    await world.idle()

    assert world.outcomes() == [Handled.CANCELLED, Handled.CANCELLED]
    assert {world.contact(cid).status for cid in batch.ids} == {ContactStatus.CANCELLED}
    assert world.sends() == []


# --- real RabbitMQ ------------------------------------------------------------------------------------


@pytest.mark.integration
async def test_Q01_on_rabbitmq_job_outside_hours_is_acked_within_seconds_and_sent_once_at_opening(
    database_url: str, amqp_url: str
) -> None:
    # Given the worker consuming the real RabbitMQ on Friday 18:05
    broker = await RabbitBroker.connect(
        amqp_url, prefix=f"test-{uuid.uuid4().hex[:12]}", delivery_limit=2, drain_timeout=1.0
    )
    world = await open_world(database_url, broker, FRIDAY_18_05)
    try:
        tenant_id = create_tenant(world)
        batch = create_batch(world, tenant_id, 1)

        # When the job arrives
        await world.publish(batch.jobs())
        await world.idle()

        # Then it was settled within seconds (far below any consumer_timeout) and nothing is held:
        # once the consumer is gone the queue is empty (an unacknowledged message would be back)
        assert world.outcomes() == [Handled.OUTSIDE_BUSINESS_HOURS]
        assert max(world.main.handler.settle_s) < 5.0
        await world.retire(world.main)
        assert await ready_messages(amqp_url, broker.topology.queue("overdue")) == 0

        # When a fresh worker runs at Monday 08:00, exactly one message is sent
        await world.add_worker()
        report = await world.at(MONDAY_08)
        assert (report.resumed, report.due) == (1, 1)
        assert len(world.sim.sent) == 1
        assert world.contact(batch.ids[0]).status is ContactStatus.SENT
    finally:
        for worker in world.workers:
            await worker.shutdown()
        await broker.close()
        await delete_topology(amqp_url, broker.topology)


async def ready_messages(amqp_url: str, queue: str) -> int:
    """Messages ready in ``queue``, asked of RabbitMQ (passive declare)."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        assert declared.declaration_result.message_count is not None
        return declared.declaration_result.message_count
    finally:
        await connection.close()


async def test_per_debtor_cap_one_dunning_message_per_phone_per_day_across_campaigns(world: World) -> None:
    # Given three campaigns on one day reminding the same phone, and a notice to it (exempt by default)
    tenant_id = create_tenant(world)
    reminders = [create_batch(world, tenant_id, 1) for _ in range(3)]
    notice = create_batch(world, tenant_id, 1, kind="notification")
    for batch in [*reminders, notice]:
        await world.publish(batch.jobs())
    await world.idle()

    # Then one reminder and the notice are sent; the other two wait for Thursday's opening
    assert count(world.outcomes(), Handled.SENT) == 2
    assert count(world.outcomes(), Handled.DEBTOR_DAILY_CAP) == 2
    waiting = [
        world.contact(b.ids[0]) for b in reminders if world.contact(b.ids[0]).status is ContactStatus.PENDING
    ]
    assert [(c.not_before, c.deferred_for) for c in waiting] == [
        (THURSDAY_08.astimezone(UTC), "debtor_daily_cap")
    ] * 2

    # On Thursday one more goes out and the last waits for Friday
    report = await world.at(THURSDAY_08)
    assert report.due == 2
    assert count(world.outcomes(), Handled.SENT) == 3
    assert count(world.outcomes(), Handled.DEBTOR_DAILY_CAP) == 3
    assert len(world.sim.sent) == 3


async def test_an_opted_out_phone_is_skipped_without_a_lookup_or_a_send(world: World) -> None:
    from billing.domain.conversation import Conversation

    tenant_id = create_tenant(world)
    batch = create_batch(world, tenant_id, 1)
    conversation = Conversation.open(tenant_id, batch.contacts[0][1], at=world.clock.now())
    words = ("não quero mais",)
    conversation.receive(
        message_id="R1",
        text="Não quero mais",
        remote_jid="j",
        contact_id=None,
        stop_words=words,
        at=world.clock.now(),
    )
    world.store.save(conversation)

    await world.publish(batch.jobs())
    await world.idle()

    assert world.outcomes() == [Handled.SKIPPED]
    contact = world.contact(batch.ids[0])
    assert (contact.status, contact.error_code) == (ContactStatus.SKIPPED, "opted_out")
    assert world.sim.sent == [] and world.sim.number_checks == []
