"""The auditor's history read model (table ``contact_history``, ``sql/006_history.sql``): one row per
Contact event, written by the projection in the same transaction as the other views and its tracking
record, so it is exactly once and a rebuild gives the same rows (promise 6).

Every ``billing.Contact.*`` event is kept, including types added later (receipts, replies): the row
holds the event's own fields as recorded, never a value looked up at read time. The tenant of events
after the creation comes from the contact's creation row (``campaign_contacts``) or from the same batch.
"""

from __future__ import annotations

import codecs
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

import msgspec
import psycopg
from psycopg.types.json import Jsonb

__all__ = ["COLUMNS", "TYPES", "event_data", "handles", "history_row", "write_history"]

COLUMNS = ("notification_id", "tenant_id", "contact_id", "version", "event_type", "at", "data")
TYPES = ("bigint", "uuid", "uuid", "integer", "text", "timestamptz", "jsonb")
"""The SQL types of :data:`COLUMNS` (``sql/006_history.sql``; a test holds them against the catalog): the
rows are written in PostgreSQL's binary ``COPY`` format, which names each column's type."""
_PREFIX = "billing.Contact."
_ENVELOPE = frozenset({"originator_id", "originator_version", "timestamp", "originator_topic"})
_COPY = f"COPY contact_history ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"


def handles(topic: str) -> bool:
    """True for the topics the history keeps (every Contact event)."""
    return topic.startswith(_PREFIX)


def event_data(event: Any) -> dict[str, Any]:
    """The event's own fields as JSON-ready builtins (UUIDs, instants and amounts as strings)."""
    result: dict[str, Any] = msgspec.to_builtins(_own_fields(event))
    return result


def _own_fields(event: Any) -> dict[str, Any]:
    """The event's own fields (its dataclass fields but the envelope), by name, in field order."""
    names = _FIELD_NAMES.get(type(event))
    if names is None:
        names = tuple(f.name for f in dataclasses.fields(event) if f.name not in _ENVELOPE)
        _FIELD_NAMES[type(event)] = names
    return {name: getattr(event, name) for name in names}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _as_is(document: bytes) -> bytes:
    return document


def history_row(
    notification_id: int, tenant_id: UUID, event: Any, *, encoding: str = "utf-8"
) -> tuple[Any, ...]:
    """The ``contact_history`` row of one decoded Contact event, as :func:`write_history` copies it:
    ``data`` a :class:`~psycopg.types.json.Jsonb` of the event's fields already encoded as JSON, in
    ``.obj`` as bytes of ``encoding`` (the connection's client encoding, a Python codec name: PostgreSQL
    reads the text it receives in it), which psycopg sends as they are.

    Raises:
        UnicodeEncodeError: a character the client encoding cannot hold (as a text parameter would).
    """
    # msgspec writes UUIDs, instants, dates and decimals as the same strings as to_builtins does
    document = msgspec.json.encode(_own_fields(event))  # UTF-8
    if encoding != "utf-8":
        document = document.decode("utf-8").encode(encoding)
    return (
        notification_id,
        tenant_id,
        event.originator_id,
        event.originator_version,
        type(event).TOPIC,
        event.timestamp,
        Jsonb(document, dumps=_as_is),
    )


def write_history(
    conn: psycopg.Connection[Any],
    events: Sequence[tuple[int, Any]],
    contacts: Mapping[UUID, Mapping[str, Any]],
) -> None:
    """Append the history rows of ``events`` (``(notification id, decoded event)`` in log order; events of
    other aggregates are ignored) with one COPY. A contact event whose contact was never projected is
    skipped (its creation failed and is recorded in ``projection_errors``). ``contacts`` are the
    ``campaign_contacts`` rows by contact id the caller holds (the views writer's, with their
    ``tenant_id``): only the tenants of the other contacts are read from the table."""
    wanted = [(nid, e) for nid, e in events if handles(type(e).TOPIC)]
    if not wanted:
        return
    tenants: dict[UUID, UUID] = {}
    for _, e in wanted:
        tenant = getattr(e, "tenant_id", None)
        if tenant is not None:
            tenants[e.originator_id] = tenant
    unknown = {e.originator_id for _, e in wanted} - tenants.keys()
    held = unknown & contacts.keys()
    tenants.update((cid, contacts[cid]["tenant_id"]) for cid in held)
    unknown -= held  # a topic the views writer does not preload (added later): read from the table
    if unknown:
        rows = conn.execute(
            "SELECT contact_id, tenant_id FROM campaign_contacts WHERE contact_id = ANY(%s)", (list(unknown),)
        ).fetchall()
        for row in rows:
            cid, tid = (row["contact_id"], row["tenant_id"]) if isinstance(row, dict) else row
            tenants[cid] = tid
    encoding = codecs.lookup(conn.info.encoding).name  # "utf-8" for a UTF8 database, the usual case
    with conn.cursor() as cur, cur.copy(_COPY) as copy:
        copy.set_types(TYPES)
        for nid, e in wanted:
            tenant = tenants.get(e.originator_id)
            if tenant is not None:
                copy.write_row(history_row(nid, tenant, e, encoding=encoding))
