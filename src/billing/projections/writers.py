"""Writes the read models of ``billing/sql/001_views.sql`` from decoded domain events, one batch at a time.

:class:`ViewWriter` works on one connection inside the caller's transaction (the caller also locks and
moves the tracking record, see :mod:`billing.projections.views`):

- tenants, api_keys, templates, campaigns and queue_status rows of Queue events are written event by
  event, in log order (few events);
- contacts (the bulk: 10,000 per POST) are folded in memory — current rows are loaded once per batch
  (``contact_id = ANY(...)``), every event of the batch is applied to its row in log order, and the
  result is written with two ``executemany`` statements (insert new rows, update changed ones);
- then each queue touched by the batch has its counters recomputed from ``campaign_contacts`` in one
  set-based UPDATE.

Rules (issue 2, DESIGN.md "Queue status"): ``pending`` counts pending + dispatched contacts;
``started_at`` is the timestamp of the queue's first Dispatched; ``completed_at`` is the timestamp of
the contact event that left no contact pending or dispatched — only once every contact of ``total``
exists and the queue was not cancelled — and is cleared if a contact becomes pending again;
``updated_at`` is the latest timestamp of any event about the queue or its contacts. Every value comes
from the events (never ``now()``), so a rebuild gives the same rows (promise 6).

An event that cannot be applied raises from :meth:`ViewWriter.apply` before changing anything, so the
caller can record it and go on with the rest of the batch.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from billing.domain.apikey import ApiKey
from billing.domain.campaign import Campaign
from billing.domain.contact import Contact
from billing.domain.conversation import Conversation
from billing.domain.engagement import Engagement
from billing.domain.queue import Queue
from billing.domain.template import MessageTemplate
from billing.domain.tenant import Tenant
from billing.domain.user import AdminAction, User

CONTACT_COLUMNS = (
    "contact_id", "tenant_id", "campaign_id", "queue_id", "idx", "template_type", "external_id", "nome",
    "telefone", "phone", "status", "attempts", "message_text", "gateway_message_id", "remote_jid",
    "template_id", "template_version", "variation", "sent_at", "error_code", "error_message",
    "not_before", "lease_until", "created_at", "updated_at", "jid_asked", "delivered_at", "read_at",
    "replied_at", "deferred_reason", "invoice_ref",
)  # fmt: skip
#: Columns contact events after creation may change.
CONTACT_MUTABLE = (
    "status", "attempts", "message_text", "gateway_message_id", "remote_jid", "template_id",
    "template_version", "variation", "sent_at", "error_code", "error_message", "not_before",
    "lease_until", "updated_at", "jid_asked", "delivered_at", "read_at", "replied_at", "deferred_reason",
)  # fmt: skip

#: Contact statuses counted in ``outcome_counts`` when a contact reaches them; ``delivered``, ``read``
#: and ``replied`` are counted too, the first time a contact gets each (``ENGAGEMENT_OUTCOMES``).
FINAL_OUTCOMES = frozenset({"sent", "failed", "skipped", "rejected", "cancelled"})
ENGAGEMENT_OUTCOMES = frozenset({"delivered", "read", "replied"})

_INSERT_CONTACT = sql.SQL("INSERT INTO campaign_contacts ({}) VALUES ({})").format(
    sql.SQL(", ").join(map(sql.Identifier, CONTACT_COLUMNS)),
    sql.SQL(", ").join(sql.Placeholder() * len(CONTACT_COLUMNS)),
)
_FULL_ROW = operator.itemgetter(*CONTACT_COLUMNS)
COPY_THRESHOLD = 200
"""From this many rows on, :meth:`ViewWriter.flush` writes contacts with ``COPY`` (else ``executemany``)."""
#: The SQL type of each column (``billing/sql``; a test holds them against the catalog): ``COPY`` writes
#: the rows in PostgreSQL's binary format, which names each column's type (psycopg's ``Copy.set_types``).
CONTACT_TYPES = {
    "contact_id": "uuid", "tenant_id": "uuid", "campaign_id": "uuid", "queue_id": "uuid", "idx": "integer",
    "template_type": "text", "external_id": "text", "nome": "text", "telefone": "text", "phone": "text",
    "status": "text", "attempts": "integer", "message_text": "text", "gateway_message_id": "text",
    "remote_jid": "text", "template_id": "uuid", "template_version": "integer", "variation": "integer",
    "sent_at": "timestamptz", "error_code": "text", "error_message": "text", "not_before": "timestamptz",
    "lease_until": "timestamptz", "created_at": "timestamptz", "updated_at": "timestamptz",
    "jid_asked": "text", "delivered_at": "timestamptz", "read_at": "timestamptz",
    "replied_at": "timestamptz", "deferred_reason": "text", "invoice_ref": "text",
}  # fmt: skip
#: The types of the mutable columns.
CONTACT_MUTABLE_TYPES = {c: CONTACT_TYPES[c] for c in CONTACT_MUTABLE}
_COPY_CONTACTS = sql.SQL("COPY campaign_contacts ({}) FROM STDIN (FORMAT BINARY)").format(
    sql.SQL(", ").join(map(sql.Identifier, CONTACT_COLUMNS))
)
_UPDATE_FROM_ARRAYS = sql.SQL(
    "UPDATE campaign_contacts c SET {} FROM unnest(%s::uuid[], {}) AS n(contact_id, {}) "
    "WHERE c.contact_id = n.contact_id"
).format(
    sql.SQL(", ").join(sql.SQL("{0} = n.{0}").format(sql.Identifier(col)) for col in CONTACT_MUTABLE),
    sql.SQL(", ").join(
        sql.SQL("%s::{}[]").format(sql.SQL(CONTACT_MUTABLE_TYPES[c])) for c in CONTACT_MUTABLE
    ),
    sql.SQL(", ").join(map(sql.Identifier, CONTACT_MUTABLE)),
)
"""The changed rows of a batch in ONE statement: one array per column (a few rows; many go by ``COPY``)."""
_CHANGED_COLUMNS = ("contact_id", *CONTACT_MUTABLE)
_CHANGED_ROW = operator.itemgetter(*_CHANGED_COLUMNS)
_CONTACT_TYPE_LIST = [CONTACT_TYPES[c] for c in CONTACT_COLUMNS]
_CHANGED_TYPE_LIST = [CONTACT_TYPES[c] for c in _CHANGED_COLUMNS]
_CREATE_CHANGED = sql.SQL(  # the columns' types follow the view's, without its constraints
    "CREATE TEMP TABLE changed_contacts ON COMMIT DROP AS SELECT {} FROM campaign_contacts WITH NO DATA"
).format(sql.SQL(", ").join(map(sql.Identifier, _CHANGED_COLUMNS)))
_COPY_CHANGED = sql.SQL("COPY changed_contacts ({}) FROM STDIN (FORMAT BINARY)").format(
    sql.SQL(", ").join(map(sql.Identifier, _CHANGED_COLUMNS))
)
_UPDATE_FROM_CHANGED = sql.SQL(
    "UPDATE campaign_contacts c SET {} FROM changed_contacts n WHERE c.contact_id = n.contact_id"
).format(sql.SQL(", ").join(sql.SQL("{0} = n.{0}").format(sql.Identifier(col)) for col in CONTACT_MUTABLE))
_SELECT_CONTACTS = sql.SQL("SELECT {} FROM campaign_contacts WHERE contact_id = ANY(%s)").format(
    sql.SQL(", ").join(map(sql.Identifier, CONTACT_COLUMNS))
)

_RECOMPUTE_QUEUES = """
WITH touched AS (
    SELECT * FROM unnest(%s::uuid[], %s::timestamptz[], %s::timestamptz[], %s::timestamptz[])
        AS t(queue_id, last_at, last_contact_at, first_dispatch_at)
), counts AS (
    SELECT t.queue_id, t.last_at, t.last_contact_at, t.first_dispatch_at,
           count(c.contact_id) AS counted,
           count(*) FILTER (WHERE c.status IN ('pending', 'dispatched')) AS pending,
           count(*) FILTER (WHERE c.status = 'sent') AS sent,
           count(*) FILTER (WHERE c.status = 'failed') AS failed,
           count(*) FILTER (WHERE c.status = 'skipped') AS skipped,
           count(*) FILTER (WHERE c.status = 'rejected') AS rejected,
           count(*) FILTER (WHERE c.status = 'cancelled') AS cancelled,
           count(c.delivered_at) AS delivered, count(c.read_at) AS read, count(c.replied_at) AS replied
    FROM touched t LEFT JOIN campaign_contacts c ON c.queue_id = t.queue_id
    GROUP BY t.queue_id, t.last_at, t.last_contact_at, t.first_dispatch_at
)
UPDATE queue_status q
SET pending = n.pending, sent = n.sent, failed = n.failed, skipped = n.skipped,
    rejected = n.rejected, cancelled = n.cancelled,
    delivered = n.delivered, read = n.read, replied = n.replied,
    started_at = COALESCE(q.started_at, n.first_dispatch_at),
    completed_at = CASE
        WHEN n.pending = 0 AND n.counted >= q.total AND q.cancelled_at IS NULL
        THEN COALESCE(q.completed_at, n.last_contact_at, n.last_at)
    END,
    updated_at = GREATEST(q.updated_at, n.last_at)
FROM counts n
WHERE q.queue_id = n.queue_id
"""


_ADD_OUTCOMES = """
INSERT INTO outcome_counts (tenant_id, hour, outcome, n)
SELECT * FROM unnest(%s::uuid[], %s::timestamptz[], %s::text[], %s::bigint[])
ON CONFLICT (tenant_id, hour, outcome) DO UPDATE SET n = outcome_counts.n + EXCLUDED.n
"""


class NotApplicable(LookupError):
    """The event refers to a row the views do not have (its creation was never projected)."""


@dataclass
class _QueueTouch:
    last_at: datetime
    last_contact_at: datetime | None = None
    first_dispatch_at: datetime | None = None


class ViewWriter:
    """Applies one batch of decoded events to the views on ``conn`` (inside the caller's transaction).

    Use: :meth:`preload` the contacts the batch's events refer to, :meth:`apply` each event in log
    order (an exception means that event changed nothing), then :meth:`flush` once.
    """

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.contacts: dict[UUID, dict[str, Any]] = {}
        self._new: set[UUID] = set()
        self._changed: set[UUID] = set()
        self._queues: dict[UUID, _QueueTouch] = {}
        self._outcomes: dict[tuple[UUID, datetime, str], int] = {}
        self._handlers: dict[type, Callable[[Any], None]] = {
            cls: getattr(self, name) for cls, name in HANDLERS.items()
        }

    @staticmethod
    def handles(topic: str) -> bool:
        """True when events of ``topic`` (e.g. ``"billing.Contact.Sent"``) change a view."""
        return topic in HANDLED_TOPICS

    def preload(self, contact_ids: Iterable[UUID]) -> None:
        """Load the current rows of ``contact_ids`` (those already projected) in one query."""
        wanted = [cid for cid in set(contact_ids) if cid not in self.contacts]
        if not wanted:
            return
        with self.conn.cursor(row_factory=tuple_row) as cur:  # one dict per row, built here
            for row in cur.execute(_SELECT_CONTACTS, (wanted,)).fetchall():
                record = dict(zip(CONTACT_COLUMNS, row, strict=True))
                self.contacts[record["contact_id"]] = record

    def apply(self, event: Any) -> None:
        """Apply one event. Events of types that change no view are ignored.

        Raises:
            NotApplicable: it refers to a row that does not exist.
            psycopg.Error: a write failed (the transaction is then aborted).
        """
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    def flush(self) -> None:
        """Write the folded contacts and recompute the touched queues' counters.

        Many rows (a 10,000-contact POST, a rebuild's large batches) go through ``COPY``: new rows
        straight into ``campaign_contacts``, changed rows into a transaction-local copy of its shape that
        one ``UPDATE … FROM`` applies. A few rows: new ones with ``executemany``, changed ones with one
        ``UPDATE … FROM unnest(…)`` of an array per column (it was one statement per row).
        """
        contacts, full_row = self.contacts, _FULL_ROW
        inserts = [full_row(contacts[c]) for c in self._new]
        changed = self._changed - self._new
        with self.conn.cursor() as cur:
            if len(inserts) >= COPY_THRESHOLD:
                with cur.copy(_COPY_CONTACTS) as copy:
                    copy.set_types(_CONTACT_TYPE_LIST)
                    for row in inserts:
                        copy.write_row(row)
            elif inserts:
                cur.executemany(_INSERT_CONTACT, inserts)
            if len(changed) >= COPY_THRESHOLD:
                cur.execute(_CREATE_CHANGED)
                with cur.copy(_COPY_CHANGED) as copy:
                    copy.set_types(_CHANGED_TYPE_LIST)
                    for c in changed:
                        copy.write_row(_CHANGED_ROW(contacts[c]))
                cur.execute(_UPDATE_FROM_CHANGED)
                cur.execute("DROP TABLE changed_contacts")
            elif changed:
                ids = list(changed)
                cur.execute(
                    _UPDATE_FROM_ARRAYS,
                    (ids, *([contacts[c][k] for c in ids] for k in CONTACT_MUTABLE)),
                )
            if self._queues:
                ids = list(self._queues)
                touches = [self._queues[q] for q in ids]
                cur.execute(
                    _RECOMPUTE_QUEUES,
                    (
                        ids,
                        [t.last_at for t in touches],
                        [t.last_contact_at for t in touches],
                        [t.first_dispatch_at for t in touches],
                    ),
                )
            if self._outcomes:
                keys = list(self._outcomes)
                cur.execute(
                    _ADD_OUTCOMES,
                    (
                        [k[0] for k in keys],
                        [k[1] for k in keys],
                        [k[2] for k in keys],
                        [self._outcomes[k] for k in keys],
                    ),
                )
        self._outcomes.clear()
        self._new.clear()
        self._changed.clear()
        self._queues.clear()

    # --- helpers ---------------------------------------------------------------------------------------

    def _count_outcome(self, tenant_id: UUID, at: datetime, outcome: str, by: int = 1) -> None:
        """``by`` more contacts (-1: one fewer) reached ``outcome`` in the UTC hour of ``at`` (the
        overview's read model)."""
        key = (tenant_id, at.replace(minute=0, second=0, microsecond=0), outcome)
        self._outcomes[key] = self._outcomes.get(key, 0) + by

    def _touch_queue(
        self, queue_id: UUID, at: datetime, *, contact: bool = False, dispatched: bool = False
    ) -> None:
        touch = self._queues.get(queue_id)
        if touch is None:
            touch = self._queues[queue_id] = _QueueTouch(last_at=at)
        touch.last_at = max(touch.last_at, at)
        if contact:
            touch.last_contact_at = at
        if dispatched and touch.first_dispatch_at is None:
            touch.first_dispatch_at = at

    def _write(self, statement: str, params: tuple[Any, ...], *, must_match: bool = True) -> None:
        cur = self.conn.execute(statement, params)
        if must_match and cur.rowcount == 0:
            raise NotApplicable(f"no row to update ({statement.split()[1]} of {params[-1]})")

    # --- tenants, keys, templates, campaigns ------------------------------------------------------------

    def _tenant_registered(self, e: Tenant.Registered) -> None:
        self._write(
            "INSERT INTO tenants (tenant_id, name, created_at, updated_at) VALUES (%s, %s, %s, %s)",
            (e.originator_id, e.name, e.timestamp, e.timestamp),
        )

    def _tenant_touched(self, e: Tenant.Event) -> None:
        self._write(
            "UPDATE tenants SET updated_at = GREATEST(updated_at, %s) WHERE tenant_id = %s",
            (e.timestamp, e.originator_id),
        )

    def _key_issued(self, e: ApiKey.Issued) -> None:
        self._write(
            "INSERT INTO api_keys (key_id, tenant_id, name, prefix, created_at) VALUES (%s, %s, %s, %s, %s)",
            (e.originator_id, e.tenant_id, e.name, e.prefix, e.timestamp),
        )

    def _key_revoked(self, e: ApiKey.Revoked) -> None:
        self._write("UPDATE api_keys SET revoked_at = %s WHERE key_id = %s", (e.timestamp, e.originator_id))

    def _template_created(self, e: MessageTemplate.Created) -> None:
        self._write(
            """INSERT INTO templates (template_id, tenant_id, name, template_type, description, variations,
                                      active, version, created_at, updated_at)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
            (
                e.originator_id, e.tenant_id, e.name, str(e.template_type), e.description,
                Jsonb(list(e.variations)), e.active, e.originator_version, e.timestamp, e.timestamp,
            ),
        )  # fmt: skip

    def _template_changed(self, e: MessageTemplate.Changed) -> None:
        self._write(
            """UPDATE templates SET name = %s, description = %s, variations = %s, active = %s, version = %s,
                                    updated_at = %s
               WHERE template_id = %s""",
            (
                e.name, e.description, Jsonb(list(e.variations)), e.active, e.originator_version,
                e.timestamp, e.originator_id,
            ),
        )  # fmt: skip

    def _default_template_chosen(self, e: Tenant.DefaultTemplateChosen) -> None:
        self._write(
            """INSERT INTO default_templates (tenant_id, template_type, template_id, chosen_at)
               VALUES (%s, %s, %s, %s)
               ON CONFLICT (tenant_id, template_type)
               DO UPDATE SET template_id = EXCLUDED.template_id, chosen_at = EXCLUDED.chosen_at""",
            (e.originator_id, e.template_type, e.template_id, e.timestamp),
        )
        self._tenant_touched(e)

    def _user_created(self, e: User.Created) -> None:
        self._write(
            "INSERT INTO users (user_id, tenant_id, email, role, created_at) VALUES (%s, %s, %s, %s, %s)",
            (e.originator_id, e.tenant_id, e.email, e.role, e.timestamp),
        )

    def _user_removed(self, e: User.Removed) -> None:
        self._write("UPDATE users SET removed_at = %s WHERE user_id = %s", (e.timestamp, e.originator_id))

    def _user_restored(self, e: User.Restored) -> None:
        self._write(
            "UPDATE users SET removed_at = NULL, role = %s WHERE user_id = %s", (e.role, e.originator_id)
        )

    def _user_rehashed(self, e: User.PasswordRehashed) -> None:
        """Nothing of a hash is in the views."""

    def _admin_action(self, e: AdminAction.Recorded) -> None:
        self._write(
            """INSERT INTO admin_actions (action_id, tenant_id, user_id, email, action, target, at)
               VALUES (%s, %s, %s, %s, %s, %s, %s)""",
            (e.originator_id, e.tenant_id, e.user_id, e.email, e.action, e.target, e.timestamp),
        )

    def _campaign_created(self, e: Campaign.Created) -> None:
        self._write(
            """INSERT INTO campaigns (campaign_id, tenant_id, queue_id, template_type, external_id, accepted,
                                      rejected, created_at)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
            (
                e.originator_id, e.tenant_id, e.queue_id, str(e.template_type), e.external_id, e.accepted,
                e.rejected, e.timestamp,
            ),
        )  # fmt: skip

    # --- queues ---------------------------------------------------------------------------------------

    def _queue_created(self, e: Queue.Created) -> None:
        self._write(
            """INSERT INTO queue_status (queue_id, tenant_id, campaign_id, template_type, total, created_at,
                                         updated_at)
               VALUES (%s, %s, %s, %s, %s, %s, %s)""",
            (
                e.originator_id,
                e.tenant_id,
                e.campaign_id,
                str(e.template_type),
                e.total,
                e.timestamp,
                e.timestamp,
            ),
        )
        self._touch_queue(e.originator_id, e.timestamp)

    def _queue_paused(self, e: Queue.Paused) -> None:
        self._write(
            "UPDATE queue_status SET paused_reason = %s, resume_at = %s WHERE queue_id = %s",
            (e.reason, e.resume_at, e.originator_id),
        )
        self._touch_queue(e.originator_id, e.timestamp)

    def _queue_resumed(self, e: Queue.Resumed) -> None:
        self._write(
            "UPDATE queue_status SET paused_reason = NULL, resume_at = NULL WHERE queue_id = %s",
            (e.originator_id,),
        )
        self._touch_queue(e.originator_id, e.timestamp)

    def _queue_cancelled(self, e: Queue.Cancelled) -> None:
        self._write(
            "UPDATE queue_status SET cancelled_at = COALESCE(cancelled_at, %s) WHERE queue_id = %s",
            (e.timestamp, e.originator_id),
        )
        self._touch_queue(e.originator_id, e.timestamp)

    # --- contacts (folded in memory, written by flush) ------------------------------------------------

    def _create_contact(self, e: Contact.Added | Contact.Rejected, **values: Any) -> None:
        cid = e.originator_id
        if cid in self.contacts:
            raise NotApplicable(f"contact {cid} already exists")
        row = dict.fromkeys(CONTACT_COLUMNS)
        row.update(
            contact_id=cid, tenant_id=e.tenant_id, campaign_id=e.campaign_id, queue_id=e.queue_id,
            idx=e.index, template_type=str(e.template_type), external_id=e.external_id,
            invoice_ref=e.invoice_ref,
            nome=e.fields.get("nome"), telefone=e.telefone, attempts=0, created_at=e.timestamp,
            updated_at=e.timestamp, **values,
        )  # fmt: skip
        self.contacts[cid] = row
        self._new.add(cid)
        self._touch_queue(e.queue_id, e.timestamp, contact=True)

    def _update_contact(
        self, e: Any, *, dispatched: bool = False, receipt: bool = False, **values: Any
    ) -> None:
        """Apply ``values`` to the contact's row. ``receipt``: a delivery/read receipt or a reply, which
        moves the queue's ``updated_at`` but is never the event that completed it."""
        current = self.contacts.get(e.originator_id)
        if current is None:
            raise NotApplicable(f"contact {e.originator_id} was never projected")
        before, before_at = current["status"], current["updated_at"]
        current.update(values)  # the writer's own copy of the row (nothing below can fail)
        current["updated_at"] = e.timestamp
        if current["status"] != before and current["status"] in FINAL_OUTCOMES:
            self._count_outcome(current["tenant_id"], e.timestamp, current["status"])
            if before in FINAL_OUTCOMES:
                # cancelled, then Sent: the cancellation came while the message was in flight, and it
                # went out. The contact moves from the first outcome to the second (counted at the hour
                # of the event that set the first, the row's last update), never counted twice.
                self._count_outcome(current["tenant_id"], before_at, before, by=-1)
        self._changed.add(e.originator_id)
        self._touch_queue(current["queue_id"], e.timestamp, contact=not receipt, dispatched=dispatched)

    def _contact_added(self, e: Contact.Added) -> None:
        self._create_contact(e, phone=e.phone, status="pending")

    def _contact_rejected(self, e: Contact.Rejected) -> None:
        self._create_contact(e, status="rejected", error_code=e.code, error_message=e.message)
        self._count_outcome(e.tenant_id, e.timestamp, "rejected")

    def _contact_dispatched(self, e: Contact.Dispatched) -> None:
        self._update_contact(
            e, dispatched=True, status="dispatched", attempts=e.attempt, lease_until=e.lease_until,
            not_before=None, deferred_reason=None,
        )  # fmt: skip

    def _contact_sent(self, e: Contact.Sent) -> None:
        self._update_contact(
            e, status="sent", message_text=e.text, gateway_message_id=e.gateway_message_id,
            remote_jid=e.remote_jid, template_id=e.template_id, template_version=e.template_version,
            variation=e.variation, sent_at=e.timestamp, error_code=None, error_message=None,
            lease_until=None, not_before=None, deferred_reason=None, jid_asked=e.jid_asked,
        )  # fmt: skip

    def _contact_failed(self, e: Contact.Failed) -> None:
        values: dict[str, Any] = {
            "status": "failed", "error_code": e.code, "error_message": e.message, "not_before": None,
            "deferred_reason": None,
        }  # fmt: skip
        if e.retry_at is not None:  # waits (pending) for its retry
            values.update(status="pending", not_before=e.retry_at)
        self._update_contact(e, lease_until=None, **values)

    def _contact_skipped(self, e: Contact.Skipped) -> None:
        self._update_contact(
            e, status="skipped", error_code=e.code, error_message=e.message, lease_until=None,
            not_before=None, deferred_reason=None,
        )  # fmt: skip

    def _contact_deferred(self, e: Contact.Deferred) -> None:
        current = self.contacts.get(e.originator_id)
        attempts = current["attempts"] if current else 0
        if current and current["status"] == "dispatched":  # the claim is released, not spent
            attempts -= 1
        self._update_contact(
            e, status="pending", attempts=attempts, lease_until=None, not_before=e.not_before,
            deferred_reason=e.reason,
        )  # fmt: skip

    def _contact_cancelled(self, e: Contact.Cancelled) -> None:
        self._update_contact(e, status="cancelled", lease_until=None, not_before=None, deferred_reason=None)

    def _contact_delivered(self, e: Contact.Delivered) -> None:
        self._count_first(e, "delivered_at", "delivered")
        self._update_contact(e, receipt=True, delivered_at=e.timestamp)

    def _contact_read(self, e: Contact.Read) -> None:
        self._count_first(e, "read_at", "read")
        self._update_contact(e, receipt=True, read_at=e.timestamp)

    def _contact_replied(self, e: Contact.Replied) -> None:
        current = self.contacts.get(e.originator_id)
        first = current["replied_at"] if current and current["replied_at"] is not None else e.timestamp
        self._count_first(e, "replied_at", "replied")
        self._update_contact(e, receipt=True, replied_at=first)

    def _count_first(self, e: Any, column: str, outcome: str) -> None:
        """Count ``outcome`` in ``outcome_counts`` the first time the contact's ``column`` is set (a
        receipt or reply counts once per contact, at its own instant)."""
        current = self.contacts.get(e.originator_id)
        if current is not None and current[column] is None:
            self._count_outcome(current["tenant_id"], e.timestamp, outcome)

    def _ignored(self, e: Any) -> None:
        """An event no view shows (its aggregate's history has it)."""

    # --- opt-outs --------------------------------------------------------------------------------------

    def _conversation_opened(self, e: Conversation.Opened) -> None:
        self._write(
            """INSERT INTO opt_outs (conversation_id, tenant_id, phone, opted_out, updated_at)
               VALUES (%s, %s, %s, false, %s)""",
            (e.originator_id, e.tenant_id, e.phone, e.timestamp),
        )

    def _opted_out(self, e: Conversation.OptedOut) -> None:
        self._write(
            """UPDATE opt_outs SET opted_out = true, opted_out_at = %s, message_id = %s, stop_word = %s,
                                   contact_id = %s, lifted_at = NULL, lifted_by = NULL, updated_at = %s
               WHERE conversation_id = %s""",
            (e.timestamp, e.message_id, e.stop_word, e.contact_id, e.timestamp, e.originator_id),
        )

    def _opt_out_lifted(self, e: Conversation.OptOutLifted) -> None:
        self._write(
            """UPDATE opt_outs SET opted_out = false, lifted_at = %s, lifted_by = %s, updated_at = %s
               WHERE conversation_id = %s""",
            (e.timestamp, e.by, e.timestamp, e.originator_id),
        )


#: Topics of the events :class:`ViewWriter` applies.
HANDLERS: dict[Any, str] = {  # keys: event classes (each has a TOPIC)
    Tenant.Registered: "_tenant_registered",
    Tenant.GatewayConfigured: "_tenant_touched",
    Tenant.PolicyChanged: "_tenant_touched",
    Tenant.DefaultTemplateChosen: "_default_template_chosen",
    User.Created: "_user_created",
    User.Removed: "_user_removed",
    User.Restored: "_user_restored",
    User.PasswordRehashed: "_user_rehashed",
    AdminAction.Recorded: "_admin_action",
    ApiKey.Issued: "_key_issued",
    ApiKey.Revoked: "_key_revoked",
    MessageTemplate.Created: "_template_created",
    MessageTemplate.Changed: "_template_changed",
    Campaign.Created: "_campaign_created",
    Queue.Created: "_queue_created",
    Queue.Paused: "_queue_paused",
    Queue.Resumed: "_queue_resumed",
    Queue.Cancelled: "_queue_cancelled",
    Contact.Added: "_contact_added",
    Contact.Rejected: "_contact_rejected",
    Contact.Dispatched: "_contact_dispatched",
    Contact.Sent: "_contact_sent",
    Contact.Failed: "_contact_failed",
    Contact.Skipped: "_contact_skipped",
    Contact.Deferred: "_contact_deferred",
    Contact.Cancelled: "_contact_cancelled",
    Contact.Delivered: "_contact_delivered",
    Contact.Read: "_contact_read",
    Contact.Played: "_ignored",
    Contact.Replied: "_contact_replied",
    Conversation.Opened: "_conversation_opened",
    Conversation.Replied: "_ignored",
    Conversation.OptedOut: "_opted_out",
    Conversation.ConfirmationSent: "_ignored",
    Conversation.OptOutLifted: "_opt_out_lifted",
    Engagement.Started: "_ignored",
    Engagement.GatewaySecretSet: "_ignored",
    Engagement.SettingsChanged: "_ignored",
    Engagement.EndpointAdded: "_ignored",
    Engagement.EndpointRemoved: "_ignored",
}
"""Event class → the ViewWriter method that applies it: the one list; the topic sets derive from it."""
HANDLED_TOPICS = frozenset(cls.TOPIC for cls in HANDLERS)
#: Contact topics whose events update an existing row (their rows are preloaded).
CONTACT_UPDATE_TOPICS = frozenset(
    cls.TOPIC
    for cls in HANDLERS
    if cls.__qualname__.startswith("Contact.") and cls not in (Contact.Added, Contact.Rejected)
)
#: Contact topics whose events create the row.
CONTACT_CREATE_TOPICS = frozenset({Contact.Added.TOPIC, Contact.Rejected.TOPIC})
