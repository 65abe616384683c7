"""The job handler over in-memory fakes of its ports: the library's in-memory event store (``popo``), a
fake send ledger, renderer, gateway health and gateway. No database, no broker, no network.

What is checked: the handler gathers facts, carries out the sending core's decision and settles the
delivery — a claim is recorded at the planned arrival and sent with the typing pause; a full minute defers
without calling; a retryable answer schedules a retry; and a cancelled delivery (the broker connection
dropped) does not stop the handling: the outcome is saved, the delivery is left unsettled.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4, uuid5
from zoneinfo import ZoneInfo

import pytest

from billing.domain.contact import Contact
from billing.domain.debtor_cap import CapDecision
from billing.domain.delivery import OutcomeKind, SendOutcome
from billing.domain.policy import default_policy_spec
from billing.domain.queue import Queue
from billing.domain.sending import GatewayVerdict, Handled, RecipientFacts, ThrottleState
from billing.domain.tenant import Tenant
from billing.domain.types import ContactStatus
from billing.domain.whatsapp import Account
from billing.eventstore import EventStore
from billing.outbox.jobs import SendJob, encode_job
from billing.services.clock import FakeClock
from billing.worker.handler import JobHandler, TenantCache
from billing.worker.rendering import Rendered

MONDAY_10 = datetime(2025, 1, 20, 13, 0, tzinfo=UTC)  # 10:00 in São Paulo
GATEWAY = {"base_url": "http://gw", "instance": "loja", "api_key": "k", "api_version": "v2"}
WINDOW = timedelta(seconds=61)


class FakeSession:
    def __init__(self, ledger: FakeLedger, tenant_id: UUID) -> None:
        self.ledger, self.tenant_id = ledger, tenant_id

    def state(self, *, near: datetime, calendar: Any) -> ThrottleState:
        arrivals = tuple(at for tenant, at, _ in self.ledger.rows.values() if tenant == self.tenant_id)
        return ThrottleState(arrivals=arrivals, arrivals_that_day=len(arrivals), window=WINDOW)

    def record(self, *, arrival: datetime, contact_id: UUID) -> int:
        self.ledger.next_id += 1
        self.ledger.rows[self.ledger.next_id] = (self.tenant_id, arrival, contact_id)
        return self.ledger.next_id


class FakeLedger:
    """The send ledger in a dict: ``rows[id] = (tenant, arrival, contact)``."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple[UUID, datetime, UUID]] = {}
        self.next_id = 0
        self.blocks: dict[UUID, int] = {}
        self.transactions = 0

    @contextmanager
    def locked_many(self, tenant_ids: Any) -> Iterator[dict[UUID, FakeSession]]:
        self.transactions += 1
        yield {tenant_id: FakeSession(self, tenant_id) for tenant_id in tenant_ids}

    def release(self, ledger_id: int) -> None:
        del self.rows[ledger_id]

    def blocked_generation(self, tenant_id: UUID) -> int | None:
        return self.blocks.get(tenant_id)

    def block_gateway(self, *, tenant_id: UUID, generation: int, code: str, at: datetime) -> None:
        self.blocks[tenant_id] = generation

    def unblock(self, tenant_id: UUID, *, below_generation: int) -> None:
        if self.blocks.get(tenant_id, below_generation) < below_generation:
            del self.blocks[tenant_id]


class FakeRenderer:
    """``held``: the template is in memory (``ready``); ``threads`` names the thread of each render."""

    def __init__(self) -> None:
        self.held = True
        self.threads: list[str] = []
        self.fail_next: Exception | None = None

    def ready(self, contact: Contact) -> bool:
        return self.held

    def render(self, contact: Contact, *, now: datetime, tz: ZoneInfo) -> Rendered:
        self.threads.append(threading.current_thread().name)
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        return Rendered(
            text=f"Olá {contact.fields['nome']}", template_id=UUID(int=9), template_version=1, variation=0
        )


class FakeHealth:
    def __init__(self) -> None:
        self.successes = 0

    async def check(self, tenant_id: UUID, generation: int, **kw: Any) -> tuple[GatewayVerdict, str | None]:
        return GatewayVerdict.OPEN, None

    def trip(self, tenant_id: UUID, generation: int, *, now: datetime) -> datetime:
        return now + timedelta(seconds=30)

    def record_problem(self, tenant_id: UUID, generation: int) -> bool:
        return False

    def record_success(self, tenant_id: UUID, generation: int, *, at: datetime) -> None:
        assert at is not None  # the instant the gateway accepted the send
        self.successes += 1


class FakeGateway:
    """Answers every send with ``answer``; with ``hold`` set, waits for it first (a slow gateway)."""

    def __init__(self) -> None:
        self.transport = None
        self.calls: list[tuple[str, str, int | None]] = []
        self.answer = SendOutcome(
            kind=OutcomeKind.SENT, code="sent", message="", retryable=False, message_id="3EB0AA"
        )
        self.hold: asyncio.Event | None = None
        self.arrived = asyncio.Event()

    def __call__(self, config: Mapping[str, str]) -> FakeGateway:
        return self

    async def send_text(self, number: str, text: str, *, delay_ms: int | None = None) -> SendOutcome:
        self.calls.append((number, text, delay_ms))
        self.arrived.set()
        if self.hold is not None:
            await self.hold.wait()
        return self.answer


class FakeRecipient:
    """The person is reachable: not opted out, no lookup answer (the bare number), under the cap."""

    def __init__(self) -> None:
        self.facts = RecipientFacts(opted_out=False, account=None, cap=CapDecision(allowed=True))
        self.known = True
        """False: ``gather_known_many`` answers None (a lookup call is needed)."""
        self.calls: list[str] = []

    async def gather_looked_up(
        self, contact: Contact, client: Any, calendar: Any, now: datetime
    ) -> RecipientFacts:
        self.calls.append("gather_looked_up")
        return self.facts

    def gather_known_many(self, asked: Any) -> list[RecipientFacts | Exception | None]:
        self.calls.append(f"gather_known_many×{len(asked)}")
        return [self.facts if self.known else None for _ in asked]


class CountingExecutor(ThreadPoolExecutor):
    """The event loop's default executor, counting the thread hand-offs (``asyncio.to_thread``)."""

    def __init__(self) -> None:
        super().__init__(max_workers=4)
        self.handoffs: list[str] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        inner = getattr(fn, "args", (fn,))[0]  # asyncio.to_thread submits partial(context.run, inner, ...)
        self.handoffs.append(getattr(inner, "__qualname__", repr(inner)))
        return super().submit(fn, *args, **kwargs)


class FakeDelivery:
    def __init__(self, job: SendJob) -> None:
        self.body = encode_job(job)
        self.message_id = f"{job.contact_id}:1"
        self.routing_key = self.queue = "billing.notification.0"
        self.headers: dict[str, Any] = {}
        self.redelivered = False
        self.delivery_count = 0
        self.settled: str | None = None

    async def ack(self) -> None:
        self.settled = "ack"

    async def reject(self) -> None:
        self.settled = "reject"

    async def requeue(self) -> None:
        self.settled = "requeue"


class Fakes:
    def __init__(self, **policy: Any) -> None:
        self.store = EventStore(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
        self.clock = FakeClock(MONDAY_10)
        self.ledger = FakeLedger()
        self.health = FakeHealth()
        self.gateway = FakeGateway()
        self.recipient = FakeRecipient()
        self.renderer = FakeRenderer()
        self.handler = JobHandler(
            store=self.store,
            tenants=TenantCache(ttl_s=0),
            ledger=self.ledger,
            renderer=self.renderer,
            health=self.health,
            gateways=self.gateway,
            clock=self.clock,
            lease_s=120,
            gateway_timeout_s=30,
            recipient=self.recipient,
            rng=random.Random(3),
        )
        spec = {**default_policy_spec(), **policy}
        tenant = Tenant.register(tenant_id=uuid4(), name="Loja", gateway=GATEWAY, policy=spec, at=MONDAY_10)
        self.tenant_id = tenant.id
        self.queue = Queue.open(
            queue_id=uuid4(), tenant_id=tenant.id, campaign_id=uuid4(), template_type="notification", total=3,
            at=MONDAY_10,
        )  # fmt: skip
        self.contacts = [self._contact(i) for i in range(3)]
        self.store.save(tenant, self.queue, *self.contacts)

    def _contact(self, index: int) -> Contact:
        phone = f"+55119876543{index:02d}"
        return Contact._create(
            Contact.Added,
            id=uuid5(self.queue.id, str(index)),
            tenant_id=self.tenant_id,
            campaign_id=self.queue.campaign_id,
            queue_id=self.queue.id,
            index=index,
            template_type="notification",
            external_id=None,
            fields={"nome": f"Cliente {index}"},
            telefone=phone,
            phone=phone,
            gateway_number=phone[1:],
            amount=Decimal("10.00"),
            amount_total=None,
            due_date=date(2025, 1, 10),
            timestamp=MONDAY_10,
        )

    def job(self, index: int) -> SendJob:
        return SendJob(
            contact_id=self.contacts[index].id,
            tenant_id=self.tenant_id,
            queue_id=self.queue.id,
            template_type="notification",  # type: ignore[arg-type]
            reason="added",
        )

    def contact(self, index: int) -> Contact:
        loaded = self.store.repository.get(self.contacts[index].id)
        assert isinstance(loaded, Contact)
        return loaded


async def test_a_due_contact_is_claimed_at_its_arrival_sent_with_its_pause_and_recorded() -> None:
    fakes = Fakes()
    delivery = FakeDelivery(fakes.job(0))
    await fakes.handler(delivery)
    # random.Random(3): the first draw 0.2380 → a 1.476 s typing pause (policy 1..3 s)
    assert fakes.gateway.calls == [("5511987654300", "Olá Cliente 0", 1476)]
    assert [(at, cid) for _, at, cid in fakes.ledger.rows.values()] == [
        (MONDAY_10 + timedelta(milliseconds=1476), fakes.contacts[0].id)
    ]
    contact = fakes.contact(0)
    assert (contact.status, contact.attempts) == (ContactStatus.SENT, 1)
    assert (delivery.settled, fakes.health.successes) == ("ack", 1)


async def test_a_held_template_renders_on_the_event_loop_else_in_a_thread() -> None:
    fakes = Fakes(pause_min_s=0, pause_max_s=0)
    await fakes.handler(FakeDelivery(fakes.job(0)))
    fakes.renderer.held = False
    await fakes.handler(FakeDelivery(fakes.job(1)))
    loop_thread = threading.current_thread().name
    assert fakes.renderer.threads[0] == loop_thread and fakes.renderer.threads[1] != loop_thread
    assert [text for _, text, _ in fakes.gateway.calls] == ["Olá Cliente 0", "Olá Cliente 1"]


async def test_a_send_hands_off_the_recipient_and_the_throttle_to_one_thread_call() -> None:
    fakes = Fakes(pause_min_s=0, pause_max_s=0)
    executor = CountingExecutor()
    asyncio.get_running_loop().set_default_executor(executor)
    await fakes.handler(FakeDelivery(fakes.job(0)))
    read, pre_claim, save = "JobHandler._read_many", "JobHandler._pre_claim_many", "GroupCommitter._write"
    assert executor.handoffs == [read, "FakeLedger.blocked_generation", pre_claim, save, save]
    assert fakes.recipient.calls == ["gather_known_many×1"]
    executor.handoffs.clear()
    fakes.recipient.known = False  # a lookup call is needed: gathered on the loop, then the throttle alone
    await fakes.handler(FakeDelivery(fakes.job(1)))
    assert executor.handoffs == [read, pre_claim, pre_claim, save, save]  # the block and tenant are cached
    # the grouped step read the Conversation: the lookup path only looks the account up
    assert fakes.recipient.calls == ["gather_known_many×1", "gather_known_many×1", "gather_looked_up"]
    assert [fakes.contact(i).status for i in (0, 1)] == [ContactStatus.SENT, ContactStatus.SENT]
    assert len(fakes.ledger.rows) == 2


async def test_a_failure_between_claim_and_call_gives_the_claim_and_grant_back_at_once() -> None:
    fakes = Fakes(pause_min_s=0, pause_max_s=0)
    fakes.renderer.fail_next = ConnectionError("terminating connection due to administrator command")
    first = FakeDelivery(fakes.job(0))
    await fakes.handler(first)
    contact = fakes.contact(0)
    assert (first.settled, fakes.gateway.calls, fakes.ledger.rows) == ("requeue", [], {})
    assert (contact.status, contact.attempts, contact.not_before) == (ContactStatus.PENDING, 0, MONDAY_10)
    again = FakeDelivery(fakes.job(0))  # the redelivery sends it at once, not after the lease
    await fakes.handler(again)
    assert (again.settled, [text for _, text, _ in fakes.gateway.calls]) == ("ack", ["Olá Cliente 0"])
    assert fakes.contact(0).status is ContactStatus.SENT


async def test_a_full_minute_defers_without_calling_the_gateway() -> None:
    fakes = Fakes(messages_per_minute=1, pause_min_s=0, pause_max_s=0)
    await fakes.handler(FakeDelivery(fakes.job(0)))
    second = FakeDelivery(fakes.job(1))
    await fakes.handler(second)
    assert len(fakes.gateway.calls) == 1
    contact = fakes.contact(1)
    assert (contact.status, contact.not_before) == (ContactStatus.PENDING, MONDAY_10 + WINDOW)
    assert second.settled == "ack"
    assert len(fakes.ledger.rows) == 1


async def test_a_retryable_answer_schedules_a_retry_and_keeps_the_grant() -> None:
    fakes = Fakes(pause_min_s=0, pause_max_s=0)
    fakes.gateway.answer = SendOutcome(
        kind=OutcomeKind.RETRYABLE,
        code="gateway_unavailable",
        message="503",
        retryable=True,
        outcome_unknown=True,
    )
    result = await fakes.handler.handle(fakes.job(0))
    assert result.outcome is Handled.RETRY_SCHEDULED
    contact = fakes.contact(0)
    # retry 1 of the default policy: 24..30 s; the second draw of random.Random(3), 0.5442, → 27.27 s
    assert contact.status is ContactStatus.PENDING
    assert contact.not_before == MONDAY_10 + timedelta(seconds=24 + 6 * 0.5442292252959519)
    assert len(fakes.ledger.rows) == 1  # the call reached the gateway: it counts


async def test_a_cancelled_delivery_still_saves_the_outcome_and_is_left_unsettled() -> None:
    fakes = Fakes(pause_min_s=0, pause_max_s=0)
    fakes.gateway.hold = asyncio.Event()
    delivery = FakeDelivery(fakes.job(0))
    consumer = asyncio.create_task(fakes.handler(delivery))
    await fakes.gateway.arrived.wait()  # the message is at the gateway

    consumer.cancel()  # the broker connection dropped: aio-pika cancels the consumer's callback
    with pytest.raises(asyncio.CancelledError):
        await consumer
    fakes.gateway.hold.set()  # the gateway answers
    assert await fakes.handler.drain(5) == 0

    assert fakes.contact(0).status is ContactStatus.SENT
    assert delivery.settled is None  # the broker redelivers it; the redelivery finds it sent:
    redelivery = FakeDelivery(fakes.job(0))
    await fakes.handler(redelivery)
    assert (redelivery.settled, len(fakes.gateway.calls)) == ("ack", 1)


async def test_concurrent_outcomes_are_saved_in_one_transaction_and_acked_after_it() -> None:
    fakes = Fakes(pause_min_s=0, pause_max_s=0)
    groups: list[list[str]] = []
    group_save = fakes.handler.saves._group

    def recording_group(aggregates: Any) -> set[UUID]:
        groups.append([type(e).__name__ for a in aggregates for e in a.pending_events])
        assert all(d.settled is None for d in deliveries)  # nothing is acked before its save committed
        return group_save(aggregates)

    fakes.handler.saves._group = recording_group
    fakes.gateway.hold = asyncio.Event()
    all_there = asyncio.Event()
    send_text = fakes.gateway.send_text

    async def counting_send(number: str, text: str, *, delay_ms: int | None = None) -> SendOutcome:
        if len(fakes.gateway.calls) == 2:
            all_there.set()
        return await send_text(number, text, delay_ms=delay_ms)

    fakes.gateway.send_text = counting_send  # type: ignore[method-assign]
    deliveries = [FakeDelivery(fakes.job(i)) for i in range(3)]
    handling = [asyncio.create_task(fakes.handler(d)) for d in deliveries]
    await asyncio.wait_for(all_there.wait(), 5)  # every message is at the gateway
    fakes.gateway.hold.set()  # the three answers arrive together
    await asyncio.gather(*handling)

    assert ["Sent", "Sent", "Sent"] in groups  # the three outcomes: one transaction
    assert [d.settled for d in deliveries] == ["ack"] * 3
    assert [fakes.contact(i).status for i in range(3)] == [ContactStatus.SENT] * 3


async def test_an_opted_out_phone_is_skipped_without_claim_or_gateway_call() -> None:
    fakes = Fakes()
    fakes.recipient.facts = RecipientFacts(opted_out=True, account=None, cap=CapDecision(allowed=True))
    delivery = FakeDelivery(fakes.job(0))
    await fakes.handler(delivery)
    contact = fakes.contact(0)
    assert (contact.status, contact.error_code, contact.attempts) == (ContactStatus.SKIPPED, "opted_out", 0)
    assert (fakes.gateway.calls, fakes.ledger.rows, delivery.settled) == ([], {}, "ack")


async def test_the_jid_the_lookup_found_is_sent_to_and_recorded_with_the_answered_one() -> None:
    fakes = Fakes(pause_min_s=0, pause_max_s=0)
    jid = "551187654300@s.whatsapp.net"  # an old account, without the ninth digit
    fakes.recipient.facts = RecipientFacts(False, Account(jid), CapDecision(allowed=True))
    fakes.gateway.answer = SendOutcome(
        kind=OutcomeKind.SENT, code="sent", message="", retryable=False, message_id="3EB0AB", remote_jid=jid
    )
    await fakes.handler(FakeDelivery(fakes.job(0)))
    assert [number for number, _, _ in fakes.gateway.calls] == [jid]
    sent = [e for e in fakes.store.events.get(fakes.contacts[0].id) if type(e).__name__ == "Sent"]
    assert [(e.jid_asked, e.remote_jid) for e in sent] == [(jid, jid)]


async def test_the_tenant_cache_serves_a_policy_change_once_its_entry_is_ttl_s_old(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fakes = Fakes(messages_per_minute=1, pause_min_s=0, pause_max_s=0)
    fakes.handler.tenants = TenantCache(ttl_s=5.0)
    real = [1000.0]
    monkeypatch.setattr("billing.worker.handler.time.monotonic", lambda: real[0])
    await fakes.handler(FakeDelivery(fakes.job(0)))  # the tenant is read (1 a minute) and kept: sent
    tenant = fakes.store.repository.get(fakes.tenant_id)
    tenant.change_policy({"messages_per_minute": 9}, at=MONDAY_10)
    fakes.store.save(tenant)
    real[0] += 4.9
    await fakes.handler(FakeDelivery(fakes.job(1)))  # the kept tenant: still 1 a minute, deferred
    real[0] += 0.1  # 5 s after it was read: read again, 9 a minute
    await fakes.handler(FakeDelivery(fakes.job(2)))
    assert [fakes.contact(i).status for i in range(3)] == [
        ContactStatus.SENT, ContactStatus.PENDING, ContactStatus.SENT
    ]  # fmt: skip
    assert fakes.contact(1).not_before == MONDAY_10 + WINDOW


async def test_handlings_that_arrive_together_share_their_reads_and_one_ledger_transaction() -> None:
    fakes = Fakes(messages_per_minute=2, pause_min_s=0, pause_max_s=0)
    await fakes.handler(FakeDelivery(fakes.job(0)))  # the gateway block is read and cached: 1 grant
    executor = CountingExecutor()
    asyncio.get_running_loop().set_default_executor(executor)
    transactions = fakes.ledger.transactions
    deliveries = [FakeDelivery(fakes.job(i)) for i in (1, 2)]
    await asyncio.gather(*(fakes.handler(d) for d in deliveries))
    # one read of both contacts, queues and tenant; one hand-off and ONE ledger transaction for both
    # throttle steps — decided in order, each seeing the grants before it: 2 a minute → 1 more claim
    assert executor.handoffs.count("JobHandler._read_many") == 1
    assert executor.handoffs.count("JobHandler._pre_claim_many") == 1
    assert fakes.ledger.transactions - transactions == 1
    assert fakes.recipient.calls == ["gather_known_many×1", "gather_known_many×2"]
    assert [fakes.contact(i).status for i in range(3)] == [
        ContactStatus.SENT, ContactStatus.SENT, ContactStatus.PENDING
    ]  # fmt: skip
    assert fakes.contact(2).not_before == MONDAY_10 + WINDOW
    assert [cid for _, _, cid in fakes.ledger.rows.values()] == [fakes.contacts[0].id, fakes.contacts[1].id]
    assert [d.settled for d in deliveries] == ["ack"] * 2


async def test_a_failed_ledger_transaction_fails_only_the_throttle_steps_of_its_group() -> None:
    fakes = Fakes(pause_min_s=0, pause_max_s=0)

    @contextmanager
    def broken(tenant_ids: Any) -> Iterator[dict[UUID, FakeSession]]:
        raise ConnectionError("terminating connection due to administrator command")
        yield {}

    fakes.ledger.locked_many = broken  # type: ignore[method-assign]
    deliveries = [FakeDelivery(fakes.job(i)) for i in range(2)]
    await asyncio.gather(*(fakes.handler(d) for d in deliveries))
    assert [d.settled for d in deliveries] == ["requeue", "requeue"]  # transient: tried again later
    assert (fakes.gateway.calls, fakes.ledger.rows) == ([], {})
    assert [fakes.contact(i).status for i in range(2)] == [ContactStatus.PENDING] * 2
