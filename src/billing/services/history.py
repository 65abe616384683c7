"""The auditor's history: every event of the contacts of one invoice, one phone or one contact, across
campaigns, in time order, read from the indexed ``contact_history`` projection (never by scanning the
event store), and its evidence export as JSON or CSV.

Each entry carries what the event recorded when it happened: acceptance or rejection (code, message,
field), each claim with the rule that allowed it (``allowed_by``: business-hours window and calendar
version, throttle and daily-cap counts, policy version), the exact text, template id/version/variation,
JID, gateway message id, failures, deferrals and their reasons, cancellations, and any later Contact
event (receipts, replies). Tenant-scoped: another tenant's invoice reads as absent (promise 7).

:func:`aggregate_history` reads one aggregate's own events (a contact's, a template's versions) from the
event store by its id.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

from billing.db import ViewsPool
from billing.domain.errors import NotFound
from billing.eventstore import EventStore, fold
from billing.services.queries import Queries

__all__ = [
    "CSV_COLUMNS",
    "MAX_ENTRIES",
    "HistoryFilter",
    "HistoryQueries",
    "aggregate_history",
    "to_csv",
    "to_csv_rows",
]

MAX_ENTRIES = 10_000
"""Entries one HTTP answer holds at most (``truncated`` tells when there were more; the CLI export has
no limit)."""

CSV_COLUMNS = (
    "at", "event", "contact_id", "campaign_id", "queue_id", "template_type", "external_id", "invoice",
    "phone", "attempt", "text", "template_id", "template_version", "variation", "remote_jid",
    "gateway_message_id", "code", "message", "reason", "not_before", "retry_at", "allowed_by", "data",
)  # fmt: skip
_DATA_COLUMNS = (
    "attempt", "text", "template_id", "template_version", "variation", "remote_jid", "gateway_message_id",
    "code", "message", "reason", "not_before", "retry_at",
)  # fmt: skip

_SELECT = """
SELECT h.notification_id, h.at, h.event_type, h.version, h.data,
       c.contact_id, c.campaign_id, c.queue_id, c.template_type, c.external_id, c.invoice_ref, c.phone
FROM campaign_contacts c JOIN contact_history h ON h.contact_id = c.contact_id AND h.tenant_id = c.tenant_id
"""


@dataclass(frozen=True)
class HistoryFilter:
    """What to read. ``tenant_id`` is required; the others narrow it (all given ones must hold).

    Attributes:
        invoice: the invoice reference (a contact's own ``external_id``, else its batch's).
        phone: E.164 (``+5511987654321``).
        contact_id: one contact.
        since / until: event instants ``[since, until)`` (aware).
    """

    tenant_id: UUID
    invoice: str | None = None
    phone: str | None = None
    contact_id: UUID | None = None
    since: datetime | None = None
    until: datetime | None = None

    def where(self) -> tuple[str, list[Any]]:
        """The WHERE clause and its parameters."""
        clauses, params = ["c.tenant_id = %s"], list[Any]([self.tenant_id])
        for clause, value in (
            ("c.invoice_ref = %s", self.invoice),
            ("c.phone = %s", self.phone),
            ("c.contact_id = %s", self.contact_id),
            ("h.at >= %s", self.since),
            ("h.at < %s", self.until),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        return " WHERE " + " AND ".join(clauses), params


def _entry(row: dict[str, Any]) -> dict[str, Any]:
    topic: str = row["event_type"]
    return {
        "at": row["at"].isoformat(),
        "event": topic.rpartition(".")[2].lower(),
        "type": topic,
        "version": row["version"],
        "contact_id": str(row["contact_id"]),
        "campaign_id": str(row["campaign_id"]),
        "queue_id": str(row["queue_id"]),
        "template_type": row["template_type"],
        "external_id": row["external_id"],
        "invoice": row["invoice_ref"],
        "phone": row["phone"],
        "data": row["data"],
    }


class HistoryQueries:
    """Reads of the history projection (synchronous; psycopg pool with dict rows)."""

    def __init__(self, pool: ViewsPool) -> None:
        self.pool = pool

    def entries(self, what: HistoryFilter, *, limit: int | None = MAX_ENTRIES) -> list[dict[str, Any]]:
        """Up to ``limit`` entries (None: all) in time order (``at``, then log order)."""
        where, params = what.where()
        sql = _SELECT + where + " ORDER BY h.at, h.notification_id"
        if limit is not None:
            sql += " LIMIT %s"
            params.append(limit)
        with self.pool.connection() as conn:
            return [_entry(r) for r in conn.execute(sql, params).fetchall()]

    def count(self, what: HistoryFilter) -> int:
        """How many entries :meth:`iter_entries` would give."""
        where, params = what.where()
        sql = "SELECT count(*) AS n FROM campaign_contacts c JOIN contact_history h "
        sql += "ON h.contact_id = c.contact_id AND h.tenant_id = c.tenant_id" + where
        with self.pool.connection() as conn:
            row = conn.execute(sql, params).fetchone()
        return int(row["n"]) if row else 0

    def iter_entries(self, what: HistoryFilter, *, chunk: int = 2000) -> Iterator[dict[str, Any]]:
        """Every entry in time order, streamed through a server-side cursor (for exports)."""
        where, params = what.where()
        sql = _SELECT + where + " ORDER BY h.at, h.notification_id"
        with self.pool.connection() as conn, conn.transaction(), conn.cursor(name="history_export") as cur:
            cur.itersize = chunk
            cur.execute(sql, params)
            for row in cur:
                yield _entry(row)

    def contacts(self, what: HistoryFilter, *, limit: int = MAX_ENTRIES) -> list[dict[str, Any]]:
        """The contacts the filter matches (time filters ignored), oldest first: their campaign, status,
        attempts, text sent and error; for the ERP's "where is invoice X" and the history's header."""
        base = HistoryFilter(
            what.tenant_id, invoice=what.invoice, phone=what.phone, contact_id=what.contact_id
        )
        where, params = base.where()
        sql = "SELECT c.* FROM campaign_contacts c" + where + " ORDER BY c.created_at, c.idx LIMIT %s"  # noqa: S608 (constant clauses)
        params.append(limit)
        with self.pool.connection() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [contact_summary(r) for r in rows]


def contact_summary(row: dict[str, Any]) -> dict[str, Any]:
    """One ``campaign_contacts`` row as the ERP and the auditor see it: the campaign contact list's item
    (:meth:`Queries.contact_document`) plus its campaign, queue, type, batch reference and invoice."""
    return {
        **Queries.contact_document(row),
        "campaign_id": str(row["campaign_id"]),
        "queue_id": str(row["queue_id"]),
        "template_type": row["template_type"],
        "external_id": row["external_id"],
        "invoice": row["invoice_ref"],
    }


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return msgspec.json.encode(value).decode()
    return str(value)


def to_csv_rows(entries: Iterable[dict[str, Any]]) -> Iterator[list[str]]:
    """The CSV rows (header first) of ``entries``: the entry's own columns, the usual event fields pulled
    out of ``data``, ``allowed_by`` and the whole ``data`` as JSON."""
    yield list(CSV_COLUMNS)
    for e in entries:
        data = e["data"] or {}
        row = {k: e.get(k) for k in CSV_COLUMNS[:9]}
        row.update({k: data.get(k) for k in _DATA_COLUMNS})
        row["allowed_by"] = data.get("allowed_by")
        row["data"] = data
        yield [_cell(row[k]) for k in CSV_COLUMNS]


def to_csv(entries: Iterable[dict[str, Any]]) -> str:
    """``entries`` as one CSV document (RFC 4180, CRLF line ends)."""
    out = io.StringIO()
    writer = csv.writer(out)
    for row in to_csv_rows(entries):
        writer.writerow(row)
    return out.getvalue()


def aggregate_history(
    store: EventStore, tenant_id: UUID, aggregate_id: UUID, kind: type, name: str
) -> list[Any]:
    """Every stored event of the tenant's aggregate ``aggregate_id`` of type ``kind``, oldest first.

    Raises:
        NotFound: code ``<name>_not_found``, field ``<name>_id`` — no such aggregate, or another tenant's.
    """
    events = list(store.events.get(aggregate_id))  # read once: the check folds the same events
    aggregate = fold(events) if events else None
    if not isinstance(aggregate, kind) or getattr(aggregate, "tenant_id", None) != tenant_id:
        raise NotFound(f"{name} not found", code=f"{name}_not_found", field=f"{name}_id")
    return events
