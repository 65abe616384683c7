"""The read-model projection against the real PostgreSQL (fails, never skips, when it is down).

Aggregates are built with the domain classes and saved with the event store; ``project_pending`` then
applies the notification log, and the views are compared row by row (promise 6: exactly once, and a
rebuild gives the same views).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg.rows import dict_row

from billing.bootstrap import Container, build_container, run_projections_process
from billing.domain.apikey import ApiKey
from billing.domain.campaign import Campaign
from billing.domain.contact import Contact
from billing.domain.queue import Queue
from billing.domain.template import MessageTemplate
from billing.domain.tenant import Tenant
from billing.domain.user import AdminAction, User
from billing.projections.rebuild import rebuild_projections
from billing.projections.views import VIEW_TABLES, project_pending
from billing.services.queries import Queries
from billing.settings import Settings

pytestmark = pytest.mark.integration

T0 = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
LEASE = timedelta(minutes=2)
#: Inserts a stored event behind the library's back (a bogus row, as a bug could leave).
INSERT_EVENT = (
    "INSERT INTO billing_events (originator_id, originator_version, topic, state) VALUES (%s, 1, %s, %s)"
)


def at(minutes: float) -> datetime:
    """``T0`` plus ``minutes``."""
    return T0 + timedelta(minutes=minutes)


@dataclass
class Posted:
    """One POST's aggregates, as the ingestion service builds them."""

    campaign: Campaign
    queue: Queue
    contacts: list[Contact] = field(default_factory=list)

    def aggregates(self) -> list[Any]:
        return [self.campaign, self.queue, *self.contacts]


def post(
    tenant_id: UUID,
    *,
    accepted: int,
    rejected: int = 0,
    template_type: str = "overdue",
    when: datetime = T0,
    campaign_id: UUID | None = None,
    queue_id: UUID | None = None,
) -> Posted:
    """A campaign with ``accepted`` added contacts (indexes first) and ``rejected`` rejected ones."""
    campaign_id, queue_id = campaign_id or uuid.uuid4(), queue_id or uuid.uuid4()
    contacts: list[Contact] = []
    for index in range(accepted + rejected):
        common: dict[str, Any] = {
            "id": uuid.uuid4(),
            "tenant_id": tenant_id,
            "campaign_id": campaign_id,
            "queue_id": queue_id,
            "index": index,
            "template_type": template_type,
            "external_id": "fatura-1",
            "fields": {"nome": f"Cliente {index}", "valor": "R$ 150,00"},
            "timestamp": when,
        }
        if index < accepted:
            number = f"119{index:08d}"
            contacts.append(
                Contact._create(
                    Contact.Added,
                    telefone=f"({number[:2]}) {number[2:]}",
                    phone=f"+55{number}",
                    gateway_number=f"55{number}",
                    amount=Decimal("150.00"),
                    amount_total=Decimal("150.00"),
                    due_date=date(2025, 3, 1),
                    **common,
                )
            )
        else:
            contacts.append(
                Contact._create(
                    Contact.Rejected,
                    telefone="123",
                    code="invalid_phone",
                    message="telefone is not a valid mobile number",
                    field="telefone",
                    **common,
                )
            )
    queue = Queue.open(
        queue_id=queue_id,
        tenant_id=tenant_id,
        campaign_id=campaign_id,
        template_type=template_type,
        total=accepted + rejected,
        at=when,
    )
    campaign = Campaign.start(
        campaign_id=campaign_id,
        tenant_id=tenant_id,
        template_type=template_type,
        external_id="fatura-1",
        queue_id=queue_id,
        accepted=accepted,
        rejected=rejected,
        idempotency_key=None,
        request_hash="0" * 64,
        rejections=[],
        at=when,
    )
    return Posted(campaign, queue, contacts)


def send(contact: Contact, when: datetime, text: str = "Olá") -> None:
    """Dispatch and record a successful send."""
    contact.dispatch(at=when, lease=LEASE)
    contact.record_sent(
        gateway_message_id=f"WA-{contact.index}",
        remote_jid=f"{contact.gateway_number}@s.whatsapp.net",
        text=text,
        at=when + timedelta(seconds=5),
        template_id=None,
        template_version=2,
        variation=0,
    )


def open_container(database_url: str, **overrides: Any) -> Container:
    return build_container(Settings(database_url=database_url, **overrides))


@pytest.fixture
def container(database_url: str) -> Iterator[Container]:
    made = open_container(database_url)
    try:
        yield made
    finally:
        made.pool.close()
        made.store.close()


def rows(database_url: str, query: str, *params: Any) -> list[dict[str, Any]]:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        return conn.execute(query, params).fetchall()


def dump(database_url: str) -> dict[str, list[dict[str, Any]]]:
    """Every view, every row, in the order of all its columns' text (a total order whatever the key)."""
    return {
        t: sorted(rows(database_url, f"SELECT * FROM {t}"), key=lambda r: [str(v) for v in r.values()])
        for t in VIEW_TABLES
    }


def queue_row(database_url: str, queue_id: UUID) -> dict[str, Any]:
    (row,) = rows(database_url, "SELECT * FROM queue_status WHERE queue_id = %s", queue_id)
    return row


COUNTERS = ("total", "pending", "sent", "failed", "skipped", "rejected", "cancelled")


def counters(row: dict[str, Any]) -> dict[str, int]:
    return {k: row[k] for k in COUNTERS}


def counts(**given: int) -> dict[str, int]:
    """Expected counters: the given ones, 0 for the rest."""
    return {k: given.get(k, 0) for k in COUNTERS}


def pick(row: dict[str, Any], keys: str) -> tuple[Any, ...]:
    """``row``'s values of the space-separated ``keys``."""
    return tuple(row[k] for k in keys.split())


def position(database_url: str, name: str = "projections") -> int:
    found = rows(database_url, "SELECT position FROM tracking WHERE name = %s", name)
    return found[0]["position"] if found else 0


def full_scenario(container: Container) -> tuple[UUID, Posted, Posted]:
    """Tenant, key, template and two campaigns whose contacts went every way; returns their ids."""
    store = container.store
    tenant_id = uuid.uuid4()
    gateway = {"base_url": "http://gw", "instance": "i", "api_key": "k", "api_version": "v2"}
    tenant = Tenant.register(tenant_id=tenant_id, name="ACME", gateway=gateway, policy={}, at=at(0))
    key = ApiKey.issue(tenant_id=tenant_id, name="erp", prefix="bk_abc", key_hash="f" * 64, at=at(0))
    template = MessageTemplate.create(
        template_id=uuid.uuid4(),
        tenant_id=tenant_id,
        name="Cobrança",
        template_type="overdue",
        description="",
        variations=["Olá {{nome_cliente}}"],
        active=True,
        at=at(0),
    )
    tenant.choose_default_template(
        template_id=template.id, template_tenant=tenant_id, template_type="overdue", active=True, at=at(0)
    )
    user = User.create(
        tenant_id=tenant_id, email="ana@acme.example", password_hash="x", role="admin", by=None, at=at(0)
    )
    store.save(tenant, key, template, user)
    action = AdminAction.record(
        action_id=uuid.uuid4(), tenant_id=tenant_id, user_id=user.id, email=user.email,
        action="user.remove", target="bia@acme.example", at=at(1),
    )  # fmt: skip
    store.save(action)
    tenant.configure_gateway({**gateway, "api_key": "k2"}, at=at(1))
    key.revoke(at=at(2))
    template.change(variations=["Oi {{nome_cliente}}", "Olá {{nome_cliente}}"], at=at(3))
    store.save(tenant, key, template)

    main = post(tenant_id, accepted=4, rejected=1, when=at(10))
    store.save(*main.aggregates())
    c0, c1, c2, c3, _ = main.contacts
    send(c0, at(20))
    c1.dispatch(at=at(21), lease=LEASE)
    c1.record_failure(code="gateway_down", message="503", retryable=True, retry_at=at(40), at=at(22))
    c2.dispatch(at=at(23), lease=LEASE)
    c2.record_skipped(code="not_on_whatsapp", message="no WhatsApp", at=at(24))
    c3.dispatch(at=at(25), lease=LEASE)
    c3.defer(reason="outside_business_hours", not_before=at(60), at=at(26))
    store.save(c0, c1, c2, c3)

    other = post(tenant_id, accepted=2, template_type="notification", when=at(30))
    other.queue.pause(reason="outside_business_hours", resume_at=at(90), at=at(31))
    store.save(*other.aggregates())

    from billing.domain.conversation import Conversation
    from billing.domain.optout import DEFAULT_STOP_WORDS

    c0.record_receipt(status="READ", reported_at=None, at=at(32))  # delivered and read
    conversation = Conversation.open(tenant_id, c0.phone or "", at=at(33))
    conversation.receive(
        message_id="R1",
        text="PARAR",
        remote_jid="j",
        contact_id=c0.id,
        stop_words=DEFAULT_STOP_WORDS,
        at=at(33),
    )
    c0.record_reply(message_id="R1", opted_out=True, at=at(33))
    store.save(c0, conversation)
    return tenant_id, main, other


def test_projects_every_view(container: Container, database_url: str) -> None:
    tenant_id, main, other = full_scenario(container)
    assert project_pending(container.store, container.pool) == container.store.recorder.max_notification_id()

    (tenant,) = rows(database_url, "SELECT * FROM tenants")
    assert (tenant["tenant_id"], tenant["name"], tenant["created_at"], tenant["updated_at"]) == (
        tenant_id, "ACME", at(0), at(1),
    )  # fmt: skip
    (key,) = rows(database_url, "SELECT * FROM api_keys")
    assert (key["tenant_id"], key["prefix"], key["revoked_at"]) == (tenant_id, "bk_abc", at(2))
    (template,) = rows(database_url, "SELECT * FROM templates")
    assert template["variations"] == ["Oi {{nome_cliente}}", "Olá {{nome_cliente}}"]
    assert (template["version"], template["created_at"], template["updated_at"]) == (2, at(0), at(3))
    campaigns = rows(database_url, "SELECT * FROM campaigns ORDER BY created_at")
    assert [(c["campaign_id"], c["accepted"], c["rejected"]) for c in campaigns] == [
        (main.campaign.id, 4, 1),
        (other.campaign.id, 2, 0),
    ]

    q = queue_row(database_url, main.queue.id)
    assert counters(q) == counts(total=5, pending=2, sent=1, skipped=1, rejected=1)
    assert pick(q, "created_at started_at completed_at updated_at") == (at(10), at(20), None, at(33))
    assert pick(q, "delivered read replied") == (1, 1, 1)
    outcomes = rows(
        database_url,
        "SELECT outcome, sum(n)::int AS n FROM outcome_counts WHERE tenant_id = %s GROUP BY 1 ORDER BY 1",
        tenant_id,
    )
    # per contact once: the final outcomes, and the first receipt and reply (READ implies delivered)
    assert [(r["outcome"], r["n"]) for r in outcomes] == [
        ("delivered", 1), ("read", 1), ("rejected", 1), ("replied", 1), ("sent", 1), ("skipped", 1),
    ]  # fmt: skip

    query = "SELECT * FROM campaign_contacts WHERE queue_id = %s ORDER BY idx"
    c0, c1, c2, c3, c4 = rows(database_url, query, main.queue.id)
    assert pick(c0, "status attempts message_text gateway_message_id") == ("sent", 1, "Olá", "WA-0")
    assert pick(c0, "remote_jid sent_at template_version variation") == (
        "5511900000000@s.whatsapp.net", at(20) + timedelta(seconds=5), 2, 0,
    )  # fmt: skip
    assert pick(c0, "nome telefone phone lease_until error_code") == (
        "Cliente 0", "(11) 900000000", "+5511900000000", None, None,
    )  # fmt: skip
    assert pick(c0, "delivered_at read_at replied_at") == (at(32), at(32), at(33))
    opt_out = rows(database_url, "SELECT phone, opted_out, stop_word, message_id, contact_id FROM opt_outs")
    assert [pick(r, "phone opted_out stop_word message_id contact_id") for r in opt_out] == [
        ("+5511900000000", True, "parar", "R1", c0["contact_id"])
    ]
    assert pick(c1, "status attempts not_before error_code") == ("pending", 1, at(40), "gateway_down")
    assert pick(c2, "status error_code error_message") == ("skipped", "not_on_whatsapp", "no WhatsApp")
    assert pick(c3, "status attempts not_before lease_until") == ("pending", 0, at(60), None)
    assert pick(c3, "deferred_reason") == ("outside_business_hours",)
    assert pick(c1, "deferred_reason") == (None,)  # a retry: its error says why
    # the contacts list shows why a pending contact waits and until when (kept current below)
    items = {d["index"]: d for d in map(Queries.contact_document, (c0, c1, c3))}
    assert [(items[i]["next_attempt_at"], items[i]["deferred_reason"]) for i in (0, 1, 3)] == [
        (None, None), (at(40).isoformat(), None), (at(60).isoformat(), "outside_business_hours"),
    ]  # fmt: skip
    assert pick(c4, "status phone error_code telefone") == ("rejected", None, "invalid_phone", "123")
    paused = queue_row(database_url, other.queue.id)
    assert pick(paused, "paused_reason resume_at pending") == ("outside_business_hours", at(90), 2)
    assert position(database_url) == container.store.recorder.max_notification_id()

    # The last retry fails for good and the deferred contact is sent: the queue completes then.
    store = container.store
    c1_agg, c3_agg = main.contacts[1], main.contacts[3]
    c1_agg.dispatch(at=at(41), lease=LEASE)
    c1_agg.record_failure(code="gateway_down", message="503", retryable=False, retry_at=None, at=at(42))
    store.save(c1_agg)
    project_pending(container.store, container.pool)
    assert queue_row(database_url, main.queue.id)["completed_at"] is None  # c3 is still pending
    send(c3_agg, at(61))
    store.save(c3_agg)
    project_pending(container.store, container.pool)
    q = queue_row(database_url, main.queue.id)
    assert counters(q) == counts(total=5, sent=2, failed=1, skipped=1, rejected=1)
    _, c1, _, c3, _ = rows(database_url, query, main.queue.id)
    assert [pick(c, "not_before deferred_reason") for c in (c1, c3)] == [(None, None), (None, None)]
    done = at(61) + timedelta(seconds=5)
    assert pick(q, "started_at completed_at updated_at") == (at(20), done, done)

    # Resume, then cancel the other queue: its contacts are cancelled, it never completes.
    other.queue.resume(at=at(91))
    other.queue.cancel(reason="erp", at=at(92))
    for contact in other.contacts:
        contact.cancel(reason="queue_cancelled", at=at(92))
    store.save(other.queue, *other.contacts)
    project_pending(container.store, container.pool)
    q = queue_row(database_url, other.queue.id)
    assert pick(q, "paused_reason resume_at cancelled_at completed_at") == (None, None, at(92), None)
    assert counters(q) == counts(total=2, cancelled=2)


def test_each_event_is_applied_once(container: Container, database_url: str) -> None:
    _, main, _ = full_scenario(container)
    total = container.store.recorder.max_notification_id()
    assert project_pending(container.store, container.pool) == total
    before = dump(database_url)
    assert project_pending(container.store, container.pool) == 0
    assert dump(database_url) == before

    # Two processes race over the same log (small batches, so they interleave): every notification is
    # applied by exactly one of them and the views equal a single run's.
    more = post(main.campaign.tenant_id, accepted=300, rejected=20, when=at(100))
    container.store.save(*more.aggregates())
    for i, contact in enumerate(more.contacts[:300]):
        send(contact, at(101 + i / 100))
    container.store.save(*more.contacts[:300])
    expected_new = (container.store.recorder.max_notification_id() or 0) - total

    second = open_container(database_url)
    handled: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def runner(c: Container) -> None:
        try:
            barrier.wait()
            handled.append(project_pending(c.store, c.pool, batch_size=37))
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=runner, args=(c,)) for c in (container, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        second.pool.close()
        second.store.close()
    assert not errors
    assert sum(handled) == expected_new
    q = queue_row(database_url, more.queue.id)
    assert counters(q) == counts(total=320, sent=300, rejected=20)
    assert rows(
        database_url, "SELECT count(*) AS n FROM campaign_contacts WHERE queue_id = %s", more.queue.id
    ) == [{"n": 320}]
    assert rows(database_url, "SELECT count(*) AS n FROM projection_errors") == [{"n": 0}]


def test_rebuild_gives_identical_views(container: Container, database_url: str) -> None:
    full_scenario(container)
    project_pending(
        container.store, container.pool, batch_size=4
    )  # other batch boundaries than the rebuild's
    before = dump(database_url)
    assert all(before[t] for t in VIEW_TABLES)
    replayed = rebuild_projections(container.store, container.pool)
    assert replayed == container.store.recorder.max_notification_id()
    assert dump(database_url) == before
    assert position(database_url) == replayed


def test_a_queue_completes_at_its_last_send_whatever_the_batches(
    container: Container, database_url: str
) -> None:
    """Receipts after the last send move ``updated_at`` but never ``completed_at``: the live follower
    (one event a batch) and a rebuild (everything in one batch) give the same row."""
    store = container.store
    gateway = {"base_url": "http://gw", "instance": "acme", "api_key": "k", "api_version": "v2"}
    tenant = Tenant.register(tenant_id=uuid.uuid4(), name="ACME", gateway=gateway, policy={}, at=at(0))
    store.save(tenant)
    posted = post(tenant.id, accepted=2, when=at(10))
    store.save(*posted.aggregates())
    first, second = posted.contacts
    send(first, at(20))
    send(second, at(21))
    store.save(first, second)
    first.record_receipt(status="READ", reported_at=None, at=at(30))
    second.record_receipt(status="DELIVERY_ACK", reported_at=None, at=at(31))
    store.save(first, second)

    project_pending(container.store, container.pool, batch_size=1)
    live = queue_row(database_url, posted.queue.id)
    assert pick(live, "completed_at updated_at delivered read") == (
        at(21) + timedelta(seconds=5), at(31), 2, 1,
    )  # fmt: skip
    rebuild_projections(container.store, container.pool)
    assert queue_row(database_url, posted.queue.id) == live


def test_unappliable_events_are_recorded_and_skipped(container: Container, database_url: str) -> None:
    tenant_id = uuid.uuid4()
    first = post(tenant_id, accepted=2)
    container.store.save(*first.aggregates())
    insert = (
        "INSERT INTO billing_events (originator_id, originator_version, topic, state) VALUES (%s, 1, %s, %s)"
    )
    with psycopg.connect(database_url) as conn:  # a bug's leftovers: an unknown topic, a corrupt state
        conn.execute(insert, (uuid.uuid4(), "billing.Nope.Happened", b"{}"))
        conn.execute(insert, (uuid.uuid4(), Contact.Added.TOPIC, b"not json"))
    # A write the database refuses (a second contact at the same index of the campaign): the batch fails
    # as a whole and is applied again notification by notification.
    dup = post(tenant_id, accepted=1, campaign_id=first.campaign.id, queue_id=first.queue.id).contacts[0]
    later = post(tenant_id, accepted=3)
    container.store.save(dup)
    container.store.save(*later.aggregates())

    project_pending(container.store, container.pool)

    errors = rows(
        database_url, "SELECT projection, notification_id, topic, error FROM projection_errors ORDER BY 1"
    )
    assert [(e["projection"], e["topic"]) for e in errors] == [
        ("projections", "billing.Nope.Happened"),
        ("projections", Contact.Added.TOPIC),
        ("projections", Contact.Added.TOPIC),
    ]
    assert "UniqueViolation" in errors[2]["error"]
    assert not rows(database_url, "SELECT 1 FROM campaign_contacts WHERE contact_id = %s", dup.id)
    assert counters(queue_row(database_url, later.queue.id))["pending"] == 3  # later events still project
    assert counters(queue_row(database_url, first.queue.id))["pending"] == 2
    assert position(database_url) == container.store.recorder.max_notification_id()
    # Recorded once: running again changes nothing.
    assert project_pending(container.store, container.pool) == 0
    assert len(rows(database_url, "SELECT * FROM projection_errors")) == 3


def test_10000_contacts_project_in_one_go(container: Container, database_url: str) -> None:
    big = post(uuid.uuid4(), accepted=9_900, rejected=100)
    container.store.save(*big.aggregates())
    started = time.perf_counter()
    handled = project_pending(container.store, container.pool)
    ingest_s = time.perf_counter() - started
    assert handled == 10_002
    q = queue_row(database_url, big.queue.id)
    assert counters(q) == counts(total=10_000, pending=9_900, rejected=100)

    for contact in big.contacts[:9_900]:
        send(contact, at(5))
    container.store.save(*big.contacts[:9_900])
    started = time.perf_counter()
    assert project_pending(container.store, container.pool) == 19_800
    outcomes_s = time.perf_counter() - started
    q = queue_row(database_url, big.queue.id)
    assert (q["pending"], q["sent"], q["completed_at"]) == (0, 9_900, at(5) + timedelta(seconds=5))
    print(
        f"\nprojected 10,002 ingestion events in {ingest_s:.2f} s ({10_002 / ingest_s:,.0f}/s); "
        f"19,800 outcome events in {outcomes_s:.2f} s ({19_800 / outcomes_s:,.0f}/s)"
    )
    # Speed itself is measured by bench/rebuild.py and bench/ingest.py against same-run baselines.


async def test_follower_wakes_on_notify_and_survives_a_lost_connection(database_url: str) -> None:
    container = await asyncio.to_thread(open_container, database_url, poll_interval_s=30.0)
    stop = asyncio.Event()
    task = asyncio.create_task(run_projections_process(container, stop))
    try:
        await asyncio.sleep(1.0)  # caught up, listening
        first = post(uuid.uuid4(), accepted=1)
        await asyncio.to_thread(container.store.save, *first.aggregates())
        await wait_for_queue(database_url, first.queue.id, within=1.0)

        # Kill the LISTEN connection: the follower reconnects (and reads) by itself.
        killed = rows(
            database_url,
            "SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE application_name = %s",
            "billing-projections-listen",
        )
        assert killed and all(r["ok"] for r in killed)
        await asyncio.sleep(1.5)  # reconnected (backoff starts at 0.2 s)
        second = post(uuid.uuid4(), accepted=1)
        await asyncio.to_thread(container.store.save, *second.aggregates())
        await wait_for_queue(database_url, second.queue.id, within=1.0)
        assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await asyncio.to_thread(container.pool.close)
        await asyncio.to_thread(container.store.close)


async def wait_for_queue(database_url: str, queue_id: UUID, *, within: float) -> float:
    """Seconds until the queue's row appears; fails after ``within`` seconds."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if await asyncio.to_thread(
            rows, database_url, "SELECT 1 FROM queue_status WHERE queue_id = %s", queue_id
        ):
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    pytest.fail(f"queue {queue_id} not projected within {within} s")


def test_every_event_topic_of_the_domain_is_projected_or_knowingly_ignored() -> None:
    """A new domain event whose topic is missing from the projection's map would be skipped silently."""
    from eventsourcing.domain import CanMutateAggregate

    from billing.domain.apikey import ApiKey
    from billing.domain.campaign import Campaign
    from billing.domain.contact import Contact
    from billing.domain.conversation import Conversation
    from billing.domain.engagement import Engagement
    from billing.domain.queue import Queue
    from billing.domain.template import MessageTemplate
    from billing.domain.tenant import Tenant
    from billing.domain.user import AdminAction, User
    from billing.projections.writers import HANDLED_TOPICS

    bases = {  # never recorded
        "billing.Contact.Created", "billing.ApiKey.Created", "billing.Tenant.Created",
        "billing.Conversation.Created", "billing.Engagement.Created", "billing.AdminAction.Created",
    }  # fmt: skip
    topics = {
        value.TOPIC
        for aggregate in (
            ApiKey,
            Campaign,
            Contact,
            Queue,
            MessageTemplate,
            Tenant,
            Conversation,
            Engagement,
            User,
            AdminAction,
        )
        for value in vars(aggregate).values()
        if isinstance(value, type) and issubclass(value, CanMutateAggregate) and getattr(value, "TOPIC", None)
    }
    assert topics - bases == HANDLED_TOPICS


def test_the_declared_column_types_are_the_views_own(container: Container, database_url: str) -> None:
    """The binary ``COPY`` of contacts and history rows and the batched update name each column's type."""
    from billing.projections import history
    from billing.projections.writers import (
        CONTACT_COLUMNS,
        CONTACT_TYPES,
    )

    def catalog(table: str) -> dict[str, str]:
        found = rows(
            database_url,
            "SELECT attname AS name, format_type(atttypid, atttypmod) AS type FROM pg_attribute "
            f"WHERE attrelid = '{table}'::regclass AND attnum > 0 AND NOT attisdropped",
        )
        return {r["name"]: r["type"] for r in found}

    spelled = {"timestamptz": "timestamp with time zone"}
    assert sorted(CONTACT_TYPES) == sorted(CONTACT_COLUMNS) == sorted(catalog("campaign_contacts"))
    assert {c: spelled.get(t, t) for c, t in CONTACT_TYPES.items()} == catalog("campaign_contacts")
    assert dict(zip(history.COLUMNS, (spelled.get(t, t) for t in history.TYPES), strict=True)) == catalog(
        "contact_history"
    )


def test_the_history_data_column_gathers_no_planner_statistics(
    container: Container, database_url: str
) -> None:
    """``data`` is only read back (``sql/006_history.sql``): ANALYZE skips it, statistics target 0."""
    found = rows(
        database_url,
        "SELECT attname, attstattarget FROM pg_attribute WHERE attrelid = 'contact_history'::regclass "
        "AND attnum > 0 AND NOT attisdropped AND coalesce(attstattarget, -1) <> -1 ORDER BY attname",
    )
    assert found == [{"attname": "data", "attstattarget": 0}]


@pytest.mark.parametrize("one_batch", [True, False], ids=["one batch", "cancel and send in two batches"])
def test_a_contact_cancelled_in_flight_then_sent_counts_as_sent_only(
    container: Container, database_url: str, one_batch: bool
) -> None:
    store = container.store
    tenant_id = uuid.uuid4()
    posted = post(tenant_id, accepted=2, when=at(0))
    store.save(*posted.aggregates())
    in_flight, waiting = posted.contacts
    in_flight.dispatch(at=at(10), lease=LEASE)  # the gateway call is under way...
    store.save(in_flight)
    for contact in (in_flight, waiting):  # ...when the queue is cancelled (13:59)
        assert contact.cancel(reason="queue_cancelled", at=at(119))
    store.save(in_flight, waiting)
    if not one_batch:
        project_pending(store, container.pool)
    in_flight.record_sent(gateway_message_id="WA-0", remote_jid=None, text="Olá", at=at(121))  # went out
    store.save(in_flight)
    project_pending(store, container.pool)

    hours = rows(
        database_url,
        "SELECT hour, outcome, n FROM outcome_counts "
        "WHERE tenant_id = %s AND outcome IN ('sent', 'cancelled') ORDER BY hour, outcome",
        tenant_id,
    )
    # the in-flight contact moved from cancelled (13:00) to sent (14:00); the waiting one stays cancelled
    assert [(r["hour"], r["outcome"], r["n"]) for r in hours] == [
        (at(60), "cancelled", 1),
        (at(120), "sent", 1),
    ]
    q = queue_row(database_url, posted.queue.id)
    assert counters(q) == counts(total=2, sent=1, cancelled=1)


def test_history_text_is_stored_as_sent_in_a_database_whose_encoding_is_not_utf8() -> None:
    """The history's JSON goes to PostgreSQL as bytes, which it reads in the connection's client encoding
    (the database's by default): a LATIN1 database gets them in LATIN1, not as UTF-8 read as LATIN1."""
    from billing.db import migrate
    from tests.conftest import ADMIN_URL, _url_for

    name = f"billing_t_latin1_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(
            f"CREATE DATABASE \"{name}\" ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        )
    try:
        url = _url_for(name)
        migrate(url)
        made = open_container(url)
        try:
            full_scenario(made)
            project_pending(made.store, made.pool)
        finally:
            made.pool.close()
            made.store.close()
        found = rows(
            url,
            "SELECT DISTINCT c.message_text AS sent, h.data->>'text' AS recorded FROM contact_history h "
            "JOIN campaign_contacts c USING (contact_id) WHERE h.event_type = 'billing.Contact.Sent'",
        )
        assert found and all("á" in r["sent"] for r in found), found
        assert [r["recorded"] for r in found] == [r["sent"] for r in found]
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
