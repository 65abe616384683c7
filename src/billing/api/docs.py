"""What the OpenAPI document says beyond the Structs: each operation's error answers (status, the real
``{code, message, field}`` schema and the codes it can carry), response headers, and the docs UI served
from the npm package ``swagger-ui-dist`` copied into the app (no CDN).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Example, OpenAPI, OpenAPIHeader, Operation, Reference, Schema
from litestar.static_files import create_static_files_router

from billing.api.schemas import ErrorBody

ASSETS_PATH = "/schema/assets"
VALIDATION_CODES = (
    "invalid_request",
    "unknown_field",
    "value_too_long",
    "too_many_items",
    "too_many_fields",
    "out_of_range",
    "nul_character",
    "invalid_field_name",
)
"""Codes of a body or parameter that does not fit its declared shape (:mod:`billing.api.body`)."""

DESCRIPTIONS = {
    400: "The body is not JSON.",
    401: "Missing, unknown or revoked credentials.",
    404: "Unknown id, or another tenant's.",
    409: "Conflicting state.",
    413: "Body larger than this endpoint's limit, or too many contacts.",
    415: "Content-Type is not application/json.",
    422: "A value is refused; `field` names it.",
    429: "Too many requests for this credential; retry after `Retry-After` seconds.",
    503: "Not ready yet; retry after `Retry-After` seconds.",
}
RETRY_AFTER = OpenAPIHeader(
    schema=Schema(type="integer"),  # type: ignore[arg-type]
    description="Seconds to wait before retrying.",
)


def errors(codes: dict[int, tuple[str, ...] | list[str]]) -> dict[int, ResponseSpec]:
    """The ``responses=`` of a route handler: for each status, the error schema and the list of codes.

    Args:
        codes: status → the ``code`` values that status can carry on this operation.
    """
    out: dict[int, ResponseSpec] = {}
    for status, names in codes.items():
        listed = ", ".join(f"`{name}`" for name in names)
        out[status] = ResponseSpec(
            data_container=ErrorBody,
            generate_examples=False,
            description=f"{DESCRIPTIONS.get(status, 'Error.')} Codes: {listed}.",
            examples=[
                Example(
                    summary=names[0],
                    value={"code": names[0], "message": DESCRIPTIONS.get(status, "error"), "field": None},
                )
            ],
        )
    return out


def with_common(codes: dict[int, tuple[str, ...] | list[str]]) -> dict[int, ResponseSpec]:
    """:func:`errors` of ``codes`` plus what every authenticated operation can answer (401, 429)."""
    return errors({401: ("unauthorized",), 429: ("rate_limited",), **codes})


BODY_ERRORS: dict[int, tuple[str, ...] | list[str]] = {
    400: ("invalid_json",),
    413: ("body_too_large",),
    415: ("unsupported_media_type",),
    422: VALIDATION_CODES,
}
"""Statuses every operation that takes a JSON body can answer."""


def finish(document: OpenAPI) -> None:
    """Last touches on the built document (mutated in place, before it is first served): litestar's own
    400 ``{status_code, detail}`` answer is dropped where the operation does not declare a 400 (its
    validation errors are 422 in the real error shape here), and 429/503 answers carry ``Retry-After``."""
    for item in (document.paths or {}).values():
        for method in ("get", "post", "put", "patch", "delete"):
            operation: Operation | None = getattr(item, method, None)
            if operation is None or not operation.responses:
                continue
            for status, response in list(operation.responses.items()):
                if isinstance(response, Reference):
                    continue
                if status == "400" and not _is_error_body(response.content):
                    del operation.responses[status]
                elif status in ("429", "503"):
                    response.headers = {**(response.headers or {}), "Retry-After": RETRY_AFTER}


def _is_error_body(content: Any) -> bool:
    for media in (content or {}).values():
        schema = getattr(media, "schema", None)
        if isinstance(schema, Reference) and schema.ref.endswith("/ErrorBody"):
            return True
    return False


def swagger_plugin() -> SwaggerRenderPlugin:
    """Swagger UI whose scripts, styles and icon are served by this app (:func:`assets_router`)."""
    return SwaggerRenderPlugin(
        js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        css_url=f"{ASSETS_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>",
        path="/swagger",
    )


SWAGGER_DIR = Path(__file__).resolve().parents[1] / "dashboard" / "static" / "vendor" / "swagger"
"""Swagger UI 5's files (npm ``swagger-ui-dist``, pinned in package-lock.json, copied here by
``scripts/assets``; package data of the wheel). Version 5 reads OpenAPI 3.1, the version litestar writes."""


def assets_router() -> Any:
    """The static files of Swagger UI (:data:`SWAGGER_DIR`) at :data:`ASSETS_PATH`."""
    directory = SWAGGER_DIR
    return create_static_files_router(
        path=ASSETS_PATH, directories=[directory], include_in_schema=False, name="swagger-assets"
    )
