"""Cancellation end to end against the real PostgreSQL and RabbitMQ (issue 4 §6): a whole queue
(``POST /queue/{id}/cancel``) or every unsent reminder of one invoice (``POST /contacts/cancel``).

The whole system runs in this event loop (see :mod:`tests.e2e.harness`) with a :class:`FakeClock` the tests
move by hand. The worker can be stopped and started, so a job can sit in the broker while its contact is
cancelled; its handler records what it did with every job.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any
from uuid import UUID

import pytest

from billing.domain.policy import default_policy_spec
from billing.domain.sending import Handled
from tests.e2e.harness import BASE, SP, WAIT, contact, contact_ids, counters, number, running_system

pytestmark = pytest.mark.e2e

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
            ({}, "external_id is required"),
            ({"external_id": None}, "invalid request: Expected `str`, got `null` (external_id)"),
            ({"external_id": 9}, "invalid request: Expected `str`, got `int` (external_id)"),
        ):
            refused = await system.client.post(f"{BASE}/contacts/cancel", json=body, headers=system.headers)
            assert refused.status_code == 422
            assert refused.json() == {"code": "invalid_request", "message": message, "field": "external_id"}
        not_json = await system.client.post(
            f"{BASE}/contacts/cancel",
            content=b"{nope",
            headers={**system.headers, "Content-Type": "application/json"},
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
            "field": None,
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
