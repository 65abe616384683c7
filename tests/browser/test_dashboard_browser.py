"""The dashboard in a real browser against the real processes (see conftest): log in, API key shown once,
template editor with live preview and a refused malformed template, a 20-row CSV with 2 bad rows sent and
followed to ``completed`` without reloading, cancelling a running queue, a business-hours change pausing a
queue, a read-only viewer, another tenant's campaign answering 404 — each ending with screenshots."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import SLOW, Site, axe_violations, login, shot

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def overdue_rows(n: int, *, bad: dict[int, str] | None = None) -> str:
    """A CSV export as an ERP writes it: ``;``-separated, pt-BR amounts and dates, due in November 2026."""
    lines = ["Cliente;Celular;Valor;Vencimento;numero_fatura"]
    for i in range(n):
        phone = f"(11) 9{8000 + i:04d}-{1000 + i:04d}"
        amount = f"{100 + i},50"
        if bad and bad.get(i) == "phone":
            phone = "12345"
        if bad and bad.get(i) == "amount":
            amount = "cem reais"
        lines.append(f"Cliente {i + 1};{phone};{amount};{10 + i % 15}/11/2026;F-{i + 1}")
    return "\n".join(lines) + "\n"


def post_batch(site: Site, tenant: Any, n: int, kind: str = "overdue") -> dict[str, Any]:
    contacts = [
        {
            "nome": f"Pessoa {i}",
            "telefone": f"+5511970{i:06d}",
            "valor": "50,00",
            "data_vencimento": "10/11/2026",
        }
        for i in range(n)
    ]
    with site.api(tenant) as api:
        response = api.post(f"/api/billing/v1/billing/send/{kind}", json={"contacts": contacts})
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def test_admin_logs_in_and_the_overview_is_accessible(page: Page, site: Site) -> None:
    tenant = site.tenant()
    login(page, site, tenant.admin)
    expect(page.get_by_role("heading", name="Visão geral")).to_be_visible()
    expect(page.locator("#delivery-rate")).to_have_text("—")
    assert axe_violations(page) == []
    page.goto(f"{site.url}/dashboard/settings/")
    assert axe_violations(page) == []
    page.goto(f"{site.url}/dashboard/")
    shot(page, "01-overview")


def test_api_key_is_created_and_shown_only_once(page: Page, site: Site) -> None:
    tenant = site.tenant()
    login(page, site, tenant.admin)
    page.get_by_role("link", name="Chaves de API").click()
    page.get_by_label("Nome da nova chave").fill("ERP produção")
    page.get_by_role("button", name="Criar chave").click()
    key = page.locator("#new-key").inner_text().strip()
    assert re.fullmatch(r"bk_[A-Za-z0-9_-]{43}", key)
    expect(page.get_by_role("button", name="Copiar")).to_be_visible()
    with site.api(tenant) as api:  # the key works on the public API
        api.headers["X-Billing-API-Key"] = key
        assert (
            api.get(f"/api/billing/v1/billing/queue/{'0' * 8}-0000-0000-0000-{'0' * 12}/status").status_code
            == 404
        )
    shot(page, "02-api-key-once")
    page.reload()
    expect(page.locator("#new-key")).to_have_count(0)
    assert key not in page.content()
    expect(page.locator("#keys")).to_contain_text("ERP produção")


def test_template_editor_previews_live_and_refuses_a_malformed_template(page: Page, site: Site) -> None:
    tenant = site.tenant()
    login(page, site, tenant.admin)
    page.get_by_role("link", name="Templates").click()
    page.get_by_role("link", name="Cobrança em atraso").click()
    expect(page.locator("#preview .variation-preview").first).to_contain_text("Maria Souza")
    first = page.get_by_label("Variação 1", exact=True)
    original = first.input_value()
    first.fill("Olá {{nome_cliente}}, a fatura {{numero_fatura}} de {{valor}} venceu em {{data_vencimento}}.")
    expect(page.locator("#preview .variation-preview").first).to_contain_text(
        "Olá Maria Souza, a fatura 12345 de R$\xa01.234,56 venceu em 05/11/2026."
    )
    first.fill("Olá {{#if nome_cliente}}{{nome_cliente}}")
    expect(page.locator("#preview .variation-preview").first).to_contain_text("Linha 1, coluna")
    url = page.url
    page.get_by_role("button", name="Salvar").click()
    expect(page.locator("#save-error")).to_contain_text("Linha 1, coluna")
    shot(page, "03-template-refused")
    page.goto(url)  # nothing was saved: version 1 still
    expect(page.get_by_label("Variação 1", exact=True)).to_have_value(original)


def test_csv_upload_shows_rejections_and_the_campaign_completes_without_reloading(
    page: Page, site: Site, tmp_path: Path
) -> None:
    tenant = site.tenant()
    login(page, site, tenant.admin)
    csv_file = tmp_path / "export.csv"
    csv_file.write_text(overdue_rows(20, bad={4: "phone", 11: "amount"}), encoding="utf-8")
    page.get_by_role("link", name="Campanhas").click()
    page.get_by_role("button", name="Nova campanha").click()
    page.get_by_label("Planilha do ERP").set_input_files(str(csv_file))
    page.get_by_role("button", name="Continuar").click()
    expect(page.get_by_label("Campo de Celular")).to_have_value("telefone")
    page.get_by_role("button", name="Pré-visualizar").click()
    expect(page.locator("#preview-accepted")).to_have_text("18")
    expect(page.locator("#preview-rejected")).to_have_text("2")
    rows = page.locator("#rejections tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("invalid_phone")
    expect(rows.nth(1)).to_contain_text("invalid_amount")
    expect(page.locator(".message-text").first).to_contain_text("Cliente 1")
    shot(page, "04a-campaign-preview")
    page.get_by_role("button", name="Enviar 18 mensagens").click()
    page.wait_for_url(re.compile(r"/dashboard/campaigns/[0-9a-f-]{36}$"))
    page.evaluate("window.__not_reloaded = true")
    expect(page.locator("#queue-status")).to_have_text("concluída", timeout=60_000)
    assert page.evaluate("window.__not_reloaded") is True  # htmx updated the page in place
    expect(page.locator("#count-sent")).to_have_text("18")
    expect(page.locator("#count-rejected")).to_have_text("2")
    first_row = page.locator("#contacts tbody tr").first
    expect(first_row).to_contain_text("enviada")  # the contacts table followed, without a reload
    expect(first_row).to_contain_text("Cliente 1")
    assert page.evaluate("window.__not_reloaded") is True
    shot(page, "04b-campaign-completed")


def test_cancel_a_running_queue(page: Page, site: Site) -> None:
    tenant = site.tenant(SLOW)
    accepted = post_batch(site, tenant, 20)
    login(page, site, tenant.admin)
    page.goto(f"{site.url}/dashboard/campaigns/{accepted['campaign_id']}")
    expect(page.locator("#queue-status")).to_have_text("enviando", timeout=30_000)
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancelar fila").click()
    expect(page.locator("#queue-status")).to_have_text("cancelada", timeout=30_000)
    # the page goes on refreshing until the contacts' cancellations are counted too;
    # at 4 s a message, only the first few went out
    expect(page.locator("#count-cancelled")).to_have_text(re.compile(r"^(1[5-9]|20)$"), timeout=30_000)
    expect(page.locator("#count-pending")).to_have_text("0")
    shot(page, "05-queue-cancelled")


def test_closing_business_hours_pauses_a_running_queue(page: Page, site: Site) -> None:
    tenant = site.tenant(SLOW)
    accepted = post_batch(site, tenant, 20)
    login(page, site, tenant.admin)
    page.goto(f"{site.url}/dashboard/campaigns/{accepted['campaign_id']}")
    expect(page.locator("#queue-status")).to_have_text("enviando", timeout=30_000)
    page.get_by_role("link", name="Configurações").click()
    page.get_by_label("Terça: abre").fill("06:00")
    page.get_by_label("Terça: fecha").fill("07:00")
    page.get_by_role("button", name="Salvar horário").click()
    page.wait_for_url(re.compile(r"saved=hours"))
    expect(page.get_by_label("Terça: fecha")).to_have_value("07:00")
    page.goto(f"{site.url}/dashboard/campaigns/{accepted['campaign_id']}")
    expect(page.locator("#queue-status")).to_have_text("pausada", timeout=30_000)
    expect(page.locator("#paused-reason")).to_have_text("fora do horário comercial")
    expect(page.locator("#resume-at")).to_have_text("02/12/2026 08:00")  # Wednesday's opening, local time
    shot(page, "06-queue-paused-by-hours")


def test_a_viewer_cannot_change_anything(page: Page, site: Site) -> None:
    tenant = site.tenant()
    login(page, site, tenant.viewer)
    page.get_by_role("link", name="Chaves de API").click()
    expect(page.get_by_role("button", name="Criar chave")).to_have_count(0)
    page.get_by_role("link", name="Campanhas").click()
    expect(page.get_by_text("Nova campanha")).to_have_count(0)
    page.get_by_role("link", name="Configurações").click()
    expect(page.get_by_role("button", name="Salvar horário")).to_be_disabled()
    # a hand-made POST (with a valid CSRF token) is refused too
    status = page.evaluate(
        """async () => {
            const token = document.querySelector('input[name=_csrf_token]').value;
            const body = new URLSearchParams(
                {_csrf_token: token, messages_per_minute: "1", max_messages_per_day: "1"});
            return (await fetch('/dashboard/settings/limits', {method: 'POST', body})).status;
        }"""
    )
    assert status == 403
    page.goto(f"{site.url}/dashboard/campaigns/new")
    expect(page.get_by_role("heading", name="Acesso negado")).to_be_visible()
    shot(page, "07-viewer-denied")


def test_tenant_b_campaign_is_404_for_tenant_a(page: Page, site: Site) -> None:
    tenant_a, tenant_b = site.tenant(), site.tenant()
    theirs = post_batch(site, tenant_b, 1, kind="notification")
    login(page, site, tenant_a.admin)
    deadline = time.monotonic() + 10
    response = None
    while time.monotonic() < deadline:  # the campaign is projected, yet still not tenant A's
        response = page.goto(f"{site.url}/dashboard/campaigns/{theirs['campaign_id']}")
        assert response is not None and response.status == 404
        with site.api(tenant_b) as api:
            if api.get(f"/api/billing/v1/billing/queue/{theirs['queue_id']}/status").status_code == 200:
                break
        time.sleep(0.2)
    expect(page.get_by_role("heading", name="Não encontrado")).to_be_visible()
    shot(page, "08-other-tenant-404")
