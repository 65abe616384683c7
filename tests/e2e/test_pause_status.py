"""What the ERP sees while a queue waits (issue 4 §2, §3, §7): the status endpoint's ``status``,
``paused_reason`` and ``resume_at`` while paused outside business hours (case H04: over a national
holiday) and after the daily cap, then ``running`` / ``completed`` once the fake clock reaches the opening.

The whole system runs in this event loop against the real PostgreSQL and RabbitMQ (see
:mod:`tests.e2e.harness`); only the clock is moved by hand.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest

from billing.domain.policy import default_policy_spec
from billing.domain.sending import Handled
from tests.cases import load_cases
from tests.e2e.harness import SP, System, contact, contact_ids, counters, number, running_system

pytestmark = pytest.mark.e2e

H04 = next(case for case in load_cases("business_hours.json") if case["id"] == "H04")
#: The tenant's default calendar (São Paulo, Mon-Fri 08-18, Sat 08-12, BR holidays), no pause between
#: messages.
DEFAULT_POLICY: dict[str, Any] = {**default_policy_spec(), "pause_min_s": 0, "pause_max_s": 0}


async def wait_status(system: System, queue_id: str, want: str, **contacts: int) -> dict[str, Any]:
    """Poll until the queue has status ``want`` and exactly these counters."""
    expected = counters(**contacts)
    return await system.wait_status(
        queue_id,
        lambda s: s["status"] == want and s["contacts"] == expected,
        f"{want} with {expected}",
    )


async def test_h04_paused_outside_business_hours_until_the_opening_after_the_holiday(
    database_url: str, amqp_url: str
) -> None:
    assert H04["tz"] == "America/Sao_Paulo"
    assert H04["windows"] == {"mon-fri": [["08:00", "18:00"]]}
    at = datetime.fromisoformat(H04["at"])  # Tuesday 2024-11-19 18:00, the window just closed
    opening = datetime.fromisoformat(H04["expect"]["resume_at"])  # Thursday 08:00 (20 Nov is a holiday)
    policy = {**DEFAULT_POLICY, "windows": H04["windows"], "messages_per_minute": 1}
    async with running_system(database_url, amqp_url, start=at, policy=policy) as system:
        posted = await system.post(
            "overdue", "fatura-1", [contact(1, due="2024-11-10"), contact(2, due="2024-11-10")]
        )
        ids = contact_ids(posted["campaign_id"], 2)

        paused = await wait_status(system, posted["queue_id"], "paused", total=2, pending=2)
        assert paused["paused_reason"] == H04["expect"]["paused_reason"] == "outside_business_hours"
        assert paused["resume_at"] == "2024-11-21T11:00:00+00:00"
        assert datetime.fromisoformat(paused["resume_at"]) == opening
        assert (paused["progress"], paused["started_at"], paused["completed_at"]) == (0.0, None, None)
        await system.wait_for(lambda: len(system.handler.outcomes(ids)) == 2, "both jobs deferred")
        # Each job either found the window closed or the queue already paused by the other.
        assert set(system.handler.outcomes(ids)) <= {Handled.OUTSIDE_BUSINESS_HOURS, Handled.QUEUE_PAUSED}

        # Wednesday 20 November 08:00, the holiday: still paused, nothing sent.
        system.clock.set(datetime(2024, 11, 20, 8, 0, tzinfo=SP))
        await asyncio.sleep(0.5)  # five scheduler ticks
        assert len(system.handler.handled) == 2  # no job came back
        holiday = (await system.status(posted["queue_id"])).json()
        assert (holiday["status"], holiday["paused_reason"]) == ("paused", "outside_business_hours")
        assert holiday["resume_at"] == "2024-11-21T11:00:00+00:00"
        assert system.simulator.sent == []

        # Thursday 08:00: the scheduler resumes it; one message a minute, so it is running with one sent.
        system.clock.set(opening)
        running = await wait_status(system, posted["queue_id"], "running", total=2, pending=1, sent=1)
        assert (running["paused_reason"], running["resume_at"]) == (None, None)
        assert running["started_at"] == "2024-11-21T11:00:00+00:00"
        assert running["progress"] == 50.0
        # the second waits for the tenant's next minute: the scheduler republishes no more than can go out
        await asyncio.sleep(1.0)
        assert len(system.simulator.sent) == 1

        system.clock.advance(timedelta(seconds=61))
        done = await wait_status(system, posted["queue_id"], "completed", total=2, sent=2)
        assert (done["paused_reason"], done["resume_at"]) == (None, None)
        assert done["completed_at"] == "2024-11-21T11:01:01+00:00"
        assert done["progress"] == 100.0
        assert system.sent_numbers() == [number(1), number(2)]
        # days are counted when the message goes out (Thursday 21st), not when the batch came (19th: 9)
        assert system.simulator.sent[0].text == (
            "Olá, Cliente 1! Identificamos que a fatura de R$\u00a0150,00, com vencimento em 10/11/2024, "
            "está em aberto há 11 dia(s). Se já pagou, por favor desconsidere esta mensagem."
        )


async def test_daily_limit_reached_pauses_until_the_next_days_opening(
    database_url: str, amqp_url: str
) -> None:
    tuesday = datetime(2025, 1, 21, 10, 0, tzinfo=SP)
    policy = {**DEFAULT_POLICY, "max_messages_per_day": 2}
    async with running_system(database_url, amqp_url, start=tuesday, policy=policy) as system:
        posted = await system.post("overdue", "fatura-1", [contact(1), contact(2), contact(3)])

        paused = await wait_status(system, posted["queue_id"], "paused", total=3, pending=1, sent=2)
        assert paused["paused_reason"] == "daily_limit_reached"
        assert paused["resume_at"] == "2025-01-22T11:00:00+00:00"  # Wednesday 08:00 in São Paulo
        assert datetime.fromisoformat(paused["resume_at"]) == datetime(2025, 1, 22, 8, 0, tzinfo=SP)
        assert paused["started_at"] == "2025-01-21T13:00:00+00:00"
        assert paused["progress"] == round(200 / 3, 2)
        assert len(system.simulator.sent) == 2

        # Later that day (still inside business hours): the cap holds, the pause with it.
        system.clock.set(datetime(2025, 1, 21, 17, 0, tzinfo=SP))
        handled = len(system.handler.handled)
        await asyncio.sleep(0.5)  # five scheduler ticks
        assert len(system.handler.handled) == handled  # no job came back
        later = (await system.status(posted["queue_id"])).json()
        assert (later["status"], later["paused_reason"], later["resume_at"]) == (
            "paused",
            "daily_limit_reached",
            "2025-01-22T11:00:00+00:00",
        )
        assert len(system.simulator.sent) == 2

        system.clock.set(datetime(2025, 1, 22, 8, 0, tzinfo=SP))
        done = await wait_status(system, posted["queue_id"], "completed", total=3, sent=3)
        assert (done["paused_reason"], done["resume_at"]) == (None, None)
        assert done["completed_at"] == "2025-01-22T11:00:00+00:00"
        assert system.sent_numbers() == [number(1), number(2), number(3)]
