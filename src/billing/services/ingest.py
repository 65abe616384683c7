"""The main use case: an ERP's batch becomes a campaign, its queue and one Contact per entry, saved in ONE
transaction (promise 1), with per-contact rejections and ``Idempotency-Key`` replay.

Idempotency: with a key, the campaign and queue ids are UUID v5 of (tenant, key), so a retried POST's save
conflicts on the campaign's first version and the first campaign's response is returned (no second
campaign, no extra table to keep in step). The same key with a different body is refused
(``idempotency_key_reused``), as the IETF draft "The Idempotency-Key HTTP Header Field" recommends.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5
from zoneinfo import ZoneInfo

import msgspec
from eventsourcing.persistence import IntegrityError

from billing.domain.campaign import Campaign
from billing.domain.contact import Contact
from billing.domain.errors import Conflict, InvalidValue, NotFound
from billing.domain.ingestion import MAX_FIELD_NAME_LENGTH, MAX_FIELDS, AcceptedContact, screen_contact
from billing.domain.queue import Queue
from billing.domain.templating import parse_template
from billing.domain.tenant import Tenant
from billing.domain.types import TemplateType
from billing.eventstore import EventStore, get_owned
from billing.services.clock import Clock
from billing.services.queries import Queries

MAX_CONTACTS = 10_000
MAX_EXTERNAL_ID = 200
MAX_IDEMPOTENCY_KEY = 255
SCALARS = (str, int, float, Decimal, bool, type(None))


class SendRequest(msgspec.Struct, kw_only=True):
    """Body of ``POST /send/{type}`` (DESIGN.md; field names are the integration's own)."""

    contacts: list[dict[str, Any]]
    template_type: str | None = None
    external_id: str | None = None


_decoder = msgspec.json.Decoder(SendRequest, float_hook=Decimal)


@dataclass(frozen=True)
class SubmitResult:
    """What a POST answers (202). ``replayed`` is True when an idempotent retry returned the first answer."""

    campaign_id: UUID
    queue_id: UUID
    template_type: str
    external_id: str | None
    accepted: int
    rejections: list[dict[str, Any]]
    replayed: bool = False

    def document(self) -> dict[str, Any]:
        """The public response body."""
        return {
            "campaign_id": str(self.campaign_id),
            "queue_id": str(self.queue_id),
            "template_type": self.template_type,
            "external_id": self.external_id,
            "status": "queued",
            "contacts": {
                "total": self.accepted + len(self.rejections),
                "accepted": self.accepted,
                "rejected": len(self.rejections),
            },
            "rejections": self.rejections,
        }


def invoice_ref(fields: dict[str, str], request_external_id: str | None) -> str | None:
    """The invoice a contact is about: its own ``external_id`` field (sanitised, blank = absent), else the
    request's ``external_id``; None when neither is given."""
    own = (fields.get("external_id") or "").strip()
    return own or request_external_id


def decode_send_request(body: bytes) -> SendRequest:
    """Decode and structurally check a request body.

    Raises:
        InvalidValue: ``invalid_json`` (not JSON) or ``invalid_request`` naming the field (no contacts, too
            many, a contact that is not an object, a value that is not a scalar, wrong types).
    """
    try:
        request = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        text = str(exc)
        field = text.rpartition("at `$.")[2].rstrip("`") if "at `$." in text else None
        raise InvalidValue(f"invalid request: {text}", code="invalid_request", field=field) from None
    except msgspec.DecodeError as exc:
        raise InvalidValue(f"body is not valid JSON: {exc}", code="invalid_json") from None
    if not request.contacts:
        raise InvalidValue(
            "contacts must hold at least one contact", code="invalid_request", field="contacts"
        )
    if len(request.contacts) > MAX_CONTACTS:
        raise InvalidValue(
            f"contacts holds {len(request.contacts)} contacts; at most {MAX_CONTACTS} per request",
            code="too_many_contacts",
            field="contacts",
        )
    if request.external_id is not None and len(request.external_id) > MAX_EXTERNAL_ID:
        raise InvalidValue(
            f"external_id is longer than {MAX_EXTERNAL_ID} characters",
            code="invalid_request",
            field="external_id",
        )
    for i, contact in enumerate(request.contacts):
        own = contact.get("external_id")
        if own is not None and (not isinstance(own, str | int) or len(str(own)) > MAX_EXTERNAL_ID):
            raise InvalidValue(
                f"contacts[{i}].external_id must be a string of at most {MAX_EXTERNAL_ID} characters",
                code="invalid_request",
                field=f"contacts[{i}].external_id",
            )
        if len(contact) > MAX_FIELDS:
            raise InvalidValue(
                f"contacts[{i}] has {len(contact)} fields; at most {MAX_FIELDS}",
                code="invalid_request",
                field=f"contacts[{i}]",
            )
        for key, value in contact.items():
            if not key or len(key) > MAX_FIELD_NAME_LENGTH:
                raise InvalidValue(
                    f"contacts[{i}] has a field name of {len(key)} characters; 1 to {MAX_FIELD_NAME_LENGTH}",
                    code="invalid_request",
                    field=f"contacts[{i}]",
                )
            if not isinstance(value, SCALARS):
                raise InvalidValue(
                    f"contacts[{i}].{key} must be a string, number, boolean or null",
                    code="invalid_request",
                    field=f"contacts[{i}].{key}",
                )
    return request


def request_hash(request: SendRequest) -> str:
    """SHA-256 of the canonical JSON of a request (sorted keys)."""
    return hashlib.sha256(msgspec.json.encode(request, order="sorted")).hexdigest()


class IngestService:
    """Accepts batches. Synchronous: call from async code through a worker thread."""

    def __init__(self, store: EventStore, queries: Queries, clock: Clock) -> None:
        self.store = store
        self.queries = queries
        self.clock = clock

    def required_variables(self, tenant_id: UUID, template_type: TemplateType) -> frozenset[str]:
        """Names every active variation of the type uses outside conditionals (a contact must have them all,
        since any variation may be chosen).

        Raises:
            InvalidValue: ``no_active_template`` when the tenant has no active template of the type.
        """
        rows = self.queries.active_templates(tenant_id, template_type.value)
        if not rows:
            raise InvalidValue(
                f"no active {template_type.value} template: create one first",
                code="no_active_template",
                field="template_type",
            )
        names: set[str] = set()
        for row in rows:
            for text in row["variations"]:
                names |= parse_template(text).required_variables
        return frozenset(names)

    def submit(
        self,
        *,
        tenant_id: UUID,
        path_type: TemplateType,
        request: SendRequest,
        idempotency_key: str | None = None,
    ) -> SubmitResult:
        """Store a batch atomically and return the 202 answer.

        Raises:
            InvalidValue: ``template_type_mismatch``, ``no_active_template``, ``invalid_request``.
            Conflict: ``idempotency_key_reused`` (same key, different body).
        """
        if request.template_type is not None and request.template_type != path_type.value:
            raise InvalidValue(
                f"template_type {request.template_type!r} does not match the path ({path_type.value})",
                code="template_type_mismatch",
                field="template_type",
            )
        if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
            raise InvalidValue(
                "Idempotency-Key must have 1 to 255 characters",
                code="invalid_request",
                field="Idempotency-Key",
            )
        digest = request_hash(request)
        if idempotency_key is not None:
            campaign_id = uuid5(NAMESPACE_URL, f"billing:{tenant_id}:campaign:{idempotency_key}")
            queue_id = uuid5(NAMESPACE_URL, f"billing:{tenant_id}:queue:{idempotency_key}")
            replay = self._replay(tenant_id, campaign_id, digest, path_type)
            if replay is not None:
                return replay
        else:
            campaign_id, queue_id = uuid4(), uuid4()
        required = self.required_variables(tenant_id, path_type)
        now = self.clock.now()
        today = now.astimezone(self._tenant_zone(tenant_id)).date()
        contacts: list[Contact] = []
        rejections: list[dict[str, Any]] = []
        for index, raw in enumerate(request.contacts):
            outcome = screen_contact(
                raw, index=index, template_type=path_type, required_variables=required, today=today
            )
            common: dict[str, Any] = {
                "id": uuid5(campaign_id, str(index)),
                "tenant_id": tenant_id,
                "campaign_id": campaign_id,
                "queue_id": queue_id,
                "index": index,
                "template_type": path_type.value,
                "external_id": request.external_id,
                "invoice_ref": invoice_ref(outcome.fields, request.external_id),
                "fields": outcome.fields,
                "telefone": outcome.telefone,
                "timestamp": now,
            }
            if isinstance(outcome, AcceptedContact):
                contacts.append(
                    Contact._create(
                        Contact.Added,
                        phone=outcome.phone,
                        gateway_number=outcome.gateway_number,
                        amount=outcome.amount,
                        amount_total=outcome.amount_total,
                        due_date=outcome.due_date,
                        ordinal=len(contacts) - len(rejections),
                        **common,
                    )
                )
            else:
                rejection = {
                    "index": index,
                    "code": outcome.code,
                    "message": outcome.message,
                    "field": outcome.field,
                    **outcome.details,
                }
                rejections.append(rejection)
                contacts.append(
                    Contact._create(
                        Contact.Rejected,
                        code=outcome.code,
                        message=outcome.message,
                        field=outcome.field,
                        **common,
                    )
                )
        accepted = len(contacts) - len(rejections)
        queue = Queue.open(
            queue_id=queue_id,
            tenant_id=tenant_id,
            campaign_id=campaign_id,
            template_type=path_type.value,
            total=len(contacts),
            at=now,
        )
        campaign = Campaign.start(
            campaign_id=campaign_id,
            tenant_id=tenant_id,
            template_type=path_type.value,
            external_id=request.external_id,
            queue_id=queue_id,
            accepted=accepted,
            rejected=len(rejections),
            idempotency_key=idempotency_key,
            request_hash=digest,
            rejections=rejections,
            at=now,
        )
        try:
            self.store.save(campaign, queue, *contacts)
        except IntegrityError:
            if idempotency_key is None:
                raise
            # A concurrent retry with the same key won the race: answer as it did.
            replay = self._replay(tenant_id, campaign_id, digest, path_type)
            if replay is None:
                raise
            return replay
        return SubmitResult(
            campaign_id=campaign_id,
            queue_id=queue_id,
            template_type=path_type.value,
            external_id=request.external_id,
            accepted=accepted,
            rejections=rejections,
        )

    def _tenant_zone(self, tenant_id: UUID) -> ZoneInfo:
        """The tenant's IANA zone (its policy's ``timezone``). Raises NotFound for an unknown tenant."""
        tenant = get_owned(self.store, tenant_id, Tenant)
        if tenant is None:
            raise NotFound("tenant not found", code="tenant_not_found")
        return tenant.sending_policy.calendar.tz

    def _replay(
        self, tenant_id: UUID, campaign_id: UUID, digest: str, path_type: TemplateType
    ) -> SubmitResult | None:
        campaign = get_owned(self.store, campaign_id, Campaign, tenant_id)
        if campaign is None:
            return None
        if campaign.request_hash != digest or campaign.template_type != path_type.value:
            raise Conflict(
                "Idempotency-Key was already used with a different request (body or endpoint)",
                code="idempotency_key_reused",
                field="Idempotency-Key",
            )
        return SubmitResult(
            campaign_id=campaign.id,
            queue_id=campaign.queue_id,
            template_type=campaign.template_type,
            external_id=campaign.external_id,
            accepted=campaign.accepted,
            rejections=list(campaign.rejections),
            replayed=True,
        )
