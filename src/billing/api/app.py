"""The litestar application: public API, admin API, health, OpenAPI (served at ``/schema``)."""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Response, get
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController

from billing.api.admin import AdminController
from billing.api.auth import jwt_auth
from billing.api.deps import Services, run_sync
from billing.api.errors import EXCEPTION_HANDLERS
from billing.api.public import PublicController
from billing.bootstrap import Container
from billing.projections.tracking import load_position
from billing.projections.views import PROJECTION

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
    """The process runs."""
    return {"status": "ok"}


def _readiness(services: Services) -> dict[str, Any]:
    container = services.container
    projected = load_position(container.pool, PROJECTION)
    with container.pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) AS n FROM projection_errors WHERE projection = %s", (PROJECTION,)
        ).fetchone()
    head = container.store.recorder.max_notification_id() or 0
    return {
        "status": "ok",
        "database": "ok",
        "events": head,
        "projection_lag": max(0, head - projected),
        "projection_errors": row["n"] if row else 0,
    }


@get("/health/ready", tags=["health"])
async def ready(request: Any) -> Response[dict[str, Any]]:
    """The process can reach PostgreSQL; reports projection lag and unapplied events."""
    services: Services = request.app.state.services
    try:
        body = await run_sync(_readiness, services)
    except Exception as exc:
        return Response({"status": "unavailable", "error": type(exc).__name__}, status_code=503)
    return Response(body, status_code=200)


def create_app(container: Container) -> Litestar:
    """Build the API over ``container`` (needs ``settings.jwt_secret`` for the admin API)."""
    services = Services.build(container)
    auth = jwt_auth(container.settings.require_jwt_secret())
    return Litestar(
        route_handlers=[PublicController, AdminController, live, ready, MetricsController],
        middleware=[PROMETHEUS.middleware],
        exception_handlers=EXCEPTION_HANDLERS,
        on_app_init=[auth.on_app_init],
        openapi_config=OpenAPIConfig(
            title="billing",
            version="1.0.0",
            path="/schema",
            description="WhatsApp billing reminders. Public endpoints: header X-Billing-API-Key; "
            "admin endpoints: Authorization: Bearer <JWT>.",
            components=Components(
                security_schemes={
                    "ApiKey": SecurityScheme(
                        type="apiKey", name="X-Billing-API-Key", security_scheme_in="header"
                    )
                }
            ),
        ),
        state=_state(services),
        debug=False,
        logging_config=None,
    )


def _state(services: Services) -> Any:
    from litestar.datastructures import State

    return State({"services": services})
