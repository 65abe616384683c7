"""``billing projections rebuild`` on a running system (real ``api``, ``projections``, ``relay`` and
``worker`` processes, PostgreSQL, RabbitMQ, the Evolution API simulator): an ERP polling its queue's
status and contacts during the rebuild always gets the whole answer (the truncate-and-replay rebuild
answered 404 and empty pages until its replay committed), and after the swap the running processes go on
with the swapped-in views."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from datetime import datetime
from typing import Any

import pytest

from billing.domain.policy import default_policy_spec
from billing.services.clock import ScaledClock
from tests.e2e.test_processes import BASE, BILLING, SP, World, launch, poll_status

pytestmark = pytest.mark.e2e

__all__ = ["launch"]  # the fixture, used by name

SUNDAY_10 = datetime(2025, 1, 19, 10, 0, tzinfo=SP)
"""Outside the tenant's business hours (Mon–Fri 08–18): its queues wait, paused, unchanged."""
CONTACTS = 3_000


def post(world: World, external_id: str, n: int) -> tuple[str, str]:
    """``(queue_id, campaign_id)`` of a batch of ``n`` overdue reminders (dunning: business hours apply)."""
    contacts = [
        {
            "nome": f"Cliente {i}",
            "telefone": f"+5511987{i:06d}",
            "valor": "R$ 10,00",
            "data_vencimento": "2025-01-10",
        }
        for i in range(n)
    ]
    with world.client() as client:
        response = client.post(
            f"{BASE}/send/overdue", json={"external_id": external_id, "contacts": contacts}
        )
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["contacts"]["accepted"] == n, accepted
    return str(accepted["queue_id"]), str(accepted["campaign_id"])


def test_polls_during_a_rebuild_get_the_whole_answer_and_the_processes_go_on_after_it(launch: Any) -> None:
    policy = {**default_policy_spec(), "windows": {"mon-fri": [["08:00", "18:00"]]}}
    world: World = launch(ScaledClock(SUNDAY_10, time.time(), 1.0), policy, workers=1)
    queue, campaign = post(world, "antes", CONTACTS)
    paused = poll_status(world, queue, "paused", timeout=60)
    assert (paused["contacts"]["total"], paused["contacts"]["pending"]) == (CONTACTS, CONTACTS)

    answers: list[tuple[str, int, Any]] = []
    stop = threading.Event()

    def poll() -> None:
        with world.client() as client:
            while not stop.is_set():
                status = client.get(f"{BASE}/queue/{queue}/status")
                body = status.json()
                answers.append(("status", status.status_code, body.get("contacts", body)))
                page = client.get(f"{BASE}/campaign/{campaign}/contacts", params={"limit": 100})
                answers.append(("page", page.status_code, len(page.json().get("items", ()))))

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        rebuilt = subprocess.run(
            [str(BILLING), "projections", "rebuild"],
            env=world.stack.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        time.sleep(0.3)  # polls after the swap too
    finally:
        stop.set()
        poller.join()
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert re.fullmatch(
        r"projections rebuilt in \d+\.\d s \(\d+ notifications replayed\)", rebuilt.stdout.strip()
    ), rebuilt.stdout
    statuses = [(code, body) for kind, code, body in answers if kind == "status"]
    pages = [(code, n) for kind, code, n in answers if kind == "page"]
    assert len(statuses) >= 5, answers
    assert [s for s in statuses if s != (200, paused["contacts"])] == []
    assert set(pages) == {(200, 100)}

    world.stack.assert_alive()
    second, _ = post(world, "depois", 10)  # the running projections process writes the swapped-in views
    waiting = poll_status(world, second, "paused", timeout=30)
    assert waiting["contacts"]["total"] == 10
    with world.client() as client:
        again = client.get(f"{BASE}/queue/{queue}/status")
    assert (again.status_code, again.json()["contacts"]) == (200, paused["contacts"])
