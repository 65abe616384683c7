"""The wire shapes of the public and admin API as msgspec Structs: litestar decodes request bodies with
them (through :mod:`billing.api.body`) and documents both directions in the OpenAPI document.

Every request Struct forbids unknown fields; every string has a length bound and refuses NUL characters
(PostgreSQL cannot store U+0000 in text); contact values are scalars. Limits are the figures the domain
and the README give (see each constant's source).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from billing.domain.ingestion import MAX_FIELD_NAME_LENGTH, MAX_FIELDS
from billing.domain.policy import (
    MAX_ALLOWED_COUNTRIES,
    MAX_MESSAGES_PER_DAY,
    MAX_MESSAGES_PER_MINUTE,
    MAX_PAUSE_S,
    MAX_RETRY_ATTEMPTS,
    MAX_RETRY_DELAY_S,
)
from billing.domain.template import (
    MAX_DESCRIPTION_LENGTH,
    MAX_NAME_LENGTH,
    MAX_TEMPLATE_LENGTH,
    MAX_VARIATIONS,
)

NO_NUL = r"^[^\x00]*$"
"""Pattern of every request string: no U+0000 (PostgreSQL text cannot hold it)."""

MAX_CONTACTS = 10_000
MAX_VALUE_LENGTH = 500
"""A contact value's maximum length in characters (code points), after which it is refused (not cut)."""
MAX_EXTERNAL_ID = 200
MAX_IDEMPOTENCY_KEY = 255


ExternalId = Annotated[
    str, Meta(min_length=1, max_length=MAX_EXTERNAL_ID, pattern=NO_NUL, description="the ERP's reference")
]
Name = Annotated[str, Meta(min_length=1, max_length=MAX_NAME_LENGTH, pattern=NO_NUL)]
Description = Annotated[str, Meta(max_length=MAX_DESCRIPTION_LENGTH, pattern=NO_NUL)]
VariationText = Annotated[str, Meta(min_length=1, max_length=MAX_TEMPLATE_LENGTH, pattern=NO_NUL)]
ZoneName = Annotated[
    str, Meta(min_length=1, max_length=64, pattern=NO_NUL, description="IANA zone, e.g. America/Sao_Paulo")
]
DayKey = Annotated[str, Meta(min_length=1, max_length=16, pattern=NO_NUL)]
HolidayCountry = Annotated[str, Meta(min_length=2, max_length=3, pattern=NO_NUL)]
Subdivision = Annotated[str, Meta(min_length=1, max_length=64, pattern=NO_NUL)]
Url = Annotated[str, Meta(min_length=1, max_length=2048, pattern=NO_NUL)]
Instance = Annotated[str, Meta(min_length=1, max_length=200, pattern=NO_NUL)]
GatewayKey = Annotated[str, Meta(min_length=1, max_length=500, pattern=NO_NUL)]
ApiVersion = Annotated[str, Meta(min_length=1, max_length=8, pattern=NO_NUL, description="v1 or v2")]

FieldName = Annotated[
    str, Meta(min_length=1, max_length=MAX_FIELD_NAME_LENGTH, pattern=NO_NUL, description="a field name")
]
ContactValue = Annotated[str, Meta(max_length=MAX_VALUE_LENGTH, pattern=NO_NUL)] | int | float | bool | None
"""A contact's value: a scalar (string, number, boolean, null). Arrays and objects are refused."""
ContactFields = Annotated[
    dict[FieldName, ContactValue],
    Meta(
        max_length=MAX_FIELDS,
        description="nome, telefone, valor, valor_total, data_vencimento; every other field is a template "
        "variable",
        examples=[
            {
                "nome": "Maria Souza",
                "telefone": "(11) 98765-4321",
                "valor": "R$ 150,00",
                "data_vencimento": "2025-01-15",
            }
        ],
    ),
]
TemplateTypeName = Literal["overdue", "upcoming", "notification"]
ContactStatusName = Literal["pending", "dispatched", "sent", "failed", "skipped", "rejected", "cancelled"]


# ------------------------------------------------------------------------------------------ errors


class ErrorBody(Struct, omit_defaults=True):
    """Every 4xx/5xx answer: a machine-readable ``code``, a human ``message`` naming the ``field`` (a path
    such as ``contacts[3].telefone``, a header or a query parameter; null when no single input is to
    blame), and sometimes ``details``."""

    code: str
    message: str
    field: str | None
    details: dict[str, Any] | None = None


# ---------------------------------------------------------------------------------- public: requests


class SendRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /send/{type}`` (DESIGN.md; field names are the integration's own).

    ``allow_duplicate_phones``: by default a contact whose phone (normalised) an earlier contact of the
    batch already has is rejected ``duplicate_phone``; ``true`` sends to both.

    ``template_id``: send with this template of the type (active, the tenant's) instead of the type's
    default; absent: the default (422 ``template_not_found``, ``template_type_mismatch``,
    ``template_inactive`` or ``no_active_template``).
    """

    contacts: Annotated[list[ContactFields], Meta(min_length=1, max_length=MAX_CONTACTS)]
    template_type: TemplateTypeName | None = None
    external_id: ExternalId | None = None
    allow_duplicate_phones: bool = False
    template_id: Annotated[
        UUID | None,
        Meta(description="a template of the type to send with instead of the type's default"),
    ] = None


class CancelContactsRequest(Struct, forbid_unknown_fields=True):
    """Body of ``POST /contacts/cancel``."""

    external_id: ExternalId


# --------------------------------------------------------------------------------- public: responses


class BatchCounts(Struct):
    """Contacts of a batch: ``total`` = ``accepted`` + ``rejected``."""

    total: int
    accepted: int
    rejected: int


class Rejection(Struct, omit_defaults=True):
    """A contact rejected alone. Besides code/message/field, some codes carry facts: ``names``
    (``missing_variable``), ``first_index`` (``duplicate_phone``), ``reason`` (``invalid_phone``),
    ``country`` (``country_not_allowed``), ``earliest``/``latest`` (``due_date_out_of_range``),
    ``max_decimal_places`` (``invalid_amount``)."""

    index: int
    code: str
    message: str
    field: str | None
    names: list[str] | UnsetType = UNSET
    first_index: int | UnsetType = UNSET
    reason: str | UnsetType = UNSET
    country: str | UnsetType = UNSET
    earliest: str | UnsetType = UNSET
    latest: str | UnsetType = UNSET
    max_decimal_places: int | UnsetType = UNSET


class SendAccepted(Struct):
    """202 answer of a send."""

    campaign_id: UUID
    queue_id: UUID
    template_type: TemplateTypeName
    external_id: str | None
    status: Literal["queued", "completed"]
    """``queued``; ``completed`` when every contact was rejected (there is nothing to send)."""
    contacts: BatchCounts
    rejections: list[Rejection]


class QueueCounts(Struct):
    """Contacts of a queue by status."""

    total: int
    pending: int
    sent: int
    failed: int
    skipped: int
    rejected: int
    cancelled: int
    delivered: int = 0
    """Sent contacts with a delivery receipt (a read receipt implies delivery)."""
    read: int = 0
    """Sent contacts the debtor read (read receipt)."""
    replied: int = 0
    """Sent contacts the debtor replied to."""


class QueueStatusDoc(Struct, kw_only=True):
    """A queue's status (DESIGN.md "Queue status"); times are ISO 8601 with offset, or null."""

    queue_id: UUID
    campaign_id: UUID
    template_type: TemplateTypeName
    status: Literal["queued", "running", "paused", "completed", "cancelled"]
    contacts: QueueCounts
    progress: float
    paused_reason: str | None
    resume_at: str | None
    created_at: str | None
    started_at: str | None
    completed_at: str | None
    cancelled_at: str | None
    updated_at: str | None


class ContactError(Struct):
    """Why a contact was not sent."""

    code: str
    message: str | None


class ContactItem(Struct):
    """One contact of a campaign."""

    contact_id: UUID
    index: int
    nome: str | None
    telefone: str | None
    phone: str | None
    status: ContactStatusName
    attempts: int
    message_text: str | None
    gateway_message_id: str | None
    sent_at: str | None
    error: ContactError | None
    delivered_at: str | None = None
    read_at: str | None = None
    replied_at: str | None = None
    next_attempt_at: str | None = None
    """A pending contact's next attempt (ISO 8601 with offset), null otherwise."""
    deferred_reason: str | None = None
    """Why a pending contact waits (``business_hours``, ``rate_limited``, ``daily_limit``, …), or null."""


class ContactsPage(Struct):
    """A page of contacts; ``next_cursor`` is null on the last page."""

    items: list[ContactItem]
    next_cursor: str | None


class InvoiceContact(ContactItem, kw_only=True):
    """One contact about an invoice, in whichever batch and campaign it came: a contact list's item plus
    where it belongs."""

    campaign_id: UUID
    queue_id: UUID
    template_type: TemplateTypeName
    external_id: str | None
    """The batch's ``external_id``."""
    invoice: str | None
    """The invoice the contact is about: its own ``external_id`` field, else the batch's."""


class InvoiceContacts(Struct):
    """Answer of ``GET /contacts?external_id=``: the invoice's contacts, oldest first."""

    external_id: str
    items: list[InvoiceContact]


class QueueCancelled(Struct):
    """Answer of a queue cancellation."""

    queue_id: UUID
    cancelled: int


class ContactsCancelled(Struct):
    """Answer of ``POST /contacts/cancel``."""

    external_id: str
    cancelled: int


# ----------------------------------------------------------------------------------- admin: requests


class ApiKeyCreate(Struct, forbid_unknown_fields=True):
    """Body of ``POST /api-keys/``."""

    name: Name = "default"


Variations = Annotated[list[VariationText], Meta(min_length=1, max_length=MAX_VARIATIONS)]


class TemplateCreate(Struct, forbid_unknown_fields=True):
    """Body of ``POST /templates/``."""

    name: Name
    template_type: TemplateTypeName
    variations: Variations
    description: Description = ""
    active: bool = True


class TemplatePatch(Struct, forbid_unknown_fields=True):
    """Body of ``PATCH /templates/{id}/``: absent fields stay as they are."""

    name: Name | None = None
    description: Description | None = None
    variations: Variations | None = None
    active: bool | None = None


class PreviewRequest(Struct, forbid_unknown_fields=True):
    """Body of ``POST /templates/{id}/preview``: sample contact fields as an ERP would send them."""

    variables: Annotated[dict[FieldName, ContactValue], Meta(max_length=MAX_FIELDS)] = {}


TimeOfDay = Annotated[str, Meta(max_length=16, pattern=NO_NUL, description="HH:MM local time")]
WindowPair = Annotated[list[TimeOfDay], Meta(max_length=2, description="[start, end]")]
DayWindows = Annotated[list[WindowPair], Meta(max_length=8)]


class HolidaysSpec(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Holiday rules (python-holidays): country, state, optional days, extra closed dates."""

    country: HolidayCountry | UnsetType = UNSET
    subdivision: Subdivision | UnsetType | None = UNSET
    include_optional: bool | UnsetType = UNSET
    extra_dates: (
        Annotated[list[Annotated[str, Meta(pattern=r"^\d{4}-\d{2}-\d{2}$")]], Meta(max_length=366)]
        | UnsetType
    ) = UNSET


class RetrySpec(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Retry of retryable gateway failures: attempts (first included) and capped exponential backoff."""

    max_attempts: Annotated[int, Meta(ge=1, le=MAX_RETRY_ATTEMPTS)] | UnsetType = UNSET
    base_delay_s: Annotated[float, Meta(gt=0, le=MAX_RETRY_DELAY_S)] | UnsetType = UNSET
    max_delay_s: Annotated[float, Meta(gt=0, le=MAX_RETRY_DELAY_S)] | UnsetType = UNSET


class PolicyPatch(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Sending-policy keys to change (each replaces the stored one; absent keys stay)."""

    timezone: ZoneName | UnsetType = UNSET
    windows: (
        Annotated[
            dict[DayKey, DayWindows],
            Meta(max_length=16, description="day (mon..sun, mon-fri, every_day) -> [[start, end], ...]"),
        ]
        | UnsetType
    ) = UNSET
    holidays: HolidaysSpec | UnsetType = UNSET
    messages_per_minute: Annotated[int, Meta(ge=1, le=MAX_MESSAGES_PER_MINUTE)] | UnsetType = UNSET
    max_messages_per_day: Annotated[int, Meta(ge=1, le=MAX_MESSAGES_PER_DAY)] | UnsetType = UNSET
    pause_min_s: Annotated[float, Meta(ge=0, le=MAX_PAUSE_S)] | UnsetType = UNSET
    pause_max_s: Annotated[float, Meta(ge=0, le=MAX_PAUSE_S)] | UnsetType = UNSET
    retry: RetrySpec | UnsetType = UNSET
    allowed_countries: (
        Annotated[
            list[Annotated[str, Meta(min_length=2, max_length=2, pattern=r"^[A-Za-z]{2}$")]],
            Meta(min_length=1, max_length=MAX_ALLOWED_COUNTRIES),
        ]
        | UnsetType
    ) = UNSET


class GatewaySpec(Struct, forbid_unknown_fields=True):
    """Evolution API settings (replaced whole)."""

    base_url: Url
    instance: Instance
    api_key: GatewayKey
    api_version: ApiVersion


class ConfigPatch(Struct, forbid_unknown_fields=True):
    """Body of ``PATCH /config/``: ``policy`` keys merge into the policy; ``gateway`` replaces it."""

    policy: PolicyPatch | None = None
    gateway: GatewaySpec | None = None


# ---------------------------------------------------------------------------------- admin: responses


class ApiKeyItem(Struct):
    """A key as listed (never its text)."""

    key_id: UUID
    name: str
    prefix: str
    created_at: str | None
    revoked_at: str | None


class ApiKeyIssued(Struct):
    """A new key: ``api_key`` is its text, shown in this answer only."""

    key_id: UUID
    name: str
    prefix: str
    api_key: str


class TemplateDoc(Struct, omit_defaults=True):
    """A template; ``version`` identifies the text in force."""

    template_id: UUID
    name: str
    template_type: TemplateTypeName
    description: str
    variations: list[str]
    active: bool
    version: int
    default: bool
    """The template is its type's default: the one a send without ``template_id`` uses."""
    updated_at: str | UnsetType | None = UNSET


class PreviewDoc(Struct):
    """Each variation rendered for the sample, and what the sample lacks for each."""

    template_id: UUID
    version: int
    previews: list[str]
    missing_variables: list[list[str]]


class CampaignItem(QueueStatusDoc, kw_only=True):
    """A campaign with its queue's status."""

    external_id: str | None


class StatsDoc(Struct):
    """Queues and contacts per status of the tenant."""

    queues: int
    contacts: dict[str, int]


class ConfigDoc(Struct):
    """The tenant's sending policy and gateway (its key masked)."""

    tenant_id: UUID
    name: str
    policy: dict[str, Any]
    gateway: dict[str, str]


class EventDoc(Struct):
    """One domain event of an aggregate."""

    type: str
    version: int
    at: str
    data: dict[str, Any]


def event_doc(event: Any) -> EventDoc:
    """The document of one stored domain event (a library event dataclass): its ``TOPIC``, aggregate
    version, ISO 8601 timestamp and its own fields as JSON builtins (the library's bookkeeping fields left
    out)."""
    data = {
        f.name: getattr(event, f.name)
        for f in dataclasses.fields(event)
        if f.name not in ("originator_id", "originator_version", "timestamp", "originator_topic")
    }
    return EventDoc(
        type=type(event).TOPIC,
        version=event.originator_version,
        at=event.timestamp.isoformat(),
        data=msgspec.to_builtins(data),
    )


class ContactHistory(Struct):
    """Every event of a contact, oldest first."""

    contact_id: UUID
    events: list[EventDoc]


class HistoryEntry(Struct):
    """One event of a contact as the history projection holds it: ``at`` (ISO 8601 with offset),
    ``event`` (e.g. ``dispatched``, ``sent``), ``type`` (the event's topic), the contact's ids, invoice
    and phone, and ``data``: the event's fields as recorded (text, template version and variation, JID,
    gateway message id, error code, and on a claim ``allowed_by``: the rule that allowed the send)."""

    at: str
    event: str
    type: str
    version: int
    contact_id: UUID
    campaign_id: UUID
    queue_id: UUID
    template_type: TemplateTypeName
    external_id: str | None
    invoice: str | None
    phone: str | None
    data: dict[str, Any]


class InvoiceHistory(Struct):
    """``GET /history/invoice/{ref}``: the invoice's contacts and every event of theirs in time order;
    ``truncated`` when more than 10,000 events matched (the CLI's ``billing history export`` has all)."""

    invoice: str
    contacts: list[InvoiceContact]
    events: list[HistoryEntry]
    truncated: bool


class PhoneHistory(Struct):
    """``GET /history/phone/{e164}``: as :class:`InvoiceHistory` for one phone, plus ``conversation``:
    the events of the conversation with it (replies, the opt-out and its cause, lifts)."""

    phone: str
    contacts: list[InvoiceContact]
    events: list[HistoryEntry]
    truncated: bool
    conversation: list[EventDoc]


class TemplateHistory(Struct):
    """Every event of a template, oldest first."""

    template_id: UUID
    events: list[EventDoc]


def as_struct(value: Any, kind: type[Any]) -> Any:
    """``value`` (a service's JSON-like document) as the Struct ``kind`` it is documented as.

    Raises:
        msgspec.ValidationError: the document does not match its declared shape (a programming error).
    """
    return msgspec.convert(value, kind, strict=False)


def policy_changes(patch: PolicyPatch) -> dict[str, Any]:
    """The keys a policy patch sets, as the JSON-like spec the domain reads (unset keys absent)."""
    changes: dict[str, Any] = msgspec.to_builtins(patch)
    return changes
