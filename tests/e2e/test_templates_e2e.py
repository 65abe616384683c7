"""Issue 3's end-to-end check: a template with two variations created through the admin API decides the
exact texts that reach the gateway, alternating variations by position in the batch.

Every process body (api, projections, relay, worker) runs as a task of this test's event loop against the
real PostgreSQL and RabbitMQ (a unique exchange/queue prefix), with the in-process Evolution API simulator
and a clock fixed inside business hours (Tuesday 21 January 2025, 10:00 in São Paulo).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from billing.gateway.simulator import EvolutionSimulator
from tests.e2e.harness import BASE, NO_PAUSE_POLICY, eventually, running_system

pytestmark = pytest.mark.e2e

SECRET = "t" * 32
TUESDAY_10_SP = datetime(2025, 1, 21, 10, 0, tzinfo=ZoneInfo("America/Sao_Paulo"))
NBSP = "\u00a0"

VARIATION_A = (
    "Olá, {{nome_cliente}}! "
    "{{#if vencida}}Sua fatura de {{valor}} venceu em {{data_vencimento}} e está em aberto há "
    "{{dias_atraso}} dia(s).{{else}}Sua fatura de {{valor}} vence hoje ({{data_vencimento}}).{{/if}} "
    "Pedido {{pedido}}."
)
VARIATION_B = (
    "{{nome_cliente}}, lembrete do pedido {{pedido}}: {{valor}}"
    "{{#if valor_total}} (total com encargos: {{valor_total}}){{/if}}, vencimento {{data_vencimento}}."
    "{{! nunca aparece }}"
)

CONTACTS: list[dict[str, Any]] = [
    {
        "nome": "Maria Souza",
        "telefone": "+5511987654321",
        "valor": "R$ 1.234,56",
        "data_vencimento": "2025-01-15",
        "pedido": "1001",
    },
    {
        "nome": "João Lima",
        "telefone": "(21) 99876-5432",
        "valor": 99.9,
        "valor_total": "R$ 105,40",
        "data_vencimento": "10/01/2025",
        "pedido": "1002",
    },
    {
        "nome": "Ana Reis",
        "telefone": "31991234567",
        "valor": "1234.5",
        "data_vencimento": "2025-01-21",
        "pedido": "1003",
    },
    {
        "nome": "Pedro Alves",
        "telefone": "+55 41 99234-5678",
        "valor": 10,
        "data_vencimento": "2024-12-20",
        "pedido": "1004",
    },
    {
        "nome": "D'Ávila & Filhos <ME>",
        "telefone": "+5581999998888",
        "valor": "0,99",
        "data_vencimento": "2024-12-20",
        "pedido": "{{nome}}",
    },
]

# position → (gateway number, variation, exact text)
EXPECTED: list[tuple[str, int, str]] = [
    (
        "5511987654321",
        0,
        f"Olá, Maria Souza! Sua fatura de R${NBSP}1.234,56 venceu em 15/01/2025 e está em aberto "
        "há 6 dia(s). Pedido 1001.",
    ),
    (
        "5521998765432",
        1,
        f"João Lima, lembrete do pedido 1002: R${NBSP}99,90 (total com encargos: R${NBSP}105,40), "
        "vencimento 10/01/2025.",
    ),
    (
        "5531991234567",
        0,
        f"Olá, Ana Reis! Sua fatura de R${NBSP}1.234,50 vence hoje (21/01/2025). Pedido 1003.",
    ),
    (
        "5541992345678",
        1,
        f"Pedro Alves, lembrete do pedido 1004: R${NBSP}10,00, vencimento 20/12/2024.",
    ),
    (
        "5581999998888",
        0,
        f"Olá, D'Ávila & Filhos <ME>! Sua fatura de R${NBSP}0,99 venceu em 20/12/2024 e está em aberto há "
        "32 dia(s). Pedido {{nome}}.",
    ),
]


@pytest.fixture
async def system(database_url: str, amqp_url: str) -> AsyncIterator[dict[str, Any]]:
    async with running_system(
        database_url,
        amqp_url,
        start=TUESDAY_10_SP,
        policy=NO_PAUSE_POLICY,
        prefix="e2e-tpl",
        jwt_secret=SECRET,
    ) as system:
        yield {
            "client": system.client,
            "public": system.headers,
            "admin": system.admin_headers(),
            "simulator": system.simulator,
        }


async def test_a_two_variation_template_from_the_admin_api_alternates_in_the_sent_texts(
    system: dict[str, Any],
) -> None:
    client, public, admin = system["client"], system["public"], system["admin"]
    simulator: EvolutionSimulator = system["simulator"]

    # 1. the admin creates the template, makes it the overdue default and retires the built-in one
    created = await client.post(
        f"{BASE}/templates/",
        json={
            "name": "Cobrança com pedido",
            "template_type": "overdue",
            "description": "duas variações, com #if/else",
            "variations": [VARIATION_A, VARIATION_B],
        },
        headers=admin,
    )
    assert created.status_code == 201, created.text
    template_id = created.json()["template_id"]
    templates = (await client.get(f"{BASE}/templates/", headers=admin)).json()
    default = next(
        t for t in templates if t["template_type"] == "overdue" and t["template_id"] != template_id
    )
    refused = await client.delete(f"{BASE}/templates/{default['template_id']}/", headers=admin)
    assert refused.status_code == 409  # still the default: another must be chosen first
    assert refused.json()["code"] == "default_template"
    chosen = await client.post(f"{BASE}/templates/{template_id}/default", headers=admin)
    assert chosen.status_code == 200, chosen.text
    assert chosen.json()["default"] is True
    retired = await client.delete(f"{BASE}/templates/{default['template_id']}/", headers=admin)
    assert retired.status_code == 200
    assert retired.json()["active"] is False

    async def only_mine_active() -> list[str] | None:
        listed = (await client.get(f"{BASE}/templates/", headers=admin)).json()
        active = [t["template_id"] for t in listed if t["template_type"] == "overdue" and t["active"]]
        defaults = [t["template_id"] for t in listed if t["template_type"] == "overdue" and t["default"]]
        return active if active == [template_id] and defaults == [template_id] else None

    await eventually(only_mine_active, "the templates view to show only the new overdue template active")

    # 2. the ERP posts five contacts
    response = await client.post(
        f"{BASE}/send/overdue", json={"external_id": "lote-e2e", "contacts": CONTACTS}, headers=public
    )
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["contacts"] == {"total": 5, "accepted": 5, "rejected": 0}

    # 3. the system sends them
    async def completed() -> dict[str, Any] | None:
        answer = await client.get(f"{BASE}/queue/{accepted['queue_id']}/status", headers=public)
        body: dict[str, Any] = answer.json()
        return body if answer.status_code == 200 and body["status"] == "completed" else None

    status = await eventually(completed, "the queue to complete")
    assert status["contacts"]["sent"] == 5

    # 4. exactly these texts reached the gateway, one per number, variations A, B, A, B, A by position
    assert len(simulator.sent) == 5
    assert {m.digits: m.text for m in simulator.sent} == {number: text for number, _, text in EXPECTED}

    items = (await client.get(f"{BASE}/campaign/{accepted['campaign_id']}/contacts", headers=public)).json()[
        "items"
    ]
    assert [(i["index"], i["status"], i["message_text"]) for i in items] == [
        (index, "sent", text) for index, (_, _, text) in enumerate(EXPECTED)
    ]
    # each message records the template, its version and the variation that produced it
    for item, (_, variation, text) in zip(items, EXPECTED, strict=True):
        history = (await client.get(f"{BASE}/history/contact/{item['contact_id']}", headers=admin)).json()
        sent = [e["data"] for e in history["events"] if e["type"] == "billing.Contact.Sent"]
        assert len(sent) == 1
        assert (sent[0]["template_id"], sent[0]["template_version"], sent[0]["variation"]) == (
            template_id,
            1,
            variation,
        )
        assert sent[0]["text"] == text
