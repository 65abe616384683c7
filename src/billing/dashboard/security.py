"""Who may see the dashboard: sessions, CSRF, login throttling, the login guard and role checks.

- Session: litestar's client-side session (``CookieBackendConfig``: the session is AES-GCM encrypted into
  an HttpOnly, SameSite=Lax cookie scoped to ``/dashboard``; Secure when ``BILLING_PUBLIC_URL`` is https),
  key derived from ``BILLING_JWT_SECRET``; it holds only the user id. Each request reloads the user, so a
  removed user's session stops working at once.
- CSRF: litestar's ``CSRFMiddleware`` on the dashboard router — every POST carries ``_csrf_token`` (forms)
  or ``x-csrftoken`` (htmx requests, from ``hx-headers``).
- Login attempts: litestar's ``RateLimitMiddleware`` on ``POST /dashboard/login`` (per client address).
- Guard: every dashboard handler needs a logged-in user, except those marked ``opt={"public": True}``
  (login page, static assets); handlers marked ``opt={"admin": True}`` need the admin role.
"""

from __future__ import annotations

import hashlib
from typing import Any
from uuid import UUID

from litestar.config.csrf import CSRFConfig
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware.rate_limit import RateLimitConfig
from litestar.middleware.session.client_side import CookieBackendConfig

from billing.api.deps import Services, run_sync
from billing.services.users import SessionUser

SESSION_COOKIE = "billing_session"
SESSION_MAX_AGE_S = 8 * 3600
LOGIN_ATTEMPTS_PER_MINUTE = 10
PATH = "/dashboard"


def _key(secret: str, purpose: str) -> bytes:
    return hashlib.sha256(f"billing-dashboard:{purpose}:{secret}".encode()).digest()


def session_config(secret: str, *, secure: bool) -> CookieBackendConfig:
    """The session cookie (32-byte AES key derived from the JWT secret)."""
    return CookieBackendConfig(
        secret=_key(secret, "session"),
        key=SESSION_COOKIE,
        max_age=SESSION_MAX_AGE_S,
        httponly=True,
        secure=secure,
        samesite="lax",
        path=PATH,
        exclude=[
            f"^(?!{PATH}(/|$))"
        ],  # app-level middleware (a router's would be deep-copied): dashboard only
    )


def csrf_config(secret: str, *, secure: bool) -> CSRFConfig:
    """Double-submit CSRF token (litestar), cookie scoped to the dashboard."""
    return CSRFConfig(
        secret=_key(secret, "csrf").hex(),
        cookie_name="billing_csrf",
        cookie_path=PATH,
        cookie_secure=secure,
        cookie_httponly=True,
        cookie_samesite="lax",
    )


LOGIN_RATE_LIMIT = RateLimitConfig(
    rate_limit=("minute", LOGIN_ATTEMPTS_PER_MINUTE), store="dashboard_login", set_rate_limit_headers=False
)


class LoginRequired(NotAuthorizedException):
    """No (valid) session: pages redirect to the login, other requests get 401."""


async def require_user(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Litestar guard of the dashboard router: loads the session's user into ``connection.state.user``.

    Raises:
        LoginRequired: no session or a removed user. PermissionDeniedException: an ``admin`` handler for
            a viewer.
    """
    if handler.opt.get("public"):
        return
    raw = connection.session.get("uid") if connection.scope.get("session") else None
    if not raw:
        raise LoginRequired("login required")
    services: Services = connection.app.state.services
    try:
        user, tenant = await run_sync(_load, services, UUID(str(raw)))
    except ValueError:
        user = tenant = None
    if user is None:
        connection.clear_session()
        raise LoginRequired("login required")
    connection.state.user = user
    connection.state.tenant = tenant  # every page shows its name and times in its zone
    connection.state.tz = tenant.sending_policy.calendar.tz
    if handler.opt.get("admin") and not user.is_admin:
        raise PermissionDeniedException("somente administradores podem fazer isso")


def _load(services: Services, user_id: UUID) -> tuple[SessionUser | None, Any]:
    """The session's user and its tenant, in one trip to a worker thread."""
    user = services.users.current(user_id)
    if user is None:
        return None, None
    return user, services.tenants.get_tenant(user.tenant_id)


def current_user(connection: ASGIConnection[Any, Any, Any, Any]) -> SessionUser:
    """The user the guard loaded."""
    user: SessionUser = connection.state.user
    return user
