"""Wiring of the dashboard into the litestar app: the guarded router (session + CSRF middleware, login
guard, HTML error pages), the static files router and the Jinja2 template config."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from litestar import Request, Response, Router
from litestar.contrib.jinja import JinjaTemplateEngine
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException
from litestar.middleware.base import DefineMiddleware
from litestar.middleware.csrf import CSRFMiddleware
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

import billing.dashboard.fmt as fmt
from billing.dashboard.pages import CONTROLLERS
from billing.dashboard.security import PATH, csrf_config, require_user, session_config
from billing.domain.errors import Conflict, DomainError, NotFound

# The session middleware is app-level, excluding every path outside /dashboard with a pattern that also
# matches "/"; litestar then warns that it "greedily matches all paths", which is not so for this one.
warnings.filterwarnings(
    "ignore", message=r"Middleware 'SessionMiddleware' exclude pattern '\^\(\?!/dashboard"
)

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
TEMPLATE_DIR = HERE / "templates"


def _engine_callback(engine: JinjaTemplateEngine) -> None:
    env = engine.engine
    env.filters.update(
        money=fmt.money,
        day=fmt.day,
        instant=fmt.instant,
        number=fmt.number,
        percent=fmt.percent,
        label=fmt.label,
        error_text=fmt.error_text,
        counted=fmt.counted,
        plural=fmt.plural,
    )


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    """Jinja2 templates of the package (autoescaped)."""
    return TemplateConfig(
        directory=TEMPLATE_DIR, engine=JinjaTemplateEngine, engine_callback=_engine_callback
    )


def _wants_html(request: Request[Any, Any, Any]) -> bool:
    return request.method == "GET" and "hx-request" not in request.headers


def _login_required(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if _wants_html(request):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return Redirect(f"{PATH}/login?next={target}", status_code=303)
    return Response(
        "login required", status_code=401, media_type="text/plain", headers={"HX-Redirect": f"{PATH}/login"}
    )


def _error_page(status: int, title: str, message: str) -> Template:
    return Template(
        template_name="error.html", context={"title": title, "message": message}, status_code=status
    )


def _forbidden(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    return _error_page(403, "Acesso negado", "Seu perfil é somente leitura: peça a um administrador.")


def _not_found(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    return _error_page(404, "Não encontrado", "Esta página não existe ou não é da sua empresa.")


def _domain_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    assert isinstance(exc, DomainError)
    status = 409 if isinstance(exc, Conflict) else 422
    return _error_page(status, "Não foi possível", exc.message)


def _http_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _not_found(request, exc)
    if exc.status_code == 429:
        return _error_page(429, "Muitas tentativas", "Aguarde um minuto e tente entrar de novo.")
    return _error_page(exc.status_code, "Erro", str(exc.detail))


FORM_MAX_BODY = 16 * 1024 * 1024
"""Body limit (bytes) of the dashboard's forms: an upload (at most ``upload.MAX_BYTES``) or a campaign's
contacts carried to the send step (the public API's send limit)."""


def dashboard_middleware(jwt_secret: str, *, secure_cookies: bool) -> list[Any]:
    """The app-level session middleware (excluding every path outside ``/dashboard/``)."""
    return [session_config(jwt_secret, secure=secure_cookies).middleware]


def dashboard_routers(jwt_secret: str, *, secure_cookies: bool) -> list[Router]:
    """The guarded ``/dashboard`` router (CSRF middleware, login guard, HTML error pages) and the public
    ``/dashboard/static`` one. Needs :func:`dashboard_middleware` on the app for the session."""
    guarded = Router(
        path=PATH,
        route_handlers=CONTROLLERS,
        guards=[require_user],
        middleware=[DefineMiddleware(CSRFMiddleware, config=csrf_config(jwt_secret, secure=secure_cookies))],
        exception_handlers={
            NotAuthorizedException: _login_required,
            PermissionDeniedException: _forbidden,
            NotFound: _not_found,
            DomainError: _domain_error,
            HTTPException: _http_error,
        },
        include_in_schema=False,
        request_max_body_size=FORM_MAX_BODY,
    )
    static = create_static_files_router(
        path=f"{PATH}/static", directories=[STATIC_DIR], opt={"public": True}, include_in_schema=False
    )
    return [guarded, static]
