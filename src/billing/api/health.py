"""Health endpoints (outside the base path, no credentials): liveness and readiness for load balancers,
and the operator's figures behind ``BILLING_OPERATOR_TOKEN``."""

from __future__ import annotations

import hmac
from typing import Any

from litestar import Response, get

from billing.api.auth import bearer_token
from billing.api.deps import Services, run_sync
from billing.api.docs import errors
from billing.api.errors import Unauthorized
from billing.projections.views import PROJECTION

READY_ERROR_WINDOW_S = 300
"""Readiness is refused while ``projection_errors`` grows: a row recorded within this many seconds (the
database's clock) makes ``/health/ready`` answer 503; see docs/architecture.md, "Health"."""


_READY_SQL = """
SELECT (SELECT position FROM tracking WHERE name = %s) AS position,
       count(*) AS total,
       count(*) FILTER (WHERE recorded_at > now() - make_interval(secs => %s)) AS recent
FROM projection_errors
"""
"""The projection's position (NULL before its first batch) and the projection errors, in total and within
the window — as :func:`billing.projections.tracking.load_position` and a count would read them, on one
connection."""


@get("/health/live", tags=["health"], sync_to_thread=False)
def live() -> dict[str, str]:
    """The process runs: ``{"status": "ok"}``."""
    return {"status": "ok"}


def _health(services: Services) -> dict[str, Any]:
    """The detail of readiness (raises when PostgreSQL or a table is unreachable)."""
    container = services.container
    with container.pool.connection() as conn:  # one connection, one round trip: both tables answer
        row = conn.execute(_READY_SQL, (PROJECTION, READY_ERROR_WINDOW_S)).fetchone()
    head = container.store.recorder.max_notification_id() or 0
    projected = int(row["position"] or 0) if row else 0
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
