"""One table mapping application errors to HTTP answers ``{code, message, field?, details?}``.

Domain errors carry no HTTP status (STYLE.md 7); this module is the only place that gives them one.
"""

from __future__ import annotations

from typing import Any

import structlog
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    TooManyRequestsException,
    ValidationException,
)
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from billing.domain.errors import Conflict, DomainError, InvalidValue, NotFound

log = structlog.get_logger(__name__)

STATUS_BY_ERROR: list[tuple[type[DomainError], int]] = [
    (NotFound, 404),
    (Conflict, 409),
    (InvalidValue, 422),
    (DomainError, 422),  # TemplateSyntaxError, PolicyError and any other domain refusal
]
STATUS_BY_CODE = {"invalid_json": 400, "idempotency_key_reused": 422, "too_many_contacts": 413}


class Unauthorized(DomainError):
    """Missing, unknown or revoked credentials."""

    code = "unauthorized"


def error_body(
    code: str, message: str, field: str | None = None, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The error document."""
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    if details:
        body["details"] = details
    return body


def status_for(error: DomainError) -> int:
    """HTTP status of a domain error."""
    if isinstance(error, Unauthorized):
        return 401
    if error.code in STATUS_BY_CODE:
        return STATUS_BY_CODE[error.code]
    for kind, status in STATUS_BY_ERROR:
        if isinstance(error, kind):
            return status
    return 422


def domain_error_handler(_: Request[Any, Any, Any], exc: DomainError) -> Response[dict[str, Any]]:
    """Answer a domain error."""
    return Response(error_body(exc.code, exc.message, exc.field, exc.details), status_code=status_for(exc))


def http_error_handler(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    """Answer litestar's own errors in the same shape."""
    if isinstance(exc, NotAuthorizedException):
        code = "unauthorized"
    elif isinstance(exc, NotFoundException):
        code = "not_found"
    elif isinstance(exc, ValidationException):
        code = "invalid_request"
    elif isinstance(exc, TooManyRequestsException):  # billing.api.ratelimit
        return Response(
            error_body("rate_limited", str(exc.detail), "X-Billing-API-Key"),
            status_code=exc.status_code,
            headers=exc.headers,
        )
    else:
        code = "http_error"
    field = None
    extra = getattr(exc, "extra", None)
    if isinstance(extra, list) and extra and isinstance(extra[0], dict):
        field = extra[0].get("key")
    return Response(
        error_body(code, str(exc.detail), field),
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """Log an unexpected error (type only, never the body) and answer 500."""
    log.error("unhandled_error", path=request.url.path, error_type=type(exc).__name__, exc_info=exc)
    return Response(
        error_body("internal_error", "internal error; the request may be retried"),
        status_code=HTTP_500_INTERNAL_SERVER_ERROR,
    )


EXCEPTION_HANDLERS: dict[Any, Any] = {
    DomainError: domain_error_handler,
    HTTPException: http_error_handler,
    Exception: internal_error_handler,
}
