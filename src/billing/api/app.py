"""The litestar application: public API, admin API, health, OpenAPI (served at ``/schema``)."""

from __future__ import annotations

import hmac
from typing import Any

from litestar import Litestar, Response, get
from litestar.datastructures import MutableScopeHeaders
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
from litestar.types import Message, Scope

from billing.api.admin import AdminController
from billing.api.auth import bearer_token, jwt_auth
from billing.api.body import BillingRequest, read_body
from billing.api.deps import Services, run_sync
from billing.api.docs import assets_router, errors, finish, swagger_plugin
from billing.api.errors import EXCEPTION_HANDLERS, Unauthorized
from billing.api.hooks import GatewayWebhookController, HooksAdminController, QueueControlController
from billing.api.public import PublicController
from billing.api.ratelimit import build_rate_limit
from billing.bootstrap import Container
from billing.dashboard.app import dashboard_middleware, dashboard_routers, template_config
from billing.projections.tracking import load_position
from billing.projections.views import PROJECTION

READY_ERROR_WINDOW_S = 300
"""Readiness is refused while ``projection_errors`` grows: a row recorded within this many seconds (the
database's clock) makes ``/health/ready`` answer 503; see docs/architecture.md, "Health"."""


PROMETHEUS = PrometheusConfig(
    app_name="billing",
    prefix="billing_http",
    group_path=True,
    exclude_unhandled_paths=True,
    exclude="^/metrics",
)
"""HTTP metrics of litestar's Prometheus plugin: requests, durations and in-progress by method, route
template (``group_path``: bounded, no ids) and status; unmatched paths are not counted (see
:mod:`billing.metrics`)."""


class MetricsController(PrometheusController):
    """``GET /metrics``: this process's Prometheus metrics (text format)."""

    path = "/metrics"
    include_in_schema = False


@get("/health/live", tags=["health"], sync_to_thread=False)
def live() -> dict[str, str]:
    """The process runs: ``{"status": "ok"}``."""
    return {"status": "ok"}


def _health(services: Services) -> dict[str, Any]:
    """The detail of readiness (raises when PostgreSQL or a table is unreachable)."""
    container = services.container
    projected = load_position(container.pool, PROJECTION)
    with container.pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) AS total,"
            " count(*) FILTER (WHERE recorded_at > now() - make_interval(secs => %s)) AS recent"
            " FROM projection_errors",
            (READY_ERROR_WINDOW_S,),
        ).fetchone()
    head = container.store.recorder.max_notification_id() or 0
    total, recent = (int(row["total"]), int(row["recent"])) if row else (0, 0)
    return {
        "status": "unavailable" if recent else "ok",
        "database": "ok",
        "events": head,
        "projection_lag": max(0, head - projected),
        "projection_errors": total,
        "projection_errors_recent": recent,
        "projection_errors_window_s": READY_ERROR_WINDOW_S,
    }


async def _health_or_error(services: Services) -> dict[str, Any]:
    try:
        return await run_sync(_health, services)
    except Exception as exc:
        return {"status": "unavailable", "database": "error", "error": type(exc).__name__}


@get("/health/ready", tags=["health"], responses=errors({503: ("unavailable",)}))
async def ready(request: Any) -> Response[dict[str, str]]:
    """For load balancers, no credentials, no figures: 200 ``{"status": "ok"}`` when PostgreSQL and every
    table answer and no projection error was recorded in the last :data:`READY_ERROR_WINDOW_S` seconds,
    else 503 ``{"status": "unavailable"}``. The figures are at ``/health/detail``."""
    detail = await _health_or_error(request.app.state.services)
    ok = detail["status"] == "ok"
    return Response({"status": detail["status"]}, status_code=200 if ok else 503)


@get("/health/detail", tags=["health"], responses=errors({401: ("unauthorized",), 503: ("unavailable",)}))
async def health_detail(request: Any) -> Response[dict[str, Any]]:
    """For the operator (``Authorization: Bearer <BILLING_OPERATOR_TOKEN>``): readiness with its figures —
    ``events`` (notification log head), ``projection_lag`` (events not yet in the views),
    ``projection_errors`` (events a projection or the relay could not apply, in total and within the window).
    Same status code as ``/health/ready``; 401 without the token (or when none is configured)."""
    services: Services = request.app.state.services
    expected = services.container.settings.operator_token
    given = bearer_token(request.headers.get("authorization"))
    if not expected or given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized(
            "operator credentials required: Authorization: Bearer <BILLING_OPERATOR_TOKEN>",
            field="Authorization",
        )
    detail = await _health_or_error(services)
    return Response(detail, status_code=200 if detail["status"] == "ok" else 503)


async def _security_headers(message: Message, scope: Scope) -> None:
    """Every answer: ``X-Content-Type-Options: nosniff`` (litestar ``before_send`` hook; errors included)."""
    if message["type"] == "http.response.start":
        headers = MutableScopeHeaders.from_message(message)
        headers["X-Content-Type-Options"] = "nosniff"


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
        return await run_sync(services.tenants.authenticate, key)

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
        debug=False,
        logging_config=None,
    )
    finish(app.openapi_schema)
    return app


def _state(services: Services) -> Any:
    from litestar.datastructures import State

    return State({"services": services})
