"""One table mapping application errors to HTTP answers ``{code, message, field, details?}``.

Domain errors carry no HTTP status (STYLE.md 7); this module is the only place that gives them one.
"""

from __future__ import annotations

import re
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
from litestar.params import ParameterKwarg
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from billing.api.body import invalid_from_message
from billing.domain.errors import Conflict, DomainError, InvalidValue, NotFound

log = structlog.get_logger(__name__)

STATUS_BY_ERROR: list[tuple[type[DomainError], int]] = [
    (NotFound, 404),
    (Conflict, 409),
    (InvalidValue, 422),
    (DomainError, 422),  # TemplateSyntaxError, PolicyError and any other domain refusal
]
STATUS_BY_CODE = {
    "invalid_json": 400,
    "idempotency_key_reused": 422,
    "too_many_contacts": 413,
    "unsupported_media_type": 415,
}


class Unauthorized(DomainError):
    """Missing, unknown or revoked credentials."""

    code = "unauthorized"


def error_body(
    code: str, message: str, field: str | None = None, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The error document: ``field`` is always present, null when no single input is to blame (an unknown
    path, a method the path does not take, an internal error)."""
    body: dict[str, Any] = {"code": code, "message": message, "field": field}
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


HTTP_CODES = {
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    429: "rate_limited",
}


def wire_name(request: Request[Any, Any, Any], key: str) -> str:
    """The name a client writes for the handler's parameter ``key``: the header's own name for a header
    parameter (``idempotency_key`` → ``Idempotency-Key``), an aliased query parameter's alias, else
    ``key`` (a query or path parameter, a body path)."""
    parameter = request.route_handler.parsed_fn_signature.parameters.get(key)
    kwarg = parameter.kwarg_definition if parameter is not None else None
    if isinstance(kwarg, ParameterKwarg) and kwarg.name:
        return kwarg.name
    return key


_MISSING_PARAMETER = re.compile(r"^Missing required (?P<kind>\w+) parameter '(?P<name>[^']+)'")
"""litestar's refusal of a request without a required parameter (its ValidationException has no ``extra``
then, only this text naming the parameter as the client writes it)."""


def http_error_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    """Answer litestar's own errors in the same shape. A parameter litestar refuses (query, path, header)
    goes through the same msgspec-message mapping as bodies and answers 422 naming the parameter (a
    missing one too: ``invalid_request`` with ``field`` its name; a path id that is no UUID: the API's
    routes declare ``{queue_id:str}`` with a ``UUID`` argument, so litestar refuses it here instead of
    answering a bare 404); a body
    over the endpoint's limit is 413 ``body_too_large`` with ``details.max_bytes``."""
    if isinstance(exc, ValidationException):
        extra = exc.extra if isinstance(exc.extra, list) else []
        first = extra[0] if extra and isinstance(extra[0], dict) else {}
        if not first and (missing := _MISSING_PARAMETER.match(str(exc.detail))):
            name, kind = missing.group("name"), missing.group("kind")
            error = InvalidValue(f"{name} is required ({kind} parameter)", code="invalid_request", field=name)
        elif first.get("source") == "path":  # e.g. /queue/abc/status: routes take any text, typed here
            name = str(first.get("key"))
            error = InvalidValue(
                f"{name} in the path: {first.get('message')}", code="invalid_request", field=name
            )
        else:
            key = first.get("key")
            name = wire_name(request, key) if isinstance(key, str) else None
            error = invalid_from_message(str(first.get("message", exc.detail)), name)
        return domain_error_handler(request, error)
    if isinstance(exc, TooManyRequestsException):  # billing.api.ratelimit
        return Response(
            error_body("rate_limited", str(exc.detail), "X-Billing-API-Key"),
            status_code=exc.status_code,
            headers=exc.headers,
        )
    code = HTTP_CODES.get(exc.status_code, "http_error")
    if isinstance(exc, NotAuthorizedException):
        code = "unauthorized"
    elif isinstance(exc, NotFoundException):
        code = "not_found"
    details = None
    if exc.status_code == 413:
        limit = request.route_handler.resolve_request_max_body_size()
        details = {"max_bytes": limit} if limit else None
        message = f"request body larger than {limit} bytes, this endpoint's limit" if limit else exc.detail
    else:
        message = str(exc.detail)
    return Response(
        error_body(code, message, None, details),
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
