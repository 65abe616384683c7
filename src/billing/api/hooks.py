"""After the send, over HTTP: the gateway's webhook endpoint (per tenant, secret header), manual pause and
resume of a queue, and the admin's opt-outs, settings, gateway-webhook setup and ERP endpoints."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import httpx
import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.di import Provide
from litestar.openapi.spec import Example
from litestar.params import Parameter
from litestar.security.jwt import Token

from billing.api.auth import ALGORITHM, API_KEY_HEADER, Admin
from billing.api.body import BODY_FIELD
from billing.api.deps import Services, provide_services, run_sync
from billing.api.docs import BODY_ERRORS, errors
from billing.api.errors import Unauthorized
from billing.api.public import BASE
from billing.domain.errors import InvalidValue
from billing.domain.gateway_events import parse_webhook
from billing.gateway.client import set_webhook
from billing.hooks.inbox import inbox_counts, store_batch

__all__ = [
    "GATEWAY_SECRET_HEADER",
    "GatewayWebhookController",
    "HooksAdminController",
    "QueueControlController",
]

GATEWAY_SECRET_HEADER = "X-Billing-Webhook-Secret"  # noqa: S105 (a header name)
GATEWAY_EVENTS = ("MESSAGES_UPDATE", "MESSAGES_UPSERT", "CONNECTION_UPDATE")
Req = Request[Admin, Any, Any]


WEBHOOK_MAX_BODY = 4 * 1024 * 1024
"""Body limit (bytes) of a gateway webhook call: a batch of receipts or a reply with media metadata."""

HOOK_ERRORS = errors(
    {
        **BODY_ERRORS,
        401: ("unauthorized",),
        404: ("not_found", "queue_not_found", "endpoint_not_found", "opt_out_not_found"),
        409: ("conflict",),
        422: ("invalid_request", "invalid_value", "invalid_phone", "unknown_field", "nul_character"),
        429: ("rate_limited",),
        502: ("gateway_error",),
    }
)
"""Error answers of the gateway webhook, queue control and engagement operations (one list for all)."""


class GatewayWebhookController(Controller):
    """``POST /gateway/events/{tenant_id}`` (and ``…/{event}`` for gateways set to one URL per event).

    Authenticated by the tenant's secret in header ``X-Billing-Webhook-Secret`` (the instance is
    configured to send it: ``POST /gateway-webhook/``); a wrong or missing secret answers 401, which the
    gateway does not retry. The body is stored (idempotently) and applied by ``billing hooks``;
    ``connection.update`` pauses or resumes the tenant's queues at once.
    """

    path = f"{BASE}/gateway/events"
    tags = ["gateway"]
    dependencies = {"services": Provide(provide_services)}

    async def _receive(
        self, request: Request[Any, Any, Any], tenant_id: UUID, services: Services, event: str | None
    ) -> dict[str, Any]:
        secret = request.headers.get(GATEWAY_SECRET_HEADER)
        if not await run_sync(services.engagement.gateway_authorised, tenant_id, secret):
            raise Unauthorized(
                f"missing or wrong {GATEWAY_SECRET_HEADER} header", field=GATEWAY_SECRET_HEADER
            )
        try:
            body = msgspec.json.decode(await request.body())
            batch = parse_webhook(body, event_hint=event)
        except msgspec.DecodeError as exc:
            raise InvalidValue(
                f"body is not valid JSON: {exc}", code="invalid_json", field=BODY_FIELD
            ) from None
        except ValueError as exc:
            raise InvalidValue(str(exc), code="invalid_request", field=BODY_FIELD) from None
        now = services.container.clock.now()
        new = await run_sync(store_batch, services.container.pool, tenant_id, batch, at=now)
        changed = 0
        if batch.connection is not None:
            changed = await run_sync(
                services.engagement.connection_changed, tenant_id, batch.connection.state
            )
        return {
            "event": batch.event,
            "received": len(batch.receipts) + len(batch.messages),
            "new": new,
            "ignored": batch.ignored,
            "queues_changed": changed,
        }

    @post(
        "/{tenant_id:str}",
        status_code=200,
        summary="Webhook of the tenant's Evolution API instance",
        request_max_body_size=WEBHOOK_MAX_BODY,
        responses=HOOK_ERRORS,
    )
    async def receive(
        self, request: Request[Any, Any, Any], tenant_id: UUID, services: Services
    ) -> dict[str, Any]:
        """Receipts (``messages.update``), replies (``messages.upsert``), ``connection.update``."""
        return await self._receive(request, tenant_id, services, None)

    @post(
        "/{tenant_id:str}/{event:str}",
        status_code=200,
        summary="Webhook, one URL per event",
        request_max_body_size=WEBHOOK_MAX_BODY,
        responses=HOOK_ERRORS,
    )
    async def receive_event(
        self, request: Request[Any, Any, Any], tenant_id: UUID, event: str, services: Services
    ) -> dict[str, Any]:
        """As the other route; the event may be named by the URL (``…/messages-update``)."""
        return await self._receive(request, tenant_id, services, event)


async def provide_queue_owner(request: Request[Any, Any, Any], services: Services) -> UUID:
    """The tenant of an ``X-Billing-API-Key`` (the ERP) or of an admin's ``Authorization: Bearer`` token
    (a dependency of ``services``, so litestar resolves the two in turn, without a task group: see
    :func:`billing.api.deps.provide_tenant_id`)."""
    key = request.headers.get(API_KEY_HEADER)
    if key:
        tenant_id = await run_sync(services.tenants.authenticate, key)
        if tenant_id is None:
            raise Unauthorized("unknown or revoked API key", field=API_KEY_HEADER)
        return tenant_id
    scheme, _, encoded = (request.headers.get("Authorization") or "").partition(" ")
    if scheme == "Bearer" and encoded:
        try:
            token = Token.decode(encoded, services.container.settings.require_jwt_secret(), ALGORITHM)
            return UUID(token.sub)
        except Exception:
            raise Unauthorized("invalid admin token", field="Authorization") from None
    raise Unauthorized(f"missing {API_KEY_HEADER} header or admin token", field=API_KEY_HEADER)


class QueueControlController(Controller):
    """Pause and resume a queue by hand (API key or admin token)."""

    path = BASE
    tags = ["public"]
    dependencies = {"services": Provide(provide_services), "tenant_id": Provide(provide_queue_owner)}

    @post(
        "/queue/{queue_id:str}/pause",
        status_code=200,
        summary="Pause a queue until resumed by hand",
        responses=HOOK_ERRORS,
    )
    async def pause(self, queue_id: UUID, services: Services, tenant_id: UUID) -> dict[str, Any]:
        """Pause (``paused_reason: paused_by_admin``); 409 when the queue was cancelled."""
        queue = await run_sync(services.engagement.pause_by_admin, tenant_id, queue_id)
        return {"queue_id": str(queue.id), "paused_reason": queue.paused_reason}

    @post(
        "/queue/{queue_id:str}/resume",
        status_code=200,
        summary="Resume a paused queue now",
        responses=HOOK_ERRORS,
    )
    async def resume(self, queue_id: UUID, services: Services, tenant_id: UUID) -> dict[str, Any]:
        """Lift any pause; the worker checks business hours, gateway and throttle again before sending."""
        queue = await run_sync(services.engagement.resume_by_admin, tenant_id, queue_id)
        return {"queue_id": str(queue.id), "paused_reason": queue.paused_reason}


class SettingsPatch(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``PATCH /engagement/``: absent fields stay."""

    stop_words: list[str] | None = None
    confirmation_text: str | None = None
    daily_cap: int | None = None
    cap_notices: bool | None = None


class WebhookSetup(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /gateway-webhook/``: the API's public base URL (default ``BILLING_PUBLIC_URL``)."""

    public_url: str | None = None


class EndpointCreate(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /webhooks/``: ``events`` empty = every type."""

    url: str
    events: list[str] = []


class LiftRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /opt-outs/{phone}/lift``."""

    reason: str = "debtor asked"


class HooksAdminController(Controller):
    """Admin: settings, gateway webhook, opt-outs, ERP endpoints and their deliveries."""

    path = BASE
    tags = ["admin"]
    dependencies = {"services": Provide(provide_services)}

    @get("/engagement/", responses=HOOK_ERRORS)
    async def get_settings(self, request: Req, services: Services) -> dict[str, Any]:
        """Stop words, confirmation text, per-debtor cap."""
        return await run_sync(services.engagement.settings_document, request.user.tenant_id)

    @patch("/engagement/", responses=HOOK_ERRORS)
    async def change_settings(
        self,
        request: Req,
        data: Annotated[
            SettingsPatch,
            Parameter(examples=[Example(summary="stop words", value={"stop_words": ["parar", "sair"]})]),
        ],
        services: Services,
    ) -> dict[str, Any]:
        """Change them (422 naming the field)."""
        changes = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not None}
        return await run_sync(services.engagement.change_settings, request.user.tenant_id, changes)

    @post("/gateway-webhook/", status_code=200, responses=HOOK_ERRORS)
    async def setup_gateway_webhook(
        self,
        request: Req,
        data: Annotated[
            WebhookSetup,
            Parameter(
                examples=[Example(summary="public URL", value={"public_url": "https://billing.example.com"})]
            ),
        ],
        services: Services,
    ) -> dict[str, Any]:
        """New secret, then ``POST /webhook/set/{instance}`` on the tenant's gateway with our URL and the
        secret header. Answers the URL and the secret (shown once) and the gateway's status."""
        tenant_id = request.user.tenant_id
        base = (data.public_url or services.container.settings.public_url).rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise InvalidValue(
                "public_url must be the API's public http(s) base URL",
                code="invalid_request",
                field="public_url",
            )
        tenant = await run_sync(services.tenants.get_tenant, tenant_id)
        secret = await run_sync(services.engagement.new_gateway_secret, tenant_id)
        url = f"{base}{BASE}/gateway/events/{tenant_id}"
        status: int | None = None
        try:
            answered = await set_webhook(
                services.container.gateways()(tenant.gateway),
                url,
                headers={GATEWAY_SECRET_HEADER: secret},
                events=GATEWAY_EVENTS,
            )
        except (httpx.HTTPError, TimeoutError) as exc:
            error: str | None = type(exc).__name__
        else:
            status = answered
            error = None if 200 <= answered < 300 else f"gateway answered {answered}"
        return {
            "url": url,
            "header": GATEWAY_SECRET_HEADER,
            "secret": secret,
            "gateway_status": status,
            "error": error,
        }

    @get("/gateway-webhook/", responses=HOOK_ERRORS)
    async def gateway_webhook_counts(self, request: Req, services: Services) -> dict[str, Any]:
        """Webhook items applied, waiting for their send to be recorded, and unmatched (> 1 h, counted)."""
        counts = await run_sync(
            inbox_counts, services.container.pool, request.user.tenant_id, now=services.container.clock.now()
        )
        return {"applied": counts.applied, "waiting": counts.waiting, "unmatched": counts.unmatched}

    @get("/opt-outs/", responses=HOOK_ERRORS)
    async def list_opt_outs(
        self, request: Req, services: Services, include_lifted: bool = False
    ) -> list[dict[str, Any]]:
        """Opted-out phones with when and which reply caused it."""
        return await run_sync(
            services.engagement.list_opt_outs, request.user.tenant_id, include_lifted=include_lifted
        )

    @post("/opt-outs/{phone:str}/lift", status_code=200, responses=HOOK_ERRORS)
    async def lift_opt_out(
        self,
        request: Req,
        phone: str,
        data: Annotated[
            LiftRequest, Parameter(examples=[Example(summary="lift", value={"reason": "debtor asked"})])
        ],
        services: Services,
    ) -> dict[str, Any]:
        """Lift a phone's opt-out (the debtor asked); 404 unknown, 409 not opted out."""
        await run_sync(
            services.engagement.lift_opt_out,
            request.user.tenant_id,
            phone,
            by=f"admin:{request.user.tenant_id}",
            reason=data.reason,
        )
        return {"phone": phone, "opted_out": False}

    @get("/webhooks/", responses=HOOK_ERRORS)
    async def list_endpoints(self, request: Req, services: Services) -> list[dict[str, Any]]:
        """The ERP endpoints (without secrets)."""
        return await run_sync(services.engagement.list_endpoints, request.user.tenant_id)

    @post("/webhooks/", status_code=201, responses=HOOK_ERRORS)
    async def add_endpoint(
        self,
        request: Req,
        data: Annotated[
            EndpointCreate,
            Parameter(
                examples=[
                    Example(
                        summary="an ERP endpoint",
                        value={"url": "https://erp.example.com/hooks", "events": ["contact.sent"]},
                    )
                ]
            ),
        ],
        services: Services,
    ) -> Response[dict[str, Any]]:
        """Add an endpoint; the signing secret is in this answer only (422 ``unsafe_url`` for private or
        metadata addresses unless the operator allows private ones)."""
        doc = await run_sync(services.engagement.add_endpoint, request.user.tenant_id, data.url, data.events)
        return Response(doc, status_code=201, headers={"Cache-Control": "no-store"})

    @delete("/webhooks/{endpoint_id:str}/", status_code=204, responses=HOOK_ERRORS)
    async def remove_endpoint(self, request: Req, endpoint_id: str, services: Services) -> None:
        """Remove an endpoint."""
        await run_sync(services.engagement.remove_endpoint, request.user.tenant_id, endpoint_id)

    @get("/webhooks/deliveries", responses=HOOK_ERRORS)
    async def deliveries(self, request: Req, services: Services, limit: int = 100) -> list[dict[str, Any]]:
        """The latest deliveries with each attempt (status code, error, duration)."""
        return await run_sync(services.engagement.deliveries, request.user.tenant_id, limit=limit)
