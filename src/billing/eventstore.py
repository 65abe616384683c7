"""The event store: the ``eventsourcing`` library's Application on PostgreSQL.

One :class:`EventStore` per process (each opens its own connection pool). Its recorder is also the
*notification log* that projections, the outbox relay and the scheduler follow, in notification-id
order. The library is synchronous: async callers go through ``asyncio.to_thread``.

Library facts relied on (eventsourcing 9.5, ``eventsourcing.postgres``):
- ``save(*aggregates)`` writes all their pending events in **one transaction** (promise 1), taking an
  EXCLUSIVE lock on the events table so notification ids commit in order; ids can still have gaps
  after rollbacks, so followers read "greater than the last position", never "last + 1".
- ``POSTGRES_ENABLE_DB_FUNCTIONS`` stays off: with it on, followers were seen to miss notification ids.
- Each insert sends ``NOTIFY <table>``; NOTIFY can be lost, so followers also poll on a timer.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypeVar
from uuid import UUID, SafeUUID

import msgspec
from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import Aggregate, DomainEvent
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    InterfaceError,
    JSONTranscoder,
    Notification,
    OperationalError,
    Recording,
    StoredEvent,
    Transcoder,
    Transcoding,
    UUIDAsHex,
)
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.utils import retry
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Composable, Identifier

from billing.domain import apikey, campaign, contact, queue, template, tenant  # noqa: F401  (registers topics)
from billing.metrics import SAVE_LATENCY
from billing.pgcheck import ConnectionCheck

EVENTS_TABLE = "billing_events"
NOTIFY_CHANNEL = EVENTS_TABLE


class DateAsISO(Transcoding):
    """Transcodes :class:`datetime.date` as ``aaaa-mm-dd`` (the library has none for plain dates)."""

    type = date
    name = "date_iso"

    def encode(self, obj: date) -> str:
        return obj.isoformat()

    def decode(self, data: str) -> date:
        return date.fromisoformat(data)


_PLAIN = frozenset({str, int, float, bool, type(None)})
_RECENT_TAGS = 64
"""How many tagged values :class:`MsgspecTranscoder` keeps for reuse (cleared when full)."""
_SEEN_VALUES = 4096
"""How many decoded ids and instants :class:`MsgspecTranscoder` keeps per type (cleared when full)."""


class MsgspecTranscoder(JSONTranscoder):
    """The library's JSON transcoder, encoding and decoding with msgspec instead of the ``json`` module.

    Byte for byte the same JSON as :class:`~eventsourcing.persistence.JSONTranscoder` (compact separators,
    UTF-8 unescaped, every registered type as ``{"_type_": name, "_data_": …}``), so stored events stay
    readable by either. msgspec would encode UUIDs, datetimes and decimals natively (as bare strings), so
    values of registered types are tagged first, and tags are resolved after decoding.
    """

    def __init__(self) -> None:
        super().__init__()
        self._encoder = msgspec.json.Encoder()
        self._decoders: dict[str, Callable[[Any], Any]] = {}
        self._encoders: dict[type, tuple[str, Callable[[Any], Any], bool]] = {}
        # id(value) -> (value, its tag) for UUIDs and datetimes (immutable): the events of one save repeat
        # the same few such objects (tenant, campaign, queue and template ids, the timestamp). Holding the
        # value keeps its id from being reused while the entry exists.
        self._recent: dict[int, tuple[Any, dict[str, Any]]] = {}
        # decoding's mirror: name -> {text: value} for the same immutable types, so the ids and instants
        # that many stored events repeat (tenant, campaign, queue, template; a batch's timestamp) are
        # parsed once. Bounded: cleared when full.
        self._seen: dict[str, dict[str, Any]] = {}

    def register(self, transcoding: Transcoding) -> None:
        super().register(transcoding)
        # The library's own transcodings (and DateAsISO), decoded and encoded by the C functions they call
        # (same values, without a Python method and its type assertion per value).
        fast = _FAST_DECODERS.get(type(transcoding))
        self._decoders[transcoding.name] = fast or transcoding.decode
        encode = _FAST_ENCODERS.get(type(transcoding), transcoding.encode)
        reused = type(transcoding) in _REUSED_TAGS
        self._encoders[transcoding.type] = (transcoding.name, encode, reused)
        if reused:
            self._seen[transcoding.name] = {}
        else:
            self._seen.pop(transcoding.name, None)

    def encode(self, obj: Any) -> bytes:
        return self._encoder.encode(self._tag(obj))

    def decode(self, data: bytes) -> Any:
        return self._untag(msgspec.json.decode(data))

    def _tag(self, obj: Any) -> Any:
        kind = type(obj)
        if kind in _PLAIN:
            return obj
        if kind is dict:
            tagged = {}
            encoders, recent = self._encoders, self._recent
            for key, value in obj.items():  # inline the common cases: no call per plain or tagged value
                kind = type(value)
                if kind in _PLAIN:
                    tagged[key] = value
                elif (known := recent.get(id(value))) is not None and known[0] is value:
                    tagged[key] = known[1]  # msgspec only reads it: one dict may stand in many events
                elif (encoder := encoders.get(kind)) is not None:
                    data = encoder[1](value)
                    tag = {"_type_": encoder[0], "_data_": data if type(data) in _PLAIN else self._tag(data)}
                    if encoder[2]:
                        if len(recent) >= _RECENT_TAGS:
                            recent.clear()
                        recent[id(value)] = (value, tag)
                    tagged[key] = tag
                else:
                    tagged[key] = self._tag(value)
            return tagged
        if kind is list or kind is tuple:
            return [self._tag(value) for value in obj]
        transcoding = self.types.get(kind)
        if transcoding is not None:
            return {"_type_": transcoding.name, "_data_": self._tag(transcoding.encode(obj))}
        if isinstance(obj, (str, int, float)):  # enums and other subclasses: json writes their value
            return obj
        return self._encode_obj(obj)  # raises the library's TranscodingNotRegisteredError

    def _untag(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is dict:
            if len(obj) == 2 and "_type_" in obj and "_data_" in obj:
                return self._resolve(obj)
            for key, value in obj.items():
                kind = type(value)
                if kind is dict:
                    tagged = len(value) == 2 and "_type_" in value and "_data_" in value
                    obj[key] = self._resolve(value) if tagged else self._untag(value)
                elif kind is list:
                    obj[key] = self._untag(value)
            return obj
        if kind is list:
            return [self._untag(value) for value in obj]
        return obj

    def _resolve(self, tagged: dict[str, Any]) -> Any:
        """The value of one ``{"_type_": name, "_data_": data}``."""
        data = tagged["_data_"]
        if type(data) is dict or type(data) is list:
            data = self._untag(data)
        name = tagged["_type_"]
        seen = self._seen.get(name)
        if seen is not None and type(data) is str:  # an id or instant: the same text, the same value
            value = seen.get(data)
            if value is None:
                if len(seen) >= _SEEN_VALUES:
                    seen.clear()
                value = seen[data] = self._decoders[name](data)
            return value
        decoder = self._decoders.get(name)
        if decoder is None:  # an unknown name: the library's own error
            return self._decode_obj({"_type_": name, "_data_": data})
        return decoder(data)


_UNKNOWN_SAFETY = SafeUUID.unknown
"""Read once: an enum member's attribute access goes through a Python property (6 % of a rebuild)."""


def _uuid_from_hex(data: str) -> UUID:
    """``UUID(data)`` for the 32 hex digits ``UUIDAsHex`` writes, without ``UUID.__init__``'s parsing."""
    if type(data) is not str or len(data) != 32:
        return UUIDAsHex().decode(data)
    value = object.__new__(UUID)
    object.__setattr__(value, "int", int(data, 16))
    object.__setattr__(value, "is_safe", _UNKNOWN_SAFETY)
    return value


_FAST_ENCODERS: dict[type, Callable[[Any], Any]] = {
    UUIDAsHex: operator.attrgetter("hex"),
    DatetimeAsISO: datetime.isoformat,
    DecimalAsStr: str,
    DateAsISO: date.isoformat,
}
"""What each transcoding's ``encode`` returns, computed by the C function it calls (``obj.hex``,
``isoformat``, ``str``); keyed by the transcoding's class, so a subclass that encodes otherwise keeps its
own method."""

_REUSED_TAGS = frozenset({UUIDAsHex, DatetimeAsISO})
"""The transcodings whose tags :class:`MsgspecTranscoder` reuses for the same object (ids and instants are
passed to many events; amounts and dates are parsed per contact)."""

_FAST_DECODERS: dict[type, Callable[[Any], Any]] = {
    UUIDAsHex: _uuid_from_hex,
    DatetimeAsISO: datetime.fromisoformat,
    DecimalAsStr: Decimal,
}


class CopyingApplicationRecorder(PostgresApplicationRecorder):
    """The library's PostgreSQL recorder, but a large save goes through ``COPY`` in one transaction.

    The library sends a save as one pipelined ``executemany`` INSERT. With thousands of events (a
    10,000-contact POST is ~5 MB of parameters) that pipeline was seen to stall for good on this stack
    (psycopg 3.3.9 — over a Unix socket as well as over TCP here), holding the events table's lock. ``COPY
    FROM STDIN`` streams with flow control, keeps the save atomic (one transaction) and is the fastest
    path PostgreSQL has. Same table lock and NOTIFY as the library, so followers see ids in commit order.
    Uniqueness violations still surface as the library's ``IntegrityError`` (the datastore translates).
    """

    copy_threshold = 100
    """Saves with at least this many events use COPY; smaller ones keep the library's path."""

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        if len(stored_events) < self.copy_threshold:
            ids: Sequence[int] | None = super().insert_events(stored_events, **kwargs)
            return ids
        copied: list[int] = self._copy_events(stored_events)
        return copied

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)  # as the library's own path
    def _copy_events(self, stored_events: Sequence[StoredEvent]) -> list[int]:
        table = SQL("{0}.{1}").format(Identifier(self.datastore.schema), Identifier(self.events_table_name))
        with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as curs:
            self._lock_table(curs)
            self._notify_channel(curs)
            self._copy_rows(curs, table, stored_events)
            # Under the EXCLUSIVE lock no other insert takes ids, so this save's ids are the last n.
            curs.execute(
                SQL("SELECT currval(pg_get_serial_sequence({0}, 'notification_id')) AS last").format(
                    SQL("%s")
                ),
                (f"{self.datastore.schema}.{self.events_table_name}",),
            )
            row = curs.fetchone()
            assert row is not None
            last = int(row["last"])
        return list(range(last - len(stored_events) + 1, last + 1))

    def _copy_rows(self, curs: Any, table: Composable, stored_events: Sequence[StoredEvent]) -> None:
        """``COPY`` ``stored_events`` into ``table`` (inside the caller's transaction) in PostgreSQL's binary
        format: the ``state`` bytes go as they are instead of the text format's hex escape (twice their
        size, parsed back by the server). Same rows: ``originator_id`` (the datastore's id type),
        ``originator_version`` (``bigint``), ``topic``, ``state`` (``bytea``), the library's columns.
        Measured: 10,000 rows of ~970 B, 0.06 s in text format, 0.024 s in binary.

        Raises:
            psycopg.Error: as the statement fails (a duplicate version: a unique violation).
        """
        copy_sql = SQL(
            "COPY {0} (originator_id, originator_version, topic, state) FROM STDIN (FORMAT BINARY)"
        ).format(table)
        with curs.copy(copy_sql) as copy:
            copy.set_types([self.datastore.originator_id_type, "int8", "text", "bytea"])
            for event in stored_events:
                copy.write_row((event.originator_id, event.originator_version, event.topic, event.state))

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)  # as the library's own
    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        """The library's query (same filters, same order), read as tuples rather than dicts: a replay reads
        every event through here, and building a dict per row was a third of the read."""
        conditions: list[SQL] = []
        params: list[object] = []
        if start is not None:
            conditions.append(SQL("notification_id >= %s" if inclusive_of_start else "notification_id > %s"))
            params.append(start)
        if stop is not None:
            conditions.append(SQL("notification_id <= %s"))
            params.append(stop)
        if topics:
            conditions.append(SQL("topic = ANY(%s)"))
            params.append(list(topics))
        params.append(limit)
        statement = SQL(
            "SELECT notification_id, originator_id, originator_version, topic, state FROM {0}.{1}{2} "
            "ORDER BY notification_id LIMIT %s"
        ).format(
            Identifier(self.datastore.schema),
            Identifier(self.events_table_name),
            SQL(" WHERE ") + SQL(" AND ").join(conditions) if conditions else SQL(""),
        )
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as curs:
            curs.execute(statement, params, prepare=True)
            return [
                Notification(
                    id=row[0],
                    originator_id=row[1],
                    originator_version=row[2],
                    topic=row[3],
                    state=bytes(row[4]),
                )
                for row in curs.fetchall()
            ]

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_unless_moved(self, stored_events: Sequence[StoredEvent]) -> set[UUID]:
        """Insert the events of every originator that nobody else wrote to since it was loaded; skip the
        others. One transaction under the library's table lock, so the check and the insert cannot be
        interleaved with another writer: a large batch (e.g. cancelling 10,000 contacts while workers
        send) is never rolled back whole by one conflicting contact.

        An originator counts as unchanged when its highest stored version is one less than the lowest
        version among its new events. Returns the ids of the originators skipped (reload and retry them).

        Raises:
            psycopg.Error: the database is unreachable (after the library's retries).
        """
        first: dict[UUID, int] = {}
        for event in stored_events:
            oid = UUID(str(event.originator_id))
            first[oid] = min(first.get(oid, event.originator_version), event.originator_version)
        if not first:
            return set()
        table = SQL("{0}.{1}").format(Identifier(self.datastore.schema), Identifier(self.events_table_name))
        with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as curs:
            self._lock_table(curs)
            curs.execute(
                SQL(
                    "SELECT originator_id, max(originator_version) AS version FROM {0} "
                    "WHERE originator_id = ANY(%s) GROUP BY originator_id"
                ).format(table),
                (list(first),),
            )
            current = {row["originator_id"]: row["version"] for row in curs.fetchall()}
            moved = {oid for oid, version in first.items() if current.get(oid, 0) != version - 1}
            todo = [e for e in stored_events if UUID(str(e.originator_id)) not in moved]
            if todo:
                self._notify_channel(curs)
                self._copy_rows(curs, table, todo)
        return moved


class EventStore(Application[Any]):
    """The billing application's event store (aggregates: Campaign, Queue, Contact, Tenant, ApiKey,
    Template). Its events table is ``billing_events``."""

    name = "billing"

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[Any]]:
        """The library's ``save`` (one transaction, see the module docstring), collecting the pending events
        of our aggregates, and our bare domain events, with a plain class check: the library's ``isinstance``
        against its ``typing.Protocol`` classes costs ~0.2 ms per aggregate, a quarter of a 10,000-contact
        save (and ~13 % of a 10,000-contact POST for bare events).
        Timed into ``billing_eventstore_save_seconds``."""
        with SAVE_LATENCY.time():
            return self._save(objs, kwargs)

    def _save(self, objs: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Recording[Any]]:
        processing_event: ProcessingEvent[Any] = ProcessingEvent()
        for obj in objs:
            if isinstance(obj, Aggregate):
                processing_event.events.extend(obj.collect_events())
                processing_event.aggregates[obj.id] = obj
            elif isinstance(obj, DomainEvent):  # a bare creation event (Contact.creation_event)
                processing_event.events.append(obj)
            elif obj is not None:
                processing_event.collect_events(obj)
        processing_event.saved_kwargs.update(kwargs)
        recordings = self._record(processing_event)
        self._take_snapshots(processing_event)
        self._notify(recordings)
        self.notify(processing_event.events)  # as the library's save (a deprecated hook)
        return recordings

    def construct_transcoder(self) -> Transcoder:
        """msgspec in place of the ``json`` module (same stored JSON; see :class:`MsgspecTranscoder`)."""
        transcoder = MsgspecTranscoder()
        self.register_transcodings(transcoder)
        return transcoder

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(DateAsISO())


def event_store_env(database_url: str, *, pool_size: int = 5, create_table: bool = True) -> dict[str, str]:
    """The library's environment for ``database_url`` (a TCP libpq URL).

    Raises:
        ValueError: the URL has no TCP host or no database name.
    """
    info: Mapping[str, Any] = conninfo_to_dict(database_url)
    host = str(info.get("host") or "")
    if not host or host.startswith("/"):
        raise ValueError("the event store needs a TCP host (a Unix-socket pipeline stalls on large saves)")
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": str(info["dbname"]),
        "POSTGRES_HOST": host,
        "POSTGRES_PORT": str(info.get("port") or 5432),
        "POSTGRES_USER": str(info.get("user") or "postgres"),
        "POSTGRES_PASSWORD": str(info.get("password") or ""),
        "POSTGRES_POOL_SIZE": str(pool_size),
        "POSTGRES_MAX_OVERFLOW": str(pool_size),
        "POSTGRES_CONN_MAX_AGE": "600",
        "POSTGRES_PRE_PING": "y",
        "POSTGRES_LOCK_TIMEOUT": "10",
        "POSTGRES_ENABLE_DB_FUNCTIONS": "n",
        "CREATE_TABLE": "y" if create_table else "n",
        "APPLICATION_RECORDER_TOPIC": "billing.eventstore:CopyingApplicationRecorder",
    }


def open_event_store(database_url: str, *, pool_size: int = 5, create_table: bool = True) -> EventStore:
    """Build the process's :class:`EventStore` (opens a connection pool; creates the table if asked).

    The library's pre-ping (``POSTGRES_PRE_PING``: an empty query before every lend) is replaced by
    :class:`~billing.pgcheck.ConnectionCheck`, which replaces a dead connection as well but pings only one
    that idled a few seconds or has something waiting on its socket."""
    store = EventStore(env=event_store_env(database_url, pool_size=pool_size, create_table=create_table))
    recorder = store.recorder
    if isinstance(recorder, PostgresApplicationRecorder):
        pool = recorder.datastore.pool
        assert getattr(pool, "_check", None) is not None, "the library's pool no longer pre-pings"
        pool._check = ConnectionCheck()
    return store


A = TypeVar("A")


def get_owned(
    store: EventStore, aggregate_id: UUID, kind: type[A], tenant_id: UUID | None = None
) -> A | None:
    """The aggregate ``aggregate_id`` when it exists, is a ``kind`` and (if ``tenant_id`` is given) belongs
    to that tenant; else None — unknown and foreign ids are indistinguishable (promise 7).

    Raises:
        Exception: the database is unreachable.
    """
    try:
        aggregate: object = store.repository.get(aggregate_id)
    except AggregateNotFoundError:
        return None
    if not isinstance(aggregate, kind):
        return None
    if tenant_id is not None and getattr(aggregate, "tenant_id", None) != tenant_id:
        return None
    return aggregate


def get_at_version(store: EventStore, aggregate_id: UUID, kind: type[A], version: int) -> A | None:
    """The aggregate ``aggregate_id`` as it was at ``version`` (its events up to that one folded, the
    library's ``repository.get(..., version=...)``), when it exists and is a ``kind``; else None.

    Raises:
        Exception: the database is unreachable.
    """
    try:
        aggregate: object = store.repository.get(aggregate_id, version=version)
    except AggregateNotFoundError:
        return None
    return aggregate if isinstance(aggregate, kind) else None


def load_many(store: EventStore, aggregate_ids: Iterable[UUID]) -> dict[UUID, Any]:
    """The current state of many aggregates, read with ONE query on the events table (primary key
    ``(originator_id, originator_version)``) instead of one ``repository.get`` each.

    Returns ``{id: aggregate}`` for the ids that exist (unknown ids are absent). Each aggregate is the
    library's own reconstruction (every event's ``mutate`` in version order), so saving it after a
    command conflicts on its version exactly as one loaded through the repository would.

    Raises:
        psycopg.Error: the database is unreachable.
    """
    return {
        aggregate_id: fold(events) for aggregate_id, events in events_of_many(store, aggregate_ids).items()
    }


def events_of_many(store: EventStore, aggregate_ids: Iterable[UUID]) -> dict[UUID, list[Any]]:
    """The domain events of many aggregates, in version order, read with ONE query: ``{id: events}`` for
    the ids that have any. :func:`fold` turns a list into the aggregate; folding the same list twice
    gives two independent aggregates (the events are immutable). On another recorder than PostgreSQL's
    (the library's in-memory one), one read per id.

    Raises:
        psycopg.Error: the database is unreachable.
    """
    ids = list(dict.fromkeys(aggregate_ids))
    if not ids:
        return {}
    recorder = store.recorder
    if not isinstance(recorder, PostgresApplicationRecorder):  # the library's in-memory one (unit tests)
        mapped = {i: [store.mapper.to_domain_event(s) for s in recorder.select_events(i)] for i in ids}
        return {i: events for i, events in mapped.items() if events}
    datastore = recorder.datastore
    statement = SQL(
        "SELECT originator_id, originator_version, topic, state FROM {0}.{1} "
        "WHERE originator_id = ANY(%s) ORDER BY originator_id, originator_version"
    ).format(Identifier(datastore.schema), Identifier(recorder.events_table_name))
    with datastore.get_connection() as conn, conn.cursor() as curs:
        curs.execute(statement, (ids,))
        rows = curs.fetchall()
    to_domain_event = store.mapper.to_domain_event
    events: dict[UUID, list[Any]] = {}
    for row in rows:
        event = to_domain_event(
            StoredEvent(
                originator_id=row["originator_id"],
                originator_version=row["originator_version"],
                topic=row["topic"],
                state=bytes(row["state"]),
            )
        )
        events.setdefault(row["originator_id"], []).append(event)
    return events


def fold(events: Sequence[Any]) -> Any:
    """The aggregate that ``events`` (one aggregate's, in version order) build: each event's ``mutate``,
    as the library's repository does. A new aggregate object on every call."""
    aggregate = None
    for event in events:
        aggregate = event.mutate(aggregate)
    return aggregate


def save_unless_moved(store: EventStore, aggregates: Sequence[Any]) -> set[UUID]:
    """Save the pending events of ``aggregates`` in one transaction, except those of aggregates another
    writer changed since they were loaded (see :meth:`CopyingApplicationRecorder.insert_unless_moved`).

    Returns the ids of the aggregates not saved; their pending events are dropped, so reload them before
    deciding again.

    Raises:
        psycopg.Error: the database is unreachable.
    """
    recorder = store.recorder
    assert isinstance(recorder, CopyingApplicationRecorder)
    to_stored = store.mapper.to_stored_event
    stored = [to_stored(event) for aggregate in aggregates for event in aggregate.collect_events()]
    moved: set[UUID] = recorder.insert_unless_moved(stored)
    return moved


def save_group(store: EventStore, aggregates: Sequence[Any]) -> set[UUID]:
    """Save the pending events of many aggregates (e.g. one contact each from concurrent worker handlers)
    in ONE transaction, leaving out the aggregates another writer changed since they were loaded.

    On PostgreSQL (:class:`CopyingApplicationRecorder`) the version check and the insert run under the
    library's table lock (:meth:`~CopyingApplicationRecorder.insert_unless_moved`); any other recorder
    (the in-memory one of the tests) records the group atomically with its own ``insert_events``, a
    conflict failing the whole group.

    Returns the ids of the aggregates left out (their pending events are dropped: reload them). The
    pending events are cleared only once the transaction committed, so after an exception every
    aggregate still holds its events and can be saved again alone.

    Raises:
        IntegrityError: (other recorders) an aggregate's version was taken; nothing was saved.
        psycopg.Error: the database is unreachable; the transaction may or may not have committed.
    """
    to_stored = store.mapper.to_stored_event
    stored = [to_stored(event) for aggregate in aggregates for event in aggregate.pending_events]
    recorder = store.recorder
    with SAVE_LATENCY.time():
        if isinstance(recorder, CopyingApplicationRecorder):
            moved: set[UUID] = recorder.insert_unless_moved(stored)
        else:
            recorder.insert_events(stored)
            moved = set()
    for aggregate in aggregates:
        aggregate.collect_events()
    return moved
