"""`billing dev` as a newcomer runs it: one subprocess on embedded defaults (embedded PostgreSQL,
in-process broker, gateway simulator), driven over HTTP: POST three contacts (one with an invalid phone),
poll the status until completed, read the contact list."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

BASE = "/api/billing/v1/billing"
API_KEY = "bk_e2e_dev_mode_key_0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def dev_server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    billing = Path(sys.executable).with_name("billing")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    log = (tmp_path / "dev.log").open("w")
    process = subprocess.Popen(
        [
            str(billing),
            "dev",
            "--port",
            str(port),
            "--api-key",
            API_KEY,
            "--data-dir",
            str(tmp_path / "data"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "dev.log").read_text()
            try:
                if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError("billing dev never became ready:\n" + (tmp_path / "dev.log").read_text())
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
    assert process.returncode == 0, (tmp_path / "dev.log").read_text()


def test_billing_dev_sends_the_demo_batch_and_reaches_completed(dev_server: str) -> None:
    headers = {"X-Billing-API-Key": API_KEY}
    payload = {
        "external_id": "demo-1",
        "contacts": [
            {"nome": "Maria Souza", "telefone": "+5511987654321", "mensagem": "Sua fatura foi emitida."},
            {"nome": "João Lima", "telefone": "123"},
            {"nome": "Ana Reis", "telefone": "(21) 99876-5432", "mensagem": "Seu boleto está disponível."},
        ],
    }
    with httpx.Client(base_url=dev_server, timeout=10) as client:
        response = client.post(f"{BASE}/send/notification", json=payload, headers=headers)
        assert response.status_code == 202, response.text
        accepted = response.json()
        assert accepted["contacts"] == {"total": 3, "accepted": 2, "rejected": 1}
        deadline = time.monotonic() + 60
        status: dict[str, object] = {}
        while time.monotonic() < deadline:
            reply = client.get(f"{BASE}/queue/{accepted['queue_id']}/status", headers=headers)
            if reply.status_code == 200:
                status = reply.json()
                counts = status["contacts"]
                if status["status"] == "completed" and isinstance(counts, dict) and counts["read"] == 2:
                    break
            time.sleep(0.5)
        assert status.get("status") == "completed", status
        assert status["contacts"] == {  # the simulator's receipts came back through the webhook
            "total": 3,
            "pending": 0,
            "sent": 2,
            "failed": 0,
            "skipped": 0,
            "rejected": 1,
            "cancelled": 0,
            "delivered": 2,
            "read": 2,
            "replied": 0,
        }
        items = client.get(f"{BASE}/campaign/{accepted['campaign_id']}/contacts", headers=headers).json()[
            "items"
        ]
    assert [(i["index"], i["status"]) for i in items] == [(0, "sent"), (1, "rejected"), (2, "sent")]
    assert items[0]["message_text"] == "Olá, Maria Souza! Sua fatura foi emitida."
    assert items[2]["message_text"] == "Ana Reis, temos um aviso para você. Seu boleto está disponível."
    assert items[1]["error"]["code"] == "invalid_phone"
    assert all(i["gateway_message_id"] for i in (items[0], items[2]))


def test_billing_dev_prints_the_dashboard_url_and_a_demo_login_that_works(
    dev_server: str, tmp_path: Path
) -> None:
    import re

    deadline = time.monotonic() + 10
    line = None
    while line is None and time.monotonic() < deadline:
        line = re.search(
            r"Dashboard:\s+(\S+)\s+\(e-mail (\S+), senha (\S+)\)", (tmp_path / "dev.log").read_text()
        )
        time.sleep(0.2)
    assert line, (tmp_path / "dev.log").read_text()
    url, email, password = line.groups()
    assert url == f"{dev_server}/dashboard/"
    with httpx.Client(timeout=10, follow_redirects=True) as client:
        login = client.get(f"{dev_server}/dashboard/login")
        token = re.search(r'name="_csrf_token" value="([^"]+)"', login.text).group(1)  # type: ignore[union-attr]
        answer = client.post(
            f"{dev_server}/dashboard/login",
            data={"email": email, "password": password, "_csrf_token": token, "next": "/dashboard/"},
        )
        assert answer.status_code == 200, answer.text
        assert "Empresa Demo" in answer.text and "Visão geral" in answer.text


def test_billing_dev_metrics_carry_the_database_gauges_of_its_projections(dev_server: str) -> None:
    text = httpx.get(f"{dev_server}/metrics", timeout=10).text
    samples = {line.split(" ")[0] for line in text.splitlines() if line.startswith("billing_")}
    for status in ("queued", "running", "paused", "completed", "cancelled"):
        assert f'billing_queues{{status="{status}"}} 0.0' in text.splitlines()
    for follower in ("projections", "relay"):
        for name in ("billing_follower_position", "billing_follower_lag_events"):
            assert f'{name}{{follower="{follower}"}}' in samples
        assert f'billing_follower_errors{{follower="{follower}"}} 0.0' in text.splitlines()


def test_billing_dev_prints_a_curl_command_with_an_idempotency_key(dev_server: str, tmp_path: Path) -> None:
    deadline = time.monotonic() + 10
    while (
        "Send three notifications" not in (tmp_path / "dev.log").read_text() and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    lines = (tmp_path / "dev.log").read_text().splitlines()
    start = lines.index(
        "Send three notifications (sent 24/7); a repeat with the same Idempotency-Key is answered from"
    )
    assert lines[start + 1 : start + 6] == [
        "the first (header Idempotent-Replayed: true), so change the key for a new batch:",
        f"  curl -sS -i -X POST {dev_server}{BASE}/send/notification \\",
        "    -H 'Content-Type: application/json' \\",
        f"    -H 'X-Billing-API-Key: {API_KEY}' \\",
        "    -H 'Idempotency-Key: demo-1' \\",
    ]
