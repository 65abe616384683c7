"""Invoices as a first-class reference and the auditor's history, end to end on the real PostgreSQL and
RabbitMQ (the whole system in this event loop, see :mod:`tests.e2e.harness`):

- a contact carries its own invoice reference (``external_id`` inside the contact); cancelling that
  invoice cancels its unsent reminders in every batch, and nothing else;
- the ERP lists an invoice's contacts across campaigns (``GET /contacts?external_id=``);
- ``GET /history/invoice/{ref}`` gives every event of the invoice across two campaigns in time order,
  each claim with the rule that allowed it as recorded then (window, calendar and policy versions,
  throttle and daily-cap counts), the exact text, template version and variation, JID and message id;
  ``?format=csv`` gives the same evidence as CSV; ``GET /history/phone/{e164}`` the same by phone.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from billing.api.auth import mint_token
from billing.services.history import CSV_COLUMNS
from tests.e2e.harness import BASE, NO_PAUSE_POLICY, SP, contact, counters, eventually, running_system

pytestmark = pytest.mark.e2e

MONDAY_10_00 = datetime(2025, 1, 20, 10, 0, tzinfo=SP)


def with_invoice(n: int, invoice: str) -> dict[str, Any]:
    return {**contact(n), "external_id": invoice}


async def test_cancelling_one_invoice_cancels_its_reminders_in_two_batches_and_nothing_else(
    database_url: str, amqp_url: str
) -> None:
    async with running_system(
        database_url, amqp_url, start=MONDAY_10_00, policy=NO_PAUSE_POLICY, worker=False
    ) as system:
        first = await system.post(
            "overdue", "lote-1", [with_invoice(1, "NF-123"), with_invoice(2, "NF-200"), contact(3)]
        )
        second = await system.post(
            "overdue", "lote-2", [with_invoice(4, "NF-300"), with_invoice(5, "NF-123")]
        )

        async def listed() -> list[dict[str, Any]] | None:
            r = await system.client.get(
                f"{BASE}/contacts", params={"external_id": "NF-123"}, headers=system.headers
            )
            assert r.status_code == 200, r.text
            found: list[dict[str, Any]] = r.json()["items"]
            return found if len(found) == 2 else None  # once the views show both batches

        items = await eventually(listed, "both contacts of NF-123 listed")
        assert [
            (i["campaign_id"], i["index"], i["invoice"], i["external_id"], i["status"]) for i in items
        ] == [
            (first["campaign_id"], 0, "NF-123", "lote-1", "pending"),
            (second["campaign_id"], 1, "NF-123", "lote-2", "pending"),
        ]

        response = await system.client.post(
            f"{BASE}/contacts/cancel", json={"external_id": "NF-123"}, headers=system.headers
        )
        assert response.status_code == 200
        assert response.json() == {"external_id": "NF-123", "cancelled": 2}

        system.start_worker()
        await system.wait_status(first["queue_id"], lambda s: s["status"] == "completed", "first completed")
        await system.wait_status(second["queue_id"], lambda s: s["status"] == "completed", "second done")
        one = await system.status(first["queue_id"])
        two = await system.status(second["queue_id"])
        assert one.json()["contacts"] == counters(total=3, sent=2, cancelled=1)
        assert two.json()["contacts"] == counters(total=2, sent=1, cancelled=1)
        assert system.sent_numbers() == ["5511987654302", "5511987654303", "5511987654304"]

        # the batch's own reference still cancels the whole batch (as before contacts had their own)
        await system.stop_worker()
        third = await system.post("overdue", "lote-3", [with_invoice(6, "NF-600"), contact(7)])
        response = await system.client.post(
            f"{BASE}/contacts/cancel", json={"external_id": "lote-3"}, headers=system.headers
        )
        assert response.json() == {"external_id": "lote-3", "cancelled": 2}
        done = await system.wait_status(
            third["queue_id"], lambda s: s["contacts"]["pending"] == 0, "cancelled"
        )
        assert done["contacts"] == counters(total=2, cancelled=2)


def billing_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``billing`` command with only ``BILLING_DATABASE_URL`` set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    env.update(BILLING_DATABASE_URL=database_url, BILLING_LOG_FORMAT="console", COLUMNS="120")
    return subprocess.run(
        [str(Path(sys.executable).with_name("billing")), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_history_of_an_invoice_across_two_campaigns_names_the_rule_that_allowed_each_send(
    database_url: str, amqp_url: str, tmp_path: Path
) -> None:
    async with running_system(database_url, amqp_url, start=MONDAY_10_00, policy=NO_PAUSE_POLICY) as system:
        first = await system.post("overdue", "lote-1", [with_invoice(1, "NF-9"), with_invoice(2, "NF-10")])
        await system.wait_status(first["queue_id"], lambda s: s["status"] == "completed", "first sent")

        admin = system.admin_headers()
        # a second reminder to the same debtor on the same day: lift the per-debtor cap (default 1/day)
        capped = await system.client.patch(f"{BASE}/engagement/", json={"daily_cap": 2}, headers=admin)
        assert capped.status_code == 200, capped.text
        changed = await system.client.patch(
            f"{BASE}/config/", json={"policy": {"messages_per_minute": 7}}, headers=admin
        )
        assert changed.status_code == 200, changed.text
        system.clock.advance(timedelta(minutes=10))
        second = await system.post(
            "upcoming", "lote-2", [{**with_invoice(1, "NF-9"), "data_vencimento": "2025-01-25"}]
        )
        await system.wait_status(second["queue_id"], lambda s: s["status"] == "completed", "second sent")
        await system.wait_for(lambda: len(system.simulator.sent) == 3, "three messages at the gateway")
        # the projection applies the last Sent after the status read it; wait for the history to have it
        sent = {m.digits + m.text: m for m in system.simulator.sent}

        async def history() -> dict[str, Any] | None:
            r = await system.client.get(f"{BASE}/history/invoice/NF-9", headers=admin)
            assert r.status_code == 200, r.text
            body: dict[str, Any] = r.json()
            return body if [e["event"] for e in body["events"]].count("sent") == 2 else None

        body = await eventually(history, "both sends in the history")
        assert body["invoice"] == "NF-9"
        assert [(c["campaign_id"], c["template_type"], c["status"]) for c in body["contacts"]] == [
            (first["campaign_id"], "overdue", "sent"),
            (second["campaign_id"], "upcoming", "sent"),
        ]
        events = body["events"]
        assert [(e["event"], e["campaign_id"]) for e in events] == [
            ("added", first["campaign_id"]),
            ("dispatched", first["campaign_id"]),
            ("sent", first["campaign_id"]),
            ("added", second["campaign_id"]),
            ("dispatched", second["campaign_id"]),
            ("sent", second["campaign_id"]),
        ]
        assert [e["at"] for e in events] == sorted(e["at"] for e in events)
        assert {e["invoice"] for e in events} == {"NF-9"}
        assert {e["phone"] for e in events} == {"+5511987654301"}

        window = {
            "applies": True,
            "open": True,
            "window_start": "2025-01-20T08:00:00-03:00",
            "window_end": "2025-01-20T18:00:00-03:00",
            "timezone": "America/Sao_Paulo",
            "calendar_version": 1,
        }
        first_claim, second_claim = events[1]["data"], events[4]["data"]
        assert first_claim["attempt"] == 1
        assert first_claim["allowed_by"] == {
            "policy_version": 1,
            "business_hours": window,
            "throttle": {
                "decision": "allowed",
                "messages_per_minute": 20,
                "sent_in_window": first_claim["allowed_by"]["throttle"]["sent_in_window"],
                "max_messages_per_day": 1000,
                "sent_today": first_claim["allowed_by"]["throttle"]["sent_today"],
                "local_date": "2025-01-20",
            },
            "recipient": {  # not opted out, under the per-debtor cap, the account the lookup found
                "opted_out": False,
                "debtor_cap": "allowed",
                "whatsapp_account": "5511987654301@s.whatsapp.net",
            },
        }
        # NF-9 and NF-10 of the first batch went out in some order: this one saw 0 or 1 sends before it
        assert first_claim["allowed_by"]["throttle"]["sent_in_window"] in (0, 1)
        assert (
            first_claim["allowed_by"]["throttle"]["sent_today"]
            == first_claim["allowed_by"]["throttle"]["sent_in_window"]
        )
        assert second_claim["allowed_by"] == {
            "policy_version": 5,  # Tenant v1 created it, v2–4 chose the default templates, v5 is the PATCH
            "business_hours": window,  # the calendar itself did not change
            "throttle": {
                "decision": "allowed",
                "messages_per_minute": 7,
                "sent_in_window": 0,  # ten minutes later
                "max_messages_per_day": 1000,
                "sent_today": 2,
                "local_date": "2025-01-20",
            },
            "recipient": {  # not opted out, under the per-debtor cap, the account the lookup found
                "opted_out": False,
                "debtor_cap": "allowed",
                "whatsapp_account": "5511987654301@s.whatsapp.net",
            },
        }
        for sent_event in (events[2]["data"], events[5]["data"]):
            message = sent["5511987654301" + sent_event["text"]]
            assert sent_event["gateway_message_id"] == message.message_id
            assert sent_event["remote_jid"] == "5511987654301@s.whatsapp.net"
            assert sent_event["template_version"] == 1
            assert sent_event["variation"] == 0
        assert events[2]["data"]["text"] != events[5]["data"]["text"]  # overdue then upcoming template
        assert events[0]["data"]["fields"]["external_id"] == "NF-9"

        csv_answer = await system.client.get(f"{BASE}/history/invoice/NF-9?format=csv", headers=admin)
        assert csv_answer.status_code == 200
        assert csv_answer.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(csv_answer.text)))
        assert [r["event"] for r in rows] == [e["event"] for e in events]
        assert rows[2]["text"] == events[2]["data"]["text"]
        assert rows[2]["gateway_message_id"] == events[2]["data"]["gateway_message_id"]
        assert json.loads(rows[4]["allowed_by"]) == second_claim["allowed_by"]

        # the same evidence from the CLI, to a file, for a date range and one invoice
        async def history_export(*args: str) -> subprocess.CompletedProcess[str]:
            """``billing history export --tenant <this tenant> ARGS``, which must succeed."""
            done = await asyncio.to_thread(
                billing_cli, database_url, "history", "export", "--tenant", str(system.tenant_id), *args
            )
            assert done.returncode == 0, done.stderr
            return done

        out = tmp_path / "evidence.csv"
        export = await history_export(
            "--from", "2025-01-20", "--to", "2025-01-20", "--invoice", "NF-9", "--output", str(out)
        )
        assert export.stdout == f"{out}\t6 entries (csv)\n"
        assert "exporting to" in export.stderr  # the progress bar
        assert out.read_bytes().decode() == csv_answer.text
        as_json = tmp_path / "evidence.json"
        await history_export(
            "--from", "2025-01-19", "--to", "2025-01-21", "--phone", "11 98765-4301", "--output", str(as_json)
        )
        assert json.loads(as_json.read_text()) == events
        empty = tmp_path / "none.csv"
        await history_export("--from", "2025-01-21", "--to", "2025-01-22", "--output", str(empty))
        assert empty.read_text().splitlines() == [",".join(CSV_COLUMNS)]

        by_phone = await system.client.get(f"{BASE}/history/phone/(11) 98765-4301", headers=admin)
        assert by_phone.status_code == 200
        assert by_phone.json()["phone"] == "+5511987654301"
        assert [e["event"] for e in by_phone.json()["events"]] == [e["event"] for e in events]

        other = await system.client.get(f"{BASE}/history/invoice/NF-404", headers=admin)
        assert other.status_code == 404
        assert other.json()["code"] == "invoice_not_found"
        foreign_id, _ = system.create_tenant("Outra", NO_PAUSE_POLICY)
        foreign_admin = {"Authorization": f"Bearer {mint_token(system.jwt_secret, foreign_id)}"}
        foreign = await system.client.get(f"{BASE}/history/invoice/NF-9", headers=foreign_admin)
        assert foreign.status_code == 404  # another tenant's invoice reads as absent (promise 7)
