"""After the send, end to end on the real services: the simulator's receipts (duplicated, out of order,
one before the send's answer) and a "PARAR" reply reach the status and contacts list; the next batch
skips the opted-out phone; the ERP receiver gets every event, signed, exactly once after de-duplication
although it answered 500 at first. Also the inputs of "send to the account that exists"."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import psycopg

from billing.gateway.simulator import EvolutionSimulator
from tests.e2e.erp_receiver import ErpReceiver
from tests.e2e.harness import (
    BASE,
    NO_PAUSE_POLICY,
    SP,
    contact,
    contact_ids,
    counters,
    eventually,
    running_system,
)

WEDNESDAY_10 = datetime(2025, 1, 15, 10, 0, tzinfo=SP)
JID = "@s.whatsapp.net"


async def test_receipts_reply_opt_out_and_signed_erp_webhooks(database_url: str, amqp_url: str) -> None:
    async with running_system(
        database_url, amqp_url, start=WEDNESDAY_10, policy=NO_PAUSE_POLICY, hooks=True
    ) as system:
        admin = system.admin_headers()
        receiver = ErpReceiver(fail_first=4, now=lambda: int(system.clock.now().timestamp()))
        await receiver.start()
        try:
            created = await system.client.post(f"{BASE}/webhooks/", json={"url": receiver.url}, headers=admin)
            assert created.status_code == 201, created.text
            receiver.secret = created.json()["secret"]

            # A batch of three: the simulator sends SERVER_ACK, DELIVERY_ACK and READ shuffled, one twice
            first = await system.post("overdue", "fatura-1", [contact(1), contact(2), contact(3)])
            done = await system.wait_status(
                first["queue_id"],
                lambda d: d["status"] == "completed" and d["contacts"]["read"] == 3,
                "three sent, delivered and read",
            )
            assert done["contacts"] == counters(total=3, sent=3, delivered=3, read=3)
            assert system.simulator.webhook_calls.count(("messages.update", "READ", 200)) >= 3

            # The debtor of contact 1 answers "PARAR": a reply, and an opt-out in the consent ledger
            await system.simulator.reply("loja", "5511987654301" + JID, "Por favor, PARAR!")
            replied = await system.wait_status(
                first["queue_id"], lambda d: d["contacts"]["replied"] == 1, "the reply recorded"
            )
            assert replied["contacts"] == counters(total=3, sent=3, delivered=3, read=3, replied=1)
            items = {item["phone"]: item for item in await system.contacts(first["campaign_id"])}
            answered = items["+5511987654301"]
            assert answered["delivered_at"] is not None and answered["read_at"] is not None
            assert answered["replied_at"] is not None and items["+5511987654302"]["replied_at"] is None

            async def opted_out() -> list[dict[str, Any]] | None:
                response = await system.client.get(f"{BASE}/opt-outs/", headers=admin)
                return response.json() or None

            listed = await eventually(opted_out, "the opt-out listed")
            assert [(o["phone"], o["stop_word"], o["contact_id"]) for o in listed] == [
                ("+5511987654301", "parar", str(min(contact_ids(first["campaign_id"], 1))))
            ]
            history = await system.client.get(f"{BASE}/history/phone/+5511987654301", headers=admin)
            kinds = [e["type"] for e in history.json()["conversation"]]
            assert kinds == [
                "billing.Conversation.Opened",
                "billing.Conversation.Replied",
                "billing.Conversation.OptedOut",
            ]
            assert (
                history.json()["conversation"][2]["data"]["message_id"]
                == history.json()["conversation"][1]["data"]["message_id"]
            )

            # The next batch skips the opted-out phone without a send
            sends_before = len(system.simulator.sent)
            second = await system.post("notification", "aviso-1", [contact(1), contact(4)])
            after = await system.wait_status(
                second["queue_id"], lambda d: d["status"] == "completed", "second done"
            )
            assert after["contacts"]["skipped"] == 1 and after["contacts"]["sent"] == 1
            skipped = [i for i in await system.contacts(second["campaign_id"]) if i["status"] == "skipped"]
            assert [(i["phone"], i["error"]["code"]) for i in skipped] == [("+5511987654301", "opted_out")]
            assert [m.digits for m in system.simulator.sent[sends_before:]] == ["5511987654304"]

            # The ERP answered 500 at first: the retries (10 s, 30 s... later) bring every event once
            expected = {
                "contact.sent": 4, "contact.delivered": 4, "contact.read": 4, "contact.replied": 1,
                "contact.opted_out": 1, "contact.skipped": 1, "queue.completed": 2,
            }  # fmt: skip
            for _ in range(60):
                if receiver.types() == Counter(expected):
                    break
                system.clock.advance(timedelta(seconds=31))
                await system.simulator.drain_webhooks()
                await asyncio.sleep(0.3)
            assert receiver.types() == Counter(expected)
            assert receiver.bad_signatures == 0
            assert receiver.requests > sum(expected.values())  # the 500s were retried
            rows = await _rows(database_url, "SELECT event_id, state FROM erp_deliveries")
            assert {str(r[0]) for r in rows} == set(receiver.events)
            assert {r[1] for r in rows} == {"delivered"}
            deliveries = (
                await system.client.get(f"{BASE}/webhooks/deliveries?limit=500", headers=admin)
            ).json()
            failed_first = [d for d in deliveries if len(d["attempts"]) > 1]
            assert failed_first and all(d["attempts"][0]["status_code"] == 500 for d in failed_first)
        finally:
            await receiver.stop()


async def _rows(database_url: str, sql: str) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(sql)
        return list(await cur.fetchall())


async def test_the_account_that_exists_is_the_one_sent_to(database_url: str, amqp_url: str) -> None:
    async with running_system(database_url, amqp_url, start=WEDNESDAY_10, policy=NO_PAUSE_POLICY) as system:
        sim: EvolutionSimulator = system.simulator
        sim.add_account("557588251234")  # registered before the ninth digit
        sim.add_account("5547988123456")  # with it (a gateway that drops the 9 would miss it)
        people = [
            {"nome": "Old", "telefone": "(75) 8825-1234", "valor": "10,00", "data_vencimento": "2025-01-10"},
            {"nome": "Old2", "telefone": "557588251234", "valor": "10,00", "data_vencimento": "2025-01-10"},
            {
                "nome": "New",
                "telefone": "+55 75 98825-1234",
                "valor": "10,00",
                "data_vencimento": "2025-01-10",
            },
            {
                "nome": "Nine",
                "telefone": "+55 47 98812-3456",
                "valor": "10,00",
                "data_vencimento": "2025-01-10",
            },
            {
                "nome": "Nobody",
                "telefone": "+55 11 98765-0000",
                "valor": "10,00",
                "data_vencimento": "2025-01-10",
            },
        ]
        # three spellings of one number on purpose: each must reach the account that exists
        accepted = await system.post("notification", "lookup-1", people, allow_duplicate_phones=True)
        assert accepted["rejections"] == [] and accepted["contacts"]["accepted"] == 5
        done = await system.wait_status(accepted["queue_id"], lambda d: d["status"] == "completed", "done")
        assert done["contacts"]["sent"] == 4 and done["contacts"]["skipped"] == 1
        sent = sorted(m.number for m in sim.sent)
        assert sent == sorted(
            ["557588251234" + JID] * 3 + ["5547988123456" + JID]
        )  # the old 8-digit mobile is sent, not rejected; the JIDs are those that exist
        items = await system.contacts(accepted["campaign_id"])
        nobody = next(i for i in items if i["nome"] == "Nobody")
        assert (nobody["status"], nobody["error"]["code"]) == ("skipped", "not_on_whatsapp")
        # one lookup call for the three distinct phones, both forms of each mobile (six numbers)
        assert len(sim.number_checks) == 1
        assert sorted(sim.number_checks[0]) == [
            "551187650000", "5511987650000", "554788123456", "5547988123456", "557588251234", "5575988251234",
        ]  # fmt: skip
        # the Sent event keeps the JID asked for and the JID answered
        nine = next(i for i in items if i["nome"] == "Nine")
        history = await system.client.get(
            f"{BASE}/history/contact/{nine['contact_id']}", headers=system.admin_headers()
        )
        sent_event = next(e for e in history.json()["events"] if e["type"] == "billing.Contact.Sent")
        assert (sent_event["data"]["jid_asked"], sent_event["data"]["remote_jid"]) == (
            "5547988123456" + JID, "5547988123456" + JID,
        )  # fmt: skip
