"""The dashboard over the real PostgreSQL, in process (litestar's test client): every route guarded, login
(argon2, throttled, CSRF), tenant scoping (another tenant's ids are 404), viewer read-only, admin actions
recorded as events, the new-campaign flow through the ingestion service, templates with default choice and
``template_id``, the overview's read model, pt-BR formatting."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from billing.bootstrap import Container, build_container
from billing.projections.views import project_pending
from billing.services.clock import FakeClock
from billing.services.tenants import TenantService
from billing.services.users import UserService
from billing.settings import Settings
from billing.webapp import create_app

SECRET = "d" * 40
GATEWAY = {"base_url": "http://sim", "instance": "demo", "api_key": "gw-secret-key", "api_version": "v2"}
NOW = datetime(2026, 12, 1, 13, 0, tzinfo=UTC)  # Tuesday 10:00 in São Paulo
PASSWORD = "senha-muito-boa-1"
CSV = (
    "Cliente;Celular;Valor;Vencimento;numero_fatura\n"
    "Maria Souza;(11) 98765-4321;1.234,56;20/11/2026;F-1\n"
    "João Lima;11 91234-5678;99,90;25/11/2026;F-2\n"
    "Sem Fone;123;10,00;25/11/2026;F-3\n"
)


@dataclass
class Dash:
    client: AsyncTestClient[Litestar]
    container: Container
    tenant_id: uuid.UUID
    users: UserService
    tenants: TenantService

    def project(self) -> None:
        project_pending(self.container.store, self.container.pool)

    async def login(self, email: str = "ana@loja.example", password: str = PASSWORD) -> Any:
        page = await self.client.get("/dashboard/login")
        token = csrf_of(page.text)
        return await self.client.post(
            "/dashboard/login",
            data={"email": email, "password": password, "_csrf_token": token, "next": "/dashboard/"},
            follow_redirects=False,
        )

    async def csrf(self, path: str = "/dashboard/") -> str:
        return csrf_of((await self.client.get(path)).text)


def csrf_of(html: str) -> str:
    match = re.search(r'name="_csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


@pytest.fixture
async def dash(database_url: str) -> AsyncIterator[Dash]:
    settings = Settings.from_env({}, database_url=database_url, jwt_secret=SECRET)
    container = build_container(settings, clock=FakeClock(NOW))
    tenants = TenantService(container.store, container.clock)
    users = UserService(container.store, container.pool, container.clock)
    tenant_id = tenants.create_tenant(name="Loja Exemplo", gateway=GATEWAY)
    users.create(tenant_id, email="Ana@Loja.example", password=PASSWORD, role="admin")
    users.create(tenant_id, email="vera@loja.example", password=PASSWORD, role="viewer")
    project_pending(container.store, container.pool)
    app = create_app(container)
    async with AsyncTestClient(app=app, base_url="http://testserver.local") as client:
        yield Dash(client, container, tenant_id, users, tenants)
    await container.aclose()


def dashboard_routes(app: Litestar) -> list[tuple[str, str]]:
    """(method, path) of every dashboard route, path parameters filled with a random UUID."""
    found = []
    for route in app.routes:
        if not route.path.startswith("/dashboard") or route.path.startswith("/dashboard/static"):
            continue
        path = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), route.path)
        for method in sorted(route.methods - {"OPTIONS", "HEAD"}):
            found.append((method, path))
    return found


async def test_every_dashboard_route_unauthenticated_redirects_to_login_or_answers_401(dash: Dash) -> None:
    routes = dashboard_routes(dash.client.app)
    assert len(routes) >= 30
    token = await dash.csrf("/dashboard/login")  # a valid CSRF pair, so POSTs reach the guard
    for method, path in routes:
        if path in ("/dashboard/login",):
            continue
        data = {"_csrf_token": token} if method == "POST" else None
        response = await dash.client.request(method, path, data=data, follow_redirects=False)
        if method == "GET":
            assert response.status_code == 303, (method, path, response.status_code)
            assert response.headers["location"].startswith("/dashboard/login?next=/dashboard")
        else:
            assert response.status_code == 401, (method, path, response.status_code)


async def test_login_sets_an_httponly_samesite_session_and_logout_ends_it(dash: Dash) -> None:
    response = await dash.login()
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/"
    cookie = next(h for h in response.headers.get_list("set-cookie") if h.startswith("billing_session="))
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/dashboard" in cookie
    assert "Secure" not in cookie  # http: BILLING_PUBLIC_URL is not https
    overview = await dash.client.get("/dashboard/")
    assert overview.status_code == 200
    assert "Loja Exemplo" in overview.text and 'lang="pt-BR"' in overview.text
    token = csrf_of(overview.text)
    out = await dash.client.post("/dashboard/logout", data={"_csrf_token": token}, follow_redirects=False)
    assert out.status_code == 303
    again = await dash.client.get("/dashboard/", follow_redirects=False)
    assert again.status_code == 303


async def test_wrong_password_is_401_and_the_eleventh_attempt_in_a_minute_is_429(dash: Dash) -> None:
    statuses = [(await dash.login(password="errada-errada")).status_code for _ in range(10)]
    assert statuses == [401] * 10
    assert (await dash.login()).status_code == 429  # even with the right password: throttled


async def test_a_post_without_the_csrf_token_is_refused(dash: Dash) -> None:
    await dash.login()
    response = await dash.client.post("/dashboard/api-keys/", data={"name": "x"})
    assert response.status_code == 403
    keys = await dash.client.get("/dashboard/api-keys/")
    assert "x" not in re.findall(r"<td>([^<]*)</td>", keys.text)


async def test_api_key_is_shown_once_and_the_action_is_recorded_as_an_event(dash: Dash) -> None:
    await dash.login()
    token = await dash.csrf("/dashboard/api-keys/")
    created = await dash.client.post(
        "/dashboard/api-keys/", data={"name": "ERP produção", "_csrf_token": token}
    )
    assert created.status_code == 200
    key = re.search(r'id="new-key">(bk_[^<]+)<', created.text)
    assert key, created.text
    assert dash.tenants.authenticate(key.group(1)) == dash.tenant_id
    dash.project()
    listed = await dash.client.get("/dashboard/api-keys/")  # shown once: not on the next visit
    assert "ERP produção" in listed.text and key.group(1) not in listed.text
    users = await dash.client.get("/dashboard/users/")
    assert "api_key.create" in users.text and "ana@loja.example" in users.text
    topics = [n.topic for n in dash.container.store.recorder.select_notifications(start=1, limit=1000)]
    assert topics.count("billing.AdminAction.Recorded") == 1


async def test_a_viewer_sees_no_forms_and_every_change_is_403(dash: Dash) -> None:
    assert (await dash.login("vera@loja.example")).status_code == 303
    page = await dash.client.get("/dashboard/api-keys/")
    assert page.status_code == 200 and "Criar chave" not in page.text
    token = csrf_of(page.text)  # the logout form's
    for path in (
        "/dashboard/api-keys/",
        "/dashboard/settings/limits",
        "/dashboard/users/",
        "/dashboard/templates/",
    ):
        response = await dash.client.post(path, data={"_csrf_token": token, "name": "x"})
        assert response.status_code == 403, path
    assert (await dash.client.get("/dashboard/campaigns/new")).status_code == 403


async def test_another_tenants_campaign_and_template_are_404(dash: Dash) -> None:
    other = dash.tenants.create_tenant(name="Outra", gateway=GATEWAY)
    key = dash.tenants.issue_api_key(other, "erp")
    dash.project()
    from billing.api.schemas import SendRequest
    from billing.domain.types import TemplateType

    result = dash_ingest(dash).submit(
        tenant_id=other,
        path_type=TemplateType.NOTIFICATION,
        request=SendRequest(contacts=[{"nome": "X", "telefone": "11987654321"}]),
    )
    assert key
    dash.project()
    await dash.login()
    for path in (
        f"/dashboard/campaigns/{result.campaign_id}",
        f"/dashboard/campaigns/{result.campaign_id}/progress",
        f"/dashboard/campaigns/{result.campaign_id}/export.csv",
        f"/dashboard/history/contact/{uuid.uuid5(result.campaign_id, '0')}",
    ):
        response = await dash.client.get(path)
        assert response.status_code == 404, path
        assert "Não encontrado" in response.text


def dash_ingest(dash: Dash) -> Any:
    from billing.services.ingest import IngestService
    from billing.services.queries import Queries

    return IngestService(dash.container.store, Queries(dash.container.pool), dash.container.clock)


async def test_new_campaign_upload_mapping_preview_and_send_through_the_ingestion_service(dash: Dash) -> None:
    await dash.login()
    token = await dash.csrf("/dashboard/campaigns/new")
    mapping = await dash.client.post(
        "/dashboard/campaigns/new",
        data={"template_type": "overdue", "template_id": "", "external_id": "lote-1", "_csrf_token": token},
        files={"file": ("export.csv", CSV.encode(), "text/csv")},
    )
    assert mapping.status_code == 200, mapping.text
    fields = dict(re.findall(r'name="(map_\d+)"[^>]*value="([^"]*)"', mapping.text))
    assert list(fields.values()) == ["nome", "telefone", "valor", "data_vencimento", "numero_fatura"]
    sheet = re.search(r'name="sheet" value="([^"]+)"', mapping.text).group(1)  # type: ignore[union-attr]
    form = {"sheet": sheet, "template_type": "overdue", "template_id": "", "external_id": "lote-1", **fields}
    preview = await dash.client.post("/dashboard/campaigns/preview", data={**form, "_csrf_token": token})
    assert preview.status_code == 200, preview.text
    assert re.search(r'id="preview-accepted">2<', preview.text)
    assert re.search(r'id="preview-rejected">1<', preview.text)
    assert "<td>4</td>" in preview.text and "invalid_phone" in preview.text  # line 4 of the file
    assert "Maria Souza" in preview.text and "R$\xa01.234,56" in preview.text and "20/11/2026" in preview.text
    key = re.search(r'name="idempotency_key" value="([^"]+)"', preview.text).group(1)  # type: ignore[union-attr]
    sent = await dash.client.post(
        "/dashboard/campaigns/send",
        data={**form, "idempotency_key": key, "_csrf_token": token},
        follow_redirects=False,
    )
    assert sent.status_code == 303
    campaign_id = sent.headers["location"].rsplit("/", 1)[1]
    again = await dash.client.post(
        "/dashboard/campaigns/send",
        data={**form, "idempotency_key": key, "_csrf_token": token},
        follow_redirects=False,
    )
    assert again.headers["location"] == sent.headers["location"]  # a double click is one campaign
    waiting = await dash.client.get(f"/dashboard/campaigns/{campaign_id}")  # not projected yet
    assert waiting.status_code == 200 and 'id="queue-status" class="status-queued">na fila<' in waiting.text
    assert re.search(r'id="count-total">3<', waiting.text)
    assert re.search(r'id="count-pending">2<', waiting.text)
    dash.project()
    page = await dash.client.get(f"/dashboard/campaigns/{campaign_id}")
    assert page.status_code == 200
    assert re.search(r'id="count-total">3<', page.text) and re.search(r'id="count-rejected">1<', page.text)
    assert 'hx-trigger="every 1s"' in page.text  # live progress until the queue ends
    export = await dash.client.get(f"/dashboard/campaigns/{campaign_id}/export.csv")
    assert export.headers["content-type"] == "text/csv; charset=utf-8"  # one charset, not two
    lines = export.content.decode("utf-8-sig").splitlines()
    assert lines[0].startswith("linha;nome;telefone;status")
    assert lines[1].startswith("1;Maria Souza;+5511987654321;pendente")
    assert lines[3].startswith("3;Sem Fone;123;rejeitada")
    search = await dash.client.get(f"/dashboard/campaigns/{campaign_id}/contacts", params={"q": "joão"})
    assert "João Lima" in search.text and "Maria" not in search.text
    # Maria's phone (+5511987654321) typed the Brazilian way finds her by its digits
    typed = await dash.client.get(
        f"/dashboard/campaigns/{campaign_id}/contacts", params={"q": "(11) 98765-4321"}
    )
    assert "Maria Souza" in typed.text and "João Lima" not in typed.text
    overview = await dash.client.get("/dashboard/?days=1")
    assert re.search(r'id="total-rejected">1<', overview.text)
    # nothing sent yet: no receipts, and both rates are undefined (shown as a dash)
    assert re.search(r'id="total-delivered">0<', overview.text)
    assert re.search(r'id="send-rate">—<', overview.text)
    assert re.search(r'id="delivery-rate">—<', overview.text)


async def test_template_default_choice_and_a_send_naming_another_template(dash: Dash) -> None:
    await dash.login()
    token = await dash.csrf("/dashboard/templates/new")
    bad = await dash.client.post(
        "/dashboard/templates/",
        data={
            "name": "Quebrado",
            "template_type": "notification",
            "variation": "Oi {{#if nome}}",
            "_csrf_token": token,
        },
    )
    assert bad.status_code == 422
    assert "Linha 1, coluna" in bad.text
    created = await dash.client.post(
        "/dashboard/templates/",
        data={
            "name": "Com fatura",
            "template_type": "notification",
            "variation": "Fatura {{numero_fatura}}",
            "_csrf_token": token,
        },
        follow_redirects=False,
    )
    assert created.status_code == 303
    template_id = uuid.UUID(created.headers["location"].split("/")[-1].split("?")[0])
    dash.project()
    from billing.api.schemas import SendRequest
    from billing.domain.types import TemplateType

    ingest = dash_ingest(dash)
    plain = ingest.submit(
        tenant_id=dash.tenant_id,
        path_type=TemplateType.NOTIFICATION,
        request=SendRequest(contacts=[{"nome": "Ana", "telefone": "11987654321"}]),
    )
    assert plain.rejections == []  # the new template is not the default: its variable is not required
    named = ingest.submit(
        tenant_id=dash.tenant_id,
        path_type=TemplateType.NOTIFICATION,
        request=SendRequest(contacts=[{"nome": "Ana", "telefone": "11987654321"}], template_id=template_id),
    )
    assert [r["code"] for r in named.rejections] == ["missing_variable"]
    made = await dash.client.post(f"/dashboard/templates/{template_id}/default", data={"_csrf_token": token})
    assert made.status_code == 200
    dash.project()
    listed = await dash.client.get("/dashboard/templates/")
    row = re.search(rf'id="template-{template_id}">(.*?)</tr>', listed.text, re.S)
    assert row and "padrão" in row.group(1)
    preview = await dash.client.post(
        "/dashboard/templates/preview",
        data={
            "variation": ["Oi {{nome_cliente}}, {{valor}}", "Oi {{/if}}"],
            "sample": "nome: Bia\nvalor: 10,5",
            "_csrf_token": token,
        },
    )
    assert "Oi Bia, R$\xa010,50" in preview.text
    assert "Linha 1, coluna 4" in preview.text


async def test_key_last_use_history_by_phone_docs_and_gateway_test(dash: Dash) -> None:
    key = dash.tenants.issue_api_key(dash.tenant_id, "erp")
    dash.project()
    sent = await dash.client.post(
        "/api/billing/v1/billing/send/notification",
        json={"contacts": [{"nome": "Bia", "telefone": "(11) 98765-4321"}]},
        headers={"X-Billing-API-Key": key},
    )
    assert sent.status_code == 202
    dash.project()
    await dash.login()
    keys = await dash.client.get("/dashboard/api-keys/")
    row = re.search(r"<td>erp</td>(.*?)</tr>", keys.text, re.S)
    assert row and "01/12/2026 10:00" in row.group(1)  # last use, in São Paulo time
    history = await dash.client.get("/dashboard/history/", params={"q": "+55 11 98765 4321"})
    assert "Aviso" in history.text and "ver eventos" in history.text
    none = await dash.client.get("/dashboard/history/", params={"q": "(21) 91111-2222"})
    assert "Nada encontrado" in none.text
    docs = await dash.client.get("/dashboard/docs/")
    assert "curl -X POST http://testserver.local/api/billing/v1/billing/send/overdue" in docs.text
    token = csrf_of(docs.text)
    probe = await dash.client.post("/dashboard/settings/gateway/test", data={"_csrf_token": token, **GATEWAY})
    assert 'id="gateway-result">Sem resposta do gateway' in probe.text  # http://sim does not resolve


async def test_admin_invites_and_removes_a_user_whose_session_then_ends(dash: Dash) -> None:
    await dash.login()
    token = await dash.csrf("/dashboard/users/")
    weak = await dash.client.post(
        "/dashboard/users/",
        data={"email": "bia@loja.example", "password": "curta", "role": "viewer", "_csrf_token": token},
    )
    assert weak.status_code == 422
    invited = await dash.client.post(
        "/dashboard/users/",
        data={
            "email": "bia@loja.example",
            "password": "senha-da-bia-1",
            "role": "viewer",
            "_csrf_token": token,
        },
        follow_redirects=False,
    )
    assert invited.status_code == 303
    assert invited.headers["location"] == "/dashboard/users/?done=invited"
    confirmed = await dash.client.get(invited.headers["location"])
    assert 'id="notice">Usuário convidado: ele aparece na lista em instantes.<' in confirmed.text
    dash.project()
    other = Dash(  # a second API process over the same database (one app runs in one event loop)
        AsyncTestClient(app=create_app(dash.container), base_url="http://testserver.local"),
        dash.container,
        dash.tenant_id,
        dash.users,
        dash.tenants,
    )
    async with other.client:
        assert (await other.login("bia@loja.example", "senha-da-bia-1")).status_code == 303
        assert (await other.client.get("/dashboard/")).status_code == 200
        listed = await dash.client.get("/dashboard/users/")
        bia = re.search(r'action="/dashboard/users/([0-9a-f-]{36})/remove"', listed.text)
        assert bia
        removed = await dash.client.post(
            f"/dashboard/users/{bia.group(1)}/remove", data={"_csrf_token": token}, follow_redirects=False
        )
        assert removed.status_code == 303
        assert (
            await other.client.get("/dashboard/", follow_redirects=False)
        ).status_code == 303  # logged out
        assert (await other.login("bia@loja.example", "senha-da-bia-1")).status_code == 401
    dash.project()
    actions = await dash.client.get("/dashboard/users/")
    assert "convidou um usuário <small>(user.invite)</small>" in actions.text
    assert "removeu um usuário <small>(user.remove)</small>" in actions.text


def test_billing_user_create_reads_the_password_from_stdin(database_url: str) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    settings = Settings.from_env({}, database_url=database_url)
    container = build_container(settings)
    tenant_id = TenantService(container.store, container.clock).create_tenant(name="Loja", gateway=GATEWAY)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BILLING_")},
        "BILLING_DATABASE_URL": database_url,
    }
    billing = str(Path(sys.executable).with_name("billing"))
    command = [billing, "user", "create", "--tenant", str(tenant_id)]
    done = subprocess.run(
        [*command, "--email", "Caio@Loja.example", "--role", "viewer"],
        input="senha-do-caio-1\n", capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    users = UserService(container.store, container.pool, container.clock)
    user = users.authenticate("caio@loja.example", "senha-do-caio-1")
    assert user is not None and (user.tenant_id, user.role) == (tenant_id, "viewer")
    assert str(user.user_id) == done.stdout.strip()
    short = subprocess.run(
        [*command, "--email", "d@loja.example"],
        input="curta\n", capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert short.returncode == 2 and "password" in short.stderr
    container.pool.close()
    container.store.close()


async def test_the_settings_page_refuses_a_policy_in_portuguese(dash: Dash) -> None:
    assert (await dash.login()).status_code == 303
    token = await dash.csrf("/dashboard/settings/")
    week = {
        f"{day}_{edge}": ""
        for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
        for edge in ("start", "end")
    }
    refusals = [
        (
            "limits",
            {"messages_per_minute": "0", "max_messages_per_day": "100"},
            "Mensagens por minuto: informe um número inteiro de 1 a 1.000.",
        ),
        (
            "limits",
            {"messages_per_minute": "20", "max_messages_per_day": "2000000"},
            "Limite diário: informe um número inteiro de 1 a 1.000.000.",
        ),
        (
            "hours",
            {**week, "mon_start": "08:00", "mon_end": "18:00", "timezone": "Marte/Olimpo"},
            "Fuso horário desconhecido: use um nome como America/Sao_Paulo.",
        ),
        (
            "hours",
            {**week, "tue_start": "09:00", "tue_end": "09:00"},
            "Terça: horário inválido — abertura e fechamento devem ser diferentes, e o horário não pode "
            "invadir o de outro dia.",
        ),
        (
            "hours",
            {**week, "wed_start": "09:00"},
            "Quarta: informe a hora em que fecha em HH:MM (00:00 a 23:59).",
        ),
        (
            "holidays",
            {"subdivision": "XX", "extra_dates": ""},
            "Estado desconhecido para os feriados: use a sigla da UF, como SP.",
        ),
    ]
    for form, data, message in refusals:
        page = await dash.client.post(f"/dashboard/settings/{form}", data={"_csrf_token": token, **data})
        shown = re.search(r'id="settings-error">([^<]*)</p>', page.text)
        assert (page.status_code, shown and shown.group(1)) == (422, message), data
