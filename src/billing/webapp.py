"""The web application: one litestar app that mounts the JSON API (public, admin, health; OpenAPI at
``/schema``) and the dashboard (``/dashboard``) over the same :class:`~billing.api.deps.Services`.

The API does not import the dashboard; the dashboard uses only the API's dependencies and schemas
(:mod:`billing.api.deps`, :mod:`billing.api.schemas`)."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Litestar, get
from litestar.datastructures import MutableScopeHeaders
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.response import Redirect
from litestar.types import Message, Scope

from billing.api.admin import AdminController
from billing.api.auth import jwt_auth
from billing.api.body import BillingRequest, read_body
from billing.api.deps import Services, flush_key_usage_every, tenant_of_key
from billing.api.docs import assets_router, finish, swagger_plugin
from billing.api.errors import EXCEPTION_HANDLERS
from billing.api.health import health_detail, live, ready
from billing.api.hooks import GatewayWebhookController, HooksAdminController, QueueControlController
from billing.api.http_metrics import PROMETHEUS, MetricsController
from billing.api.public import PublicController
from billing.api.ratelimit import build_rate_limit
from billing.bootstrap import Container
from billing.dashboard.app import dashboard_middleware, dashboard_routers, template_config
from billing.services.usage import FLUSH_EVERY_S


async def _security_headers(message: Message, scope: Scope) -> None:
    """Every answer: ``X-Content-Type-Options: nosniff`` (litestar ``before_send`` hook; errors included)."""
    if message["type"] == "http.response.start":
        headers = MutableScopeHeaders.from_message(message)
        headers["X-Content-Type-Options"] = "nosniff"


FAVICON = "/dashboard/static/favicon.svg"


@get("/favicon.ico", include_in_schema=False, sync_to_thread=False)
def favicon() -> Redirect:
    """``GET /favicon.ico`` (what a browser asks for on any page without an icon link, e.g. the JSON API
    or ``/schema``): a permanent redirect to the dashboard's SVG icon."""
    return Redirect(FAVICON, status_code=301)


DEFAULT_MAX_BODY = 1024
"""Body limit (bytes) of the endpoints that take no body; those that take one set their own."""


def create_app(container: Container) -> Litestar:
    """Build the API over ``container`` (needs ``settings.jwt_secret`` for the admin API)."""
    services = Services.build(container)
    settings = container.settings
    secret = settings.require_jwt_secret()
    auth = jwt_auth(secret)
    secure = settings.public_url.startswith("https://")

    async def tenant_of(key: str) -> Any:
        return await tenant_of_key(services, key)  # the key check's own path: memory, else one read

    background: list[tuple[asyncio.Event, asyncio.Task[None]]] = []  # made on the app's own loop

    async def open_pools() -> None:
        await services.status.pool.open(wait=True, timeout=30)
        stopping = asyncio.Event()
        flusher = flush_key_usage_every(services.key_usage, FLUSH_EVERY_S, stopping)
        background.append((stopping, asyncio.create_task(flusher)))

    async def close_pools() -> None:
        for stopping, _ in background:
            stopping.set()  # the flusher writes the uses noted since its last flush, then returns
        await asyncio.gather(*(task for _, task in background), return_exceptions=True)
        background.clear()
        await services.status.pool.close()

    rate_limit, stores = build_rate_limit(
        default_limit=settings.rate_limit_per_minute,
        overrides=settings.rate_limit_overrides(),
        redis_url=settings.redis_url,
        tenant_of=tenant_of,
    )
    app = Litestar(
        route_handlers=[
            PublicController,
            AdminController,
            GatewayWebhookController,
            QueueControlController,
            HooksAdminController,
            live,
            ready,
            health_detail,
            MetricsController,
            favicon,
            assets_router(),
            *dashboard_routers(secret, secure_cookies=secure),
        ],
        template_config=template_config(),
        before_send=[_security_headers],
        middleware=[
            PROMETHEUS.middleware,
            rate_limit.middleware,
            *dashboard_middleware(secret, secure_cookies=secure),
        ],
        stores=stores,
        exception_handlers=EXCEPTION_HANDLERS,
        request_class=BillingRequest,
        before_request=read_body,
        request_max_body_size=DEFAULT_MAX_BODY,
        on_app_init=[auth.on_app_init],
        openapi_config=OpenAPIConfig(
            title="billing",
            version="1.0.0",
            path="/schema",
            description="WhatsApp billing reminders. Public endpoints: header X-Billing-API-Key; "
            "admin endpoints: `Authorization: Bearer <JWT>`. Errors are `{code, message, field}`.",
            components=Components(
                security_schemes={
                    "ApiKey": SecurityScheme(
                        type="apiKey",
                        name="X-Billing-API-Key",
                        security_scheme_in="header",
                        description="The tenant's API key (billing api-key create).",
                    ),
                    "BearerToken": SecurityScheme(
                        type="http",
                        scheme="bearer",
                        bearer_format="JWT",
                        description="HS256 admin token; the tenant is its sub.",
                    ),
                }
            ),
            render_plugins=[swagger_plugin()],
        ),
        state=_state(services),
        on_startup=[open_pools],
        on_shutdown=[close_pools],
        debug=False,
        logging_config=None,
    )
    finish(app.openapi_schema)
    return app


def _state(services: Services) -> Any:
    from litestar.datastructures import State

    return State({"services": services})
