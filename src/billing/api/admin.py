"""The admin API (JWT bearer; the tenant is the token's ``sub``): API keys, templates, campaigns, stats,
sending configuration and the audit history of a contact."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.di import Provide

from billing.api.auth import Admin
from billing.api.deps import Services, provide_services, run_sync
from billing.api.public import BASE
from billing.domain.apikey import api_key_id
from billing.domain.contact import Contact
from billing.domain.errors import DomainError, InvalidValue, NotFound
from billing.domain.ingestion import missing_variables
from billing.domain.phone import normalize_phone
from billing.domain.sanitize import sanitize_text
from billing.domain.template import MessageTemplate
from billing.domain.templating import parse_template
from billing.domain.tenant import Tenant
from billing.eventstore import get_owned
from billing.services.history import MAX_ENTRIES, HistoryFilter, HistoryQueries, to_csv
from billing.services.tenants import hash_api_key

Req = Request[Admin, Any, Any]
MAX_KEY_NAME = 100


class ApiKeyCreate(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /api-keys/``."""

    name: str = "default"


class TemplateCreate(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /templates/``."""

    name: str
    template_type: str
    variations: list[str]
    description: str = ""
    active: bool = True


class TemplatePatch(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``PATCH /templates/{id}/``: absent fields stay as they are."""

    name: str | None = None
    description: str | None = None
    variations: list[str] | None = None
    active: bool | None = None


class PreviewRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /templates/{id}/preview``: sample contact fields as an ERP would send them."""

    variables: dict[str, Any] = {}


class ConfigPatch(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``PATCH /config/``: ``policy`` keys merge into the policy; ``gateway`` replaces it."""

    policy: dict[str, Any] | None = None
    gateway: dict[str, Any] | None = None


def _template_doc(template: Any) -> dict[str, Any]:
    return {
        "template_id": str(template.id),
        "name": template.name,
        "template_type": template.template_type,
        "description": template.description,
        "variations": list(template.variations),
        "active": template.active,
        "version": template.version,
    }


def _config_doc(tenant: Tenant) -> dict[str, Any]:
    gateway = dict(tenant.gateway)
    gateway["api_key"] = "***"
    return {"tenant_id": str(tenant.id), "name": tenant.name, "policy": tenant.policy, "gateway": gateway}


def _event_doc(event: Any) -> dict[str, Any]:
    data = {
        f.name: getattr(event, f.name)
        for f in dataclasses.fields(event)
        if f.name not in ("originator_id", "originator_version", "timestamp", "originator_topic")
    }
    return {
        "type": type(event).TOPIC,
        "version": event.originator_version,
        "at": event.timestamp.isoformat(),
        "data": msgspec.to_builtins(data),
    }


class AdminController(Controller):
    """Tenant administration."""

    path = BASE
    tags = ["admin"]
    dependencies = {"services": Provide(provide_services)}

    @get("/api-keys/")
    async def list_api_keys(self, request: Req, services: Services) -> list[dict[str, Any]]:
        """The tenant's API keys (never their text)."""
        return await run_sync(services.queries.list_api_keys, request.user.tenant_id)

    @post("/api-keys/")
    async def create_api_key(self, request: Req, data: ApiKeyCreate, services: Services) -> dict[str, Any]:
        """Issue a key; its text is in this answer only."""
        name = data.name.strip()
        if not name or len(name) > MAX_KEY_NAME:
            raise InvalidValue(
                f"name must have 1 to {MAX_KEY_NAME} characters", code="invalid_name", field="name"
            )
        key = await run_sync(services.tenants.issue_api_key, request.user.tenant_id, name)
        key_id = api_key_id(hash_api_key(key))
        return {"key_id": str(key_id), "name": name, "prefix": key[:8], "api_key": key}

    @delete("/api-keys/{key_id:uuid}/", status_code=204)
    async def revoke_api_key(self, request: Req, key_id: UUID, services: Services) -> None:
        """Revoke a key (404 for another tenant's)."""
        await run_sync(services.tenants.revoke_api_key, request.user.tenant_id, key_id)

    @get("/templates/")
    async def list_templates(self, request: Req, services: Services) -> list[dict[str, Any]]:
        """The tenant's templates."""
        return await run_sync(services.queries.list_templates, request.user.tenant_id)

    @post("/templates/")
    async def create_template(self, request: Req, data: TemplateCreate, services: Services) -> dict[str, Any]:
        """Create a template (422 with line and column for a malformed variation)."""
        template = await run_sync(
            services.templates.create,
            request.user.tenant_id,
            name=data.name,
            template_type=data.template_type,
            description=data.description,
            variations=data.variations,
            active=data.active,
        )
        return _template_doc(template)

    @patch("/templates/{template_id:uuid}/")
    async def change_template(
        self, request: Req, template_id: UUID, data: TemplatePatch, services: Services
    ) -> dict[str, Any]:
        """Change a template; every change is an event."""
        changes = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not None}
        template = await run_sync(services.templates.change, request.user.tenant_id, template_id, **changes)
        return _template_doc(template)

    @delete("/templates/{template_id:uuid}/", status_code=200)
    async def deactivate_template(
        self, request: Req, template_id: UUID, services: Services
    ) -> dict[str, Any]:
        """Deactivate a template; its history stays."""
        template = await run_sync(services.templates.deactivate, request.user.tenant_id, template_id)
        return _template_doc(template)

    @post("/templates/{template_id:uuid}/preview", status_code=200)
    async def preview_template(
        self, request: Req, template_id: UUID, data: PreviewRequest, services: Services
    ) -> dict[str, Any]:
        """Render every variation of the template for sample variables, as if sent now; for each
        variation, ``missing_variables`` names what the sample lacks (ingestion would reject such a
        contact with ``missing_variable``)."""
        tenant_id = request.user.tenant_id
        template = await run_sync(services.templates.get, tenant_id, template_id)
        tenant = await run_sync(services.tenants.get_tenant, tenant_id)
        tz = tenant.sending_policy.calendar.tz  # the zone as the worker reads it (validated, stripped)
        try:
            texts = services.templates.preview(
                template.variations, data.variables, now=services.container.clock.now(), tz=tz
            )
        except DomainError as exc:
            if exc.field:  # the sample's fields are under "variables" in the body
                exc.field = f"variables.{exc.field}"
            raise
        fields = {str(k): sanitize_text(v) for k, v in data.variables.items() if v is not None}
        missing = [
            missing_variables(fields, parse_template(text).required_variables) for text in template.variations
        ]
        return {
            "template_id": str(template_id),
            "version": template.version,
            "previews": texts,
            "missing_variables": missing,
        }

    @get("/campaigns/")
    async def list_campaigns(self, request: Req, services: Services, limit: int = 50) -> list[dict[str, Any]]:
        """The tenant's latest campaigns with their queue status."""
        return await run_sync(services.queries.list_campaigns, request.user.tenant_id, limit=limit)

    @get("/stats/")
    async def stats(self, request: Req, services: Services) -> dict[str, Any]:
        """Per-status contact counts."""
        return await run_sync(services.queries.stats, request.user.tenant_id)

    @get("/config/")
    async def get_config(self, request: Req, services: Services) -> dict[str, Any]:
        """The sending policy and gateway settings (the gateway key masked)."""
        tenant = await run_sync(services.tenants.get_tenant, request.user.tenant_id)
        return _config_doc(tenant)

    @patch("/config/")
    async def change_config(self, request: Req, data: ConfigPatch, services: Services) -> dict[str, Any]:
        """Change the policy (422 naming the field when invalid) and/or the gateway."""
        tenant_id = request.user.tenant_id
        if data.policy is None and data.gateway is None:
            raise InvalidValue("nothing to change: give policy and/or gateway", code="invalid_request")
        tenant = await run_sync(
            services.tenants.configure, tenant_id, policy=data.policy, gateway=data.gateway
        )
        return _config_doc(tenant)

    @get("/history/contact/{contact_id:uuid}")
    async def contact_history(
        self, request: Req, contact_id: UUID, services: Services, format: HistoryFormat = "json"
    ) -> Any:
        """Every event of one contact, oldest first: what was sent, when, with which template version
        and the rule that allowed each attempt (``allowed_by`` of its claim). ``?format=csv`` for CSV."""
        tenant_id = request.user.tenant_id
        if format == "csv":
            what = HistoryFilter(tenant_id, contact_id=contact_id)
            return await _history_answer(services, what, "contact", str(contact_id), format)
        events = await run_sync(_history, services, tenant_id, contact_id, Contact, "contact")
        return {"contact_id": str(contact_id), "events": [_event_doc(e) for e in events]}

    @get("/history/invoice/{ref:str}")
    async def invoice_history(
        self, request: Req, ref: str, services: Services, format: HistoryFormat = "json"
    ) -> Any:
        """Every event of every contact about invoice ``ref`` (a contact's own ``external_id``, else its
        batch's), across campaigns, in time order, each attempt with the rule that allowed it; the
        contacts themselves under ``contacts``. ``?format=csv`` for the evidence as CSV. 404 when the
        tenant has no contact about that invoice."""
        ref = ref.strip()
        if not ref:
            raise InvalidValue("the invoice reference is empty", code="invalid_request", field="ref")
        what = HistoryFilter(request.user.tenant_id, invoice=ref)
        return await _history_answer(services, what, "invoice", ref, format)

    @get("/history/phone/{e164:str}")
    async def phone_history(
        self, request: Req, e164: str, services: Services, format: HistoryFormat = "json"
    ) -> Any:
        """Every event of every contact sent to one phone (E.164, or any Brazilian way of writing it),
        across campaigns, in time order. 404 when the tenant never had a contact with that phone."""
        try:
            phone = normalize_phone(e164, field="e164").e164
        except InvalidValue as exc:
            exc.field = "e164"
            raise
        what = HistoryFilter(request.user.tenant_id, phone=phone)
        return await _history_answer(services, what, "phone", phone, format)

    @get("/history/template/{template_id:uuid}")
    async def template_history(self, request: Req, template_id: UUID, services: Services) -> dict[str, Any]:
        """Every version of one template, oldest first: what it said from which instant (``at``) on."""
        events = await run_sync(
            _history, services, request.user.tenant_id, template_id, MessageTemplate, "template"
        )
        return {"template_id": str(template_id), "events": [_event_doc(e) for e in events]}


HistoryFormat = Literal["json", "csv"]


async def _history_answer(
    services: Services, what: HistoryFilter, kind: str, key: str, format: HistoryFormat
) -> Any:
    """The history document (or CSV) of ``what``; NotFound when no contact matches."""
    history = HistoryQueries(services.container.pool)
    contacts = await run_sync(history.contacts, what)
    if not contacts:
        raise NotFound(f"no contact of this tenant matches this {kind}", code=f"{kind}_not_found", field=kind)
    entries = await run_sync(history.entries, what, limit=MAX_ENTRIES + 1)
    truncated = len(entries) > MAX_ENTRIES
    entries = entries[:MAX_ENTRIES]
    if format == "csv":
        return Response(
            to_csv(entries),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="history-{kind}.csv"'},
        )
    return {kind: key, "contacts": contacts, "events": entries, "truncated": truncated}


def _history(services: Services, tenant_id: UUID, aggregate_id: UUID, kind: type, name: str) -> list[Any]:
    """The events of one of the tenant's aggregates of type ``kind``. Raises NotFound (also for another
    tenant's)."""
    store = services.container.store
    if get_owned(store, aggregate_id, kind, tenant_id) is None:
        raise NotFound(f"{name} not found", code=f"{name}_not_found")
    return list(store.events.get(aggregate_id))
