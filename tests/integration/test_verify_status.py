"""``billing projections rebuild --verify`` and ``billing projections status`` as real processes against
the real PostgreSQL: verify passes on honest views, and fails — exit 1, naming the row and column — after a
view row is altered by hand or deleted; status shows each follower's position, lag and recorded errors.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid5
from zoneinfo import ZoneInfo

import psycopg
import pytest

from billing.api.schemas import SendRequest
from billing.bootstrap import build_container
from billing.domain.policy import default_policy_spec
from billing.domain.types import TemplateType
from billing.projections.views import project_pending
from billing.services.clock import FakeClock
from billing.services.ingest import IngestService
from billing.services.queries import Queries
from billing.services.tenants import TenantService
from billing.settings import Settings

pytestmark = pytest.mark.integration

BILLING = Path(sys.executable).with_name("billing")
GATEWAY = {"base_url": "http://sim", "instance": "loja", "api_key": "k", "api_version": "v2"}
START = datetime(2025, 1, 20, 10, 0, tzinfo=ZoneInfo("America/Sao_Paulo"))


def billing(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    env.update(BILLING_DATABASE_URL=database_url, BILLING_LOG_FORMAT="console")
    return subprocess.run(
        [str(BILLING), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def seeded(database_url: str) -> dict[str, Any]:
    """One tenant, two batches (one rejected contact), projected."""
    container = build_container(Settings.from_env({}, database_url=database_url), clock=FakeClock(START))
    try:
        tenants = TenantService(container.store, container.clock)
        tenant_id = tenants.create_tenant(name="Loja", gateway=GATEWAY, policy=default_policy_spec())
        project_pending(
            container.store, container.pool
        )  # the templates, which ingestion reads from the views
        ingest = IngestService(container.store, Queries(container.pool), container.clock)
        posted = []
        for n in range(2):
            contacts: list[dict[str, Any]] = [
                {"nome": f"C{i}", "telefone": f"+55119876543{i:02d}", "valor": "R$ 10,00",
                 "data_vencimento": "2025-01-15", "external_id": f"NF-{i}"}
                for i in range(3)
            ]  # fmt: skip
            contacts.append({"nome": "X", "telefone": "abc", "valor": "1", "data_vencimento": "2025-01-15"})
            posted.append(
                ingest.submit(
                    tenant_id=tenant_id,
                    path_type=TemplateType.OVERDUE,
                    request=SendRequest(contacts=contacts, external_id=f"lote-{n}"),
                    idempotency_key=None,
                )
            )
        project_pending(container.store, container.pool)
        head = container.store.recorder.max_notification_id()
    finally:
        container.store.close()
        container.pool.close()
    return {"tenant_id": tenant_id, "campaigns": [p.campaign_id for p in posted], "head": head}


def test_verify_passes_on_honest_views_and_fails_after_a_row_is_altered_by_hand(
    database_url: str, seeded: dict[str, Any]
) -> None:
    ok = billing(database_url, "projections", "rebuild", "--verify")
    assert ok.returncode == 0, ok.stderr
    assert re.match(
        rf"projections verified at position {seeded['head']} in \d+\.\d s: rebuilt views equal", ok.stdout
    ), ok.stdout
    assert "campaign_contacts 8" in ok.stdout
    assert "contact_history 8" in ok.stdout

    contact_id = uuid5(seeded["campaigns"][1], "2")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE campaign_contacts SET status = 'sent' WHERE contact_id = %s", (contact_id,))
        conn.execute(
            "DELETE FROM contact_history "
            "WHERE notification_id = (SELECT min(notification_id) FROM contact_history)"
        )
        first_history = conn.execute("SELECT min(notification_id) FROM contact_history").fetchone()
        schemas_before = conn.execute("SELECT count(*) FROM pg_namespace").fetchone()

    bad = billing(database_url, "projections", "rebuild", "--verify")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    lines = bad.stdout.splitlines()
    assert re.fullmatch(
        rf"projections differ at position {seeded['head']} in \d+\.\d s \(first 2 differences\):", lines[0]
    ), lines[0]
    assert lines[1] == f"  campaign_contacts {contact_id}: status: live 'sent' != rebuilt 'pending'"
    assert lines[2].startswith("  contact_history ")
    assert lines[2].endswith(": missing from the live views (the rebuild has it)")
    assert first_history is not None and int(lines[2].split()[1].rstrip(":")) < first_history[0]

    with psycopg.connect(database_url, autocommit=True) as conn:  # the scratch schema is gone
        assert conn.execute("SELECT count(*) FROM pg_namespace").fetchone() == schemas_before
        assert conn.execute(
            "SELECT status FROM campaign_contacts WHERE contact_id = %s", (contact_id,)
        ).fetchone() == ("sent",)  # verify never touches the live views


def test_status_shows_each_followers_position_lag_and_recorded_errors(
    database_url: str, seeded: dict[str, Any]
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO projection_errors (projection, notification_id, topic, error) "
            "VALUES ('projections', 3, 'billing.Nope', 'TopicError: billing.Nope')"
        )
    result = billing(database_url, "projections", "status", "--json")
    assert result.returncode == 0, result.stderr
    followers = {f["name"]: f for f in json.loads(result.stdout)}
    assert set(followers) == {"projections", "relay"}
    projections, relay = followers["projections"], followers["relay"]
    assert (projections["position"], projections["head"], projections["lag"]) == (seeded["head"],) * 2 + (0,)
    assert (projections["errors"], projections["last_error"]["topic"]) == (1, "billing.Nope")
    assert (relay["position"], relay["lag"], relay["errors"], relay["updated_at"]) == (
        0,
        seeded["head"],
        0,
        None,
    )

    table = billing(database_url, "projections", "status")
    assert table.returncode == 0
    assert table.stdout.splitlines()[1].split()[:5] == [
        "projections",
        str(seeded["head"]),
        str(seeded["head"]),
        "0",
        "1",
    ]
    assert "last error: notification 3 (billing.Nope): TopicError: billing.Nope" in table.stdout
    assert isinstance(seeded["tenant_id"], UUID)
