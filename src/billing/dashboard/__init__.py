"""The tenant admin's dashboard (pt-BR): server-rendered pages at ``/dashboard`` over the same application
services as the JSON API. See :mod:`billing.dashboard.security` for sessions, CSRF and roles."""

from __future__ import annotations

from billing.dashboard.app import STATIC_DIR, dashboard_middleware, dashboard_routers, template_config

__all__ = ["STATIC_DIR", "dashboard_middleware", "dashboard_routers", "template_config"]
