"""The OpenAPI document against the running application (real PostgreSQL): schemathesis over every
operation with both credentials (0 server errors, 0 responses outside the document, 0 undocumented
statuses), a client generated from the document making a real call, and the docs UI served offline."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from litestar import Litestar
from litestar.testing import TestClient
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from billing.api.auth import mint_token
from billing.bootstrap import build_container
from billing.projections.views import project_pending
from billing.services.tenants import TenantService
from billing.settings import Settings
from billing.webapp import create_app

SECRET = "s" * 32
GATEWAY = {"base_url": "http://sim", "instance": "demo", "api_key": "gw-key", "api_version": "v2"}
EXAMPLES_PER_OPERATION = 12
"""Bounded so the run stays well under two minutes on the project machine (2 cores, shared)."""
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance, content_type_conformance]


@pytest.fixture
def served(database_url: str) -> Iterator[tuple[Litestar, dict[str, str]]]:
    """The app over a tenant with one API key, and headers carrying both credentials."""
    container = build_container(Settings.from_env({}, database_url=database_url, jwt_secret=SECRET))
    tenants = TenantService(container.store, container.clock)
    tenant_id = tenants.create_tenant(name="Loja Exemplo", gateway=GATEWAY)
    key = tenants.issue_api_key(tenant_id, "erp")
    project_pending(container.store, container.pool)
    headers = {"X-Billing-API-Key": key, "Authorization": f"Bearer {mint_token(SECRET, tenant_id)}"}
    yield create_app(container), headers
    asyncio.run(container.aclose())


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_nothing_outside_the_document(
    served: tuple[Litestar, dict[str, str]],
) -> None:
    app, headers = served
    schema = schemathesis.openapi.from_asgi("/schema/openapi.json", app)
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def run(case: Any) -> None:
                response = case.call_and_validate(headers=headers, checks=CHECKS)
                statuses[response.status_code] += 1

            try:
                run()
            except Exception as exc:
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert operations >= 23  # every operation of the document (23 today)
    assert failures == [], "\n\n".join(failures)
    print(f"\nschemathesis: {sum(statuses.values())} calls, statuses {sorted(statuses.items())}")
    assert {200, 201, 202, 401, 404, 422} <= set(statuses), statuses  # it reached every kind of answer


def test_the_document_declares_the_real_error_shape_statuses_and_headers(
    served: tuple[Litestar, dict[str, str]],
) -> None:
    app, _ = served
    with TestClient(app=app) as client:
        doc = client.get("/schema/openapi.json").json()
    send = doc["paths"]["/api/billing/v1/billing/send/overdue"]["post"]
    assert sorted(send["responses"]) == ["202", "400", "401", "413", "415", "422", "429"]
    assert send["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    assert "`duplicate_phone`" not in send["responses"]["422"]["description"]  # a rejection, not an error
    assert "`unknown_field`" in send["responses"]["422"]["description"]
    assert send["responses"]["429"]["headers"]["Retry-After"]["schema"] == {"type": "integer"}
    assert [p["name"] for p in send["parameters"]] == ["Idempotency-Key"]
    body_schema = send["requestBody"]["content"]["application/json"]["schema"]
    assert body_schema["allOf"] == [{"$ref": "#/components/schemas/SendRequest"}]
    assert body_schema["examples"][0]["contacts"][0]["nome"] == "Maria Souza"
    assert set(doc["components"]["schemas"]["ErrorBody"]["required"]) == {"code", "message", "field"}
    assert doc["components"]["securitySchemes"]["ApiKey"]["name"] == "X-Billing-API-Key"
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if not path.startswith("/api/"):
                continue
            assert "401" in operation["responses"], (method, path)
            assert operation["responses"]["401"]["content"]["application/json"]["examples"], (method, path)
            if "requestBody" in operation:
                assert operation["requestBody"]["content"]["application/json"]["schema"]["examples"], path


def test_the_docs_ui_loads_its_assets_from_this_app(served: tuple[Litestar, dict[str, str]]) -> None:
    app, _ = served
    with TestClient(app=app) as client:
        page = client.get("/schema/swagger")
        assert page.status_code == 200
        # no asset from another host (the inlined document may hold example URLs of its own)
        assert re.findall(r'(?:src|href)=["\']?(?:https?:)?//', page.text) == []
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "swagger-ui-standalone-preset.js"):
            assert f"/schema/assets/{asset}" in page.text
            response = client.get(f"/schema/assets/{asset}")
            assert response.status_code == 200, asset
            assert len(response.content) > 10_000


@pytest.mark.slow
def test_a_client_generated_from_the_document_makes_a_real_call(
    served: tuple[Litestar, dict[str, str]], tmp_path: Path
) -> None:
    app, headers = served
    with TestClient(app=app) as client:
        (tmp_path / "openapi.json").write_text(json.dumps(client.get("/schema/openapi.json").json()))
    generator = Path(sys.executable).with_name("openapi-python-client")
    subprocess.run(
        [str(generator), "generate", "--path", "openapi.json", "--meta", "none", "--output-path", "client"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=300,
    )
    sys.path.insert(0, str(tmp_path))
    try:
        from client import AuthenticatedClient  # type: ignore[import-not-found]
        from client.api.public import (  # type: ignore[import-not-found]
            api_billing_v1_send_notification_send_notification as send_notification,
        )
        from client.models import SendRequest  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        api = AuthenticatedClient(
            base_url=f"http://127.0.0.1:{port}",
            token=headers["X-Billing-API-Key"],
            prefix="",
            auth_header_name="X-Billing-API-Key",
        )
        body = SendRequest.from_dict({"contacts": [{"nome": "Maria", "telefone": "(11) 98765-4321"}]})
        answer = send_notification.sync_detailed(client=api, body=body)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert answer.status_code == 202, answer.content
    assert answer.parsed.contacts.accepted == 1
    assert answer.parsed.status == "queued"
