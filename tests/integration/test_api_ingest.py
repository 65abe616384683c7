"""The public send endpoints against the real PostgreSQL: atomic storage, per-contact rejections,
idempotency, authentication and structurally bad requests (nothing stored)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from billing.bootstrap import Container, build_container
from billing.services.tenants import TenantService
from billing.settings import Settings
from billing.webapp import create_app

BASE = "/api/billing/v1/billing"
GATEWAY = {"base_url": "http://sim", "instance": "demo", "api_key": "sim-key", "api_version": "v2"}


def event_count(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM billing_events").fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[tuple[AsyncTestClient[Any], Container, dict[str, str]]]:
    settings = Settings.from_env({}, database_url=database_url, jwt_secret="s" * 32)
    container = build_container(settings)
    tenants = TenantService(container.store, container.clock)
    tenant_id = tenants.create_tenant(name="Loja Exemplo", gateway=GATEWAY)
    key = tenants.issue_api_key(tenant_id, "erp")
    # the ingestion reads active templates from the projection
    from billing.projections.views import project_pending

    project_pending(container.store, container.pool)
    app = create_app(container)
    async with AsyncTestClient(app=app) as client:
        yield client, container, {"X-Billing-API-Key": key}
    await container.aclose()


CONTACTS = [
    {
        "nome": "Maria Souza",
        "telefone": "+5511987654321",
        "valor": "R$ 150,00",
        "data_vencimento": "2025-01-15",
    },
    {"nome": "João Lima", "telefone": "abc", "valor": "150", "data_vencimento": "2025-01-15"},
    {"nome": "Ana Reis", "telefone": "81999998888", "valor": 99.9, "data_vencimento": "15/01/2025"},
]


async def test_post_stores_campaign_and_rejects_bad_phone_alone(api: Any, database_url: str) -> None:
    client, _, headers = api
    response = await client.post(
        f"{BASE}/send/overdue", json={"external_id": "fatura-1", "contacts": CONTACTS}, headers=headers
    )
    assert response.status_code == 202
    body = response.json()
    assert body["contacts"] == {"total": 3, "accepted": 2, "rejected": 1}
    assert body["template_type"] == "overdue"
    assert body["external_id"] == "fatura-1"
    assert [(r["index"], r["code"], r["field"]) for r in body["rejections"]] == [
        (1, "invalid_phone", "contacts[1].telefone")
    ]
    assert body["status"] == "queued"
    uuid.UUID(body["campaign_id"])
    uuid.UUID(body["queue_id"])
    # campaign + queue + 3 contacts
    assert event_count(database_url) - BASELINE_EVENTS == 5


async def test_a_batch_whose_every_contact_is_rejected_is_answered_completed(api: Any) -> None:
    client, _, headers = api
    response = await client.post(f"{BASE}/send/overdue", json={"contacts": [CONTACTS[1]]}, headers=headers)
    assert response.status_code == 202
    body = response.json()
    assert (body["status"], body["contacts"]) == ("completed", {"total": 1, "accepted": 0, "rejected": 1})


BASELINE_EVENTS = 8  # tenant + 3 default templates + their 3 default choices + 1 api key


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        (b"not json", 400, "invalid_json", "body"),
        (b"[]", 422, "invalid_request", "body"),
        (b'{"contacts": []}', 422, "invalid_request", "contacts"),
        (b'{"external_id": "x"}', 422, "invalid_request", "contacts"),
        (
            b'{"contacts": [{"nome": "A", "telefone": "11987654321", "extra": {"a": 1}}]}',
            422,
            "invalid_request",
            "contacts[0].extra",
        ),
        (b'{"contacts": ["x"]}', 422, "invalid_request", "contacts[0]"),
        (
            b'{"template_type": "upcoming", "contacts": [{"nome": "A", "telefone": "11987654321"}]}',
            422,
            "template_type_mismatch",
            "template_type",
        ),
    ],
)
async def test_structurally_bad_request_is_refused_whole_and_nothing_is_stored(
    api: Any, database_url: str, body: bytes, status: int, code: str, field: str
) -> None:
    client, _, headers = api
    response = await client.post(
        f"{BASE}/send/overdue", content=body, headers={**headers, "Content-Type": "application/json"}
    )
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert response.json()["field"] == field
    assert event_count(database_url) == BASELINE_EVENTS


async def test_too_many_contacts_is_refused(api: Any, database_url: str) -> None:
    client, _, headers = api
    contacts = [{"nome": "A", "telefone": "11987654321"}] * 10_001
    response = await client.post(f"{BASE}/send/notification", json={"contacts": contacts}, headers=headers)
    assert response.status_code == 413
    assert response.json()["code"] == "too_many_contacts"
    assert event_count(database_url) == BASELINE_EVENTS


@pytest.mark.parametrize("headers", [{}, {"X-Billing-API-Key": "bk_unknown_key_000000000000"}])
async def test_missing_or_unknown_api_key_is_401(
    api: Any, database_url: str, headers: dict[str, str]
) -> None:
    client, _, _ = api
    response = await client.post(f"{BASE}/send/overdue", json={"contacts": CONTACTS}, headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"
    assert event_count(database_url) == BASELINE_EVENTS


async def test_idempotency_key_returns_the_first_response(api: Any, database_url: str) -> None:
    client, _, headers = api
    payload = {"external_id": "lote-7", "contacts": CONTACTS}
    first = await client.post(
        f"{BASE}/send/overdue", json=payload, headers={**headers, "Idempotency-Key": "k-1"}
    )
    second = await client.post(
        f"{BASE}/send/overdue", json=payload, headers={**headers, "Idempotency-Key": "k-1"}
    )
    assert first.status_code == second.status_code == 202
    assert second.json() == first.json()
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert event_count(database_url) - BASELINE_EVENTS == 5
    reused = await client.post(
        f"{BASE}/send/overdue",
        json={"contacts": CONTACTS[:1]},
        headers={**headers, "Idempotency-Key": "k-1"},
    )
    assert reused.status_code == 422
    assert reused.json()["code"] == "idempotency_key_reused"


async def test_other_tenants_queue_and_campaign_answer_404(api: Any) -> None:
    client, container, headers = api
    response = await client.post(f"{BASE}/send/overdue", json={"contacts": CONTACTS}, headers=headers)
    body = response.json()
    tenants = TenantService(container.store, container.clock)
    other = tenants.create_tenant(name="Outra", gateway=GATEWAY)
    other_headers = {"X-Billing-API-Key": tenants.issue_api_key(other)}
    from billing.projections.views import project_pending

    project_pending(container.store, container.pool)
    mine = await client.get(f"{BASE}/queue/{body['queue_id']}/status", headers=headers)
    assert mine.status_code == 200
    for path in (f"/queue/{body['queue_id']}/status", f"/campaign/{body['campaign_id']}/contacts"):
        answer = await client.get(BASE + path, headers=other_headers)
        assert answer.status_code == 404
        assert answer.json()["code"] == (
            "queue_not_found" if path.startswith("/queue") else "campaign_not_found"
        )
    cancel = await client.post(f"{BASE}/queue/{body['queue_id']}/cancel", headers=other_headers)
    assert cancel.status_code == 404
    unknown = uuid.uuid4()
    for method, path, code in [
        ("GET", f"/queue/{unknown}/status", "queue_not_found"),
        ("GET", f"/campaign/{unknown}/contacts", "campaign_not_found"),
        ("POST", f"/queue/{unknown}/cancel", "queue_not_found"),
    ]:
        answer = await client.request(method, BASE + path, headers=headers)
        assert (answer.status_code, answer.json()["code"]) == (404, code)


async def test_an_idempotency_key_reused_on_another_endpoint_is_refused(api: Any, database_url: str) -> None:
    client, _, headers = api
    keyed = {**headers, "Idempotency-Key": "k-endpoint"}
    payload = {"contacts": [{**CONTACTS[0], "data_vencimento": "2999-01-15"}]}
    first = await client.post(f"{BASE}/send/notification", json=payload, headers=keyed)
    assert first.status_code == 202
    other = await client.post(f"{BASE}/send/upcoming", json=payload, headers=keyed)
    assert (other.status_code, other.json()["code"]) == (422, "idempotency_key_reused")
    assert event_count(database_url) - BASELINE_EVENTS == 3


@pytest.mark.parametrize(
    ("contact", "code"),
    [
        ({"nome": "A", "telefone": "11987654321", **{f"c{i}": "x" for i in range(60)}}, "too_many_fields"),
        ({"nome": "A", "telefone": "11987654321", "x" * 65: "y"}, "invalid_field_name"),
    ],
)
async def test_contacts_with_too_many_or_too_long_field_names_are_refused_whole(
    api: Any, database_url: str, contact: dict[str, str], code: str
) -> None:
    client, _, headers = api
    response = await client.post(f"{BASE}/send/notification", json={"contacts": [contact]}, headers=headers)
    assert (response.status_code, response.json()["code"], response.json()["field"]) == (
        422,
        code,
        "contacts[0]",
    )
    assert event_count(database_url) == BASELINE_EVENTS


async def test_idempotency_keys_are_per_tenant(api: Any) -> None:
    client, container, headers = api
    first = await client.post(
        f"{BASE}/send/overdue", json={"contacts": CONTACTS}, headers={**headers, "Idempotency-Key": "k-1"}
    )
    tenants = TenantService(container.store, container.clock)
    other = tenants.create_tenant(name="Outra", gateway=GATEWAY)
    from billing.projections.views import project_pending

    project_pending(container.store, container.pool)
    other_headers = {"X-Billing-API-Key": tenants.issue_api_key(other), "Idempotency-Key": "k-1"}
    second = await client.post(f"{BASE}/send/overdue", json={"contacts": CONTACTS[:1]}, headers=other_headers)
    assert second.status_code == 202, second.text
    assert second.json()["campaign_id"] != first.json()["campaign_id"]
    assert second.json()["contacts"] == {"total": 1, "accepted": 1, "rejected": 0}


async def test_concurrent_retries_with_one_idempotency_key_store_one_campaign(
    api: Any, database_url: str
) -> None:
    client, _, headers = api
    keyed = {**headers, "Idempotency-Key": "k-race"}
    answers = await asyncio.gather(
        *(client.post(f"{BASE}/send/overdue", json={"contacts": CONTACTS}, headers=keyed) for _ in range(3))
    )
    assert [a.status_code for a in answers] == [202, 202, 202]
    assert len({a.json()["campaign_id"] for a in answers}) == 1
    assert event_count(database_url) - BASELINE_EVENTS == 5


async def test_a_large_post_whose_save_fails_midway_stores_nothing(api: Any, database_url: str) -> None:
    """Promise 1 through the COPY path (>= 100 events): a clash on the 121st contact's id aborts the save."""
    client, _, headers = api
    key = "k-clash"
    tenant_id = next(iter(api_tenant_ids(database_url)))
    campaign_id = uuid.uuid5(uuid.NAMESPACE_URL, f"billing:{tenant_id}:campaign:{key}")
    clash = uuid.uuid5(campaign_id, "120")
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO billing_events (originator_id, originator_version, topic, state) "
            "VALUES (%s, 1, 'billing.Contact.Added', '{}')",
            (clash,),
        )
    contacts = [{**CONTACTS[0], "telefone": f"+55119876{54000 + i:05d}"} for i in range(150)]
    response = await client.post(
        f"{BASE}/send/overdue", json={"contacts": contacts}, headers={**headers, "Idempotency-Key": key}
    )
    assert response.status_code == 500
    assert event_count(database_url) == BASELINE_EVENTS + 1  # only the planted row


def api_tenant_ids(database_url: str) -> set[uuid.UUID]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT originator_id FROM billing_events WHERE topic = 'billing.Tenant.Registered'"
        )
        return {row[0] for row in rows.fetchall()}
