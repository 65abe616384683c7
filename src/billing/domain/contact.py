"""The Contact aggregate: one message to one person.

pending → dispatched → sent | failed | skipped; rejected at ingestion; cancelled before sending
(DESIGN.md, "The model"). Dispatching is a claim: a worker records ``Dispatched`` (with a lease) *before*
calling the gateway, so two workers holding the same job cannot both send (the second save conflicts on
the aggregate's version), and an attempt whose outcome is unknown (the process died mid-call) stays on
record (evolution-api.md: "a send whose outcome is unknown must not be blindly repeated without a record
of the attempt").
"""

from __future__ import annotations

import dataclasses
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic

from billing.domain.errors import Conflict
from billing.domain.gateway_events import receipt_steps
from billing.domain.types import ContactStatus


class Contact(Aggregate):
    """One reminder to one phone number, created at ingestion as added (pending) or rejected."""

    TOPIC = "billing.Contact"

    if TYPE_CHECKING:  # the library builds __init__ from class annotations; keep these for mypy only
        tenant_id: UUID
        campaign_id: UUID
        queue_id: UUID
        index: int
        ordinal: int
        template_type: str
        external_id: str | None
        invoice_ref: str | None
        fields: dict[str, str]
        telefone: str
        phone: str | None
        gateway_number: str | None
        amount: Decimal | None
        amount_total: Decimal | None
        due_date: date | None
        status: ContactStatus
        attempts: int
        lease_until: datetime | None
        not_before: datetime | None
        error_code: str | None
        cancelled_in_flight: bool
        template_id: UUID | None
        template_version: int | None
        deferred_for: str | None
        delivered_at: datetime | None
        read_at: datetime | None
        played_at: datetime | None
        replied_at: datetime | None
        cancel_reason: str | None

    class Created(Aggregate.Created):
        """Base of the two ways a contact comes to exist (added, rejected); never recorded itself."""

        TOPIC = "billing.Contact.Created"

    class Added(Created):
        """Accepted at ingestion. ``fields`` are the contact's values as sent (sanitised strings);
        ``phone`` is E.164, ``gateway_number`` its digits; amounts are exact decimals (reais); ``ordinal``
        is the position among the batch's *accepted* contacts (variation rotation uses it).
        ``external_id`` is the request's reference; ``invoice_ref`` the invoice this contact is about: the
        contact's own ``external_id`` field when it has one, else the request's (None when neither)."""

        TOPIC = "billing.Contact.Added"
        tenant_id: UUID
        campaign_id: UUID
        queue_id: UUID
        index: int
        template_type: str
        external_id: str | None
        fields: dict[str, str]
        telefone: str
        phone: str
        gateway_number: str
        amount: Decimal | None
        amount_total: Decimal | None
        due_date: date | None
        ordinal: int = 0
        template_id: UUID | None = None  # the template the send named; None: the type's default
        invoice_ref: str | None = None
        template_version: int | None = None
        """The version of ``template_id`` whose variables this contact was checked against (None: stored
        before the field). The message renders with the template's current version, or with this one when
        the current one needs a variable the contact lacks (an edit after acceptance)."""

        def apply(self, aggregate: Contact) -> None:
            aggregate._init_common(self.tenant_id, self.campaign_id, self.queue_id, self.index)
            aggregate.ordinal = self.ordinal
            aggregate.template_id = self.template_id
            aggregate.template_version = self.template_version
            aggregate.template_type = self.template_type
            aggregate.external_id = self.external_id
            aggregate.invoice_ref = self.invoice_ref
            aggregate.fields = dict(self.fields)
            aggregate.telefone = self.telefone
            aggregate.phone = self.phone
            aggregate.gateway_number = self.gateway_number
            aggregate.amount = self.amount
            aggregate.amount_total = self.amount_total
            aggregate.due_date = self.due_date
            aggregate.status = ContactStatus.PENDING

    class Rejected(Created):
        """Refused at ingestion, alone, with a machine-readable ``code`` and the ``field`` at fault."""

        TOPIC = "billing.Contact.Rejected"
        tenant_id: UUID
        campaign_id: UUID
        queue_id: UUID
        index: int
        template_type: str
        external_id: str | None
        fields: dict[str, str]
        telefone: str
        code: str
        message: str
        field: str | None
        invoice_ref: str | None = None

        def apply(self, aggregate: Contact) -> None:
            aggregate._init_common(self.tenant_id, self.campaign_id, self.queue_id, self.index)
            aggregate.template_type = self.template_type
            aggregate.external_id = self.external_id
            aggregate.invoice_ref = self.invoice_ref
            aggregate.fields = dict(self.fields)
            aggregate.telefone = self.telefone
            aggregate.phone = None
            aggregate.gateway_number = None
            aggregate.amount = aggregate.amount_total = None
            aggregate.due_date = None
            aggregate.ordinal = -1
            aggregate.status = ContactStatus.REJECTED
            aggregate.error_code = self.code

    class Dispatched(Aggregate.Event):
        """A worker claimed attempt number ``attempt`` and holds it until ``lease_until`` (UTC).

        ``allowed_by`` is the rule that allowed this attempt, as decided at the claim (business-hours
        window and calendar version, throttle and daily-cap counts, policy version; the shape of
        :func:`billing.domain.audit.allowed_by`), None on events recorded before it existed."""

        TOPIC = "billing.Contact.Dispatched"
        attempt: int
        lease_until: datetime
        allowed_by: dict[str, Any] | None = None

        def apply(self, aggregate: Contact) -> None:
            aggregate.status = ContactStatus.DISPATCHED
            aggregate.attempts = self.attempt
            aggregate.lease_until = self.lease_until
            aggregate.deferred_for = None

    class Sent(Aggregate.Event):
        """The gateway accepted the message (HTTP 201): its WhatsApp id, the resolved recipient JID and
        the exact text sent, with the template version and variation that produced it."""

        TOPIC = "billing.Contact.Sent"
        gateway_message_id: str
        remote_jid: str | None
        text: str
        template_id: UUID | None
        template_version: int | None
        variation: int | None
        jid_asked: str | None = None
        """The JID the lookup found and the send asked for (None: sent to the bare number); compare
        with ``remote_jid``, the one the gateway answered."""

        def apply(self, aggregate: Contact) -> None:
            aggregate.status = ContactStatus.SENT
            aggregate.lease_until = None
            aggregate.error_code = None

    class Failed(Aggregate.Event):
        """An attempt failed. With ``retry_at`` set the contact waits (pending) for that instant;
        without it the failure is final."""

        TOPIC = "billing.Contact.Failed"
        code: str
        message: str
        retryable: bool
        retry_at: datetime | None

        def apply(self, aggregate: Contact) -> None:
            aggregate.lease_until = None
            aggregate.error_code = self.code
            aggregate.deferred_for = None
            if self.retry_at is None:
                aggregate.status = ContactStatus.FAILED
            else:
                aggregate.status = ContactStatus.PENDING
                aggregate.not_before = self.retry_at

    class Skipped(Aggregate.Event):
        """Not sent and never will be, for a reason that is no fault (e.g. the number has no WhatsApp)."""

        TOPIC = "billing.Contact.Skipped"
        code: str
        message: str

        def apply(self, aggregate: Contact) -> None:
            aggregate.status = ContactStatus.SKIPPED
            aggregate.lease_until = None
            aggregate.error_code = self.code

    class Deferred(Aggregate.Event):
        """Not sent now (``reason``: outside business hours, throttled...); due again at ``not_before``
        (UTC). The claim, if any, is released without counting as an attempt."""

        TOPIC = "billing.Contact.Deferred"
        reason: str
        not_before: datetime

        def apply(self, aggregate: Contact) -> None:
            if aggregate.status is ContactStatus.DISPATCHED:
                aggregate.attempts -= 1
            aggregate.status = ContactStatus.PENDING
            aggregate.lease_until = None
            aggregate.not_before = self.not_before
            aggregate.deferred_for = self.reason

    class Cancelled(Aggregate.Event):
        """Cancelled before it was sent (queue cancelled, invoice paid)."""

        TOPIC = "billing.Contact.Cancelled"
        reason: str

        def apply(self, aggregate: Contact) -> None:
            aggregate.cancelled_in_flight = aggregate.status is ContactStatus.DISPATCHED
            aggregate.cancel_reason = self.reason
            aggregate.status = ContactStatus.CANCELLED
            aggregate.lease_until = None

    class Delivered(Aggregate.Event):
        """The gateway reported the message delivered to the phone (``DELIVERY_ACK``, or implied by a
        later receipt); ``reported_at`` is the gateway's instant when it gave one."""

        TOPIC = "billing.Contact.Delivered"
        status: str
        reported_at: datetime | None

        def apply(self, aggregate: Contact) -> None:
            aggregate.delivered_at = self.timestamp

    class Read(Aggregate.Event):
        """The debtor opened the message (``READ``, or implied by ``PLAYED``)."""

        TOPIC = "billing.Contact.Read"
        status: str
        reported_at: datetime | None

        def apply(self, aggregate: Contact) -> None:
            aggregate.read_at = self.timestamp

    class Played(Aggregate.Event):
        """``PLAYED`` (audio/video played; WhatsApp sends it for voice notes)."""

        TOPIC = "billing.Contact.Played"
        status: str
        reported_at: datetime | None

        def apply(self, aggregate: Contact) -> None:
            aggregate.played_at = self.timestamp

    class Replied(Aggregate.Event):
        """The debtor answered this message (gateway message ``message_id``); the text is on the
        phone's Conversation."""

        TOPIC = "billing.Contact.Replied"
        message_id: str
        opted_out: bool

        def apply(self, aggregate: Contact) -> None:
            if aggregate.replied_at is None:
                aggregate.replied_at = self.timestamp

    @classmethod
    def creation_event(
        cls, event_class: type[Contact.Created], *, id: UUID, at: datetime, **values: Any
    ) -> Contact.Created:
        """The event that ``Contact._create(event_class, id=id, timestamp=at, **values)`` records for a new
        contact (``event_class`` :class:`Added` or :class:`Rejected`, ``values`` its fields; ``at`` the
        aware instant), without building the aggregate: same fields and values, version 1, originator
        topic ``billing.Contact``. Saved alone it stores the same JSON, and loading the contact folds it
        into the same aggregate.

        Ingestion creates thousands of contacts per request and only saves them; the library's
        ``_create`` also builds each aggregate (topic check, signature filtering, ``apply``), four fifths
        of the creation cost (measured: 10,000 contacts 0.16 s through ``_create``, 0.04 s this way). The
        event's fields are set straight into its ``__dict__`` in the dataclass's field order (what its
        generated ``__init__`` does through ``object.__setattr__``, one call per field: 2.8x slower), after
        the same checks (names, required fields, a ``UUID`` id).

        Raises:
            TypeError: ``values`` miss a field of ``event_class`` or name one it does not have; ``id`` is
                not a ``UUID``.
        """
        template, allowed, required = _event_shape(event_class, cls)
        keys = values.keys()
        if not keys <= allowed:  # subset tests: no set built per event
            raise TypeError(f"{event_class.__qualname__} has no field {', '.join(sorted(keys - allowed))}")
        if not required <= keys:
            raise TypeError(f"{event_class.__qualname__} misses field {', '.join(sorted(required - keys))}")
        if not isinstance(id, UUID):
            raise TypeError(f"{event_class.__qualname__} needs a UUID id, not {id!r}")
        values["originator_id"] = id
        values["timestamp"] = at
        event = object.__new__(event_class)
        state = event.__dict__
        state.update(template)  # every field in order (the defaults' values), then the given values
        state.update(values)  # in place: updating an existing key keeps its position
        return event

    def _init_common(self, tenant_id: UUID, campaign_id: UUID, queue_id: UUID, index: int) -> None:
        self.tenant_id = tenant_id
        self.campaign_id = campaign_id
        self.queue_id = queue_id
        self.index = index
        self.attempts = 0
        self.lease_until = None
        self.not_before = None
        self.error_code = None
        self.cancelled_in_flight = False
        self.template_id: UUID | None = None
        self.template_version: int | None = None
        self.delivered_at = self.read_at = self.played_at = self.replied_at = None
        self.deferred_for = None
        self.cancel_reason = None

    # --- commands -------------------------------------------------------------------------------------

    def dispatch(self, *, at: datetime, lease: timedelta, allowed_by: dict[str, Any] | None = None) -> int:
        """Claim the next attempt for ``lease`` (so a crashed worker's claim expires). Returns its number.
        ``allowed_by`` records the rule that allowed it (:func:`billing.domain.audit.allowed_by`).

        Raises:
            Conflict: ``already_final`` when the contact is terminal (sent, failed, skipped, rejected,
                cancelled); ``in_flight`` when another claim's lease has not expired.
        """
        if self.status.is_terminal:
            raise Conflict(f"contact is {self.status.value}", code="already_final")
        if self.status is ContactStatus.DISPATCHED and self.lease_until is not None and at < self.lease_until:
            raise Conflict("another attempt is in flight", code="in_flight")
        attempt = self.attempts + 1
        self.trigger_event(
            self.Dispatched, attempt=attempt, lease_until=at + lease, allowed_by=allowed_by, timestamp=at
        )
        return attempt

    def record_sent(
        self,
        *,
        gateway_message_id: str,
        remote_jid: str | None,
        text: str,
        at: datetime,
        template_id: UUID | None = None,
        template_version: int | None = None,
        variation: int | None = None,
        jid_asked: str | None = None,
    ) -> None:
        """Record the gateway's acceptance of the current attempt.

        Also after a cancellation that arrived while this attempt was in flight: the message did go
        out, and the record must say so (the cancellation came too late).

        Raises:
            Conflict: ``not_dispatched`` when no attempt is in flight.
        """
        if not (self.status is ContactStatus.CANCELLED and self.cancelled_in_flight):
            self._require_dispatched()
        self.trigger_event(
            self.Sent,
            gateway_message_id=gateway_message_id,
            remote_jid=remote_jid,
            text=text,
            template_id=template_id,
            template_version=template_version,
            variation=variation,
            jid_asked=jid_asked,
            timestamp=at,
        )

    def record_failure(
        self, *, code: str, message: str, retryable: bool, retry_at: datetime | None, at: datetime
    ) -> None:
        """Record a failed attempt; ``retry_at`` (UTC) schedules another, None makes it final.

        After a cancellation that arrived while the attempt was in flight nothing is recorded: the
        contact stays cancelled and is not retried.

        Raises:
            Conflict: ``not_dispatched`` when no attempt is in flight.
        """
        if self.status is ContactStatus.CANCELLED and self.cancelled_in_flight:
            return
        self._require_dispatched()
        self.trigger_event(
            self.Failed, code=code, message=message, retryable=retryable, retry_at=retry_at, timestamp=at
        )

    def record_skipped(self, *, code: str, message: str, at: datetime) -> None:
        """Record that the contact will not be sent (e.g. ``not_on_whatsapp``); nothing after a
        cancellation that arrived while the attempt was in flight."""
        if self.status is ContactStatus.CANCELLED and self.cancelled_in_flight:
            return
        self._require_dispatched()
        self.trigger_event(self.Skipped, code=code, message=message, timestamp=at)

    def defer(self, *, reason: str, not_before: datetime, at: datetime) -> None:
        """Put the contact back to wait until ``not_before`` without spending an attempt.

        Raises:
            Conflict: ``already_final`` when the contact is terminal.
        """
        if self.status.is_terminal:
            raise Conflict(f"contact is {self.status.value}", code="already_final")
        self.trigger_event(self.Deferred, reason=reason, not_before=not_before, timestamp=at)

    def cancel(self, *, reason: str, at: datetime) -> bool:
        """Cancel the contact if it is not final yet. Returns True when a cancellation was recorded.

        A contact whose attempt is in flight is cancelled too; if that attempt then reaches WhatsApp, the
        worker still records ``Sent`` (see :meth:`record_sent`), so the history tells the truth.
        """
        if self.status.is_terminal:
            return False
        self.trigger_event(self.Cancelled, reason=reason, timestamp=at)
        return True

    def record_receipt(self, *, status: str, reported_at: datetime | None, at: datetime) -> tuple[str, ...]:
        """Record a gateway status webhook for this contact's sent message; returns the steps recorded
        (``("delivered", "read")``...). Duplicates and late, older statuses record nothing
        (:func:`billing.domain.gateway_events.receipt_steps`).

        Raises:
            Conflict: ``not_sent`` when no message was sent (receipts are matched on the Sent's id).
        """
        if self.status is not ContactStatus.SENT and not self.cancelled_in_flight:
            raise Conflict(f"contact is {self.status.value}, not sent", code="not_sent")
        steps = receipt_steps(
            status,
            delivered=self.delivered_at is not None,
            read=self.read_at is not None,
            played=self.played_at is not None,
        )
        kinds = {"delivered": self.Delivered, "read": self.Read, "played": self.Played}
        for step in steps:
            self.trigger_event(kinds[step], status=status, reported_at=reported_at, timestamp=at)
        return steps

    def record_reply(self, *, message_id: str, opted_out: bool, at: datetime) -> None:
        """Record that the debtor answered (the conversation holds the text)."""
        self.trigger_event(self.Replied, message_id=message_id, opted_out=opted_out, timestamp=at)

    def skip(self, *, code: str, message: str, at: datetime) -> None:
        """Skip a contact that was never sent, before any claim (``opted_out``, ``not_on_whatsapp``
        from the lookup): no gateway call is made.

        Raises:
            Conflict: ``already_final`` when the contact is terminal.
        """
        if self.status.is_terminal:
            raise Conflict(f"contact is {self.status.value}", code="already_final")
        self.trigger_event(self.Skipped, code=code, message=message, timestamp=at)

    def _require_dispatched(self) -> None:
        if self.status is not ContactStatus.DISPATCHED:
            raise Conflict(f"contact is {self.status.value}, not dispatched", code="not_dispatched")


_EventShape = tuple[dict[str, Any], frozenset[str], frozenset[str]]
_EVENT_SHAPES: dict[type, _EventShape] = {}
_SET_BY_CREATION = frozenset({"originator_id", "originator_version", "originator_topic", "timestamp"})


def _event_shape(event_class: type, aggregate_class: type[Aggregate]) -> _EventShape:
    """``(every field in order with its default, or None, names ``values`` may give, required ones)`` of a
    dataclass creation event class of ``aggregate_class``, computed once per class; the template holds
    version 1 and the aggregate's topic already (a ``default_factory`` field is refused: none has one)."""
    shape = _EVENT_SHAPES.get(event_class)
    if shape is None:
        fields = dataclasses.fields(event_class)
        if any(f.default_factory is not dataclasses.MISSING for f in fields):
            raise TypeError(f"{event_class.__qualname__}: creation_event takes no default_factory field")
        defaults = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
        allowed = frozenset(f.name for f in fields) - _SET_BY_CREATION
        template = {f.name: defaults.get(f.name) for f in fields}
        template["originator_version"] = aggregate_class.INITIAL_VERSION
        template["originator_topic"] = get_topic(aggregate_class)
        shape = (template, allowed, allowed - defaults.keys())
        _EVENT_SHAPES[event_class] = shape
    return shape
