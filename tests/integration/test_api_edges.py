"""Who may call and how often, against the real PostgreSQL: Bearer only, security headers, the new key's
``no-store``, minimal health with the operator's detail, the gateway-URL guard at save time, and the
per-API-key rate limit (in-process memory store; the shared Redis store is tested across two processes in
``tests/e2e/test_rate_limit_processes.py``)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from litestar.testing import AsyncTestClient

from billing.api.auth import mint_token
from billing.bootstrap import Container, build_container
from billing.projections.views import project_pending
from billing.runtime import _uvicorn_server
from billing.services.clock import FakeClock
from billing.services.tenants import TenantService
from billing.settings import Settings
from billing.webapp import create_app

BASE = "/api/billing/v1/billing"
SECRET = "s" * 32
OPERATOR = "o" * 40
GATEWAY = {"base_url": "http://sim", "instance": "demo", "api_key": "gw-secret-key", "api_version": "v2"}
NOW = datetime(2025, 1, 22, 13, 30, tzinfo=UTC)


@dataclass
class Api:
    client: AsyncTestClient[Any]
    container: Container
    tenants: TenantService
    tenant_id: uuid.UUID
    token: str
    key: str

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def public(self) -> dict[str, str]:
        return {"X-Billing-API-Key": self.key}


@pytest.fixture
def make_api(database_url: str) -> Callable[..., Any]:
    @asynccontextmanager
    async def make(overrides: Callable[..., str] | None = None, **settings: Any) -> AsyncIterator[Api]:
        """``overrides(tenant_id, key, tenants)`` gives ``BILLING_RATE_LIMITS`` once the tenant exists."""
        values = {"jwt_secret": SECRET, "operator_token": OPERATOR, **settings}
        container = build_container(
            Settings.from_env({}, database_url=database_url, **values), clock=FakeClock(NOW)
        )
        tenants = TenantService(container.store, container.clock)
        tenant_id = tenants.create_tenant(name="Loja", gateway=GATEWAY)
        key = tenants.issue_api_key(tenant_id, "erp")
        if overrides is not None:
            rate_limits = overrides(tenant_id, key, tenants)
            container.settings = dataclasses.replace(container.settings, rate_limits=rate_limits)
        project_pending(container.store, container.pool)
        try:
            async with AsyncTestClient(app=create_app(container)) as client:
                yield Api(client, container, tenants, tenant_id, mint_token(SECRET, tenant_id), key)
        finally:
            await container.aclose()

    return make


@pytest.fixture
async def api(make_api: Callable[..., Any]) -> AsyncIterator[Api]:
    async with make_api() as api:
        yield api


# ------------------------------------------------------------------------------------------ credentials


@pytest.mark.parametrize("scheme", ["Basic", "Token", "JWT", ""])
async def test_only_the_bearer_scheme_carries_an_admin_token(api: Api, scheme: str) -> None:
    response = await api.client.get(f"{BASE}/templates/", headers={"Authorization": f"{scheme} {api.token}"})
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_the_bearer_scheme_is_case_insensitive(api: Api, scheme: str) -> None:
    response = await api.client.get(f"{BASE}/templates/", headers={"Authorization": f"{scheme} {api.token}"})
    assert response.status_code == 200


async def test_a_new_api_key_answer_is_never_cached(api: Api) -> None:
    response = await api.client.post(f"{BASE}/api-keys/", json={"name": "erp-2"}, headers=api.admin)
    assert response.status_code == 201
    assert response.headers["cache-control"] == "no-store"


async def test_every_answer_says_nosniff(api: Api) -> None:
    answers = [
        await api.client.get("/health/live"),
        await api.client.get(f"{BASE}/templates/", headers=api.admin),
        await api.client.get(f"{BASE}/templates/"),  # 401
        await api.client.get(f"{BASE}/no-such-route", headers=api.admin),  # 404
        await api.client.post(
            f"{BASE}/send/notification",
            content=b"{",
            headers={**api.public, "content-type": "application/json"},
        ),  # 400
    ]
    assert [a.status_code for a in answers] == [200, 200, 401, 404, 400]
    assert [a.headers.get("x-content-type-options") for a in answers] == ["nosniff"] * 5


def test_uvicorn_sends_no_server_banner() -> None:
    server = _uvicorn_server(object(), "127.0.0.1", 1)
    assert server.config.server_header is False


# ----------------------------------------------------------------------------------------------- health


async def test_health_for_load_balancers_shows_only_a_status(api: Api) -> None:
    live = await api.client.get("/health/live")
    ready = await api.client.get("/health/ready")
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ok"})


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer " + "x" * 40},
        {"Authorization": f"Basic {OPERATOR}"},
        {"X-Token": OPERATOR},
    ],
)
async def test_health_detail_needs_the_operator_token(api: Api, headers: dict[str, str]) -> None:
    response = await api.client.get("/health/detail", headers=headers)
    assert response.status_code == 401
    assert response.json()["field"] == "Authorization"


async def test_health_detail_is_refused_when_no_operator_token_is_configured(
    make_api: Callable[..., Any],
) -> None:
    async with make_api(operator_token="") as api:
        response = await api.client.get("/health/detail", headers={"Authorization": "Bearer "})
        assert response.status_code == 401


async def test_health_detail_shows_the_figures_to_the_operator(api: Api) -> None:
    response = await api.client.get("/health/detail", headers={"Authorization": f"Bearer {OPERATOR}"})
    assert response.status_code == 200
    body = response.json()
    head = api.container.store.recorder.max_notification_id()
    assert body == {
        "status": "ok",
        "database": "ok",
        "events": head,
        "projection_lag": 0,
        "projection_errors": 0,
        "projection_errors_recent": 0,
        "projection_errors_window_s": 300,
    }


def _record_projection_error(container: Container, age_s: int) -> None:
    with container.pool.connection() as conn:
        conn.execute(
            "INSERT INTO projection_errors (projection, notification_id, topic, error, recorded_at)"
            " VALUES ('views', 7, 'billing.Contact.Added', 'DataError', now() - make_interval(secs => %s))",
            (age_s,),
        )


async def test_readiness_fails_while_projection_errors_grow(api: Api) -> None:
    _record_projection_error(api.container, age_s=1)
    ready = await api.client.get("/health/ready")
    assert (ready.status_code, ready.json()) == (503, {"status": "unavailable"})
    detail = await api.client.get("/health/detail", headers={"Authorization": f"Bearer {OPERATOR}"})
    assert detail.status_code == 503
    assert (detail.json()["projection_errors"], detail.json()["projection_errors_recent"]) == (1, 1)


async def test_readiness_recovers_once_no_new_projection_error_came_for_the_window(api: Api) -> None:
    _record_projection_error(api.container, age_s=301)
    ready = await api.client.get("/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"status": "ok"})
    detail = await api.client.get("/health/detail", headers={"Authorization": f"Bearer {OPERATOR}"})
    assert (detail.json()["projection_errors"], detail.json()["projection_errors_recent"]) == (1, 0)


async def test_readiness_fails_when_the_schema_is_missing(api: Api) -> None:
    with api.container.pool.connection() as conn:
        conn.execute("DROP TABLE projection_errors")
    ready = await api.client.get("/health/ready")
    assert (ready.status_code, ready.json()) == (503, {"status": "unavailable"})


# --------------------------------------------------------------------------------------- gateway guard


def _gateway(base_url: str) -> dict[str, Any]:
    return {"gateway": {**GATEWAY, "base_url": base_url}}


@pytest.mark.parametrize(
    "base_url",
    [
        "http://169.254.169.254",
        "http://[::ffff:169.254.169.254]:80/",
        "http://0.0.0.0:8080",
        "http://[fe80::1]/",
    ],
)
@pytest.mark.parametrize("allow_private", [False, True])
async def test_metadata_and_link_local_gateways_are_refused_always(
    make_api: Callable[..., Any], base_url: str, allow_private: bool
) -> None:
    async with make_api(gateway_allow_private=allow_private) as api:
        response = await api.client.patch(f"{BASE}/config/", json=_gateway(base_url), headers=api.admin)
        assert response.status_code == 422
        body = response.json()
        assert (body["code"], body["field"]) == ("gateway_address_refused", "gateway.base_url")
        config = await api.client.get(f"{BASE}/config/", headers=api.admin)
        assert config.json()["gateway"]["base_url"] == "http://sim"  # nothing saved


@pytest.mark.parametrize(
    "base_url", ["http://127.0.0.1:9000", "http://localhost:9000", "http://10.0.0.7:8080"]
)
async def test_private_gateways_need_the_operator_s_permission(
    make_api: Callable[..., Any], base_url: str
) -> None:
    async with make_api() as api:
        response = await api.client.patch(f"{BASE}/config/", json=_gateway(base_url), headers=api.admin)
        assert response.status_code == 422
        assert response.json()["field"] == "gateway.base_url"
        assert "BILLING_GATEWAY_ALLOW_PRIVATE" in response.json()["message"]
    async with make_api(gateway_allow_private=True) as api:
        response = await api.client.patch(f"{BASE}/config/", json=_gateway(base_url), headers=api.admin)
        assert response.status_code == 200, response.text
        assert response.json()["gateway"]["base_url"] == base_url


async def test_a_refused_gateway_leaves_the_policy_unapplied_too(api: Api) -> None:
    before = (await api.client.get(f"{BASE}/config/", headers=api.admin)).json()
    body = {"policy": {"messages_per_minute": 7}, **_gateway("http://169.254.169.254")}
    response = await api.client.patch(f"{BASE}/config/", json=body, headers=api.admin)
    assert response.status_code == 422
    assert (await api.client.get(f"{BASE}/config/", headers=api.admin)).json() == before


# ------------------------------------------------------------------------------------------- rate limit


async def _poll(api: Api, key: str) -> Any:
    return await api.client.get(f"{BASE}/queue/{uuid.uuid4()}/status", headers={"X-Billing-API-Key": key})


async def test_the_rate_limit_counts_per_api_key(make_api: Callable[..., Any]) -> None:
    async with make_api(rate_limit_per_minute=3) as api:
        other = api.tenants.issue_api_key(api.tenant_id, "other")
        answers = [await _poll(api, api.key) for _ in range(4)]
        assert [a.status_code for a in answers] == [404, 404, 404, 429]
        assert [a.headers["ratelimit-remaining"] for a in answers] == ["2", "1", "0", "0"]
        assert all(a.headers["ratelimit-limit"] == "3" for a in answers)
        assert all(a.headers["ratelimit-policy"] == "3; w=60" for a in answers)
        refused = answers[3]
        assert 0 < int(refused.headers["retry-after"]) <= 60
        assert refused.headers["retry-after"] == refused.headers["ratelimit-reset"]
        assert refused.headers["x-content-type-options"] == "nosniff"
        body = refused.json()
        assert (body["code"], body["field"]) == ("rate_limited", "X-Billing-API-Key")
        assert "3 requests per 60 s" in body["message"]
        assert (await _poll(api, other)).status_code == 404  # another key has its own window
        assert (await api.client.get("/health/ready")).status_code == 200  # no key: not counted


async def test_rate_limit_overrides_per_key_prefix_and_per_tenant(make_api: Callable[..., Any]) -> None:
    keys: list[str] = []

    def overrides(tenant_id: uuid.UUID, key: str, tenants: TenantService) -> str:
        other_tenant = tenants.create_tenant(name="Outra", gateway=GATEWAY)
        keys.extend([tenants.issue_api_key(other_tenant, "a"), tenants.issue_api_key(other_tenant, "b")])
        return f"{key[:8]}=4,{other_tenant}=3,{keys[1][:8]}=1"

    async with make_api(rate_limit_per_minute=2, overrides=overrides) as api:
        counts = {}
        for name, key in (("own key", api.key), ("tenant", keys[0]), ("key beats tenant", keys[1])):
            answers = [(await _poll(api, key)).status_code for _ in range(5)]
            counts[name] = answers.count(404)
        assert counts == {"own key": 4, "tenant": 3, "key beats tenant": 1}


async def test_an_unknown_key_is_limited_too(make_api: Callable[..., Any]) -> None:
    async with make_api(rate_limit_per_minute=2) as api:
        answers = [await _poll(api, "bk_not_a_key_at_all_0123456789") for _ in range(3)]
        assert [a.status_code for a in answers] == [401, 401, 429]


def test_tenant_create_refuses_a_metadata_gateway(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from billing.cli import main

    monkeypatch.setenv("BILLING_DATABASE_URL", database_url)
    monkeypatch.delenv("BILLING_GATEWAY_ALLOW_PRIVATE", raising=False)
    argv = [
        "tenant",
        "create",
        "--name",
        "Loja",
        "--instance",
        "loja",
        "--gateway-key",
        "KEY",
        "--gateway-url",
    ]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "http://169.254.169.254"])
    assert exit_info.value.code == 2
    assert "gateway.base_url refused" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "http://127.0.0.1:8081"])
    assert exit_info.value.code == 2
    assert "BILLING_GATEWAY_ALLOW_PRIVATE" in capsys.readouterr().err
    monkeypatch.setenv("BILLING_GATEWAY_ALLOW_PRIVATE", "1")
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "http://127.0.0.1:8081"])
    assert exit_info.value.code == 0
    uuid.UUID(capsys.readouterr().out.strip())


async def test_a_readiness_probe_takes_one_pool_connection(api: Api) -> None:
    api.container.pool.pop_stats()
    ready = await api.client.get("/health/ready")
    assert (ready.status_code, api.container.pool.get_stats().get("requests_num")) == (200, 1)


# ------------------------------------------------------------------------------------------ error shape


async def test_an_error_with_no_input_to_blame_still_carries_field_null(api: Api) -> None:
    unknown = await api.client.get(f"{BASE}/no-such-route", headers=api.admin)
    wrong_method = await api.client.delete(f"{BASE}/queue/{uuid.uuid4()}/status", headers=api.public)
    assert (unknown.status_code, unknown.json()) == (
        404,
        {"code": "not_found", "message": "Not Found", "field": None},
    )
    assert (wrong_method.status_code, wrong_method.json()) == (
        405,
        {"code": "method_not_allowed", "message": "Method Not Allowed", "field": None},
    )


async def test_an_admin_refusal_says_what_is_wrong_with_the_authorization_header(api: Api) -> None:
    an_hour_ago = int((datetime.now(UTC) - timedelta(hours=1)).timestamp())
    expired = jwt.encode({"exp": an_hour_ago, "sub": str(api.tenant_id)}, SECRET, algorithm="HS256")
    cases = [
        ({}, "missing Authorization: Bearer <admin JWT> header"),
        (
            api.public,
            "missing Authorization: Bearer <admin JWT> header "
            "(this endpoint takes an admin token, not X-Billing-API-Key)",
        ),
        (
            {"Authorization": f"Basic {api.token}"},
            "the Authorization header must be 'Bearer <admin JWT>' (no other scheme)",
        ),
        (
            {"Authorization": "Bearer abc"},
            "the Authorization header's Bearer value is not a JWT (Not enough segments)",
        ),
        (
            {"Authorization": f"Bearer {mint_token('x' * 32, api.tenant_id)}"},
            "the admin token's signature does not match this server's BILLING_JWT_SECRET",
        ),
        (
            {"Authorization": f"Bearer {expired}"},
            "the admin token has expired; mint a new one (billing admin token --tenant ID)",
        ),
        (
            {"Authorization": f"Bearer {mint_token(SECRET, 'not-a-tenant')}"},
            "the admin token's sub claim is not a tenant id",
        ),
    ]
    for headers, message in cases:
        response = await api.client.get(f"{BASE}/templates/", headers=headers)
        assert (response.status_code, response.json()) == (
            401,
            {"code": "unauthorized", "message": message, "field": "Authorization"},
        ), headers


async def test_a_missing_query_parameter_is_named_in_field(api: Api) -> None:
    response = await api.client.get(f"{BASE}/contacts", headers=api.public)
    assert (response.status_code, response.json()) == (
        422,
        {
            "code": "invalid_request",
            "message": "external_id is required (query parameter)",
            "field": "external_id",
        },
    )


async def test_a_refused_header_is_named_as_the_client_writes_it(api: Api) -> None:
    response = await api.client.post(
        f"{BASE}/send/notification",
        json={"contacts": [{"nome": "Ana", "telefone": "11987654321"}]},
        headers={**api.public, "Idempotency-Key": "k" * 300},
    )
    assert (response.status_code, response.json()) == (
        422,
        {
            "code": "value_too_long",
            "message": "Idempotency-Key is longer than 255 characters",
            "field": "Idempotency-Key",
            "details": {"max_length": 255},
        },
    )


@pytest.mark.parametrize(
    ("method", "path", "name"),
    [
        ("get", "/queue/abc/status", "queue_id"),
        ("post", "/queue/abc/cancel", "queue_id"),
        ("post", "/queue/abc/pause", "queue_id"),
        ("get", "/campaign/abc/contacts", "campaign_id"),
        ("get", "/history/contact/abc", "contact_id"),
        ("get", "/history/template/abc", "template_id"),
        ("delete", "/api-keys/abc/", "key_id"),
    ],
)
async def test_an_id_in_the_path_that_is_no_uuid_is_refused_naming_it(
    api: Api, method: str, path: str, name: str
) -> None:
    response = await getattr(api.client, method)(f"{BASE}{path}", headers={**api.public, **api.admin})
    assert (response.status_code, response.json()) == (
        422,
        {"code": "invalid_request", "message": f"{name} in the path: Invalid UUID", "field": name},
    )


async def test_a_not_found_names_the_path_parameter(api: Api) -> None:
    unknown = uuid.uuid4()
    cases = [
        ("get", f"/queue/{unknown}/status", "queue_not_found", "queue not found", "queue_id"),
        ("get", f"/history/contact/{unknown}", "contact_not_found", "contact not found", "contact_id"),
        (
            "get",
            f"/history/contact/{unknown}?format=csv",
            "contact_not_found",
            "no contact of this tenant matches this contact",
            "contact_id",
        ),
        (
            "get",
            "/history/invoice/NF-404",
            "invoice_not_found",
            "no contact of this tenant matches this invoice",
            "ref",
        ),
        (
            "get",
            "/history/phone/5511987654321",
            "phone_not_found",
            "no contact of this tenant matches this phone",
            "e164",
        ),
        ("get", f"/history/template/{unknown}", "template_not_found", "template not found", "template_id"),
        ("delete", f"/templates/{unknown}/", "template_not_found", "template not found", "template_id"),
        ("delete", f"/api-keys/{unknown}/", "api_key_not_found", "api key not found", "key_id"),
    ]
    for method, path, code, message, field in cases:
        response = await getattr(api.client, method)(f"{BASE}{path}", headers={**api.public, **api.admin})
        assert (response.status_code, response.json()) == (
            404,
            {"code": code, "message": message, "field": field},
        ), path


async def test_a_csv_history_says_its_charset_once(api: Api) -> None:
    sent = await api.client.post(
        f"{BASE}/send/notification",
        json={"external_id": "NF-7", "contacts": [{"nome": "Ana", "telefone": "11987654321"}]},
        headers=api.public,
    )
    assert sent.status_code == 202
    project_pending(api.container.store, api.container.pool)
    contact_id = (await api.client.get(f"{BASE}/contacts?external_id=NF-7", headers=api.public)).json()[
        "items"
    ][0]["contact_id"]
    for path in (
        "/history/invoice/NF-7?format=csv",
        f"/history/contact/{contact_id}?format=csv",
        "/history/phone/5511987654321?format=csv",
    ):
        response = await api.client.get(f"{BASE}{path}", headers=api.admin)
        assert (response.status_code, response.headers["content-type"]) == (200, "text/csv; charset=utf-8")
