"""The dashboard's pages (server-rendered Jinja2, htmx for live parts). Every handler calls the same
application services as the JSON API (``billing.api.deps.Services``) with the logged-in user's tenant, so
another tenant's ids read as absent (404), and records admin changes as ``AdminAction`` events."""

from __future__ import annotations

import base64
import csv
import io
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import UploadFile
from litestar.exceptions import NotFoundException
from litestar.response import Redirect, Template
from markupsafe import Markup, escape

import billing.dashboard.fmt as fmt
from billing.api.deps import Services, run_sync
from billing.api.schemas import SendRequest, event_doc
from billing.dashboard.policy_errors import policy_error
from billing.dashboard.security import LOGIN_RATE_LIMIT, current_user
from billing.dashboard.template_errors import template_error
from billing.dashboard.upload import (
    INVOICE_FIELD,
    KNOWN_FIELDS,
    Sheet,
    guess_mapping,
    read_sheet,
    to_contacts,
)
from billing.domain.apikey import ApiKey
from billing.domain.calendar import DAY_NAMES, PolicyError
from billing.domain.campaign import Campaign
from billing.domain.contact import Contact
from billing.domain.errors import DomainError, NotFound
from billing.domain.phone import normalize_phone
from billing.domain.template import MessageTemplate, parse_variations
from billing.domain.tenant import Tenant
from billing.domain.types import ContactStatus, TemplateType
from billing.eventstore import fold, get_owned
from billing.services.history import MAX_ENTRIES, HistoryFilter, aggregate_history, to_csv
from billing.services.overview import PERIODS, DashboardQueries
from billing.services.users import SessionUser
from billing.worker.health import probe_connection_state

Req = Request[Any, Any, Any]
ADMIN = {"admin": True}
SAMPLE = (
    "nome: Maria Souza\ntelefone: (11) 98765-4321\nvalor: 1234,56\ndata_vencimento: 05/11/2026\n"
    "numero_fatura: 12345"
)
PUBLIC_BASE = "/api/billing/v1/billing"


def _services(request: Req) -> Services:
    services: Services = request.app.state.services
    return services


def _queries(request: Req) -> DashboardQueries:
    return DashboardQueries(_services(request).container.pool)


async def _tenant(request: Req, user: SessionUser) -> Tenant:
    """The user's tenant, loaded once per request (a page needs it for its name and its zone)."""
    cached: Tenant | None = getattr(request.state, "tenant", None)
    if cached is None or cached.id != user.tenant_id:
        cached = await run_sync(_services(request).tenants.get_tenant, user.tenant_id)
        request.state.tenant = cached
        request.state.tz = cached.sending_policy.calendar.tz
    return cached


async def _zone(request: Req, user: SessionUser) -> ZoneInfo:
    """The tenant's time zone (the one its calendar uses)."""
    await _tenant(request, user)
    tz: ZoneInfo = request.state.tz
    return tz


async def page(request: Req, name: str, *, status_code: int = 200, **context: Any) -> Template:
    """Render ``name`` with the common context: the user, the tenant, its zone and the nav."""
    user = current_user(request)
    tenant = await _tenant(request, user)
    return Template(
        template_name=name,
        context={
            "user": user,
            "tenant": tenant,
            "tz": await _zone(request, user),
            "path": request.url.path,
            "notice": _notice(request),
            **context,
        },
        status_code=status_code,
    )


NOTICES = {
    "invited": "Usuário convidado: ele aparece na lista em instantes.",
    "removed": "Usuário removido.",
    "revoked": "Chave revogada: o ERP que a usa deixa de ser aceito em instantes.",
}
"""Confirmations shown after a redirect (``?done=<key>``; ``?saved=…``: "Alterações salvas.")."""


def _notice(request: Req) -> str | None:
    """The confirmation of the action that redirected here (a fixed text: nothing is echoed)."""
    done = request.query_params.get("done")
    if done in NOTICES:
        return NOTICES[done]
    return "Alterações salvas." if request.query_params.get("saved") else None


async def _record(request: Req, action: str, target: str) -> None:
    await run_sync(_services(request).users.record, current_user(request), action, target)


def _error(exc: DomainError) -> dict[str, Any]:
    return {"code": exc.code, "message": exc.message, "field": exc.field, **exc.details}


async def _form(request: Req) -> dict[str, Any]:
    form = await request.form()
    return {k: form.getall(k) if len(form.getall(k)) > 1 else form.get(k) for k in form}


# --- login ------------------------------------------------------------------------------------------


class LoginController(Controller):
    """Login and logout."""

    path = "/"

    @get("/login", opt={"public": True})
    async def login_page(self, request: Req, next: str = "/dashboard/") -> Template:
        """The login form."""
        return Template(template_name="login.html", context={"next": _safe_next(next), "error": None})

    @post("/login", opt={"public": True}, middleware=[LOGIN_RATE_LIMIT.middleware])
    async def login(self, request: Req) -> Response[Any]:
        """Check the email and password (argon2); on success start the session and go to ``next``."""
        form = await request.form()
        email, password = str(form.get("email") or ""), str(form.get("password") or "")
        target = _safe_next(str(form.get("next") or "/dashboard/"))
        user = await run_sync(_services(request).users.authenticate, email, password)
        if user is None:
            return Template(
                template_name="login.html",
                context={"next": target, "error": "E-mail ou senha incorretos.", "email": email},
                status_code=401,
            )
        request.set_session({"uid": str(user.user_id)})
        return Redirect(target, status_code=303)

    @post("/logout")
    async def logout(self, request: Req) -> Redirect:
        """End the session."""
        request.clear_session()
        return Redirect("/dashboard/login", status_code=303)


def _safe_next(target: str) -> str:
    """Only dashboard paths (no open redirect)."""
    return target if target.startswith("/dashboard/") and not target.startswith("//") else "/dashboard/"


# --- overview ---------------------------------------------------------------------------------------


BAR_MAX = 40
"""The widest bar of the overview's chart, in its viewBox units (640 wide): about 6% of the chart."""


def _chart(per_day: list[tuple[Any, dict[str, int]]]) -> Markup:
    """The stacked bar chart of sends per day by outcome, as inline SVG built here (a Jinja loop over
    150 bars costs tens of milliseconds; this costs well under one). Every bar has a ``<title>``."""
    outcomes = ("sent", "failed", "skipped", "rejected", "cancelled")
    width, height, pad = 640, 180, 24
    peak = max([sum(c[o] for o in outcomes) for _, c in per_day] + [1])
    step = (width - pad) / max(1, len(per_day))
    bar = min(step * 0.7, BAR_MAX)  # one day (Hoje) is one slim bar, not the whole width
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-labelledby="chart-title">',
        f'<title id="chart-title">Mensagens por dia e resultado (máximo {peak} por dia)</title>',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width}" y2="{height - pad}" stroke="currentColor"/>',
    ]
    for i, (day, counts) in enumerate(per_day):
        y = float(height - pad)
        label = fmt.day(day)
        for outcome in outcomes:
            h = (height - 2 * pad) * counts[outcome] / peak
            if h > 0:
                title = escape(f"{label}: {counts[outcome]} {fmt.counted(counts[outcome], outcome)}")
                parts.append(
                    f'<rect class="{outcome}" x="{pad + i * step + (step - bar) / 2:.1f}" y="{y - h:.1f}" '
                    f'width="{bar:.1f}" height="{h:.1f}"><title>{title}</title></rect>'
                )
                y -= h
        if len(per_day) <= 7 or i % 5 == 0:
            x = pad + i * step + step / 2
            parts.append(f'<text x="{x:.1f}" y="{height - 8}" text-anchor="middle">{label[:5]}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 (every interpolated text is escaped or a number)


class OverviewController(Controller):
    """Visão geral."""

    path = "/"

    @get("/")
    async def overview(self, request: Req, days: int = 7) -> Template:
        """Counts of today / 7 / 30 days, the chart, delivery rate, open queues, gateway state."""
        days = days if days in PERIODS else 7
        user = current_user(request)
        tz = await _zone(request, user)
        data = await run_sync(
            _queries(request).overview,
            user.tenant_id,
            days=days,
            now=_services(request).container.clock.now(),
            tz=tz,
        )
        block = data["gateway_block"]
        misconfigured = block is not None and any(
            q["paused_reason"] == "gateway_misconfigured" for q in data["open_queues"]
        )
        attention = []
        if misconfigured:
            attention.append("O gateway recusou as credenciais: revise as configurações do WhatsApp.")
        for q in data["open_queues"]:
            if q["paused_reason"]:
                attention.append(
                    f"Campanha {q['campaign_id'][:8]} pausada: {fmt.label(q['paused_reason'], 'pause')}"
                    + (f" até {fmt.instant(q['resume_at'], tz)}" if q["resume_at"] else "")
                )
        if failed := data["totals"]["failed"]:
            words = fmt.plural(failed, "mensagem falhou", "mensagens falharam")
            attention.append(f"{fmt.number(failed)} {words} no período.")
        return await page(
            request,
            "overview.html",
            days=days,
            periods=PERIODS,
            data=data,
            chart=_chart(data["per_day"]),
            attention=attention,
            gateway_ok=not misconfigured,
        )


# --- campaigns --------------------------------------------------------------------------------------


def _pack(sheet: Sheet) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode([sheet.columns, sheet.rows])).decode()


def _unpack(text: str) -> Sheet:
    try:
        columns, rows = msgspec.json.decode(base64.urlsafe_b64decode(text.encode()))
    except (ValueError, msgspec.DecodeError):
        raise NotFoundException("planilha inválida: envie o arquivo novamente") from None
    return Sheet(columns=[str(c) for c in columns], rows=[list(r) for r in rows])


def _template_type(value: Any) -> TemplateType:
    try:
        return TemplateType(str(value))
    except ValueError:
        return TemplateType.OVERDUE


def _invoice_column(form: dict[str, Any]) -> int | None:
    """The index of the column chosen as the contacts' invoice reference (None: the batch's)."""
    value = str(form.get("invoice_column") or "")
    return int(value) if value.isdigit() else None


def _optional_uuid(value: Any) -> UUID | None:
    try:
        return UUID(str(value)) if value else None
    except ValueError:
        return None


def _unprojected(campaign: Campaign) -> dict[str, Any]:
    """The status document of a stored campaign the views do not show yet: queued, nothing sent."""
    total = campaign.accepted + campaign.rejected
    at = campaign.created_on.isoformat()
    return {
        "campaign_id": str(campaign.id),
        "external_id": campaign.external_id,
        "queue_id": str(campaign.queue_id),
        "template_type": campaign.template_type,
        "status": "queued",
        "contacts": {
            "total": total,
            "pending": campaign.accepted,
            "sent": 0,
            "failed": 0,
            "skipped": 0,
            "rejected": campaign.rejected,
            "cancelled": 0,
        },
        "progress": round(100.0 * campaign.rejected / total, 2) if total else 100.0,
        "paused_reason": None,
        "resume_at": None,
        "created_at": at,
        "started_at": None,
        "completed_at": None,
        "cancelled_at": None,
        "updated_at": at,
    }


class CampaignsController(Controller):
    """Campanhas: list, new (upload, mapping, preview, send), page with live progress, cancel, export."""

    path = "/campaigns"

    @get("/")
    async def list_campaigns(
        self,
        request: Req,
        template_type: str | None = None,
        status: str | None = None,
        period: int | None = None,
        page_number: int = 1,
    ) -> Template:
        """The campaigns, newest first, 25 a page."""
        user = current_user(request)
        since = None
        if period in PERIODS:
            since = _services(request).container.clock.now() - timedelta(days=period)
        page_number = max(1, page_number)
        items = await run_sync(
            _queries(request).campaigns,
            user.tenant_id,
            template_type=template_type or None,
            status=status or None,
            since=since,
            limit=26,
            offset=(page_number - 1) * 25,
        )
        return await page(
            request,
            "campaigns.html",
            items=items[:25],
            more=len(items) > 25,
            page_number=page_number,
            filters={"template_type": template_type or "", "status": status or "", "period": period or ""},
            types=list(TemplateType),
            statuses=["queued", "running", "paused", "completed", "cancelled"],
        )

    async def _templates(self, request: Req, user: SessionUser) -> list[dict[str, Any]]:
        listed = await run_sync(_services(request).queries.list_templates, user.tenant_id)
        return [t for t in listed if t["active"]]

    @get("/new", opt=ADMIN)
    async def new(self, request: Req) -> Template:
        """Step 1: type, template, the ERP's file (CSV or XLSX) or pasted rows."""
        user = current_user(request)
        return await page(
            request,
            "campaign_new.html",
            types=list(TemplateType),
            templates=await self._templates(request, user),
        )

    @post("/new", opt=ADMIN)
    async def upload(self, request: Req) -> Template:
        """Step 2: the columns found and their mapping to contact fields."""
        user = current_user(request)
        form = await request.form()
        upload = form.get("file")
        pasted = str(form.get("pasted") or "")
        try:
            if isinstance(upload, UploadFile) and upload.filename:
                sheet = read_sheet(upload.filename, await upload.read())
            else:
                sheet = read_sheet("pasted.csv", pasted.encode())
        except DomainError as exc:
            return await page(
                request,
                "campaign_new.html",
                status_code=422,
                types=list(TemplateType),
                templates=await self._templates(request, user),
                error=_error(exc),
            )
        return await page(
            request,
            "campaign_mapping.html",
            sheet=sheet,
            packed=_pack(sheet),
            mapping=guess_mapping(sheet.columns),
            known=KNOWN_FIELDS,
            invoice_field=INVOICE_FIELD,
            invoice_column=None,
            template_type=_template_type(form.get("template_type")).value,
            template_id=str(form.get("template_id") or ""),
            external_id=str(form.get("external_id") or ""),
        )

    def _request(self, form: dict[str, Any], sheet: Sheet) -> SendRequest:
        mapping = {c: str(form.get(f"map_{i}") or "") for i, c in enumerate(sheet.columns)}
        contacts = to_contacts(sheet, mapping, _invoice_column(form))
        return SendRequest(
            contacts=contacts,
            external_id=str(form.get("external_id") or "") or None,
            template_id=_optional_uuid(form.get("template_id")),
        )

    @post("/preview", opt=ADMIN)
    async def preview(self, request: Req) -> Template:
        """Step 3: the rows that would be rejected (with their reasons) and the first messages."""
        user = current_user(request)
        form = await _form(request)
        sheet = _unpack(str(form.get("sheet") or ""))
        kind = _template_type(form.get("template_type"))
        context: dict[str, Any] = {
            "sheet": sheet,
            "packed": form.get("sheet"),
            "known": KNOWN_FIELDS,
            "invoice_field": INVOICE_FIELD,
            "invoice_column": _invoice_column(form),
            "template_type": kind.value,
            "template_id": str(form.get("template_id") or ""),
            "external_id": str(form.get("external_id") or ""),
            "mapping": {c: str(form.get(f"map_{i}") or "") for i, c in enumerate(sheet.columns)},
        }
        try:
            send = self._request(form, sheet)
            result = await run_sync(
                _services(request).ingest.preview, tenant_id=user.tenant_id, path_type=kind, request=send
            )
        except DomainError as exc:
            return await page(request, "campaign_mapping.html", status_code=422, error=_error(exc), **context)
        return await page(
            request, "campaign_preview.html", result=result, idempotency_key=str(uuid4()), **context
        )

    @post("/send", opt=ADMIN)
    async def send(self, request: Req) -> Response[Any]:
        """Step 4: submit through the ingestion service (the same as ``POST /send/{type}``); the form's
        idempotency key makes a double click one campaign."""
        user = current_user(request)
        form = await _form(request)
        sheet = _unpack(str(form.get("sheet") or ""))
        kind = _template_type(form.get("template_type"))
        try:
            send = self._request(form, sheet)
            result = await run_sync(
                _services(request).ingest.submit,
                tenant_id=user.tenant_id,
                path_type=kind,
                request=send,
                idempotency_key=f"dashboard:{form.get('idempotency_key') or uuid4()}",
            )
        except DomainError as exc:
            return await page(
                request,
                "campaign_mapping.html",
                status_code=422,
                error=_error(exc),
                sheet=sheet,
                packed=form.get("sheet"),
                known=KNOWN_FIELDS,
                invoice_field=INVOICE_FIELD,
                invoice_column=_invoice_column(form),
                template_type=kind.value,
                template_id=str(form.get("template_id") or ""),
                external_id=str(form.get("external_id") or ""),
                mapping={c: str(form.get(f"map_{i}") or "") for i, c in enumerate(sheet.columns)},
            )
        if not result.replayed:
            await _record(request, "campaign.send", str(result.campaign_id))
        return Redirect(f"/dashboard/campaigns/{result.campaign_id}", status_code=303)

    async def _campaign(self, request: Req, campaign_id: UUID) -> dict[str, Any]:
        """The campaign's status document from the views; one the tenant stored a moment ago that the
        projections have not reached yet reads as queued with its stored counters (the page then follows
        the views). Raises NotFound for unknown ids and another tenant's."""
        tenant_id = current_user(request).tenant_id
        campaign = await run_sync(_queries(request).campaign, tenant_id, campaign_id)
        if campaign is not None:
            return campaign
        stored = await run_sync(
            get_owned, _services(request).container.store, campaign_id, Campaign, tenant_id
        )
        if stored is None:
            raise NotFound("campanha não encontrada", code="campaign_not_found")
        return _unprojected(stored)

    @get("/{campaign_id:uuid}")
    async def show(self, request: Req, campaign_id: UUID) -> Template:
        """The campaign page (progress and contacts update without reloading)."""
        campaign = await self._campaign(request, campaign_id)
        contacts = await run_sync(
            _queries(request).contacts, current_user(request).tenant_id, campaign_id, limit=100
        )
        return await page(
            request, "campaign.html", c=campaign, contacts=contacts, statuses=[s.value for s in ContactStatus]
        )

    @get("/{campaign_id:uuid}/progress")
    async def progress(self, request: Req, campaign_id: UUID) -> Template:
        """The live part: status, counters, progress, pause reason (htmx polls it every second until the
        queue ends)."""
        campaign = await self._campaign(request, campaign_id)
        rendered = await page(request, "_progress.html", c=campaign)
        rendered.headers["HX-Trigger"] = "refresh-contacts"  # the contacts table follows (htmx event)
        return rendered

    @get("/{campaign_id:uuid}/contacts")
    async def contacts(
        self, request: Req, campaign_id: UUID, status: str | None = None, q: str | None = None
    ) -> Template:
        """The contacts table, filtered by status and a search in name/phone."""
        await self._campaign(request, campaign_id)
        rows = await run_sync(
            _queries(request).contacts,
            current_user(request).tenant_id,
            campaign_id,
            status=status or None,
            search=q,
            limit=200,
        )
        return await page(request, "_contacts.html", contacts=rows)

    @post("/{campaign_id:uuid}/cancel", opt=ADMIN)
    async def cancel(self, request: Req, campaign_id: UUID) -> Redirect:
        """Cancel the campaign's queue (the public API's cancel service)."""
        campaign = await self._campaign(request, campaign_id)
        count = await run_sync(
            _services(request).cancel.cancel_queue,
            current_user(request).tenant_id,
            UUID(campaign["queue_id"]),
        )
        await _record(request, "queue.cancel", f"{campaign['queue_id']} ({count})")
        return Redirect(f"/dashboard/campaigns/{campaign_id}", status_code=303)

    @get("/{campaign_id:uuid}/export.csv")
    async def export(self, request: Req, campaign_id: UUID) -> Response[bytes]:
        """Every contact of the campaign as CSV (``;``-separated, UTF-8 with BOM for spreadsheets)."""
        await self._campaign(request, campaign_id)
        user = current_user(request)
        tz = await _zone(request, user)
        rows = await run_sync(_queries(request).contacts, user.tenant_id, campaign_id, limit=10_000)
        out = io.StringIO()
        writer = csv.writer(out, delimiter=";")
        writer.writerow(
            ["linha", "nome", "telefone", "status", "tentativas", "enviada_em", "mensagem", "erro"]
        )
        for r in rows:
            error = r["error"]
            writer.writerow(
                [
                    r["index"] + 1,
                    r["nome"] or "",
                    r["phone"] or r["telefone"] or "",
                    fmt.label(r["status"]),
                    r["attempts"],
                    fmt.instant(r["sent_at"], tz),
                    r["message_text"] or "",
                    f"{error['code']}: {error['message']}" if error else "",
                ]
            )
        return Response(
            ("\ufeff" + out.getvalue()).encode(),
            media_type="text/csv",  # litestar adds "; charset=utf-8"
            headers={"Content-Disposition": f'attachment; filename="campanha-{campaign_id}.csv"'},
        )


# --- templates --------------------------------------------------------------------------------------


def _sample(text: str) -> dict[str, str]:
    sample = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip():
            sample[name.strip()] = value.strip()
    return sample


def _variations(form: dict[str, Any]) -> list[str]:
    raw = form.get("variation") or []
    values = raw if isinstance(raw, list) else [raw]
    return [str(v) for v in values if str(v).strip()]


class TemplatesController(Controller):
    """Templates: per type, default marked; editor with live preview, errors with line/column, history."""

    path = "/templates"

    @get("/")
    async def list_templates(self, request: Req) -> Template:
        """Templates grouped by type."""
        listed = await run_sync(_services(request).queries.list_templates, current_user(request).tenant_id)
        groups = {t: [x for x in listed if x["template_type"] == t.value] for t in TemplateType}
        return await page(request, "templates.html", groups=groups)

    async def _editor(
        self, request: Req, template: dict[str, Any] | None, *, status_code: int = 200, **extra: Any
    ) -> Template:
        history: list[Any] = []  # EventDoc Structs (Jinja reads their attributes)
        if template and template.get("template_id"):
            events = await run_sync(
                aggregate_history,
                _services(request).container.store,
                current_user(request).tenant_id,
                UUID(template["template_id"]),
                MessageTemplate,
                "template",
            )
            history = [event_doc(e) for e in events]
        return await page(
            request,
            "template_edit.html",
            status_code=status_code,
            t=template,
            history=list(reversed(history)),
            types=list(TemplateType),
            sample=extra.pop("sample", SAMPLE),
            **extra,
        )

    @get("/new", opt=ADMIN)
    async def new(self, request: Req, template_type: str = "overdue") -> Template:
        """An empty editor."""
        blank = {"template_type": _template_type(template_type).value, "variations": [""], "name": ""}
        return await self._editor(request, blank)

    @get("/{template_id:uuid}")
    async def edit(self, request: Req, template_id: UUID) -> Template:
        """The editor of one template, with its version history."""
        template = await run_sync(
            _services(request).templates.get, current_user(request).tenant_id, template_id
        )
        tenant = await _tenant(request, current_user(request))
        doc = {
            "template_id": str(template.id),
            "name": template.name,
            "template_type": template.template_type,
            "description": template.description,
            "variations": list(template.variations),
            "active": template.active,
            "version": template.version,
            "default": tenant.default_template(template.template_type) == template.id,
        }
        return await self._editor(request, doc)

    @post("/preview")
    async def preview(self, request: Req) -> Template:
        """Live preview: each variation rendered for the sample, or its error with line and column, and
        the variables it uses (the admin API's preview service)."""
        form = await _form(request)
        user = current_user(request)
        tz = await _zone(request, user)
        variations = _variations(form)
        sample = _sample(str(form.get("sample") or ""))
        items: list[dict[str, Any]] = []
        for i, text in enumerate(variations):
            try:
                parsed = parse_variations([text])[0]
                rendered = _services(request).templates.preview(
                    [text],
                    sample,
                    now=_services(request).container.clock.now(),
                    tz=tz,
                )[0]
                items.append(
                    {
                        "n": i + 1,
                        "text": rendered,
                        "variables": sorted(parsed.variables),
                        "required": sorted(parsed.required_variables),
                    }
                )
            except DomainError as exc:  # in Portuguese (the API keeps the domain's English)
                items.append({"n": i + 1, "error": template_error(exc, name_variation=False)})
        return await page(request, "_template_preview.html", items=items)

    async def _save(self, request: Req, template_id: UUID | None) -> Response[Any]:
        form = await _form(request)
        user = current_user(request)
        services = _services(request)
        variations = _variations(form)
        fields = {
            "name": str(form.get("name") or ""),
            "description": str(form.get("description") or ""),
            "variations": variations,
        }
        try:
            if template_id is None:
                template = await run_sync(
                    services.templates.create,
                    user.tenant_id,
                    template_type=str(form.get("template_type") or ""),
                    active=True,
                    **fields,
                )
                await _record(request, "template.create", str(template.id))
            else:
                template = await run_sync(services.templates.change, user.tenant_id, template_id, **fields)
                await _record(request, "template.change", str(template.id))
        except DomainError as exc:
            doc = {
                **fields,
                "template_id": str(template_id) if template_id else None,
                "template_type": str(form.get("template_type") or "overdue"),
                "variations": variations or [""],
            }
            return await self._editor(
                request,
                doc,
                status_code=422,
                error=template_error(exc),  # in Portuguese (the API keeps the domain's English)
                sample=str(form.get("sample") or SAMPLE),
            )
        return Redirect(f"/dashboard/templates/{template.id}?saved=1", status_code=303)

    @post("/", opt=ADMIN)
    async def create(self, request: Req) -> Response[Any]:
        """Create a template (refused with line and column when malformed)."""
        return await self._save(request, None)

    @post("/{template_id:uuid}", opt=ADMIN)
    async def save(self, request: Req, template_id: UUID) -> Response[Any]:
        """Save a new version of a template."""
        return await self._save(request, template_id)

    @post("/{template_id:uuid}/default", opt=ADMIN)
    async def make_default(self, request: Req, template_id: UUID) -> Response[Any]:
        """Make it its type's default."""
        await run_sync(
            _services(request).templates.make_default, current_user(request).tenant_id, template_id
        )
        await _record(request, "template.default", str(template_id))
        return Redirect("/dashboard/templates/", status_code=303)

    @post("/{template_id:uuid}/active", opt=ADMIN)
    async def toggle(self, request: Req, template_id: UUID) -> Response[Any]:
        """Activate or deactivate (the default cannot be deactivated)."""
        form = await _form(request)
        active = str(form.get("active")) == "1"
        await run_sync(
            _services(request).templates.change, current_user(request).tenant_id, template_id, active=active
        )
        await _record(request, "template.activate" if active else "template.deactivate", str(template_id))
        return Redirect("/dashboard/templates/", status_code=303)


# --- API keys ---------------------------------------------------------------------------------------


class ApiKeysController(Controller):
    """Chaves de API: create (shown once), name, last used, revoke."""

    path = "/api-keys"

    async def _page(self, request: Req, *, revoked: UUID | None = None, **extra: Any) -> Template:
        tenant_id = current_user(request).tenant_id
        keys = await run_sync(_queries(request).api_keys, tenant_id)
        if revoked is not None:
            keys = await run_sync(self._as_stored, request, keys, tenant_id, revoked)
        return await page(request, "api_keys.html", keys=keys, **extra)

    @staticmethod
    def _as_stored(
        request: Req, keys: list[dict[str, Any]], tenant_id: UUID, key_id: UUID
    ) -> list[dict[str, Any]]:
        """``keys`` with the row of ``key_id`` as the event store has it when the views do not show its
        revocation yet (the projection lags the redirect); unknown and foreign ids change nothing."""
        stored = get_owned(_services(request).container.store, key_id, ApiKey, tenant_id)
        if stored is None or not stored.revoked:
            return keys
        return [
            {**k, "revoked_at": stored.modified_on}
            if k["key_id"] == key_id and k["revoked_at"] is None
            else k
            for k in keys
        ]

    @get("/")
    async def list_keys(self, request: Req, revoked: UUID | None = None) -> Template:
        """The keys (never their text), and once, right after its creation, the new key's text (carried
        from the POST in the encrypted session and removed from it as it is shown). ``revoked``: the key
        just revoked, shown revoked even before the views have it."""
        new = request.session.pop("new_key", None) if request.scope.get("session") else None
        if new:
            request.set_session({k: v for k, v in request.session.items()})
        return await self._page(
            request, revoked=revoked, new_key=new and new["key"], new_name=new and new["name"]
        )

    @post("/", opt=ADMIN)
    async def create(self, request: Req) -> Response[Any]:
        """Issue a key; the page it redirects to shows its text this once (a reload shows it no more)."""
        form = await _form(request)
        name = str(form.get("name") or "").strip()
        if not name or len(name) > 100:
            return await self._page(
                request, error={"message": "Dê um nome de 1 a 100 caracteres à chave.", "field": "name"}
            )
        key = await run_sync(_services(request).tenants.issue_api_key, current_user(request).tenant_id, name)
        await _record(request, "api_key.create", f"{name} ({key[:8]})")
        request.set_session({**request.session, "new_key": {"key": key, "name": name}})
        return Redirect("/dashboard/api-keys/", status_code=303)

    @post("/{key_id:uuid}/revoke", opt=ADMIN)
    async def revoke(self, request: Req, key_id: UUID) -> Redirect:
        """Revoke a key (404 for another tenant's)."""
        await run_sync(_services(request).tenants.revoke_api_key, current_user(request).tenant_id, key_id)
        await _record(request, "api_key.revoke", str(key_id))
        return Redirect(f"/dashboard/api-keys/?done=revoked&revoked={key_id}", status_code=303)


# --- settings ---------------------------------------------------------------------------------------


def _hours_of(policy: dict[str, Any]) -> list[dict[str, Any]]:
    """Per weekday (Monday first) the first window ``{name, label, start, end}`` of the tenant's calendar."""
    from billing.domain.calendar import parse_calendar

    calendar = parse_calendar({k: v for k, v in policy.items() if k in ("timezone", "windows", "holidays")})
    days = []
    for i, name in enumerate(DAY_NAMES):
        windows = calendar.weekly.get(i, ())
        first = windows[0] if windows else None
        days.append(
            {
                "name": name,
                "label": fmt.WEEKDAYS[i],
                "start": first.start.strftime("%H:%M") if first else "",
                "end": first.end.strftime("%H:%M") if first else "",
            }
        )
    return days


class SettingsController(Controller):
    """Configurações: business hours per weekday, holidays, throttle and daily cap, the gateway."""

    path = "/settings"

    async def _page(self, request: Req, *, status_code: int = 200, **extra: Any) -> Template:
        tenant = await _tenant(request, current_user(request))
        holidays = tenant.policy.get("holidays", {})
        return await page(
            request,
            "settings.html",
            status_code=status_code,
            hours=_hours_of(tenant.policy),
            holidays=holidays,
            extra_dates="\n".join(fmt.day(d) for d in holidays.get("extra_dates", [])),
            gateway=tenant.gateway,
            policy=tenant.policy,
            **extra,
        )

    @get("/")
    async def show(self, request: Req) -> Template:
        """The settings forms."""
        return await self._page(request)

    async def _apply(
        self,
        request: Req,
        what: str,
        *,
        policy: dict[str, Any] | None = None,
        gateway: dict[str, Any] | None = None,
    ) -> Response[Any]:
        try:
            await run_sync(  # the API's path: the paused queues are re-evaluated at once
                _services(request).config.change,
                current_user(request).tenant_id,
                policy=policy,
                gateway=gateway,
            )
        except DomainError as exc:  # a policy's refusal in Portuguese (the API keeps the domain's English)
            error = policy_error(exc) if isinstance(exc, PolicyError) else _error(exc)
            return await self._page(request, status_code=422, error=error, section=what)
        await _record(request, f"settings.{what}", what)
        return Redirect(f"/dashboard/settings/?saved={what}", status_code=303)

    @post("/hours", opt=ADMIN)
    async def hours(self, request: Req) -> Response[Any]:
        """Business hours: one window per weekday (empty = closed), and the time zone."""
        form = await _form(request)
        windows: dict[str, list[list[str]]] = {}
        for name in DAY_NAMES:
            start, end = str(form.get(f"{name}_start") or ""), str(form.get(f"{name}_end") or "")
            if start or end:
                windows[name] = [[start, end]]
        policy: dict[str, Any] = {"windows": windows}
        if form.get("timezone"):
            policy["timezone"] = str(form.get("timezone"))
        return await self._apply(request, "hours", policy=policy)

    @post("/holidays", opt=ADMIN)
    async def holidays(self, request: Req) -> Response[Any]:
        """Holidays: national + state (subdivision), optional days, own dates (dd/mm/aaaa, one a line)."""
        from billing.domain.dates import parse_due_date

        form = await _form(request)
        extra = []
        for line in str(form.get("extra_dates") or "").splitlines():
            if line.strip():
                try:
                    extra.append(parse_due_date(line.strip()).isoformat())
                except DomainError as exc:
                    return await self._page(
                        request,
                        status_code=422,
                        error={
                            "message": f"«{line.strip()}» não é uma data válida (use dd/mm/aaaa)",
                            "field": "datas próprias",
                            "code": exc.code,
                        },
                        section="holidays",
                    )
        tenant = await _tenant(request, current_user(request))
        holidays = {
            **tenant.policy.get("holidays", {}),
            "subdivision": str(form.get("subdivision") or "").strip() or None,
            "include_optional": form.get("include_optional") == "on",
            "extra_dates": extra,
        }
        return await self._apply(request, "holidays", policy={"holidays": holidays})

    @post("/limits", opt=ADMIN)
    async def limits(self, request: Req) -> Response[Any]:
        """Throttle (messages per minute) and daily cap."""
        form = await _form(request)
        policy: dict[str, Any] = {}
        for name in ("messages_per_minute", "max_messages_per_day"):
            try:
                policy[name] = int(str(form.get(name) or ""))
            except ValueError:
                return await self._page(
                    request,
                    status_code=422,
                    error={"message": "Informe um número inteiro.", "field": name},
                    section="limits",
                )
        return await self._apply(request, "limits", policy=policy)

    def _gateway_form(self, form: dict[str, Any], current: dict[str, str]) -> dict[str, Any]:
        return {
            "base_url": str(form.get("base_url") or ""),
            "instance": str(form.get("instance") or ""),
            "api_key": str(form.get("api_key") or "") or current.get("api_key", ""),  # blank keeps the key
            "api_version": str(form.get("api_version") or "v2"),
        }

    @post("/gateway", opt=ADMIN)
    async def gateway(self, request: Req) -> Response[Any]:
        """The Evolution API gateway (URL, instance, key, version); a blank key keeps the stored one."""
        form = await _form(request)
        tenant = await _tenant(request, current_user(request))
        return await self._apply(request, "gateway", gateway=self._gateway_form(form, tenant.gateway))

    @post("/gateway/test", opt=ADMIN)
    async def test_gateway(self, request: Req) -> Template:
        """ "Testar conexão": the gateway's ``connectionState`` for the settings in the form, through the
        SSRF guard (:class:`billing.netguard.GuardedTransport`; a refused address reads as misconfigured)."""
        from billing.netguard import GuardedTransport

        form = await _form(request)
        tenant = await _tenant(request, current_user(request))
        config = self._gateway_form(form, tenant.gateway)
        allow_private = _services(request).container.settings.gateway_allow_private
        async with GuardedTransport(allow_private=allow_private) as transport:
            probe = await probe_connection_state(transport, config, timeout_s=10)
        return await page(request, "_gateway_test.html", probe=probe)


# --- history, users, docs ---------------------------------------------------------------------------


class HistoryController(Controller):
    """Histórico: search by phone or invoice (the batch's ``external_id``), every message and event."""

    path = "/history"

    @get("/")
    async def search(self, request: Req, q: str = "") -> Template:
        """Contacts of one phone (any Brazilian format) or of one invoice reference."""
        user = current_user(request)
        rows: list[dict[str, Any]] = []
        note = None
        if q.strip():
            try:
                phone = normalize_phone(q.strip()).e164
            except DomainError:
                phone = None
            queries = _queries(request)
            if phone:
                rows = await run_sync(queries.history_by_phone, user.tenant_id, phone)
            if not rows:
                rows = await run_sync(queries.history_by_invoice, user.tenant_id, q.strip())
            if not rows:
                note = "Nada encontrado para esse telefone ou fatura."
        return await page(request, "history.html", q=q, rows=rows, note=note)

    @get("/contact/{contact_id:uuid}")
    async def contact(self, request: Req, contact_id: UUID) -> Template:
        """Every event of one contact, oldest first (the admin API's audit history), under a header naming
        the contact and its phone (E.164, or as sent when it was not a valid one), with the CSV link."""
        events = await run_sync(
            aggregate_history,
            _services(request).container.store,
            current_user(request).tenant_id,
            contact_id,
            Contact,
            "contact",
        )
        contact: Contact = fold(events)
        return await page(
            request,
            "history_contact.html",
            contact_id=contact_id,
            nome=contact.fields.get("nome") or "",
            phone=contact.phone or contact.telefone,
            campaign_id=contact.campaign_id,
            events=[event_doc(e) for e in events],
        )

    @get("/contact/{contact_id:uuid}/export.csv")
    async def contact_csv(self, request: Req, contact_id: UUID) -> Response[bytes]:
        """The contact's history as the admin API's ``?format=csv`` gives it (the history projection's
        entries, columns ``billing.services.history.CSV_COLUMNS``), with the dashboard's session."""
        services = _services(request)
        tenant_id = current_user(request).tenant_id
        await run_sync(aggregate_history, services.container.store, tenant_id, contact_id, Contact, "contact")
        what = HistoryFilter(tenant_id, contact_id=contact_id)
        entries = await run_sync(services.history.entries, what, limit=MAX_ENTRIES)
        return Response(
            to_csv(entries).encode(),
            media_type="text/csv",  # litestar adds "; charset=utf-8"
            headers={"Content-Disposition": f'attachment; filename="historico-contato-{contact_id}.csv"'},
        )


class UsersController(Controller):
    """Usuários: invite and remove (admins), and the record of admin actions."""

    path = "/users"

    async def _page(self, request: Req, *, status_code: int = 200, **extra: Any) -> Template:
        services = _services(request)
        tenant_id = current_user(request).tenant_id
        users = await run_sync(services.users.list_users, tenant_id)
        actions = await run_sync(services.users.actions, tenant_id)
        templates = await run_sync(services.queries.list_templates, tenant_id)
        keys = await run_sync(_queries(request).api_keys, tenant_id)
        names = {str(t["template_id"]): t["name"] for t in templates}
        names.update({str(k["key_id"]): k["name"] for k in keys})
        shown = [{**a, "target": fmt.action_target(a["action"], a["target"], names)} for a in actions]
        return await page(request, "users.html", status_code=status_code, users=users, actions=shown, **extra)

    @get("/")
    async def list_users(self, request: Req) -> Template:
        """The tenant's users and the latest admin actions."""
        return await self._page(request)

    @post("/", opt=ADMIN)
    async def invite(self, request: Req) -> Response[Any]:
        """Create a user with an initial password (the admin tells it to the person)."""
        form = await _form(request)
        user = current_user(request)
        try:
            await run_sync(
                _services(request).users.create,
                user.tenant_id,
                email=str(form.get("email") or ""),
                password=str(form.get("password") or ""),
                role=str(form.get("role") or "viewer"),
                by=user,
            )
        except DomainError as exc:
            return await self._page(request, status_code=422, error=_error(exc))
        return Redirect("/dashboard/users/?done=invited", status_code=303)

    @post("/{user_id:uuid}/remove", opt=ADMIN)
    async def remove(self, request: Req, user_id: UUID) -> Response[Any]:
        """Remove a user of the tenant."""
        try:
            await run_sync(_services(request).users.remove, current_user(request), user_id)
        except NotFound:
            raise
        except DomainError as exc:
            return await self._page(request, status_code=422, error=_error(exc))
        return Redirect("/dashboard/users/?done=removed", status_code=303)


class DocsController(Controller):
    """Documentação: the public API with curl examples on the tenant's base URL."""

    path = "/docs"

    @get("/")
    async def docs(self, request: Req) -> Template:
        """The examples (the key placeholder is the admin's to fill)."""
        settings = _services(request).container.settings
        base = (settings.public_url or str(request.base_url)).rstrip("/")
        return await page(request, "docs.html", base=base + PUBLIC_BASE)


CONTROLLERS = [
    LoginController,
    OverviewController,
    CampaignsController,
    TemplatesController,
    ApiKeysController,
    SettingsController,
    HistoryController,
    UsersController,
    DocsController,
]
