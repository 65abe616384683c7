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

from billing.domain.contact import Contact
from billing.eventstore import EventStore, MsgspecTranscoder
from tests.unit.test_aggregates import CREATION_VALUES


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


def test_tags_resolve_inside_lists_and_untagged_lookalikes_stay_dicts() -> None:
    fast, plain = transcoders()
    data = (
        b'{"a":[{"_type_":"uuid_hex","_data_":"12345678123456781234567812345678"},{"x":1}],'
        b'"b":{"_type_":"decimal_str"},"c":{"_data_":1,"_type_":"date_iso","z":0},'
        b'"d":{"_type_":"datetime_iso","_data_":"2025-01-01T00:00:00+00:00"}}'
    )
    assert fast.decode(data) == plain.decode(data)
    uuid = fast.decode(b'{"_type_":"uuid_hex","_data_":"12345678123456781234567812345678"}')
    assert uuid == UUID("12345678-1234-5678-1234-567812345678")
    assert hash(uuid) == hash(UUID("12345678-1234-5678-1234-567812345678")) and str(uuid).count("-") == 4


def test_a_creation_event_saved_alone_is_stored_as_its_aggregate_would_be() -> None:
    store = EventStore(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    at = datetime(2025, 1, 24, 21, 5, tzinfo=UTC)
    values = CREATION_VALUES["added"]  # the fields a POST gives a contact
    alone, through = UUID(int=1), UUID(int=2)
    store.save(Contact.creation_event(Contact.Added, id=alone, at=at, **values))
    store.save(Contact._create(Contact.Added, id=through, timestamp=at, **values))
    [stored_alone] = store.recorder.select_events(alone)
    [stored_through] = store.recorder.select_events(through)
    assert stored_alone.state == stored_through.state
    assert (stored_alone.topic, stored_alone.originator_version) == ("billing.Contact.Added", 1)
    assert store.repository.get(alone).phone == "+5511987654321"


def test_values_shared_by_many_events_encode_as_the_library_does_and_the_reuse_stays_bounded() -> None:
    fast, plain = transcoders()
    tenant, at = UUID("12345678-1234-5678-1234-567812345678"), datetime(2025, 1, 24, 21, 5, tzinfo=UTC)
    states = [
        {
            "tenant_id": tenant,
            "timestamp": at,
            "id": UUID(int=i),
            "amount": Decimal(i),
            "day": date(2025, 1, 1),
        }
        for i in range(1000)
    ]
    assert [fast.encode(state) for state in states] == [plain.encode(state) for state in states]
    assert 0 < len(fast._recent) <= 64
    assert (
        fast.encode({"tenant_id": UUID(str(tenant))})
        == b'{"tenant_id":{"_type_":"uuid_hex","_data_":"12345678123456781234567812345678"}}'
    )


def test_ids_and_instants_repeated_by_many_events_are_parsed_once_and_the_reuse_stays_bounded() -> None:
    fast, plain = transcoders()
    tenant, at = UUID("12345678-1234-5678-1234-567812345678"), datetime(2025, 1, 24, 21, 5, tzinfo=UTC)
    stored = [
        plain.encode({"tenant_id": tenant, "timestamp": at, "id": UUID(int=i), "amount": Decimal(i)})
        for i in range(5000)
    ]
    decoded = [fast.decode(data) for data in stored]
    assert decoded == [plain.decode(data) for data in stored]
    assert decoded[0]["tenant_id"] is decoded[1]["tenant_id"]  # one value for one text
    assert decoded[4998]["tenant_id"] is decoded[4999]["tenant_id"]  # (again after a clearing)
    assert decoded[0]["timestamp"] is decoded[4999]["timestamp"]  # one instant: never cleared
    assert set(fast._seen) == {"uuid_hex", "datetime_iso"}
    assert all(0 < len(values) <= 4096 for values in fast._seen.values())
    assert decoded[4999]["id"] == UUID(int=4999) and decoded[1]["id"] == UUID(int=1)
