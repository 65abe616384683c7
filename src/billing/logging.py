"""Structured logs: structlog for our code and, through the same pipeline, the standard library's loggers
(uvicorn, aio-pika, eventsourcing, psycopg, ...).

One line per event on stderr (stdout stays free for what commands print): JSON in production, a readable
console format for humans. Each event carries ``timestamp`` (ISO 8601, UTC), ``level``, ``logger``, the
values bound with ``structlog.contextvars.bind_contextvars`` (``tenant_id``, ``queue_id`` ...) and
``event``.

Every event dict, ours or a library's, goes through :func:`mask_sensitive` last before rendering:

- keys named ``phone`` / ``telefone`` / ``number`` / ``gateway_number`` → the phone masked
  (``+55 11 9****-4321``, see :func:`mask_phone_value`);
- secret keys (``api_key``, ``apikey``, ``password``, ``secret``, ``token``, ``authorization``,
  ``x-billing-api-key``, and names ending in ``_password`` / ``_secret`` / ``_token`` / ``_api_key``)
  → ``"***"``;
- in every string (the message, tracebacks, nested values): phone numbers (10–13 digits, optional ``+``,
  or written ``(11) 98765-4321`` / ``+55 11 98765-4321``), the password of URLs
  (``postgresql://u:***@h``), ``password=...`` in libpq strings and ``Bearer`` tokens are masked.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from billing.domain.phone import mask_phone

__all__ = ["configure_logging", "get_logger", "mask_phone_value", "mask_sensitive", "mask_text"]

REDACTED = "***"
PHONE_KEYS = frozenset({"phone", "telefone", "number", "gateway_number"})
SECRET_KEYS = frozenset(
    {"api_key", "apikey", "password", "secret", "token", "authorization", "x_billing_api_key"}
)
SECRET_SUFFIXES = ("_password", "_secret", "_token", "_api_key", "_apikey")
QUIET_LOGGERS = ("aiormq", "aio_pika", "eventsourcing", "psycopg", "pgserver", "httpx", "httpcore")
"""Libraries whose INFO chatter is held back to WARNING unless the level is DEBUG."""

OWN_HANDLER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "litestar")
"""Loggers that frameworks give their own handlers; we route them to the root handler instead."""

_SEP = r"[\s.\-]?"
_PHONE = re.compile(
    r"(?<![\w.\-+])"  # not the tail of a longer token (ids, decimals, UUID groups)
    r"(?:"
    rf"\+?55{_SEP}\(?\d{{2}}\)?{_SEP}9?\d{{4}}{_SEP}\d{{4}}"  # +55 11 98765-4321, 55 (11) 98765 4321
    rf"|\(\d{{2}}\){_SEP}9?\d{{4}}{_SEP}\d{{4}}"  # (11) 98765-4321
    r"|\+?\d{10,13}"  # 5511987654321, +5511987654321, 11987654321
    r")"
    r"(?![\w.]?\d)(?!\w)"
)
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@]*:)([^\s@/]+)(@)")
_KV_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)
_BEARER = re.compile(r"(\bBearer\s+)[A-Za-z0-9._~+/\-]+=*", re.IGNORECASE)
_NON_DIGITS = re.compile(r"\D")
_DIGIT_RUN = re.compile(r"\d{5}")


def mask_phone_value(value: object) -> str:
    """Mask one phone number written in any usual form, as :func:`~billing.domain.phone.mask_phone` does.

    ``"+5511987654321"``, ``"5511987654321"`` (gateway form) and ``"(11) 98765-4321"`` (national, read as
    Brazilian) all give ``"+55 11 9****-4321"``; other forms keep only their last 4 digits. A value that is
    already masked (has ``*`` and no run of 5 digits) is kept as it is, so masking twice changes nothing.
    Never raises.
    """
    text = str(value).strip()
    if "*" in text and not _DIGIT_RUN.search(text):
        return text
    digits = _NON_DIGITS.sub("", text)
    if text.startswith("+"):
        return mask_phone("+" + digits)
    if len(digits) in (12, 13) and digits.startswith("55"):
        return mask_phone("+" + digits)
    if len(digits) in (10, 11) and not digits.startswith("0"):
        return mask_phone("+55" + digits)
    return mask_phone(digits)


def mask_text(text: str) -> str:
    """Mask URL passwords, ``password=`` values, bearer tokens and phone numbers inside free text."""
    text = _URL_PASSWORD.sub(rf"\g<1>{REDACTED}\g<3>", text)
    text = _KV_PASSWORD.sub(rf"\g<1>{REDACTED}", text)
    text = _BEARER.sub(rf"\g<1>{REDACTED}", text)
    return _PHONE.sub(lambda m: mask_phone_value(m.group(0)), text)


def _key_kind(key: object) -> str | None:
    if not isinstance(key, str):
        return None
    name = key.lower().replace("-", "_")
    if name in SECRET_KEYS or name.endswith(SECRET_SUFFIXES):
        return "secret"
    if name in PHONE_KEYS:
        return "phone"
    return None


def _mask_value(value: Any, kind: str | None = None) -> Any:
    if value is None:
        return None
    if kind == "secret":
        return REDACTED
    if kind == "phone" and isinstance(value, str | int) and not isinstance(value, bool):
        return mask_phone_value(value)
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, Mapping):
        return {k: _mask_value(v, _key_kind(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        masked = [_mask_value(v, kind) for v in value]
        return masked if isinstance(value, list | set | frozenset) else tuple(masked)
    return value


def mask_sensitive(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask personal data and secrets in every value (rules: module docstring)."""
    for key, value in list(event_dict.items()):
        if key in ("_record", "_from_structlog", "exc_info"):
            continue
        event_dict[key] = _mask_value(value, _key_kind(key))
    return event_dict


_FIRST_KEYS = ("timestamp", "level", "logger", "event")


def _tidy(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Drop uvicorn's ``color_message`` and put ``timestamp``, ``level``, ``logger``, ``event`` first."""
    event_dict.pop("color_message", None)
    ordered = {key: event_dict.pop(key) for key in _FIRST_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


def configure_logging(
    fmt: Literal["json", "console"] = "json", level: str | int = "INFO", *, stream: TextIO | None = None
) -> None:
    """Route structlog and the standard library's logging through one masked pipeline to ``stream``.

    Args:
        fmt: ``json`` (one JSON object per line, for production) or ``console`` (for humans).
        level: minimum level name or number (``"INFO"``); library chatter stays at WARNING unless DEBUG.
        stream: where lines go (default ``sys.stderr``). Calling again replaces the previous set-up.

    Raises:
        ValueError: unknown ``fmt`` or ``level``.
    """
    if fmt not in ("json", "console"):
        raise ValueError(f"log format must be 'json' or 'console', not {fmt!r}")
    numeric = level if isinstance(level, int) else logging.getLevelName(str(level).upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    out = stream if stream is not None else sys.stderr

    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    common: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
    ]
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(ensure_ascii=False, sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=out.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*common, structlog.stdlib.ExtraAdder(), timestamper],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            mask_sensitive,
            _tidy,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.set_name("billing")

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(
            numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING)
        )
    for name in OWN_HANDLER_LOGGERS:
        library_logger = logging.getLogger(name)
        library_logger.handlers.clear()  # their own logging config may have added some; ours is on root
        library_logger.propagate = True
    logging.captureWarnings(True)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *common,
            structlog.stdlib.PositionalArgumentsFormatter(),
            timestamper,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str | None = None) -> Any:
    """A structlog logger (``structlog.stdlib.BoundLogger``) named ``name``."""
    return structlog.get_logger(name)
