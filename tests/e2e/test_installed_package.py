"""The package as a user gets it: build the wheel, install it (not editable) into a fresh virtualenv, then
from an empty folder run ``billing migrate`` against an empty database and ``billing dev``: "running" is
printed only once ``/health/ready`` answers 200, the demo batch reaches ``completed``, and a restart keeps
the printed API key and admin token working (they are kept under ``./.billing/``)."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx
import psycopg
import pytest

from billing.devmode import DEMO_BODY
from tests.conftest import ADMIN_URL, _url_for

ROOT = Path(__file__).resolve().parents[2]
BASE = "/api/billing/v1/billing"
pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``bin/`` of a fresh virtualenv with the wheel installed (its dependencies from the local index)."""
    where = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(where / "dist"), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (where / "dist").glob("billing-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(where / "venv")], check=True)
    subprocess.run(
        [
            str(where / "venv/bin/python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    return where / "venv" / "bin"


@pytest.fixture
def empty_database() -> Iterator[str]:
    name = f"billing_wheel_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _url_for(name)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BILLING_", "VIRTUAL_ENV", "PYTHONPATH"))}
    return {**env, **extra}


def test_billing_migrate_from_the_wheel_applies_the_packaged_ddl(
    installed: Path, empty_database: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [str(installed / "billing"), "migrate"],
        cwd=tmp_path,
        env=clean_env(BILLING_DATABASE_URL=empty_database),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    # the wheel carries every DDL file of the source tree, applied in name order
    packaged = sorted(p.name for p in (ROOT / "src" / "billing" / "sql").glob("*.sql"))
    assert len(packaged) >= 6
    assert result.stdout.splitlines() == [f"applied {name}" for name in packaged]
    with psycopg.connect(empty_database) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    ddl = {"tracking", "projection_errors", "tenants", "api_keys", "templates", "campaigns", "queue_status"}
    assert ddl | {"campaign_contacts", "send_ledger", "gateway_blocks", "contact_history"} <= tables


class Dev:
    """A running ``billing dev``: its banner's values, and every line it printed."""

    def __init__(self, process: subprocess.Popen[str], lines: queue.Queue[str], url: str) -> None:
        self.process, self.lines, self.url = process, lines, url
        self.printed: list[str] = []

    def wait_for_banner(self, timeout_s: float = 240) -> dict[str, str]:
        """Read lines until "billing dev is running"; check readiness at that very moment; return the
        banner's ``name: value`` pairs."""
        deadline = time.monotonic() + timeout_s
        while True:
            assert time.monotonic() < deadline, "no banner:\n" + "\n".join(self.printed)
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                assert self.process.poll() is None, "billing dev exited:\n" + "\n".join(self.printed)
                continue
            self.printed.append(line)
            if "billing dev is running" in line:
                ready = httpx.get(f"{self.url}/health/ready", timeout=5)
                assert ready.status_code == 200, ready.text  # printed only once ready
                break
        banner: dict[str, str] = {}
        while len(banner) < 3:
            line = self.lines.get(timeout=10)
            self.printed.append(line)
            name, sep, value = line.strip().partition(":")
            if sep and name in ("API key", "Admin JWT", "Tenant"):
                banner[name] = value.strip()
        return banner


def _pump(stream: IO[str], lines: queue.Queue[str], log: IO[str]) -> None:
    for line in stream:
        log.write(line)
        log.flush()
        lines.put(line.rstrip("\n"))


@contextmanager
def billing_dev(bin_dir: Path, folder: Path, port: int) -> Iterator[Dev]:
    log = (folder.parent / f"dev-{uuid.uuid4().hex[:6]}.log").open("w")
    process = subprocess.Popen(
        [str(bin_dir / "billing"), "dev", "--port", str(port)],
        cwd=folder,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    threading.Thread(target=_pump, args=(process.stdout, lines, log), daemon=True).start()
    try:
        yield Dev(process, lines, f"http://127.0.0.1:{port}")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
    assert process.returncode == 0


def test_billing_dev_from_the_wheel_in_an_empty_folder(installed: Path, tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    port = free_port()
    with billing_dev(installed, folder, port) as dev:
        first = dev.wait_for_banner()
        public = {"X-Billing-API-Key": first["API key"], "Content-Type": "application/json"}
        with httpx.Client(base_url=dev.url, timeout=15) as client:
            accepted = client.post(f"{BASE}/send/notification", content=DEMO_BODY.encode(), headers=public)
            assert accepted.status_code == 202, accepted.text
            queue_id = accepted.json()["queue_id"]
            deadline = time.monotonic() + 180
            status: dict[str, object] = {}
            while time.monotonic() < deadline and status.get("status") != "completed":
                time.sleep(0.5)
                reply = client.get(f"{BASE}/queue/{queue_id}/status", headers=public)
                if reply.status_code == 200:
                    status = reply.json()
            assert status.get("status") == "completed", status
            assert status["contacts"]["sent"] == 3  # type: ignore[index]
    kept = json.loads((folder / ".billing" / "dev-secrets.json").read_text())
    assert set(kept) == {"jwt_secret", "operator_token", "api_key"}
    assert (folder / ".billing" / "dev-secrets.json").stat().st_mode & 0o077 == 0

    with billing_dev(installed, folder, port) as dev:  # a restart keeps yesterday's credentials
        second = dev.wait_for_banner()
        assert (second["API key"], second["Tenant"]) == (first["API key"], first["Tenant"])
        with httpx.Client(base_url=dev.url, timeout=15) as client:
            status_again = client.get(
                f"{BASE}/queue/{queue_id}/status", headers={"X-Billing-API-Key": first["API key"]}
            )
            assert status_again.status_code == 200
            assert status_again.json()["status"] == "completed"
            templates = client.get(
                f"{BASE}/templates/", headers={"Authorization": f"Bearer {first['Admin JWT']}"}
            )
            assert templates.status_code == 200
