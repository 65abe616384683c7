"""The dashboard as a new user met it in a browser, over the real PostgreSQL: the settings forms re-evaluate
paused queues as ``PATCH /config/`` does, confirmations after a redirect, pt-BR wording (plurals, template
errors, the admin actions' targets) and the small things of the page (favicon, read-only notice, the
active period)."""

from __future__ import annotations

import html
import re
from datetime import timedelta

from billing.api.schemas import SendRequest
from billing.domain.queue import Queue
from billing.domain.types import TemplateType
from tests.integration.test_dashboard import Dash, csrf_of, dash, dash_ingest

__all__ = ["dash"]  # the fixture, shared with test_dashboard

WEEK = {
    f"{day}_{edge}": ""
    for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
    for edge in ("start", "end")
}


async def test_saving_wider_hours_resumes_a_queue_paused_outside_business_hours(dash: Dash) -> None:
    # Tuesday 10:00 in São Paulo, the shop opens at 14:00: the worker paused the queue until then
    dash.tenants.configure(dash.tenant_id, policy={"windows": {"tue": [["14:00", "18:00"]]}})
    sent = dash_ingest(dash).submit(
        tenant_id=dash.tenant_id,
        path_type=TemplateType.OVERDUE,
        request=SendRequest(
            contacts=[
                {"nome": "Bia", "telefone": "11987654321", "valor": "10", "data_vencimento": "2026-11-20"}
            ]
        ),
    )
    dash.project()
    queue = dash.container.store.repository.get(sent.queue_id)
    now = dash.container.clock.now()
    queue.pause(reason="outside_business_hours", resume_at=now + timedelta(hours=4), at=now)
    dash.container.store.save(queue)
    assert (await dash.login()).status_code == 303
    token = await dash.csrf("/dashboard/settings/")
    saved = await dash.client.post(
        "/dashboard/settings/hours",
        data={**WEEK, "tue_start": "08:00", "tue_end": "18:00", "_csrf_token": token},
        follow_redirects=False,
    )
    assert (saved.status_code, saved.headers["location"]) == (303, "/dashboard/settings/?saved=hours")
    reviewed = dash.container.store.repository.get(sent.queue_id)
    assert isinstance(reviewed, Queue)
    assert (reviewed.paused_reason, reviewed.resume_at) == (None, None)


async def test_a_revoked_key_reads_revoked_at_once_with_a_confirmation(dash: Dash) -> None:
    dash.tenants.issue_api_key(dash.tenant_id, "erp")
    dash.project()
    assert (await dash.login()).status_code == 303
    listed = await dash.client.get("/dashboard/api-keys/")
    key_id = re.search(r'action="/dashboard/api-keys/([0-9a-f-]{36})/revoke"', listed.text)
    assert key_id
    revoked = await dash.client.post(
        f"/dashboard/api-keys/{key_id.group(1)}/revoke", data={"_csrf_token": csrf_of(listed.text)}
    )
    assert revoked.status_code == 200  # the projection has not seen the revocation yet
    assert 'id="notice">Chave revogada: o ERP que a usa deixa de ser aceito em instantes.<' in revoked.text
    row = re.search(r"<td>erp</td>(.*?)</tr>", revoked.text, re.S)
    assert row and re.findall(r"<td>(ativa|revogada[^<]*)</td>", row.group(1)) == [
        "revogada em 01/12/2026 10:00"
    ]
    assert "/revoke" not in row.group(1)
    dash.project()
    again = await dash.client.get("/dashboard/api-keys/")
    row = re.search(r"<td>erp</td>(.*?)</tr>", again.text, re.S)
    assert row and re.findall(r"<td>(ativa|revogada[^<]*)</td>", row.group(1)) == [
        "revogada em 01/12/2026 10:00"
    ]


def _cards(html: str) -> dict[str, str]:
    """``{id: "<number> <label>"}`` of the page's counter cards."""
    found = re.findall(r'<span class="n" id="([a-z-]+)">([^<]*)</span>([^<]*)</article>', html)
    return {key: f"{n} {text.strip()}" for key, n, text in found}


async def test_counters_agree_in_number_with_their_count(dash: Dash) -> None:
    from uuid import uuid5

    from billing.domain.contact import Contact

    sent = dash_ingest(dash).submit(
        tenant_id=dash.tenant_id,
        path_type=TemplateType.NOTIFICATION,
        request=SendRequest(
            contacts=[{"nome": "Bia", "telefone": "11987654321"}, {"nome": "Caio", "telefone": "11912345678"}]
        ),
    )
    dash.project()
    contact = dash.container.store.repository.get(uuid5(sent.campaign_id, "0"))
    assert isinstance(contact, Contact)
    now = dash.container.clock.now()
    contact.dispatch(at=now, lease=timedelta(minutes=5))
    contact.record_failure(code="gateway_down", message="503", retryable=False, retry_at=None, at=now)
    dash.container.store.save(contact)
    dash.project()
    assert (await dash.login()).status_code == 303
    overview = await dash.client.get("/dashboard/?days=1")
    assert "<li>1 mensagem falhou no período.</li>" in overview.text
    cards = _cards(overview.text)
    assert (cards["total-sent"], cards["total-failed"], cards["total-delivered"]) == (
        "0 enviadas",
        "1 falhou",
        "0 entregues",
    )
    assert "<title>01/12/2026: 1 falhou</title>" in overview.text  # the chart's bar
    campaign = _cards((await dash.client.get(f"/dashboard/campaigns/{sent.campaign_id}")).text)
    assert [campaign[f"count-{k}"] for k in ("total", "pending", "failed", "sent")] == [
        "2 total",
        "1 pendente",
        "1 falhou",
        "0 enviadas",
    ]


async def test_the_preview_of_one_row_speaks_of_one_message(dash: Dash) -> None:
    assert (await dash.login()).status_code == 303
    token = await dash.csrf("/dashboard/campaigns/new")
    one = "Cliente;Celular\nMaria Souza;(11) 98765-4321\n"
    mapping = await dash.client.post(
        "/dashboard/campaigns/new",
        data={"template_type": "notification", "template_id": "", "external_id": "", "_csrf_token": token},
        files={"file": ("export.csv", one.encode(), "text/csv")},
    )
    assert "<p>1 linha. Diga o que é cada coluna" in mapping.text
    fields = dict(re.findall(r'name="(map_\d+)"[^>]*value="([^"]*)"', mapping.text))
    sheet = re.search(r'name="sheet" value="([^"]+)"', mapping.text)
    assert sheet
    form = {"sheet": sheet.group(1), "template_type": "notification", "template_id": "", "external_id": ""}
    preview = await dash.client.post(
        "/dashboard/campaigns/preview", data={**form, **fields, "_csrf_token": token}
    )
    cards = _cards(preview.text)
    assert (cards["preview-total"], cards["preview-accepted"], cards["preview-rejected"]) == (
        "1 linha",
        "1 será enviada",
        "0 rejeitadas",
    )
    assert re.search(r">Enviar 1 mensagem</button>", preview.text)


async def test_template_errors_read_in_portuguese_on_the_editor_and_the_preview(dash: Dash) -> None:
    assert (await dash.login()).status_code == 303
    token = await dash.csrf("/dashboard/templates/new")
    refused = await dash.client.post(
        "/dashboard/templates/",
        data={
            "name": "Lembrete",
            "template_type": "notification",
            "variation": ["Oi {{nome_cliente}}", "Olá,\nsua fatura {{#if valor}} vence"],
            "_csrf_token": token,
        },
    )
    shown = re.search(r'id="save-error">([^<]*)</p>', refused.text)
    assert (refused.status_code, shown and html.unescape(shown.group(1))) == (
        422,
        "Linha 2, coluna 12 da variação 2: o bloco '{{#if}}' aberto aqui não é fechado com '{{/if}}'.",
    )
    unnamed = await dash.client.post(
        "/dashboard/templates/",
        data={"name": " ", "template_type": "notification", "variation": "Oi", "_csrf_token": token},
    )
    shown = re.search(r'id="save-error">([^<]*)</p>', unnamed.text)
    assert (unnamed.status_code, shown and shown.group(1)) == (422, "Dê um nome ao template.")
    preview = await dash.client.post(
        "/dashboard/templates/preview",
        data={
            "variation": ["Oi {{nome_cliente}}", "Oi {{/if}}", "{{a.b}}"],
            "sample": "",
            "_csrf_token": token,
        },
    )
    errors = {
        n: html.unescape(t) for n, t in re.findall(r'id="preview-error-(\d)">([^<]*)</p>', preview.text)
    }
    assert errors == {
        "2": "Linha 1, coluna 4: '{{/if}}' sem o '{{#if}}' que ele fecharia.",
        "3": "Linha 1, coluna 1: caminhos como «a.b» não são aceitos, só nomes simples de campos.",
    }


async def test_admin_actions_name_their_target_in_portuguese(dash: Dash) -> None:
    assert (await dash.login()).status_code == 303
    token = await dash.csrf("/dashboard/templates/new")
    created = await dash.client.post(
        "/dashboard/templates/",
        data={"name": "Lembrete", "template_type": "notification", "variation": "Oi", "_csrf_token": token},
        follow_redirects=False,
    )
    assert created.status_code == 303
    await dash.client.post("/dashboard/api-keys/", data={"name": "ERP", "_csrf_token": token})
    dash.project()
    keys = await dash.client.get("/dashboard/api-keys/")
    key_id = re.search(r'action="/dashboard/api-keys/([0-9a-f-]{36})/revoke"', keys.text)
    prefix = re.search(r"<code>(bk_[^<]*)…</code>", keys.text)
    assert key_id and prefix
    await dash.client.post(f"/dashboard/api-keys/{key_id.group(1)}/revoke", data={"_csrf_token": token})
    limits = {"messages_per_minute": "10", "max_messages_per_day": "100", "_csrf_token": token}
    assert (await dash.client.post("/dashboard/settings/limits", data=limits)).status_code == 200
    dash.project()
    users = await dash.client.get("/dashboard/users/")
    rows = re.findall(r"<td>([^<]*)<small>\(([a-z_.]+)\)</small></td><td>([^<]*)</td></tr>", users.text)
    assert sorted(
        (action, html.unescape(target)) for _, action, target in rows
    ) == [  # one instant: any order
        ("api_key.create", f"chave «ERP» ({prefix.group(1)}…)"),
        ("api_key.revoke", "chave «ERP»"),
        ("settings.limits", "limites de envio"),
        ("template.create", "template «Lembrete»"),
    ]


async def test_every_page_links_a_favicon_the_app_serves(dash: Dash) -> None:
    login = await dash.client.get("/dashboard/login")
    assert '<link rel="icon" href="/dashboard/static/favicon.svg" type="image/svg+xml">' in login.text
    icon = await dash.client.get("/dashboard/static/favicon.svg")
    assert (icon.status_code, icon.headers["content-type"]) == (200, "image/svg+xml")
    assert icon.text.startswith("<svg ") and "<title>billing</title>" in icon.text
    legacy = await dash.client.get("/favicon.ico", follow_redirects=False)  # browsers ask for it
    assert (legacy.status_code, legacy.headers.get("location")) == (301, "/dashboard/static/favicon.svg"), (
        legacy.text
    )


async def test_the_cancel_button_stands_apart_from_the_counters(dash: Dash) -> None:
    sent = dash_ingest(dash).submit(
        tenant_id=dash.tenant_id,
        path_type=TemplateType.NOTIFICATION,
        request=SendRequest(contacts=[{"nome": "Bia", "telefone": "11987654321"}]),
    )
    dash.project()
    assert (await dash.login()).status_code == 303
    campaign = await dash.client.get(f"/dashboard/campaigns/{sent.campaign_id}")
    assert re.search(r'</div>\s*<form class="cancel-queue" method="post"', campaign.text)
    css = (await dash.client.get("/dashboard/static/app.css")).text
    assert "form.cancel-queue { margin-top: 1.5rem; }" in css


async def test_a_viewer_is_told_the_settings_are_read_only(dash: Dash) -> None:
    notice = (
        '<p class="notice" role="note" id="read-only">Seu perfil é somente leitura: você vê as '
        "configurações, mas só um administrador pode alterá-las.</p>"
    )
    assert (await dash.login("vera@loja.example")).status_code == 303
    viewer = await dash.client.get("/dashboard/settings/")
    assert viewer.status_code == 200 and notice in viewer.text
    assert viewer.text.count("<fieldset disabled>") == 3
    await dash.client.post("/dashboard/logout", data={"_csrf_token": csrf_of(viewer.text)})
    assert (await dash.login()).status_code == 303
    admin = await dash.client.get("/dashboard/settings/")
    assert 'id="read-only"' not in admin.text and "disabled" not in admin.text


async def test_the_overviews_active_period_is_marked(dash: Dash) -> None:
    assert (await dash.login()).status_code == 303
    overview = await dash.client.get("/dashboard/?days=30")
    period = re.search(r'<nav aria-label="Período" class="periods">(.*?)</nav>', overview.text, re.S)
    assert period
    link = r'<a href="/dashboard/\?days=(\d+)"( aria-current="page")?>([^<]*)</a>'
    links = re.findall(link, period.group(1))
    assert links == [("1", "", "Hoje"), ("7", "", "7 dias"), ("30", ' aria-current="page"', "30 dias")]
    css = (await dash.client.get("/dashboard/static/app.css")).text
    assert 'nav.periods a[aria-current="page"] {' in css
