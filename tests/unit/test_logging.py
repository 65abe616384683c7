"""Structured logging: one masked pipeline for structlog and the standard library's loggers."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Iterator

import pytest
import structlog

from billing.logging import configure_logging, mask_phone_value, mask_sensitive, mask_text

ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


@pytest.fixture
def log_lines() -> Iterator[Callable[..., list[dict[str, object]]]]:
    """Configure JSON logging into a buffer; the returned function gives the lines written so far.

    The root logger, the library loggers and structlog are restored afterwards.
    """
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    saved_levels = {
        name: logging.getLogger(name).level
        for name in ("aiormq", "aio_pika", "eventsourcing", "psycopg", "pgserver", "httpx", "httpcore")
    }
    buffer = io.StringIO()
    configure_logging("json", "INFO", stream=buffer)

    def lines() -> list[dict[str, object]]:
        return [json.loads(line) for line in buffer.getvalue().splitlines()]

    try:
        yield lines
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)
        logging.captureWarnings(False)


def without_timestamp(line: dict[str, object]) -> dict[str, object]:
    assert ISO_UTC.match(str(line["timestamp"])), line["timestamp"]
    return {k: v for k, v in line.items() if k != "timestamp"}


# ---- the pipeline --------------------------------------------------------------------------------------


def test_structlog_event_is_one_masked_json_line(log_lines: Callable[[], list[dict[str, object]]]) -> None:
    structlog.contextvars.bind_contextvars(tenant_id="t-1")

    structlog.get_logger("billing.test").info(
        "sending to %s",
        "+5511987654321",
        phone="+5511987654321",
        telefone="(31) 3000-1234",
        gateway_number="5511987654321",
        number="+16502530000",
        api_key="bk_abcdefghijklmnop",
        headers={"X-Billing-API-Key": "bk_abc", "apikey": "evo-key", "accept": "json"},
        database_url="postgresql://billing:s3cret@db:5432/billing",
        note="customer 5521998765432 asked to call back",
        count=3,
    )

    [line] = log_lines()
    assert list(line)[:4] == ["timestamp", "level", "logger", "event"]
    assert without_timestamp(line) == {
        "level": "info",
        "logger": "billing.test",
        "event": "sending to +55 11 9****-4321",
        "phone": "+55 11 9****-4321",
        "telefone": "+55 31 3***-1234",
        "gateway_number": "+55 11 9****-4321",
        "number": "+1 ******0000",
        "api_key": "***",
        "headers": {"X-Billing-API-Key": "***", "apikey": "***", "accept": "json"},
        "database_url": "postgresql://billing:***@db:5432/billing",
        "note": "customer +55 21 9****-5432 asked to call back",
        "count": 3,
        "tenant_id": "t-1",
    }


def test_stdlib_library_logs_go_through_the_same_masking(
    log_lines: Callable[[], list[dict[str, object]]],
) -> None:
    structlog.contextvars.bind_contextvars(queue_id="q-9")

    logging.getLogger("uvicorn.error").warning(
        "connect %s failed for %s", "amqp://guest:guest@rabbit:5672/", "+5511987654321"
    )
    logging.getLogger("eventsourcing").error(
        "lost token", extra={"token": "abc.def", "telefone": "11987654321"}
    )

    first, second = map(without_timestamp, log_lines())
    assert first == {
        "level": "warning",
        "logger": "uvicorn.error",
        "event": "connect amqp://guest:***@rabbit:5672/ failed for +55 11 9****-4321",
        "queue_id": "q-9",
    }
    assert second == {
        "level": "error",
        "logger": "eventsourcing",
        "event": "lost token",
        "queue_id": "q-9",
        "token": "***",
        "telefone": "+55 11 9****-4321",
    }


def test_tracebacks_are_masked(log_lines: Callable[[], list[dict[str, object]]]) -> None:
    try:
        raise ValueError("bad number 5511987654321 for postgresql://u:pw@h/db")
    except ValueError:
        structlog.get_logger("billing.test").exception("failed")

    [line] = log_lines()
    assert line["event"] == "failed"
    exception = str(line["exception"])
    assert exception.endswith("ValueError: bad number +55 11 9****-4321 for postgresql://u:***@h/db")
    assert "5511987654321" not in exception and "pw@" not in exception


def test_library_info_chatter_is_held_back(log_lines: Callable[[], list[dict[str, object]]]) -> None:
    logging.getLogger("aiormq.connection").info("heartbeat")
    logging.getLogger("aio_pika.robust_connection").warning("reconnecting")
    structlog.get_logger("billing.test").debug("not at INFO")

    assert [line["event"] for line in log_lines()] == ["reconnecting"]


def test_console_format_is_masked_too() -> None:
    buffer = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("console", "INFO", stream=buffer)
        structlog.get_logger("billing.test").info("hello", phone="+5511987654321")
    finally:
        structlog.reset_defaults()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging.captureWarnings(False)

    output = buffer.getvalue()
    assert "[info     ] hello" in output
    assert "phone='+55 11 9****-4321'" in output
    assert "987654321" not in output


@pytest.mark.parametrize(("fmt", "level"), [("xml", "INFO"), ("json", "LOUD")])
def test_configure_logging_refuses_unknown_format_or_level(fmt: str, level: str) -> None:
    with pytest.raises(ValueError):
        configure_logging(fmt, level)  # type: ignore[arg-type]


# ---- the rules -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("send to +5511987654321 now", "send to +55 11 9****-4321 now"),
        ("gateway 5511987654321", "gateway +55 11 9****-4321"),
        ("national 11987654321", "national +55 11 9****-4321"),
        ("written (11) 98765-4321", "written +55 11 9****-4321"),
        ("written +55 11 98765-4321", "written +55 11 9****-4321"),
        ("landline 553130001234", "landline +55 31 3***-1234"),
        ("abroad +16502530000", "abroad +1 ******0000"),
        ("jid 553198296801@s.whatsapp.net", "jid +55 31 9***-6801@s.whatsapp.net"),
        ("phone=5511987654321,", "phone=+55 11 9****-4321,"),
        ("postgresql://billing:s3cret@db:5432/billing", "postgresql://billing:***@db:5432/billing"),
        ("amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/"),
        ("host=db password=s3cret dbname=x", "host=db password=*** dbname=x"),
        ("Authorization: Bearer eyJhbGciOi.eyJzdWIi.sig", "Authorization: Bearer ***"),
    ],
)
def test_mask_text(text: str, masked: str) -> None:
    assert mask_text(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "queue 7f1d2c3b-4a2b-4c3d-8e9f-123456789012",  # a UUID's all-digit last group
        "at 2025-01-15T10:30:00+00:00",
        "amount 1234567890.50",
        "id 12345678901234",  # 14 digits: not a phone
        "port 127.0.0.1:5432",
        "postgresql://root@127.0.0.1:5432/billing",  # no password
        "+55 11 9****-4321",  # already masked
    ],
)
def test_mask_text_leaves_other_values_alone(text: str) -> None:
    assert mask_text(text) == text


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("+5511987654321", "+55 11 9****-4321"),
        ("5511987654321", "+55 11 9****-4321"),
        ("(11) 98765-4321", "+55 11 9****-4321"),
        (5511987654321, "+55 11 9****-4321"),
        ("+16502530000", "+1 ******0000"),
        ("+55 11 9****-4321", "+55 11 9****-4321"),
        ("123", "****"),
        ("", "****"),
    ],
)
def test_mask_phone_value(value: object, masked: str) -> None:
    assert mask_phone_value(value) == masked


def test_mask_sensitive_masks_keys_at_any_depth_and_is_idempotent() -> None:
    event = {
        "event": "gateway call",
        "request": {
            "headers": {"Authorization": "Bearer x", "x-billing-api-key": "bk"},
            "numbers": ["+5511987654321"],
        },
        "contacts": [{"nome": "Maria", "telefone": "11987654321"}],
        "jwt_secret": "0123456789abcdef0123456789abcdef",
        "password": None,
        "phone": None,
    }

    once = mask_sensitive(None, "info", dict(event))
    twice = mask_sensitive(None, "info", dict(once))

    assert once == {
        "event": "gateway call",
        "request": {
            "headers": {"Authorization": "***", "x-billing-api-key": "***"},
            "numbers": ["+55 11 9****-4321"],
        },
        "contacts": [{"nome": "Maria", "telefone": "+55 11 9****-4321"}],
        "jwt_secret": "***",
        "password": None,
        "phone": None,
    }
    assert twice == once
