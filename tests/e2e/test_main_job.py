"""The main job end to end against the real PostgreSQL and RabbitMQ: an ERP's POST becomes WhatsApp
messages at the gateway simulator, and the status endpoints show the outcome.

Every process body (api, projections, relay, worker) runs as a task of this test's event loop, wired
exactly as in production except that the gateway is the in-process Evolution API simulator and the clock
is fixed inside business hours.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.e2e.harness import BASE, NO_PAUSE_POLICY, running_system
from tests.e2e.harness import poll_status as poll_until

TUESDAY_10_SP = datetime(2025, 1, 21, 10, 0, tzinfo=ZoneInfo("America/Sao_Paulo"))


@pytest.fixture
async def system(database_url: str, amqp_url: str) -> AsyncIterator[dict[str, Any]]:
    async with running_system(database_url, amqp_url, start=TUESDAY_10_SP, policy=NO_PAUSE_POLICY) as system:
        yield {"client": system.client, "headers": system.headers, "simulator": system.simulator}


async def poll_status(client: Any, headers: dict[str, str], queue_id: str, want: str) -> dict[str, Any]:
    return await poll_until(client, headers, queue_id, lambda s: s["status"] == want, repr(want))


async def test_post_three_contacts_sends_two_and_rejects_the_bad_phone(system: dict[str, Any]) -> None:
    client, headers, simulator = system["client"], system["headers"], system["simulator"]
    payload = {
        "external_id": "fatura-2025-01",
        "contacts": [
            {
                "nome": "Maria Souza",
                "telefone": "+5511987654321",
                "valor": "R$ 150,00",
                "data_vencimento": "2025-01-15",
            },
            {"nome": "João Lima", "telefone": "abc", "valor": "R$ 80,00", "data_vencimento": "2025-01-15"},
            {
                "nome": "Ana Reis",
                "telefone": "(21) 99876-5432",
                "valor": 99.9,
                "data_vencimento": "15/01/2025",
            },
        ],
    }
    response = await client.post(f"{BASE}/send/overdue", json=payload, headers=headers)
    assert response.status_code == 202
    accepted = response.json()
    assert accepted["contacts"] == {"total": 3, "accepted": 2, "rejected": 1}

    status = await poll_status(client, headers, accepted["queue_id"], "completed")

    expected = {
        "5511987654321": "Olá, Maria Souza! Identificamos que a fatura de R$\u00a0150,00, com vencimento em "
        "15/01/2025, está em aberto há 6 dia(s). Se já pagou, por favor desconsidere esta mensagem.",
        "5521998765432": "Ana Reis, tudo bem? Consta em aberto a fatura de R$\u00a099,90 que venceu em "
        "15/01/2025. Precisa de ajuda para regularizar? É só responder esta mensagem.",
    }
    assert {m.digits: m.text for m in simulator.sent} == expected
    assert len(simulator.sent) == 2
    assert status["contacts"] == {
        "total": 3,
        "pending": 0,
        "sent": 2,
        "failed": 0,
        "skipped": 0,
        "rejected": 1,
        "cancelled": 0,
        "delivered": 0,  # no gateway webhook configured in this run
        "read": 0,
        "replied": 0,
    }
    assert status["progress"] == 100.0
    assert status["paused_reason"] is None
    assert status["completed_at"] is not None

    contacts = (
        await client.get(f"{BASE}/campaign/{accepted['campaign_id']}/contacts", headers=headers)
    ).json()
    assert contacts["next_cursor"] is None
    items = contacts["items"]
    assert [(i["index"], i["status"], i["phone"]) for i in items] == [
        (0, "sent", "+5511987654321"),
        (1, "rejected", None),
        (2, "sent", "+5521998765432"),
    ]
    assert items[0]["message_text"] == expected["5511987654321"]
    assert items[2]["message_text"] == expected["5521998765432"]
    assert items[1]["error"]["code"] == "invalid_phone"
    assert items[1]["telefone"] == "abc"
    sent_ids = {m.message_id for m in simulator.sent}
    assert {items[0]["gateway_message_id"], items[2]["gateway_message_id"]} == sent_ids
    assert all(i["attempts"] == 1 for i in (items[0], items[2]))
