"""Request bodies: media type, size, and decoding against the handler's declared Struct, with ONE mapping
from msgspec's validation errors to the product's ``{code, message, field}``.

Every handler with a ``data`` parameter gets its body decoded here, before its dependencies run (the
``before_request`` hook of the app, after the guards, so a missing credential is still 401):

1. ``Content-Type`` must be ``application/json`` (415 ``unsupported_media_type``).
2. The body is read under the handler's ``request_max_body_size`` (413 ``body_too_large``).
3. It is decoded by msgspec straight into the declared Struct: one pass, in C, that stops at the first
   value that does not fit — an array where a scalar belongs is refused without descending into it, so a
   10,000-level nesting costs nothing and never reaches Python's recursion limit.
4. A failure becomes :class:`~billing.domain.errors.InvalidValue` (:func:`invalid_from`) naming the exact
   field, e.g. ``contacts[3].telefone`` or ``contatos`` for an unknown top-level field.

Decision: JSON numbers inside contacts are decoded a second time as exact decimals (``float_hook``), once
the first pass has proven the body well-formed; a binary float would turn ``1e-400`` into ``0.0`` before
the amount rules could see it.

Decision: a send body without the JSON escape ``\u0000`` (the only way JSON text holds a NUL) is decoded
first without the NUL pattern on the contacts' keys and values (``_SendWithoutNul``, otherwise the same
Struct): that pattern is a Python ``re`` call per string, 30 of the 40 ms of decoding 10,000 contacts. A
body it refuses is decoded again the full way, so every error stays the same.
"""

from __future__ import annotations

import contextlib
import re
from decimal import Decimal
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Request
from litestar.handlers import HTTPRouteHandler
from msgspec import Meta

from billing.api.schemas import (
    MAX_CONTACTS,
    MAX_VALUE_LENGTH,
    NO_NUL,
    ConfigPatch,
    ContactValue,
    DayWindows,
    ExternalId,
    PreviewRequest,
    SendRequest,
    TemplateTypeName,
)
from billing.domain.errors import DomainError, InvalidValue
from billing.domain.ingestion import MAX_FIELD_NAME_LENGTH, MAX_FIELDS

JSON_MEDIA_TYPE = "application/json"


class UnsupportedMediaType(DomainError):
    """A JSON endpoint was called with another (or no) ``Content-Type``."""

    code = "unsupported_media_type"


class _FieldName(str):
    """A dict key, decoded through :func:`_record_key` so that the last key read is known."""

    __slots__ = ()


class _KeyRecorder:
    """dec_hook that remembers the dict keys msgspec decoded, in order (the last one is where it stopped)."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def __call__(self, kind: type, value: Any) -> Any:
        if kind is _FieldName:
            self.keys.append(value)
            return _FieldName(value)
        raise NotImplementedError(kind)


class _SendLocator(msgspec.Struct):
    contacts: list[dict[_FieldName, ContactValue]]


class _PreviewLocator(msgspec.Struct):
    variables: dict[_FieldName, ContactValue] = {}


class _PolicyLocator(msgspec.Struct):
    windows: dict[_FieldName, DayWindows] = {}


class _ConfigLocator(msgspec.Struct):
    policy: _PolicyLocator | None = None


_LOCATORS: dict[type, type] = {
    SendRequest: _SendLocator,
    PreviewRequest: _PreviewLocator,
    ConfigPatch: _ConfigLocator,
}
"""Request type → the same shape with recorded keys, to name the key a dict-value error is under."""


class _ExactContacts(msgspec.Struct):
    contacts: list[dict[str, Any]]


class _SendWithoutNul(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """:class:`SendRequest` without the NUL pattern on the contacts' keys and values (every other limit
    as there), for a body in which no string can hold U+0000 (:func:`decode_body`)."""

    contacts: Annotated[
        list[
            Annotated[
                dict[
                    Annotated[str, Meta(min_length=1, max_length=MAX_FIELD_NAME_LENGTH)],
                    Annotated[str, Meta(max_length=MAX_VALUE_LENGTH)] | int | float | bool | None,
                ],
                Meta(max_length=MAX_FIELDS),
            ]
        ],
        Meta(min_length=1, max_length=MAX_CONTACTS),
    ]
    template_type: TemplateTypeName | None = None
    external_id: ExternalId | None = None
    allow_duplicate_phones: bool = False
    template_id: UUID | None = None


_NUL_ESCAPE = b"\\u0000"
"""The only way JSON text carries U+0000 (a raw control character in a string is malformed JSON)."""


_exact = msgspec.json.Decoder(_ExactContacts, float_hook=Decimal)
_decoders: dict[type, msgspec.json.Decoder[Any]] = {}

_AT = re.compile(r" - at `(?:key` in `)?\$(?P<path>[^`]*)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<name>[^`]*)`")
_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]*)`")
_LENGTH = re.compile(r"^Expected `(?P<kind>str|array|object)` of length (?P<op><=|>=) (?P<n>\d+)")
_BOUND = re.compile(r"^Expected `(?P<kind>int|float)` (?P<op><=|>=|<|>) (?P<n>[-\d.e+]+)")
_PATTERN = re.compile(r"^Expected `str` matching regex '(?P<pattern>.*)'")


def _decoder(kind: type) -> msgspec.json.Decoder[Any]:
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    return decoder


BODY_FIELD = "body"
"""The ``field`` of an error about the body as a whole (not JSON, not an object)."""


def field_path(path: str) -> str | None:
    """msgspec's ``$``-path as the product writes fields: ``.contacts[3].nome`` → ``contacts[3].nome``
    (``""`` → None, the body itself)."""
    return path.removeprefix(".") or None


def _join(path: str | None, name: str) -> str:
    return f"{path}.{name}" if path else name


def _locate_key(body: bytes, kind: type, path: str) -> str:
    """Replace the ``[...]`` (a dict value msgspec does not name) in ``path`` by the key it stopped at."""
    locator = _LOCATORS.get(kind)
    if locator is None:
        return path
    recorder = _KeyRecorder()
    with contextlib.suppress(msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        msgspec.json.decode(body, type=locator, dec_hook=recorder)
    if not recorder.keys:
        return path
    return path.replace("[...]", f".{recorder.keys[-1]}", 1)


def invalid_from(exc: msgspec.ValidationError, body: bytes, kind: type) -> InvalidValue:
    """The product's error for a body that does not fit its Struct ``kind`` (msgspec's message parsed).

    Codes: ``unknown_field`` (a field the endpoint does not know; ``field`` is its path),
    ``value_too_long`` (``details.max_length``), ``too_many_items`` / ``too_many_fields``
    (``details.max_items``; ``too_many_contacts`` for more than 10,000 contacts, 413),
    ``out_of_range`` (``details`` ``minimum``/``maximum``), ``nul_character`` (a U+0000 in a string),
    ``invalid_field_name`` (a contact key that is empty or too long), ``invalid_request`` (missing field,
    wrong type — e.g. an array or object where a contact value, a scalar, belongs).
    """
    text = str(exc)
    at = _AT.search(text)
    raw_path = at.group("path") if at else ""
    is_key = at is not None and "`key` in" in at.group(0)
    if "[...]" in raw_path:
        raw_path = _locate_key(body, kind, raw_path)
    error = invalid_from_message(text[: at.start()] if at else text, field_path(raw_path), is_key=is_key)
    error.field = error.field or BODY_FIELD  # e.g. an array where the body's object belongs
    return error


def invalid_from_message(head: str, path: str | None, *, is_key: bool = False) -> InvalidValue:
    """The product's error for msgspec's message ``head`` (without its `` - at `$…` `` tail) about the
    value at ``path`` (a body field, or a query parameter for litestar's own validation errors)."""
    if is_key:
        return InvalidValue(
            f"{path}: a field name must have 1 to 64 characters and no NUL ({head})",
            code="invalid_field_name",
            field=path,
        )
    if match := _UNKNOWN.match(head):
        name = _join(path, match.group("name"))
        return InvalidValue(f"unknown field {name!r}", code="unknown_field", field=name)
    if match := _MISSING.match(head):
        name = _join(path, match.group("name"))
        return InvalidValue(f"{name} is required", code="invalid_request", field=name)
    if match := _PATTERN.match(head):
        if match.group("pattern").replace("\\\\", "\\") == NO_NUL:
            return InvalidValue(
                f"{path} must not contain NUL characters (U+0000)", code="nul_character", field=path
            )
        return InvalidValue(f"{path}: {head}", code="invalid_request", field=path)
    if match := _LENGTH.match(head):
        n = int(match.group("n"))
        if match.group("op") == ">=":
            if match.group("kind") == "str" and n == 1:
                return InvalidValue(f"{path} is required", code="invalid_request", field=path)
            unit = "character" if match.group("kind") == "str" else "item"
            return InvalidValue(
                f"{path} needs at least {n} {unit}{'s' if n != 1 else ''}", code="invalid_request", field=path
            )
        if match.group("kind") == "str":
            return InvalidValue(
                f"{path} is longer than {n} characters",
                code="value_too_long",
                field=path,
                details={"max_length": n},
            )
        if path == "contacts" and n == MAX_CONTACTS:
            return InvalidValue(
                f"contacts holds more than {n} contacts; at most {n} per request",
                code="too_many_contacts",
                field=path,
                details={"max_items": n},
            )
        code = "too_many_fields" if match.group("kind") == "object" else "too_many_items"
        return InvalidValue(
            f"{path} holds more than {n} items", code=code, field=path, details={"max_items": n}
        )
    if match := _BOUND.match(head):
        key = "minimum" if match.group("op") in (">=", ">") else "maximum"
        return InvalidValue(
            f"{path} must be {match.group('op')} {match.group('n')}",
            code="out_of_range",
            field=path,
            details={key: float(match.group("n")), "exclusive": match.group("op") in ("<", ">")},
        )
    return InvalidValue(
        f"invalid request: {head}" + (f" ({path})" if path else ""), code="invalid_request", field=path
    )


def decode_body(body: bytes, kind: type) -> Any:
    """Decode ``body`` as ``kind``.

    Raises:
        InvalidValue: ``invalid_json`` (400) for text that is not JSON; the codes of :func:`invalid_from`.
    """
    if kind is SendRequest and _NUL_ESCAPE not in body:
        # No string of this body can hold a NUL, so the NUL patterns on the contacts' keys and values
        # (msgspec calls Python's re per string: 120,000 calls, three quarters of decoding 10,000 contacts)
        # cannot fail; a body refused for anything else is decoded again below, for the same error.
        with contextlib.suppress(msgspec.ValidationError, msgspec.DecodeError):
            twin = _decoder(_SendWithoutNul).decode(body)
            value = SendRequest(**{name: getattr(twin, name) for name in SendRequest.__struct_fields__})
            value.contacts = _exact.decode(body).contacts  # as below
            return value
    try:
        value = _decoder(kind).decode(body)
    except msgspec.ValidationError as exc:
        raise invalid_from(exc, body, kind) from None
    except msgspec.DecodeError as exc:
        raise InvalidValue(f"body is not valid JSON: {exc}", code="invalid_json", field=BODY_FIELD) from None
    if kind is SendRequest:
        value.contacts = _exact.decode(body).contacts  # safe: the first pass proved every value a scalar
    return value


def body_type(handler: HTTPRouteHandler) -> type | None:
    """The Struct a handler's ``data`` parameter declares, or None (no body)."""
    data = handler.parsed_fn_signature.parameters.get("data")
    if data is None:
        return None
    kind: type = data.annotation
    return kind


def is_json(content_type: str | None) -> bool:
    """True for ``application/json`` (parameters such as ``charset`` allowed)."""
    return (content_type or "").split(";", 1)[0].strip().lower() == JSON_MEDIA_TYPE


class BillingRequest(Request[Any, Any, Any]):
    """litestar's request whose :meth:`json` decodes the body into the handler's Struct (module doc)."""

    _decoded: Any = None
    _has_decoded = False

    async def json(self) -> Any:
        """The body decoded as the handler's ``data`` type (raises as :func:`read_body` says)."""
        if not self._has_decoded:
            kind = body_type(self.route_handler)
            if not is_json(self.headers.get("content-type")):
                raise UnsupportedMediaType(f"Content-Type must be {JSON_MEDIA_TYPE}", field="Content-Type")
            body = await self.body()
            self._decoded = decode_body(body, kind) if kind is not None else msgspec.json.decode(body)
            self._has_decoded = True
        return self._decoded


async def read_body(request: Request[Any, Any, Any]) -> None:
    """``before_request`` hook: check and decode the body of a handler that takes one (so an empty or
    mistyped body is refused the same way as a malformed one).

    Raises:
        UnsupportedMediaType (415), RequestEntityTooLarge (413), InvalidValue (400/413/422).
    """
    if body_type(request.route_handler) is not None and isinstance(request, BillingRequest):
        await request.json()
