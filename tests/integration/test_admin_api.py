"""The admin API (JWT bearer, tenant from the token) against the real PostgreSQL: authentication, templates,
API keys, sending configuration, campaigns and stats, a contact's history, and contact-list paging.

Reads go through the projections' views, so the tests call ``project_pending`` after each write they want
to read back (the ``projections`` process does it in production).
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from litestar.testing import AsyncTestClient

from billing.api.auth import mint_token
from billing.bootstrap import Container, build_container
from billing.domain.contact import Contact
from billing.projections.views import project_pending
from billing.services.clock import FakeClock
from billing.services.tenants import TenantService
from billing.settings import Settings
from billing.webapp import create_app
from tests.cases import load_cases

BASE = "/api/billing/v1/billing"
SECRET = "s" * 32
GATEWAY = {"base_url": "http://sim", "instance": "demo", "api_key": "gw-secret-key", "api_version": "v2"}
# 01:30 UTC on Wednesday 22 January 2025 is still Tuesday the 21st, 22:30, in São Paulo (UTC-3): a due date
# of the 15th is 6 days overdue in the tenant's zone (7 by the UTC date).
NOW = datetime(2025, 1, 22, 1, 30, tzinfo=UTC)
DEFAULT_NAMES = {
    "overdue": "Cobrança em atraso",
    "upcoming": "Fatura a vencer",
    "notification": "Aviso",
}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Api:
    client: AsyncTestClient[Any]
    container: Container
    tenants: TenantService
    tenant_id: uuid.UUID
    admin: dict[str, str]  # Authorization header of the tenant's admin
    public: dict[str, str]  # X-Billing-API-Key header of the tenant's ERP

    def project(self) -> None:
        project_pending(self.container.store, self.container.pool)

    def other_tenant(self, name: str = "Outra Loja") -> tuple[uuid.UUID, dict[str, str], dict[str, str]]:
        """A second tenant: (id, admin header, public header)."""
        tenant_id = self.tenants.create_tenant(name=name, gateway=GATEWAY)
        key = self.tenants.issue_api_key(tenant_id, "erp")
        self.project()
        return tenant_id, bearer(mint_token(SECRET, tenant_id)), {"X-Billing-API-Key": key}


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    settings = Settings.from_env({}, database_url=database_url, jwt_secret=SECRET)
    container = build_container(settings, clock=FakeClock(NOW))
    tenants = TenantService(container.store, container.clock)
    tenant_id = tenants.create_tenant(name="Loja Exemplo", gateway=GATEWAY)
    key = tenants.issue_api_key(tenant_id, "erp")
    project_pending(container.store, container.pool)
    async with AsyncTestClient(app=create_app(container)) as client:
        yield Api(
            client=client,
            container=container,
            tenants=tenants,
            tenant_id=tenant_id,
            admin=bearer(mint_token(SECRET, tenant_id)),
            public={"X-Billing-API-Key": key},
        )
    await container.aclose()


def contact(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "nome": f"Cliente {i}",
        "telefone": f"+55119876543{i:02d}",
        "valor": "R$ 150,00",
        "data_vencimento": "2025-01-15",
        **extra,
    }


async def send(api: Api, contacts: list[dict[str, Any]], headers: dict[str, str] | None = None) -> Any:
    response = await api.client.post(
        f"{BASE}/send/overdue", json={"contacts": contacts}, headers=headers or api.public
    )
    assert response.status_code == 202, response.text
    api.project()
    return response.json()


# ------------------------------------------------------------------------------------------------ JWT


async def test_a_valid_token_is_accepted(api: Api) -> None:
    response = await api.client.get(f"{BASE}/templates/", headers=api.admin)
    assert response.status_code == 200, response.text


def _claims(tenant_id: uuid.UUID, **changes: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": str(tenant_id),
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(hours=1)).timestamp()),
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _alg_none_token(claims: dict[str, Any]) -> str:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims).encode())
    return f"{header}.{payload}."


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # the HS512 case's short key
@pytest.mark.parametrize(
    "case",
    [
        "wrong_signature",
        "expired",
        "alg_none",
        "no_exp",
        "sub_not_uuid",
        "hs512",
        "garbage",
        "no_token",
        "empty_bearer",
    ],
)
async def test_bad_tokens_answer_401(api: Api, case: str) -> None:
    tid = api.tenant_id
    past = int((datetime.now(UTC) - timedelta(minutes=5)).timestamp())
    tokens = {
        "wrong_signature": mint_token("x" * 32, tid),
        "expired": jwt.encode(_claims(tid, exp=past, iat=past - 3600), SECRET, algorithm="HS256"),
        "alg_none": _alg_none_token(_claims(tid)),
        "no_exp": jwt.encode(_claims(tid, exp=None), SECRET, algorithm="HS256"),
        "sub_not_uuid": jwt.encode(_claims(tid, sub="loja-exemplo"), SECRET, algorithm="HS256"),
        "hs512": jwt.encode(_claims(tid), SECRET, algorithm="HS512"),
        "garbage": "not.a.jwt",
    }
    if case == "no_token":
        headers: dict[str, str] = {}
    elif case == "empty_bearer":
        headers = {"Authorization": "Bearer "}
    else:
        headers = bearer(tokens[case])
    for method, path in [
        ("GET", "/templates/"),
        ("POST", "/api-keys/"),
        ("GET", "/config/"),
        ("GET", "/stats/"),
    ]:
        response = await api.client.request(method, BASE + path, headers=headers, json={})
        assert response.status_code == 401, (case, path, response.text)
        assert response.json()["code"] == "unauthorized"


async def test_the_alg_none_token_is_well_formed_apart_from_its_algorithm(api: Api) -> None:
    """Guard of the test above: the hand-made token decodes to the tenant when signatures are not checked,
    so its 401 comes from the algorithm, not from a malformed token."""
    token = _alg_none_token(_claims(api.tenant_id))
    assert jwt.get_unverified_header(token) == {"alg": "none", "typ": "JWT"}
    assert jwt.decode(token, options={"verify_signature": False})["sub"] == str(api.tenant_id)


async def test_an_api_key_does_not_open_the_admin_api_and_a_token_does_not_open_the_public_api(
    api: Api,
) -> None:
    admin = await api.client.get(f"{BASE}/templates/", headers=api.public)
    assert admin.status_code == 401
    public = await api.client.post(f"{BASE}/send/overdue", json={"contacts": [contact(1)]}, headers=api.admin)
    assert public.status_code == 401
    assert public.json()["code"] == "unauthorized"


# ------------------------------------------------------------------------------------------ templates


async def test_a_new_tenant_lists_its_three_default_templates(api: Api) -> None:
    response = await api.client.get(f"{BASE}/templates/", headers=api.admin)
    assert response.status_code == 200
    templates = response.json()
    assert {t["template_type"]: t["name"] for t in templates} == DEFAULT_NAMES
    assert len(templates) == 3
    for template in templates:
        assert template["active"] is True
        assert template["version"] == 1
        assert len(template["variations"]) == 2
        uuid.UUID(template["template_id"])


async def test_post_creates_a_template_with_201(api: Api) -> None:
    body = {
        "name": "Cobrança curta",
        "template_type": "overdue",
        "description": "duas variações",
        "variations": ["Olá {{nome_cliente}}, {{valor}}", "{{nome_cliente}}: {{valor}} em aberto"],
    }
    response = await api.client.post(f"{BASE}/templates/", json=body, headers=api.admin)
    assert response.status_code == 201, response.text  # litestar's default for @post
    created = response.json()
    assert {k: created[k] for k in body} == body
    assert created["active"] is True
    assert created["version"] == 1
    api.project()
    listed = (await api.client.get(f"{BASE}/templates/", headers=api.admin)).json()
    mine = [t for t in listed if t["template_id"] == created["template_id"]]
    assert len(mine) == 1
    assert mine[0]["variations"] == body["variations"]
    assert len(listed) == 4


async def test_a_malformed_variation_is_refused_with_line_and_column(api: Api) -> None:
    case = next(c for c in load_cases("templates.json") if c["id"] == "T09")
    body = {"name": "Quebrado", "template_type": "overdue", "variations": [case["template"]]}
    response = await api.client.post(f"{BASE}/templates/", json=body, headers=api.admin)
    assert response.status_code == 422
    error = response.json()
    assert error["code"] == "template_error"
    assert error["field"] == "variations[0]"
    assert error["details"] == {"line": case["expect"]["line"], "column": case["expect"]["column"]}
    assert error["details"] == {"line": 1, "column": 5}
    assert "line 1, column 5" in error["message"]
    api.project()
    assert len((await api.client.get(f"{BASE}/templates/", headers=api.admin)).json()) == 3


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("{{#each itens}}{{this}}{{/each}}", 1, 1),
        ("Olá {{upper nome}}", 1, 5),
        ("Olá\n  {{formatar valor 'R$'}}", 2, 3),
        ("{{> rodape}}", 1, 1),
        ("{{{nome}}}", 1, 1),
        ("{{&nome}}", 1, 1),
        ("{{#if a}}x{{else if b}}y{{/if}}", 1, 11),
        ("{{#with cliente}}{{nome}}{{/with}}", 1, 1),
        ("{{cliente.nome}}", 1, 1),
        ("{{~nome}}", 1, 1),
        ("{{#if a}}sem fim", 1, 1),
    ],
)
async def test_unsupported_constructs_are_refused_at_save(
    api: Api, text: str, line: int, column: int
) -> None:
    body = {"name": "X", "template_type": "notification", "variations": ["Olá {{nome}}", text]}
    response = await api.client.post(f"{BASE}/templates/", json=body, headers=api.admin)
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["code"] == "template_error"
    assert error["field"] == "variations[1]"
    assert error["details"] == {"line": line, "column": column}


@pytest.mark.parametrize(
    ("changes", "code", "field"),
    [
        ({"variations": []}, "invalid_request", "variations"),
        ({"variations": ["  "]}, "invalid_variations", "variations[0]"),
        ({"template_type": "cobranca"}, "invalid_request", "template_type"),
        ({"name": " "}, "invalid_name", "name"),
    ],
)
async def test_invalid_template_fields_are_refused_naming_the_field(
    api: Api, changes: dict[str, Any], code: str, field: str
) -> None:
    body = {"name": "X", "template_type": "overdue", "variations": ["Oi"], **changes}
    response = await api.client.post(f"{BASE}/templates/", json=body, headers=api.admin)
    assert response.status_code == 422, response.text
    assert (response.json()["code"], response.json()["field"]) == (code, field)


async def _create(api: Api, variations: list[str], template_type: str = "overdue") -> dict[str, Any]:
    body = {"name": "Minha", "template_type": template_type, "variations": variations}
    response = await api.client.post(f"{BASE}/templates/", json=body, headers=api.admin)
    assert response.status_code == 201, response.text
    api.project()
    created: dict[str, Any] = response.json()
    return created


async def test_patch_changes_the_variations_and_bumps_the_version(api: Api) -> None:
    created = await _create(api, ["Olá {{nome}}"])
    path = f"{BASE}/templates/{created['template_id']}/"
    response = await api.client.patch(
        path, json={"variations": ["Oi {{nome}}", "E aí {{nome}}"], "description": "nova"}, headers=api.admin
    )
    assert response.status_code == 200, response.text
    changed = response.json()
    assert changed["variations"] == ["Oi {{nome}}", "E aí {{nome}}"]
    assert changed["description"] == "nova"
    assert changed["name"] == "Minha"
    assert changed["version"] == 2
    api.project()
    listed = {
        t["template_id"]: t for t in (await api.client.get(f"{BASE}/templates/", headers=api.admin)).json()
    }
    assert listed[created["template_id"]]["variations"] == ["Oi {{nome}}", "E aí {{nome}}"]
    assert listed[created["template_id"]]["version"] == 2
    # a malformed variation in a PATCH is refused and changes nothing
    bad = await api.client.patch(path, json={"variations": ["ok", "Olá {{nome}"]}, headers=api.admin)
    assert bad.status_code == 422
    assert (bad.json()["code"], bad.json()["field"]) == ("template_error", "variations[1]")
    assert bad.json()["details"] == {"line": 1, "column": 5}
    # a PATCH that changes nothing records nothing
    same = await api.client.patch(path, json={"name": "Minha"}, headers=api.admin)
    assert same.status_code == 200
    assert same.json()["version"] == 2


async def test_patch_refuses_fields_it_cannot_change(api: Api) -> None:
    created = await _create(api, ["Olá {{nome}}"])
    path = f"{BASE}/templates/{created['template_id']}/"
    response = await api.client.patch(path, json={"template_type": "upcoming"}, headers=api.admin)
    assert response.status_code == 422, response.text
    assert (response.json()["code"], response.json()["field"]) == ("unknown_field", "template_type")
    api.project()
    listed = {
        t["template_id"]: t for t in (await api.client.get(f"{BASE}/templates/", headers=api.admin)).json()
    }
    assert listed[created["template_id"]]["template_type"] == "overdue"
    assert listed[created["template_id"]]["version"] == 1


async def test_delete_deactivates_and_the_history_stays(api: Api) -> None:
    created = await _create(api, ["Olá {{nome}}"])
    template_id = created["template_id"]
    response = await api.client.delete(f"{BASE}/templates/{template_id}/", headers=api.admin)
    assert response.status_code == 200, response.text
    assert response.json()["active"] is False
    assert response.json()["version"] == 2
    api.project()
    listed = {
        t["template_id"]: t for t in (await api.client.get(f"{BASE}/templates/", headers=api.admin)).json()
    }
    assert listed[template_id]["active"] is False
    assert listed[template_id]["variations"] == ["Olá {{nome}}"]
    events: list[Any] = list(api.container.store.events.get(uuid.UUID(template_id)))
    assert [type(e).TOPIC for e in events] == ["billing.Template.Created", "billing.Template.Changed"]
    assert events[0].variations == ["Olá {{nome}}"]
    # deleting again records nothing; PATCH active=true brings it back
    again = await api.client.delete(f"{BASE}/templates/{template_id}/", headers=api.admin)
    assert again.status_code == 200
    assert again.json()["version"] == 2
    back = await api.client.patch(
        f"{BASE}/templates/{template_id}/", json={"active": True}, headers=api.admin
    )
    assert back.json()["active"] is True
    assert back.json()["version"] == 3


async def test_another_tenants_template_answers_404(api: Api) -> None:
    _, other_admin, _ = api.other_tenant()
    created = await _create(api, ["Olá {{nome}}"])
    path = f"{BASE}/templates/{created['template_id']}/"
    for method, url, body in [
        ("PATCH", path, {"name": "roubado"}),
        ("DELETE", path, None),
        ("POST", f"{path}preview", {"variables": {"nome": "X"}}),
    ]:
        response = await api.client.request(method, url, json=body, headers=other_admin)
        assert response.status_code == 404, (method, response.text)
        assert response.json()["code"] == "template_not_found"
    other_list = (await api.client.get(f"{BASE}/templates/", headers=other_admin)).json()
    assert created["template_id"] not in {t["template_id"] for t in other_list}
    unknown = await api.client.patch(
        f"{BASE}/templates/{uuid.uuid4()}/", json={"name": "x"}, headers=api.admin
    )
    assert unknown.status_code == 404
    # an id of another kind of aggregate (the tenant itself) is not a template either
    tenant = await api.client.delete(f"{BASE}/templates/{api.tenant_id}/", headers=api.admin)
    assert tenant.status_code == 404
    api.project()
    mine = {
        t["template_id"]: t for t in (await api.client.get(f"{BASE}/templates/", headers=api.admin)).json()
    }
    assert mine[created["template_id"]]["name"] == "Minha"
    assert mine[created["template_id"]]["version"] == 1


async def test_preview_renders_every_variation_for_sample_variables(api: Api) -> None:
    created = await _create(
        api,
        [
            "Olá, {{nome_cliente}}! A fatura de {{valor}} venceu em {{data_vencimento}}"
            "{{#if vencida}}, há {{dias_atraso}} dia(s){{else}} (vence hoje){{/if}}.",
            "{{nome_cliente}}, {{#unless vencida}}sua fatura vence hoje{{else}}constam {{valor_total}} em "
            "aberto{{/unless}}. Pedido {{pedido}}: <b>&amp;</b> {{obs}}",
        ],
    )
    sample = {
        "nome": "D'Ávila & Filhos",
        "valor": "R$ 1.234,5",
        "valor_total": 2000,
        "data_vencimento": "15/01/2025",
        "pedido": "A-77",
        "obs": "{{nome}}",
    }
    response = await api.client.post(
        f"{BASE}/templates/{created['template_id']}/preview", json={"variables": sample}, headers=api.admin
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "template_id": created["template_id"],
        "version": 1,
        "previews": [
            "Olá, D'Ávila & Filhos! A fatura de R$\u00a01.234,50 venceu em 15/01/2025, há 6 dia(s).",
            "D'Ávila & Filhos, constam R$\u00a02.000,00 em aberto. Pedido A-77: <b>&amp;</b> {{nome}}",
        ],
        "missing_variables": [[], []],
    }
    due_today = {**sample, "data_vencimento": "2025-01-21"}
    today = await api.client.post(
        f"{BASE}/templates/{created['template_id']}/preview", json={"variables": due_today}, headers=api.admin
    )
    assert today.json()["previews"] == [
        "Olá, D'Ávila & Filhos! A fatura de R$\u00a01.234,50 venceu em 21/01/2025 (vence hoje).",
        "D'Ávila & Filhos, sua fatura vence hoje. Pedido A-77: <b>&amp;</b> {{nome}}",
    ]


async def test_preview_names_the_variables_a_sample_lacks(api: Api) -> None:
    created = await _create(api, ["Oi {{nome_cliente}}, {{valor}}", "{{#if valor}}{{valor}}{{/if}} ok"])
    response = await api.client.post(
        f"{BASE}/templates/{created['template_id']}/preview", json={"variables": {}}, headers=api.admin
    )
    assert response.status_code == 200, response.text
    assert response.json()["previews"] == ["Oi , ", " ok"]
    assert response.json()["missing_variables"] == [["nome_cliente", "valor"], []]


async def test_preview_refuses_unusable_sample_values_naming_the_field(api: Api) -> None:
    created = await _create(api, ["{{valor}}"])
    path = f"{BASE}/templates/{created['template_id']}/preview"
    for variables, code, field in [
        ({"valor": "1.234"}, "ambiguous_amount", "variables.valor"),
        ({"valor": "abc"}, "invalid_amount", "variables.valor"),
        ({"data_vencimento": "2025-13-01"}, "invalid_date", "variables.data_vencimento"),
    ]:
        response = await api.client.post(path, json={"variables": variables}, headers=api.admin)
        assert response.status_code == 422, response.text
        assert (response.json()["code"], response.json()["field"]) == (code, field)


async def test_preview_reads_sample_values_as_ingestion_does(api: Api) -> None:
    created = await _create(api, ["[{{valor}}] [{{valor_total}}] [{{nota}}] {{#if vence_hoje}}hoje{{/if}}"])
    path = f"{BASE}/templates/{created['template_id']}/preview"
    sample = {"valor": "   ", "valor_total": 0, "nota": None, "data_vencimento": " "}
    response = await api.client.post(path, json={"variables": sample}, headers=api.admin)
    assert response.status_code == 200, response.text
    assert response.json()["previews"] == ["[] [R$\u00a00,00] [] "]
    nested = await api.client.post(path, json={"variables": {"nota": {"a": 1}}}, headers=api.admin)
    assert nested.status_code == 422
    assert (nested.json()["code"], nested.json()["field"]) == ("invalid_request", "variables.nota")


async def test_preview_counts_days_in_the_tenants_zone(api: Api) -> None:
    """At NOW it is already the 22nd in Tokyo: 7 days after the 15th (6 in São Paulo). The zone is stored as
    the admin typed it, spaces included; the preview must read it as the worker does."""
    response = await api.client.patch(
        f"{BASE}/config/", json={"policy": {"timezone": " Asia/Tokyo "}}, headers=api.admin
    )
    assert response.status_code == 200, response.text
    created = await _create(api, ["{{dias_atraso}} {{dias_para_vencer}} {{vencida}}"])
    path = f"{BASE}/templates/{created['template_id']}/preview"
    for due, text in [("2025-01-15", "7 0 true"), ("2025-01-22", "0 0 false"), ("25/01/2025", "0 3 false")]:
        body = {"variables": {"data_vencimento": due}}
        answer = await api.client.post(path, json=body, headers=api.admin)
        assert answer.status_code == 200, answer.text
        assert answer.json()["previews"] == [text]


async def test_a_token_for_an_unregistered_tenant_creates_nothing(api: Api) -> None:
    stranger = bearer(mint_token(SECRET, uuid.uuid4()))
    body = {"name": "Órfão", "template_type": "overdue", "variations": ["Olá {{nome}}"]}
    response = await api.client.post(f"{BASE}/templates/", json=body, headers=stranger)
    assert response.status_code == 404
    assert response.json()["code"] == "tenant_not_found"
    assert (await api.client.post(f"{BASE}/api-keys/", json={}, headers=stranger)).status_code == 404
    assert (await api.client.get(f"{BASE}/config/", headers=stranger)).status_code == 404
    assert (await api.client.get(f"{BASE}/templates/", headers=stranger)).json() == []


# ------------------------------------------------------------------------------------------- API keys


async def test_api_key_is_shown_once_listed_without_its_text_and_revoked(api: Api) -> None:
    response = await api.client.post(f"{BASE}/api-keys/", json={"name": "integração"}, headers=api.admin)
    assert response.status_code == 201, response.text
    issued = response.json()
    key = issued["api_key"]
    assert key.startswith("bk_")
    assert len(key) == 46
    assert issued["name"] == "integração"
    assert issued["prefix"] == key[:8]
    key_id = issued["key_id"]
    uuid.UUID(key_id)
    api.project()
    # promise 8: stored as its SHA-256 only; the secret part appears in no event and no view
    stored: Any = api.container.store.repository.get(uuid.UUID(key_id))
    assert stored.key_hash == hashlib.sha256(key.encode()).hexdigest()
    with api.container.pool.connection() as conn:
        events = conn.execute("SELECT state FROM billing_events").fetchall()
        views = conn.execute("SELECT * FROM api_keys").fetchall()
    assert all(key[8:].encode() not in bytes(row["state"]) for row in events)
    assert all(key[8:] not in str(row) for row in views)

    listing = await api.client.get(f"{BASE}/api-keys/", headers=api.admin)
    assert listing.status_code == 200
    assert key not in listing.text
    keys = {k["key_id"]: k for k in listing.json()}
    assert len(keys) == 2  # the fixture's "erp" key and this one
    assert set(keys[key_id]) == {"key_id", "name", "prefix", "created_at", "revoked_at"}
    assert keys[key_id]["name"] == "integração"
    assert keys[key_id]["prefix"] == key[:8]
    assert keys[key_id]["revoked_at"] is None

    # the new key works on the public API (and is now in this app's 10 s authentication cache)
    headers = {"X-Billing-API-Key": key}
    used = await api.client.post(f"{BASE}/send/overdue", json={"contacts": [contact(1)]}, headers=headers)
    assert used.status_code == 202

    revoke = await api.client.delete(f"{BASE}/api-keys/{key_id}/", headers=api.admin)
    assert revoke.status_code == 204
    # the revoking process drops its cache at once...
    refused = await api.client.post(f"{BASE}/send/overdue", json={"contacts": [contact(1)]}, headers=headers)
    assert refused.status_code == 401
    assert refused.json()["code"] == "unauthorized"
    # ...and a fresh api process (new Services, empty cache) refuses the key too
    async with AsyncTestClient(app=create_app(api.container)) as fresh:
        again = await fresh.get(f"{BASE}/queue/{uuid.uuid4()}/status", headers=headers)
        assert again.status_code == 401
        assert again.json()["code"] == "unauthorized"
    # the other key still works, and the listing shows the revocation
    other = await api.client.post(f"{BASE}/send/overdue", json={"contacts": [contact(2)]}, headers=api.public)
    assert other.status_code == 202
    api.project()
    keys = {k["key_id"]: k for k in (await api.client.get(f"{BASE}/api-keys/", headers=api.admin)).json()}
    assert keys[key_id]["revoked_at"] == NOW.isoformat()


async def test_api_key_of_another_tenant_answers_404_and_stays_valid(api: Api) -> None:
    _, other_admin, other_public = api.other_tenant()
    other_keys = (await api.client.get(f"{BASE}/api-keys/", headers=other_admin)).json()
    assert len(other_keys) == 1
    response = await api.client.delete(f"{BASE}/api-keys/{other_keys[0]['key_id']}/", headers=api.admin)
    assert response.status_code == 404
    assert response.json()["code"] == "api_key_not_found"
    assert (await api.client.delete(f"{BASE}/api-keys/{uuid.uuid4()}/", headers=api.admin)).status_code == 404
    mine = {k["key_id"] for k in (await api.client.get(f"{BASE}/api-keys/", headers=api.admin)).json()}
    assert other_keys[0]["key_id"] not in mine
    ok = await api.client.post(f"{BASE}/send/overdue", json={"contacts": [contact(1)]}, headers=other_public)
    assert ok.status_code == 202


async def test_api_key_name_must_not_be_blank(api: Api) -> None:
    response = await api.client.post(f"{BASE}/api-keys/", json={"name": "  "}, headers=api.admin)
    assert response.status_code == 422
    assert (response.json()["code"], response.json()["field"]) == ("invalid_name", "name")


# --------------------------------------------------------------------------------------------- config


async def test_config_masks_the_gateway_key(api: Api) -> None:
    response = await api.client.get(f"{BASE}/config/", headers=api.admin)
    assert response.status_code == 200
    config = response.json()
    assert config["gateway"] == {**GATEWAY, "api_key": "***"}
    assert GATEWAY["api_key"] not in response.text
    assert config["tenant_id"] == str(api.tenant_id)
    assert config["name"] == "Loja Exemplo"
    assert config["policy"]["timezone"] == "America/Sao_Paulo"
    assert config["policy"]["messages_per_minute"] == 20


@pytest.mark.parametrize(
    ("policy", "code", "field"),
    [
        ({"windows": {"mon": [["08:00", "08:00"]]}}, "invalid_policy", "policy.windows.mon[0]"),  # H02
        ({"timezone": "America/Atlantida"}, "invalid_policy", "policy.timezone"),
        ({"messages_per_minute": -1}, "out_of_range", "policy.messages_per_minute"),
        ({"messages_per_minute": 1e9}, "invalid_request", "policy.messages_per_minute"),
        ({"messages_per_minute": 1_000_000_000}, "out_of_range", "policy.messages_per_minute"),
        ({"max_messages_per_day": 10**7}, "out_of_range", "policy.max_messages_per_day"),
        ({"retry": {"max_attempts": 1000}}, "out_of_range", "policy.retry.max_attempts"),
        (
            {"windows": {"mon": [["08:00", "12:00"], ["11:00", "14:00"]]}},
            "invalid_policy",
            "policy.windows.mon[1]",
        ),
        ({"windows": {"funday": [["08:00", "12:00"]]}}, "invalid_policy", "policy.windows.funday"),
        ({"windows": {"mon": [["8h", "12:00"]]}}, "invalid_policy", "policy.windows.mon[0][0]"),
        ({"windows": {"mon": [[[[["08:00"]]]]]}}, "invalid_request", "policy.windows.mon[0][0]"),
        ({"pause_min_s": 5, "pause_max_s": 1}, "invalid_policy", "policy.pause_min_s"),
        ({"allowed_countries": ["BR", "XX"]}, "invalid_policy", "policy.allowed_countries[1]"),
        ({"allowed_countries": []}, "invalid_request", "policy.allowed_countries"),
        ({"sleep": True}, "unknown_field", "policy.sleep"),
    ],
)
async def test_invalid_policy_is_refused_naming_the_field_and_changes_nothing(
    api: Api, policy: dict[str, Any], code: str, field: str
) -> None:
    before = (await api.client.get(f"{BASE}/config/", headers=api.admin)).json()
    response = await api.client.patch(f"{BASE}/config/", json={"policy": policy}, headers=api.admin)
    assert response.status_code == 422, response.text
    assert (response.json()["code"], response.json()["field"]) == (code, field)
    assert (await api.client.get(f"{BASE}/config/", headers=api.admin)).json() == before


async def test_valid_config_patch_changes_policy_and_gateway(api: Api) -> None:
    windows = {"mon-fri": [["09:00", "17:00"]]}
    response = await api.client.patch(
        f"{BASE}/config/",
        json={"policy": {"messages_per_minute": 5, "windows": windows, "timezone": "America/Manaus"}},
        headers=api.admin,
    )
    assert response.status_code == 200, response.text
    policy = response.json()["policy"]
    assert (policy["messages_per_minute"], policy["windows"], policy["timezone"]) == (
        5,
        windows,
        "America/Manaus",
    )
    assert policy["max_messages_per_day"] == 1000  # untouched keys stay
    gateway = {
        "base_url": "https://evo.example",
        "instance": "loja2",
        "api_key": "novo-segredo",
        "api_version": "v1",
    }
    response = await api.client.patch(f"{BASE}/config/", json={"gateway": gateway}, headers=api.admin)
    assert response.status_code == 200
    assert response.json()["gateway"] == {**gateway, "api_key": "***"}
    assert "novo-segredo" not in response.text
    stored = api.tenants.get_tenant(api.tenant_id)
    assert stored.gateway == gateway
    assert stored.policy["messages_per_minute"] == 5


async def test_config_patch_is_all_or_nothing(api: Api) -> None:
    before = (await api.client.get(f"{BASE}/config/", headers=api.admin)).json()
    response = await api.client.patch(
        f"{BASE}/config/",
        json={"policy": {"messages_per_minute": 5}, "gateway": {**GATEWAY, "api_version": "v9"}},
        headers=api.admin,
    )
    assert response.status_code == 422
    assert (response.json()["code"], response.json()["field"]) == ("invalid_gateway", "gateway.api_version")
    assert (await api.client.get(f"{BASE}/config/", headers=api.admin)).json() == before
    empty = await api.client.patch(f"{BASE}/config/", json={}, headers=api.admin)
    assert empty.status_code == 422
    assert empty.json()["code"] == "invalid_request"


# ----------------------------------------------------------------------------------- campaigns, stats


async def test_campaigns_and_stats_show_the_tenants_data_only(api: Api) -> None:
    _, other_admin, other_public = api.other_tenant()
    mine = await send(api, [contact(1), contact(2, telefone="abc")])
    theirs = await send(api, [contact(3), contact(4), contact(5)], headers=other_public)

    campaigns = (await api.client.get(f"{BASE}/campaigns/", headers=api.admin)).json()
    assert [c["campaign_id"] for c in campaigns] == [mine["campaign_id"]]
    assert campaigns[0]["queue_id"] == mine["queue_id"]
    assert campaigns[0]["contacts"]["total"] == 2
    assert campaigns[0]["contacts"]["rejected"] == 1
    assert campaigns[0]["status"] == "queued"
    other_campaigns = (await api.client.get(f"{BASE}/campaigns/", headers=other_admin)).json()
    assert [c["campaign_id"] for c in other_campaigns] == [theirs["campaign_id"]]

    stats = (await api.client.get(f"{BASE}/stats/", headers=api.admin)).json()
    assert stats["queues"] == 1
    assert stats["contacts"]["pending"] == 1
    assert stats["contacts"]["rejected"] == 1
    assert sum(stats["contacts"].values()) == 2
    other_stats = (await api.client.get(f"{BASE}/stats/", headers=other_admin)).json()
    assert other_stats["queues"] == 1
    assert other_stats["contacts"]["pending"] == 3
    assert sum(other_stats["contacts"].values()) == 3


# ------------------------------------------------------------------------------------------- history


async def test_contact_history_lists_its_events_in_order(api: Api) -> None:
    accepted = await send(api, [contact(1), contact(2, telefone="abc")])
    items = (
        await api.client.get(f"{BASE}/campaign/{accepted['campaign_id']}/contacts", headers=api.public)
    ).json()["items"]
    sent_id, rejected_id = uuid.UUID(items[0]["contact_id"]), uuid.UUID(items[1]["contact_id"])
    # what the worker does, step by step
    store, clock = api.container.store, api.container.clock
    one: Contact = store.repository.get(sent_id)
    one.dispatch(at=clock.now(), lease=timedelta(minutes=1))
    one.record_failure(
        code="gateway_timeout", message="timeout", retryable=True, retry_at=clock.now(), at=clock.now()
    )
    one.dispatch(at=clock.now(), lease=timedelta(minutes=1))
    template_id = uuid.uuid4()
    one.record_sent(
        gateway_message_id="WA-1", remote_jid="5511987654301@s.whatsapp.net", text="Olá", at=clock.now(),
        template_id=template_id, template_version=3, variation=1,
    )  # fmt: skip
    store.save(one)

    response = await api.client.get(f"{BASE}/history/contact/{sent_id}", headers=api.admin)
    assert response.status_code == 200, response.text
    history = response.json()
    assert history["contact_id"] == str(sent_id)
    events = history["events"]
    assert [e["type"] for e in events] == [
        "billing.Contact.Added",
        "billing.Contact.Dispatched",
        "billing.Contact.Failed",
        "billing.Contact.Dispatched",
        "billing.Contact.Sent",
    ]
    assert [e["version"] for e in events] == [1, 2, 3, 4, 5]
    assert events[0]["data"]["fields"]["nome"] == "Cliente 1"
    assert events[0]["data"]["amount"] == "150.00"
    assert events[0]["data"]["due_date"] == "2025-01-15"
    assert [e["data"]["attempt"] for e in events if e["type"] == "billing.Contact.Dispatched"] == [1, 2]
    assert events[4]["data"]["text"] == "Olá"
    assert events[4]["data"]["template_id"] == str(template_id)
    assert (events[4]["data"]["template_version"], events[4]["data"]["variation"]) == (3, 1)
    assert all(e["at"] == NOW.isoformat() for e in events)

    rejected = (await api.client.get(f"{BASE}/history/contact/{rejected_id}", headers=api.admin)).json()
    assert [e["type"] for e in rejected["events"]] == ["billing.Contact.Rejected"]
    assert rejected["events"][0]["data"]["code"] == "invalid_phone"

    _, other_admin, _ = api.other_tenant()
    foreign = await api.client.get(f"{BASE}/history/contact/{sent_id}", headers=other_admin)
    assert foreign.status_code == 404
    assert foreign.json()["code"] == "contact_not_found"
    for unknown in (uuid.uuid4(), api.tenant_id):
        response = await api.client.get(f"{BASE}/history/contact/{unknown}", headers=api.admin)
        assert response.status_code == 404


# -------------------------------------------------------------------------------------------- paging


async def test_contact_list_pages_with_next_cursor_and_filters_by_status(api: Api) -> None:
    contacts = [contact(i) for i in range(5)]
    contacts[3] = contact(3, telefone="123")
    accepted = await send(api, contacts)
    path = f"{BASE}/campaign/{accepted['campaign_id']}/contacts"
    pages: list[list[int]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        response = await api.client.get(path, params=params, headers=api.public)
        assert response.status_code == 200, response.text
        page = response.json()
        pages.append([item["index"] for item in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(pages) < 5
    assert pages == [[0, 1], [2, 3], [4]]

    pending = (await api.client.get(path, params={"status": "pending"}, headers=api.public)).json()
    assert [i["index"] for i in pending["items"]] == [0, 1, 2, 4]
    assert pending["next_cursor"] is None
    rejected = (await api.client.get(path, params={"status": "rejected"}, headers=api.public)).json()
    assert [(i["index"], i["error"]["code"]) for i in rejected["items"]] == [(3, "invalid_phone")]
    paged = (await api.client.get(path, params={"status": "pending", "limit": 3}, headers=api.public)).json()
    assert [i["index"] for i in paged["items"]] == [0, 1, 2]
    rest = await api.client.get(
        path, params={"status": "pending", "limit": 3, "cursor": paged["next_cursor"]}, headers=api.public
    )
    assert [i["index"] for i in rest.json()["items"]] == [4]
    assert rest.json()["next_cursor"] is None


@pytest.mark.parametrize("cursor", ["!!!", "abc", "bm90LWEtbnVtYmVy"])
async def test_a_bad_cursor_is_422(api: Api, cursor: str) -> None:
    accepted = await send(api, [contact(1)])
    response = await api.client.get(
        f"{BASE}/campaign/{accepted['campaign_id']}/contacts", params={"cursor": cursor}, headers=api.public
    )
    assert response.status_code == 422, response.text
    assert (response.json()["code"], response.json()["field"]) == ("invalid_request", "cursor")


async def test_an_unknown_status_filter_is_refused(api: Api) -> None:
    accepted = await send(api, [contact(1)])
    response = await api.client.get(
        f"{BASE}/campaign/{accepted['campaign_id']}/contacts", params={"status": "lost"}, headers=api.public
    )
    assert response.status_code == 422, response.text
    assert (response.json()["code"], response.json()["field"]) == ("invalid_request", "status")


async def test_template_history_tells_what_the_template_said_and_since_when(api: Api) -> None:
    created = await _create(api, ["Olá {{nome}}"])
    template_id = created["template_id"]
    await api.client.patch(
        f"{BASE}/templates/{template_id}/",
        json={"variations": ["Oi {{nome}}", "Olá {{nome}}"]},
        headers=api.admin,
    )
    response = await api.client.get(f"{BASE}/history/template/{template_id}", headers=api.admin)
    assert response.status_code == 200, response.text
    events = response.json()["events"]
    assert [(e["type"], e["version"]) for e in events] == [
        ("billing.Template.Created", 1),
        ("billing.Template.Changed", 2),
    ]
    assert events[0]["data"]["variations"] == ["Olá {{nome}}"]
    assert events[1]["data"]["variations"] == ["Oi {{nome}}", "Olá {{nome}}"]
    assert events[0]["at"] <= events[1]["at"]
    _, other_admin, _ = api.other_tenant()
    foreign = await api.client.get(f"{BASE}/history/template/{template_id}", headers=other_admin)
    assert foreign.status_code == 404
    assert foreign.json()["code"] == "template_not_found"
