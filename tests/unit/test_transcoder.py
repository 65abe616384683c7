"""The msgspec transcoder writes exactly the JSON of the library's own transcoder (stored events stay
readable by either) and reads it back to the same values."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from enum import StrEnum
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import JSONTranscoder, TranscodingNotRegisteredError

from billing.eventstore import EventStore, MsgspecTranscoder


class Colour(StrEnum):
    RED = "red"


def transcoders() -> tuple[MsgspecTranscoder, JSONTranscoder]:
    fast, plain = MsgspecTranscoder(), JSONTranscoder()
    for transcoder in (fast, plain):
        EventStore.register_transcodings(EventStore.__new__(EventStore), transcoder)
    return fast, plain


STATES: list[dict[str, Any]] = [
    {
        "timestamp": datetime(2025, 1, 24, 21, 5, 0, 123456, tzinfo=UTC),
        "tenant_id": UUID("12345678-1234-5678-1234-567812345678"),
        "index": 7,
        "fields": {"nome": "José da Silva — ação", "valor": "R$ 1.234,56", "empty": ""},
        "amount": Decimal("1234.56"),
        "amount_total": None,
        "due_date": date(2025, 1, 15),
        "retryable": True,
        "rate": 0.1,
        "rejections": [{"index": 2, "code": "invalid_phone", "at": datetime(2025, 1, 1, tzinfo=UTC)}],
        "pair": ("a", 1),
        "status": Colour.RED,
        "resume_at": datetime(2025, 1, 27, 8, 0, tzinfo=timezone(timedelta(hours=-3))),
        "tricky": {"_type_": "not a tag"},
        "quote": 'say "hi"\n\\ \x01 \u2028',
    },
    {},
]


@pytest.mark.parametrize("state", STATES)
def test_writes_the_same_bytes_as_the_library_transcoder(state: dict[str, Any]) -> None:
    fast, plain = transcoders()
    assert fast.encode(state) == plain.encode(state)


@pytest.mark.parametrize("state", STATES)
def test_reads_back_what_the_library_transcoder_reads(state: dict[str, Any]) -> None:
    fast, plain = transcoders()
    data = plain.encode(state)
    decoded = fast.decode(data)
    assert decoded == plain.decode(data)
    assert decoded["tenant_id"] == UUID("12345678-1234-5678-1234-567812345678") if state else decoded == {}


def test_an_unregistered_type_is_refused_as_the_library_does() -> None:
    fast, _ = transcoders()
    with pytest.raises(TranscodingNotRegisteredError):
        fast.encode({"x": object()})
