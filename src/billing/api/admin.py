"""The admin API (JWT bearer; the tenant is the token's ``sub``): API keys, templates, campaigns, stats,
sending configuration and the audit history of a contact."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.datastructures import CacheControlHeader
from litestar.di import Provide
from litestar.openapi.spec import Example
from litestar.params import Parameter

from billing.api.auth import Admin
from billing.api.deps import Services, provide_services, run_sync
from billing.api.docs import BODY_ERRORS, VALIDATION_CODES, errors
from billing.api.public import BASE
from billing.api.schemas import (
    MAX_EXTERNAL_ID,
    MAX_VALUE_LENGTH,
    ApiKeyCreate,
    ApiKeyIssued,
    ApiKeyItem,
    CampaignItem,
    ConfigDoc,
    ConfigPatch,
    ContactHistory,
    InvoiceHistory,
    PhoneHistory,
    PreviewDoc,
    PreviewRequest,
    StatsDoc,
    TemplateCreate,
    TemplateDoc,
    TemplateHistory,
    TemplatePatch,
    as_struct,
    event_doc,
    policy_changes,
)
from billing.domain.apikey import api_key_id
from billing.domain.calendar import PolicyError
from billing.domain.contact import Contact
from billing.domain.errors import DomainError, InvalidValue, NotFound
from billing.domain.ingestion import MAX_FIELD_NAME_LENGTH, MAX_FIELDS, branch_missing_variables
from billing.domain.phone import normalize_phone
from billing.domain.sanitize import sanitize_text
from billing.domain.template import (
    MAX_DESCRIPTION_LENGTH,
    MAX_NAME_LENGTH,
    MAX_TEMPLATE_LENGTH,
    MAX_VARIATIONS,
    MessageTemplate,
)
from billing.domain.templating import parse_template
from billing.domain.tenant import Tenant
from billing.services.history import MAX_ENTRIES, HistoryFilter, aggregate_history, to_csv
from billing.services.queries import MAX_PAGE
from billing.services.tenants import hash_api_key

Req = Request[Admin, Any, Any]
ESCAPED_CHAR_BYTES = 12
"""Most bytes one character can take in JSON text (an astral character as two ``\\uXXXX`` escapes)."""
SMALL_BODY = 4 * 1024
"""Body limit of ``POST /api-keys/`` (a name of 100 characters fully escaped, with room)."""
TEMPLATE_BODY = (
    MAX_VARIATIONS * MAX_TEMPLATE_LENGTH + MAX_NAME_LENGTH + MAX_DESCRIPTION_LENGTH
) * ESCAPED_CHAR_BYTES + 4096
"""Body limit of a template (bytes): every variation, name and description at their limits, escaped."""
PREVIEW_BODY = MAX_FIELDS * (MAX_FIELD_NAME_LENGTH + MAX_VALUE_LENGTH) * ESCAPED_CHAR_BYTES + 4096
"""Body limit of a preview: a contact's largest set of fields, escaped."""
CONFIG_BODY = 64 * 1024
"""Body limit of ``PATCH /config/``: 16 day keys × 8 windows, 366 extra dates, gateway strings (< 20 KB)."""

TEMPLATE_CODES = (*VALIDATION_CODES, "template_error", "invalid_variations", "invalid_template_type")
POLICY_CODES = (*VALIDATION_CODES, "invalid_policy", "invalid_gateway")
TEMPLATE_EXAMPLE = {
    "name": "Cobrança",
    "template_type": "overdue",
    "variations": ["Olá {{nome_cliente}}, a fatura de {{valor}} venceu em {{data_vencimento}}."],
    "description": "lembrete de fatura vencida",
}


def _template_doc(template: Any, *, default: bool = False) -> TemplateDoc:
    return TemplateDoc(
        template_id=template.id,
        name=template.name,
        template_type=template.template_type,
        description=template.description,
        variations=list(template.variations),
        active=template.active,
        version=template.version,
        default=default,
    )


def _config_doc(tenant: Tenant) -> ConfigDoc:
    gateway = dict(tenant.gateway)
    gateway["api_key"] = "***"
    return ConfigDoc(tenant_id=tenant.id, name=tenant.name, policy=dict(tenant.policy), gateway=gateway)


def _ops(**codes: tuple[str, ...]) -> dict[int, Any]:
    """Error answers of an admin operation: 401/429 always, plus ``codes`` keyed ``s404`` etc."""
    return errors(
        {401: ("unauthorized",), 429: ("rate_limited",), **{int(k[1:]): v for k, v in codes.items()}}
    )


def _body_ops(codes_422: tuple[str, ...], **codes: tuple[str, ...]) -> dict[int, Any]:
    """Error answers of an admin operation that takes a JSON body."""
    return errors(
        {401: ("unauthorized",), 429: ("rate_limited",), **BODY_ERRORS, 422: codes_422}
        | {int(k[1:]): v for k, v in codes.items()}
    )


class AdminController(Controller):
    """Tenant administration."""

    path = BASE
    tags = ["admin"]
    security = [{"BearerToken": []}]
    dependencies = {"services": Provide(provide_services)}

    @get("/api-keys/", responses=_ops())
    async def list_api_keys(self, request: Req, services: Services) -> list[ApiKeyItem]:
        """The tenant's API keys (never their text)."""
        rows = await run_sync(services.queries.list_api_keys, request.user.tenant_id)
        result: list[ApiKeyItem] = as_struct(rows, list[ApiKeyItem])
        return result

    @post(
        "/api-keys/",
        cache_control=CacheControlHeader(no_store=True),
        request_max_body_size=SMALL_BODY,
        responses=_body_ops((*VALIDATION_CODES, "invalid_name")),
    )
    async def create_api_key(
        self,
        request: Req,
        data: Annotated[ApiKeyCreate, Parameter(examples=[Example(summary="a key", value={"name": "erp"})])],
        services: Services,
    ) -> ApiKeyIssued:
        """Issue a key; its text is in this answer only (``Cache-Control: no-store``: no cache keeps it)."""
        name = data.name.strip()
        if not name:
            raise InvalidValue(
                f"name must have 1 to {MAX_NAME_LENGTH} characters", code="invalid_name", field="name"
            )
        key = await run_sync(services.tenants.issue_api_key, request.user.tenant_id, name)
        key_id = api_key_id(hash_api_key(key))
        return ApiKeyIssued(key_id=key_id, name=name, prefix=key[:8], api_key=key)

    @delete(
        "/api-keys/{key_id:str}/",
        status_code=204,
        responses=_ops(s404=("api_key_not_found",), s422=("invalid_request",)),
    )
    async def revoke_api_key(self, request: Req, key_id: UUID, services: Services) -> None:
        """Revoke a key (404 for another tenant's)."""
        await run_sync(services.tenants.revoke_api_key, request.user.tenant_id, key_id)

    @get("/templates/", responses=_ops())
    async def list_templates(self, request: Req, services: Services) -> list[TemplateDoc]:
        """The tenant's templates."""
        rows = await run_sync(services.queries.list_templates, request.user.tenant_id)
        result: list[TemplateDoc] = as_struct(rows, list[TemplateDoc])
        return result

    @post("/templates/", request_max_body_size=TEMPLATE_BODY, responses=_body_ops(TEMPLATE_CODES))
    async def create_template(
        self,
        request: Req,
        data: Annotated[
            TemplateCreate, Parameter(examples=[Example(summary="a template", value=TEMPLATE_EXAMPLE)])
        ],
        services: Services,
    ) -> TemplateDoc:
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

    @patch(
        "/templates/{template_id:str}/",
        request_max_body_size=TEMPLATE_BODY,
        responses=_body_ops(TEMPLATE_CODES, s404=("template_not_found",)),
    )
    async def change_template(
        self,
        request: Req,
        template_id: UUID,
        data: Annotated[
            TemplatePatch, Parameter(examples=[Example(summary="deactivate", value={"active": False})])
        ],
        services: Services,
    ) -> TemplateDoc:
        """Change a template; every change is an event."""
        changes = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not None}
        template = await run_sync(services.templates.change, request.user.tenant_id, template_id, **changes)
        return _template_doc(template, default=await _is_default(services, template))

    @delete(
        "/templates/{template_id:str}/",
        status_code=200,
        responses=_ops(s404=("template_not_found",), s422=("invalid_request",)),
    )
    async def deactivate_template(self, request: Req, template_id: UUID, services: Services) -> TemplateDoc:
        """Deactivate a template; its history stays."""
        template = await run_sync(services.templates.deactivate, request.user.tenant_id, template_id)
        return _template_doc(template, default=False)

    @post(
        "/templates/{template_id:str}/default",
        status_code=200,
        responses=_ops(
            s404=("template_not_found",), s422=("template_inactive", "template_not_found", "invalid_request")
        ),
    )
    async def make_default_template(self, request: Req, template_id: UUID, services: Services) -> TemplateDoc:
        """Make the template its type's default (the one sends without ``template_id`` use); 422
        ``template_inactive`` for an inactive one, 404 for another tenant's."""
        template = await run_sync(services.templates.make_default, request.user.tenant_id, template_id)
        return _template_doc(template, default=True)

    @post(
        "/templates/{template_id:str}/preview",
        status_code=200,
        request_max_body_size=PREVIEW_BODY,
        responses=_body_ops(
            (*VALIDATION_CODES, "invalid_amount", "ambiguous_amount", "invalid_date"),
            s404=("template_not_found",),
        ),
    )
    async def preview_template(
        self,
        request: Req,
        template_id: UUID,
        data: Annotated[
            PreviewRequest,
            Parameter(
                examples=[
                    Example(
                        summary="a sample contact",
                        value={
                            "variables": {"nome": "Maria", "valor": "150", "data_vencimento": "2025-01-15"}
                        },
                    )
                ]
            ),
        ],
        services: Services,
    ) -> PreviewDoc:
        """Render every variation of the template for sample variables, as if sent now; for each
        variation, ``missing_variables`` names what the sample lacks (ingestion would reject such a
        contact with ``missing_variable``), branches included."""
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
        missing = [branch_missing_variables([parse_template(text)], fields) for text in template.variations]
        return PreviewDoc(
            template_id=template_id, version=template.version, previews=texts, missing_variables=missing
        )

    @get("/campaigns/", responses=_ops(s422=("out_of_range", "invalid_request")))
    async def list_campaigns(
        self,
        request: Req,
        services: Services,
        limit: Annotated[
            int, Parameter(ge=1, le=MAX_PAGE, description="at most this many, newest first")
        ] = 50,
    ) -> list[CampaignItem]:
        """The tenant's latest campaigns with their queue status."""
        rows = await run_sync(services.queries.list_campaigns, request.user.tenant_id, limit=limit)
        result: list[CampaignItem] = as_struct(rows, list[CampaignItem])
        return result

    @get("/stats/", responses=_ops())
    async def stats(self, request: Req, services: Services) -> StatsDoc:
        """Per-status contact counts."""
        result: StatsDoc = as_struct(await run_sync(services.queries.stats, request.user.tenant_id), StatsDoc)
        return result

    @get("/config/", responses=_ops())
    async def get_config(self, request: Req, services: Services) -> ConfigDoc:
        """The sending policy and gateway settings (the gateway key masked)."""
        tenant = await run_sync(services.tenants.get_tenant, request.user.tenant_id)
        return _config_doc(tenant)

    @patch("/config/", request_max_body_size=CONFIG_BODY, responses=_body_ops(POLICY_CODES))
    async def change_config(
        self,
        request: Req,
        data: Annotated[
            ConfigPatch,
            Parameter(
                examples=[
                    Example(
                        summary="throttle and countries",
                        value={"policy": {"messages_per_minute": 10, "allowed_countries": ["BR", "PT"]}},
                    )
                ]
            ),
        ],
        services: Services,
    ) -> ConfigDoc:
        """Change the policy (422 naming the field when invalid) and/or the gateway."""
        tenant_id = request.user.tenant_id
        if data.policy is None and data.gateway is None:
            raise InvalidValue("nothing to change: give policy and/or gateway", code="invalid_request")
        try:
            tenant = await run_sync(  # a paused queue is re-evaluated at once, not at its old resume_at
                services.config.change,
                tenant_id,
                policy=policy_changes(data.policy) if data.policy is not None else None,
                gateway=msgspec.to_builtins(data.gateway) if data.gateway is not None else None,
            )
        except PolicyError as exc:  # the policy's fields are under "policy" in the body
            exc.field = f"policy.{exc.field}" if exc.field else "policy"
            raise
        return _config_doc(tenant)

    @get(
        "/history/contact/{contact_id:str}",
        responses=_ops(s404=("contact_not_found",), s422=("invalid_request",)),
    )
    async def contact_history(
        self, request: Req, contact_id: UUID, services: Services, format: HistoryFormat = "json"
    ) -> ContactHistory | Response[str]:
        """Every event of one contact, oldest first: what was sent, when, with which template version
        and the rule that allowed each attempt (``allowed_by`` of its claim). ``?format=csv`` for the
        history projection's entries as CSV."""
        tenant_id = request.user.tenant_id
        if format == "csv":
            what = HistoryFilter(tenant_id, contact_id=contact_id)
            _, entries, _ = await _history_entries(services, what, "contact")
            return _csv(entries, "contact")
        events = await run_sync(
            aggregate_history, services.container.store, tenant_id, contact_id, Contact, "contact"
        )
        return ContactHistory(contact_id=contact_id, events=[event_doc(e) for e in events])

    @get(
        "/history/invoice/{ref:str}",
        responses=_ops(s404=("invoice_not_found",), s422=("invalid_request",)),
    )
    async def invoice_history(
        self, request: Req, ref: str, services: Services, format: HistoryFormat = "json"
    ) -> InvoiceHistory | Response[str]:
        """Every event of every contact about invoice ``ref`` (a contact's own ``external_id``, else its
        batch's), across campaigns, in time order, each attempt with the rule that allowed it; the
        contacts themselves under ``contacts``. ``?format=csv`` for the evidence as CSV. 404 when the
        tenant has no contact about that invoice."""
        ref = ref.strip()
        if not ref or len(ref) > MAX_EXTERNAL_ID:
            raise InvalidValue(
                f"the invoice reference must have 1 to {MAX_EXTERNAL_ID} characters",
                code="invalid_request",
                field="ref",
            )
        what = HistoryFilter(request.user.tenant_id, invoice=ref)
        contacts, entries, truncated = await _history_entries(services, what, "invoice")
        if format == "csv":
            return _csv(entries, "invoice")
        doc = {"invoice": ref, "contacts": contacts, "events": entries, "truncated": truncated}
        answer: InvoiceHistory = as_struct(doc, InvoiceHistory)
        return answer

    @get(
        "/history/phone/{e164:str}",
        responses=_ops(s404=("phone_not_found",), s422=("invalid_phone", "invalid_request")),
    )
    async def phone_history(
        self, request: Req, e164: str, services: Services, format: HistoryFormat = "json"
    ) -> PhoneHistory | Response[str]:
        """Every event of every contact sent to one phone (E.164, or any Brazilian way of writing it),
        across campaigns, in time order, and the conversation with it (``conversation``: replies, the
        opt-out with the message that caused it, lifts). 404 when the tenant never had a contact with
        that phone nor a message from it."""
        try:
            phone = normalize_phone(e164, field="e164").e164
        except InvalidValue as exc:
            exc.field = "e164"
            raise
        tenant_id = request.user.tenant_id
        conversation = await run_sync(services.engagement.conversation_events, tenant_id, phone)
        what = HistoryFilter(tenant_id, phone=phone)
        contacts, entries, truncated = await _history_entries(
            services, what, "phone", found=bool(conversation)
        )
        if format == "csv":
            return _csv(entries, "phone")
        found: PhoneHistory = as_struct(
            {
                "phone": phone,
                "contacts": contacts,
                "events": entries,
                "truncated": truncated,
                "conversation": [msgspec.to_builtins(event_doc(e)) for e in conversation],
            },
            PhoneHistory,
        )
        return found

    @get(
        "/history/template/{template_id:str}",
        responses=_ops(s404=("template_not_found",), s422=("invalid_request",)),
    )
    async def template_history(self, request: Req, template_id: UUID, services: Services) -> TemplateHistory:
        """Every version of one template, oldest first: what it said from which instant (``at``) on."""
        events = await run_sync(
            aggregate_history,
            services.container.store,
            request.user.tenant_id,
            template_id,
            MessageTemplate,
            "template",
        )
        return TemplateHistory(template_id=template_id, events=[event_doc(e) for e in events])


async def _is_default(services: Services, template: Any) -> bool:
    tenant = await run_sync(services.tenants.get_tenant, template.tenant_id)
    return bool(tenant.default_template(template.template_type) == template.id)


HistoryFormat = Literal["json", "csv"]
HISTORY_PATH_PARAMETERS = {"contact": "contact_id", "invoice": "ref", "phone": "e164"}
"""The path parameter of each history route, the ``field`` of its ``<kind>_not_found``."""


async def _history_entries(
    services: Services, what: HistoryFilter, kind: str, *, found: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
    """``(contacts, entries, truncated)`` of ``what`` (at most MAX_ENTRIES entries). Raises NotFound
    ``<kind>_not_found`` (``field``: the route's path parameter) when no contact matches, unless
    ``found`` (something else was found)."""
    contacts = await run_sync(services.history.contacts, what)
    if not contacts and not found:
        raise NotFound(
            f"no contact of this tenant matches this {kind}",
            code=f"{kind}_not_found",
            field=HISTORY_PATH_PARAMETERS[kind],
        )
    entries = await run_sync(services.history.entries, what, limit=MAX_ENTRIES + 1)
    return contacts, entries[:MAX_ENTRIES], len(entries) > MAX_ENTRIES


def _csv(entries: list[dict[str, Any]], kind: str) -> Response[str]:
    """The entries as a CSV attachment (columns: ``billing.services.history.CSV_COLUMNS``); litestar
    adds ``charset=utf-8`` to a ``text/`` media type itself."""
    return Response(
        to_csv(entries),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="history-{kind}.csv"'},
    )
