"""Browser tests of the dashboard: Playwright driving Debian's headless Chromium (``/usr/bin/chromium``;
``.ci/run`` installs it when missing) against real ``billing api``, ``projections``, ``relay`` and
``worker`` processes on the real PostgreSQL and RabbitMQ, with the Evolution API simulator serving in a
thread of the test process. One stack per module (processes are slow to start); every test uses its own
tenant, so tests do not see each other's data. Screenshots (desktop and 390 px) go to
``tests/browser/screenshots/`` (gitignored)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from billing.bootstrap import build_container
from billing.domain.policy import default_policy_spec
from billing.outbox.broker import Topology
from billing.projections.views import project_pending
from billing.services.clock import ScaledClock
from billing.services.tenants import TenantService
from billing.services.users import UserService
from billing.settings import Settings
from tests.conftest import ADMIN_URL, AMQP_URL, _url_for
from tests.e2e.test_processes import GATEWAY_KEY, INSTANCE, SimulatorServer, Stack, free_port, process_env
from tests.integration.test_broker_contract import delete_topology

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).parent / "screenshots"
AXE = Path(__file__).resolve().parents[2] / "node_modules" / "axe-core" / "axe.min.js"
SP = ZoneInfo("America/Sao_Paulo")
TUESDAY_10 = datetime(2026, 12, 1, 10, 0, tzinfo=SP)  # inside the default business hours
PASSWORD = "senha-do-teste-1"
PROCESSES = ("api", "projections", "relay", "worker-1")
FAST = {**default_policy_spec(), "pause_min_s": 0, "pause_max_s": 0, "messages_per_minute": 600}
SLOW = {**default_policy_spec(), "pause_min_s": 4, "pause_max_s": 4}  # the gateway "types" 4 s per message


def off_loop(func: Any, *args: Any) -> Any:
    """``func(*args)`` in a fresh thread (which may run its own asyncio loop)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(func, *args).result()


@dataclass
class Tenant:
    """A tenant of the stack with an admin and a viewer (emails), and its ERP's API key."""

    tenant_id: uuid.UUID
    admin: str
    viewer: str
    api_key: str


@dataclass
class Site:
    """The running stack: its URL, and ``tenant(policy)`` making a fresh tenant."""

    url: str
    stack: Stack
    database_url: str
    sim: SimulatorServer
    clock: ScaledClock

    def tenant(self, policy: dict[str, Any] | None = None) -> Tenant:
        """A new tenant (own thread: Playwright's sync API holds this thread's event loop)."""
        return off_loop(self._tenant, policy)

    def _tenant(self, policy: dict[str, Any] | None) -> Tenant:
        settings = Settings.from_env({}, database_url=self.database_url)
        container = build_container(settings, clock=self.clock)
        try:
            tenants = TenantService(container.store, container.clock)
            users = UserService(container.store, container.pool, container.clock)
            gateway = {
                "base_url": self.sim.url,
                "instance": INSTANCE,
                "api_key": GATEWAY_KEY,
                "api_version": "v2",
            }
            tag = uuid.uuid4().hex[:8]
            tenant_id = tenants.create_tenant(name=f"Loja {tag}", gateway=gateway, policy=policy or FAST)
            key = tenants.issue_api_key(tenant_id, "erp")
            admin, viewer = f"admin-{tag}@loja.example", f"viewer-{tag}@loja.example"
            users.create(tenant_id, email=admin, password=PASSWORD, role="admin")
            users.create(tenant_id, email=viewer, password=PASSWORD, role="viewer")
            project_pending(container.store, container.pool)
        finally:
            asyncio.run(container.aclose())
        return Tenant(tenant_id, admin, viewer, key)

    def api(self, tenant: Tenant) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-Billing-API-Key": tenant.api_key}, timeout=10)


@pytest.fixture(scope="module")
def site(template_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    name = f"billing_b_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    database_url = _url_for(name)
    prefix = f"browser-{uuid.uuid4().hex[:8]}"
    clock = ScaledClock(TUESDAY_10, time.time(), 1.0)
    sim = SimulatorServer(time_scale=1)  # typing delays are really waited
    sim.start()
    port = free_port()
    env = process_env(
        database_url=database_url,
        amqp_url=AMQP_URL,
        prefix=prefix,
        clock=clock,
        api_port=port,
        secret="b" * 40,
    )
    tmp = tmp_path_factory.mktemp("browser")
    stack = Stack(tmp, env, f"http://127.0.0.1:{port}", PROCESSES)
    for process in PROCESSES:
        stack.start(process)
    try:
        stack.wait_ready(timeout_s=40)
        yield Site(stack.api_url, stack, database_url, sim, clock)
    finally:
        stack.kill_all(signal.SIGTERM)
        sim.stop()
        off_loop(asyncio.run, delete_topology(AMQP_URL, Topology(prefix)))
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="pt-BR")
    context.set_default_timeout(20_000)
    page = context.new_page()
    yield page
    context.close()


def login(page: Page, site: Site, email: str) -> None:
    """Log in through the form and land on the overview."""
    page.goto(f"{site.url}/dashboard/")
    assert "/dashboard/login" in page.url  # not logged in yet: redirected
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Senha").fill(PASSWORD)
    page.get_by_role("button", name="Entrar").click()
    page.wait_for_url(f"{site.url}/dashboard/")


def shot(page: Page, name: str) -> None:
    """Full-page screenshots at desktop width and at 390 px (a phone)."""
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}-desktop.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(SHOTS / f"{name}-390.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})


def axe_violations(page: Page) -> list[dict[str, Any]]:
    """Serious and critical axe-core violations of the page as it is (WCAG 2 A/AA rules)."""
    page.add_script_tag(path=str(AXE))
    found: list[dict[str, Any]] = page.evaluate(
        """async () => (await axe.run(document, {runOnly: ["wcag2a", "wcag2aa"]})).violations
            .filter(v => v.impact === "serious" || v.impact === "critical")
            .map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.html).slice(0, 3)}))"""
    )
    return found
