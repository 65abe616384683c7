"""The dashboard as a second new user met it in a browser, over the real PostgreSQL: a spreadsheet's
invoice column as each contact's invoice reference, the contact's events page (who, which template
version, the gateway's id, CSV), the missing field named, and the header and chart's proportions."""

from __future__ import annotations

import re
from csv import reader
from datetime import timedelta
from io import StringIO
from typing import Any
from uuid import uuid4, uuid5

from billing.api.auth import mint_token
from billing.api.schemas import SendRequest
from billing.domain.contact import Contact
from billing.domain.types import TemplateType
from tests.integration.test_dashboard import CSV, SECRET, Dash, dash, dash_ingest

__all__ = ["dash"]  # the fixture, shared with test_dashboard

API = "/api/billing/v1/billing"


def _form_of(html: str) -> dict[str, str]:
    fields = dict(re.findall(r'name="(map_\d+)"[^>]*value="([^"]*)"', html))
    sheet = re.search(r'name="sheet" value="([^"]+)"', html)
    assert sheet
    return {"sheet": sheet.group(1), **fields}


async def test_a_column_mapped_as_the_invoice_feeds_each_contacts_external_id(dash: Dash) -> None:
    assert (await dash.login()).status_code == 303
    token = await dash.csrf("/dashboard/campaigns/new")
    batch = {"template_type": "overdue", "template_id": "", "external_id": "lote-1", "_csrf_token": token}
    mapping = await dash.client.post(
        "/dashboard/campaigns/new", data=batch, files={"file": ("export.csv", CSV.encode(), "text/csv")}
    )
    assert '<label for="invoice_column">Referência da fatura (external_id)</label>' in mapping.text
    assert re.findall(r'<option value="(\d*)">([^<]*)</option>', mapping.text) == [
        ("", "Nenhuma coluna: vale a referência do envio"),
        ("0", "Cliente"),
        ("1", "Celular"),
        ("2", "Valor"),
        ("3", "Vencimento"),
        ("4", "numero_fatura"),
    ]
    assert "para consultar o histórico por fatura e cancelar por fatura" in mapping.text
    form = {**batch, **_form_of(mapping.text), "invoice_column": "4"}
    assert form["map_4"] == "numero_fatura"  # still the template variable too
    preview = await dash.client.post("/dashboard/campaigns/preview", data=form)
    assert '<input type="hidden" name="invoice_column" value="4">' in preview.text
    key = re.search(r'name="idempotency_key" value="([^"]+)"', preview.text)
    assert key
    sent = await dash.client.post(
        "/dashboard/campaigns/send", data={**form, "idempotency_key": key.group(1)}, follow_redirects=False
    )
    assert sent.status_code == 303
    dash.project()
    admin = {"Authorization": f"Bearer {mint_token(SECRET, dash.tenant_id)}"}
    found = await dash.client.get(f"{API}/history/invoice/F-1", headers=admin)
    assert found.status_code == 200, found.text
    contacts = found.json()["contacts"]
    assert [(c["nome"], c["invoice"], c["external_id"]) for c in contacts] == [
        ("Maria Souza", "F-1", "lote-1")
    ]
    maria = dash.container.store.repository.get(contacts[0]["contact_id"])
    assert isinstance(maria, Contact)
    assert (maria.fields["numero_fatura"], maria.fields["external_id"]) == ("F-1", "F-1")
    # the dashboard's history search finds her by her own invoice too, and the batch by its reference
    own = await dash.client.get("/dashboard/history/", params={"q": "F-1"})
    assert re.findall(r'<td class="status-\w+">', own.text) == ['<td class="status-pending">']
    assert "<td>F-1</td><td>lote-1</td>" in own.text
    whole = await dash.client.get("/dashboard/history/", params={"q": "lote-1"})
    assert len(re.findall(r"ver eventos", whole.text)) == 3


async def test_without_an_invoice_column_the_batch_reference_is_the_invoice(dash: Dash) -> None:
    assert (await dash.login()).status_code == 303
    token = await dash.csrf("/dashboard/campaigns/new")
    batch = {"template_type": "overdue", "template_id": "", "external_id": "lote-1", "_csrf_token": token}
    mapping = await dash.client.post(
        "/dashboard/campaigns/new", data=batch, files={"file": ("export.csv", CSV.encode(), "text/csv")}
    )
    form: dict[str, Any] = {**batch, **_form_of(mapping.text), "invoice_column": ""}
    preview = await dash.client.post("/dashboard/campaigns/preview", data=form)
    key = re.search(r'name="idempotency_key" value="([^"]+)"', preview.text)
    assert key
    await dash.client.post("/dashboard/campaigns/send", data={**form, "idempotency_key": key.group(1)})
    dash.project()
    admin = {"Authorization": f"Bearer {mint_token(SECRET, dash.tenant_id)}"}
    assert (await dash.client.get(f"{API}/history/invoice/F-1", headers=admin)).status_code == 404
    batch_ref = await dash.client.get(f"{API}/history/invoice/lote-1", headers=admin)
    assert [c["nome"] for c in batch_ref.json()["contacts"]] == ["Maria Souza", "João Lima", "Sem Fone"]


async def test_the_contacts_events_page_names_the_contact_and_shows_what_the_api_has(dash: Dash) -> None:
    sent = dash_ingest(dash).submit(
        tenant_id=dash.tenant_id,
        path_type=TemplateType.NOTIFICATION,
        request=SendRequest(contacts=[{"nome": "Bia Reis", "telefone": "(11) 98765-4321"}]),
    )
    contact_id = uuid5(sent.campaign_id, "0")
    contact = dash.container.store.repository.get(contact_id)
    assert isinstance(contact, Contact)
    now = dash.container.clock.now()
    template_id = dash.tenants.get_tenant(dash.tenant_id).default_template("notification")
    contact.dispatch(at=now, lease=timedelta(minutes=5))
    contact.record_sent(
        gateway_message_id="3EB0ABC123",
        remote_jid="5511987654321@s.whatsapp.net",
        text="Olá Bia",
        at=now,
        template_id=template_id,
        template_version=1,
        variation=0,
    )
    dash.container.store.save(contact)
    dash.project()
    assert (await dash.login()).status_code == 303
    events = await dash.client.get(f"/dashboard/history/contact/{contact_id}")
    assert events.status_code == 200
    assert (
        f'<p id="contact-header"><strong>Bia Reis</strong> · +5511987654321 · '
        f'<a href="/dashboard/campaigns/{sent.campaign_id}">campanha {str(sent.campaign_id)[:8]}</a></p>'
    ) in events.text
    assert (
        f'<small class="sent-meta">template <a href="/dashboard/templates/{template_id}">v1</a>, '
        "variação 1 · id no gateway: <code>3EB0ABC123</code></small>"
    ) in events.text
    csv_path = f"/dashboard/history/contact/{contact_id}/export.csv"
    link = f'<a href="{csv_path}" download id="contact-csv">Baixar CSV</a>'
    assert link in events.text
    csv = await dash.client.get(f"/dashboard/history/contact/{contact_id}/export.csv")
    assert (csv.status_code, csv.headers["content-type"]) == (200, "text/csv; charset=utf-8")
    assert csv.headers["content-disposition"] == f'attachment; filename="historico-contato-{contact_id}.csv"'
    admin = {"Authorization": f"Bearer {mint_token(SECRET, dash.tenant_id)}"}
    api = await dash.client.get(f"{API}/history/contact/{contact_id}?format=csv", headers=admin)
    assert csv.text == api.text  # the API's export, with the dashboard's session
    rows = list(reader(StringIO(csv.text)))
    assert [(r[1], r[12], r[15]) for r in rows] == [
        ("event", "template_version", "gateway_message_id"),
        ("added", "1", ""),
        ("dispatched", "", ""),
        ("sent", "1", "3EB0ABC123"),
    ]
    unknown = await dash.client.get(f"/dashboard/history/contact/{uuid4()}/export.csv")
    assert unknown.status_code == 404


async def test_a_missing_variable_names_the_field_on_the_campaigns_contacts(dash: Dash) -> None:
    full = {"nome": "Caio", "telefone": "11912345678", "valor": "10", "data_vencimento": "2026-11-20"}
    sent = dash_ingest(dash).submit(
        tenant_id=dash.tenant_id,
        path_type=TemplateType.OVERDUE,
        request=SendRequest(
            contacts=[{"nome": "Bia", "telefone": "11987654321", "data_vencimento": "2026-11-20"}, full]
        ),
    )
    assert [(r["code"], r["names"]) for r in sent.rejections] == [("missing_variable", ["valor"])]
    caio = dash.container.store.repository.get(uuid5(sent.campaign_id, "1"))
    assert isinstance(caio, Contact)
    now = dash.container.clock.now()
    caio.dispatch(at=now, lease=timedelta(minutes=5))
    caio.record_failure(
        code="missing_variable",
        message="the template needs valor_total, nome_cliente",
        retryable=False,
        retry_at=None,
        at=now,
    )
    dash.container.store.save(caio)
    dash.project()
    assert (await dash.login()).status_code == 303
    table = await dash.client.get(f"/dashboard/campaigns/{sent.campaign_id}/contacts")
    errors = re.findall(r'<td data-label="Erro"><span title="[^"]*">([^<]*)</span>', table.text)
    assert errors == ["falta o campo valor", "faltam os campos nome e valor_total"]
    assert "falta um campo que o template usa" not in table.text


async def test_the_headers_email_stands_level_with_the_logout_button(dash: Dash) -> None:
    assert (await dash.login()).status_code == 303
    overview = await dash.client.get("/dashboard/")
    # the e-mail follows the hidden CSRF input, so Pico styles it as a field's helper text (pulled up)
    assert re.search(
        r'<input type="hidden" name="_csrf_token"[^>]*>\s*<small>ana@loja.example</small>', overview.text
    )
    css = (await dash.client.get("/dashboard/static/app.css")).text
    assert "header.app .topline form small { margin: 0; }" in css


async def test_the_chart_of_one_day_is_one_slim_bar(dash: Dash) -> None:
    dash_ingest(dash).submit(
        tenant_id=dash.tenant_id,
        path_type=TemplateType.NOTIFICATION,
        request=SendRequest(contacts=[{"nome": "Bia", "telefone": "123"}]),  # rejected: a bar of 1
    )
    dash.project()
    assert (await dash.login()).status_code == 303
    today = await dash.client.get("/dashboard/?days=1")
    # 616 units of chart for one day: the bar is 40 wide (not 70% of it, 431), centred in its day
    assert re.findall(r'<rect class="(\w+)" x="([\d.]+)" y="[\d.]+" width="([\d.]+)"', today.text) == [
        ("rejected", "312.0", "40.0")
    ]
    month = await dash.client.get("/dashboard/?days=30")
    widths = set(re.findall(r'<rect class="\w+" x="[\d.]+" y="[\d.]+" width="([\d.]+)"', month.text))
    assert widths == {"14.4"}  # 30 days: 70% of a day's 20.5 units, under the cap
