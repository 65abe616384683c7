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
from datetime import date
from typing import Any, Protocol
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

import msgspec
from eventsourcing.persistence import IntegrityError

from billing.domain.campaign import Campaign
from billing.domain.contact import Contact
from billing.domain.errors import Conflict, InvalidValue, NotFound
from billing.domain.ingestion import (
    AcceptedContact,
    RejectedContact,
    contact_ids,
    reject_duplicate_phones,
    screen_contact,
)
from billing.domain.policy import SendingPolicy
from billing.domain.queue import Queue
from billing.domain.templating import Template, parse_template
from billing.domain.tenant import Tenant
from billing.domain.types import TemplateType
from billing.domain.variables import choose_variation, message_variables
from billing.eventstore import EventStore, get_owned
from billing.services.clock import Clock
from billing.services.queries import Queries

MAX_IDEMPOTENCY_KEY = 255


class BatchRequest(Protocol):
    """What a send carries (the API's ``SendRequest`` Struct, already checked for shape and limits):
    ``contacts`` are objects of scalars (numbers as exact ``Decimal`` or ``int``)."""

    contacts: list[dict[str, Any]]
    template_type: str | None
    external_id: str | None
    allow_duplicate_phones: bool
    template_id: UUID | None  # a template of the type other than its default


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
            # nothing to send: the queue was created completed (its status poll says so too)
            "status": "queued" if self.accepted else "completed",
            "contacts": {
                "total": self.accepted + len(self.rejections),
                "accepted": self.accepted,
                "rejected": len(self.rejections),
            },
            "rejections": self.rejections,
        }


@dataclass(frozen=True)
class BatchPreview:
    """A dry run of a batch (the dashboard's new-campaign preview): ``rejections`` as the 202 would list
    them, ``messages`` ``[{index, phone, text}]`` of the first accepted contacts."""

    template_id: UUID
    total: int
    accepted: int
    rejections: list[dict[str, Any]]
    messages: list[dict[str, Any]]


def invoice_ref(fields: dict[str, str], request_external_id: str | None) -> str | None:
    """The invoice a contact is about: its own ``external_id`` field (sanitised, blank = absent), else the
    request's ``external_id``; None when neither is given."""
    own = (fields.get("external_id") or "").strip()
    return own or request_external_id


def _rejection(outcome: RejectedContact) -> dict[str, Any]:
    """The public rejection item of a refused contact."""
    return {
        "index": outcome.index,
        "code": outcome.code,
        "message": outcome.message,
        "field": outcome.field,
        **outcome.details,
    }


def screen_batch(
    request: BatchRequest,
    path_type: TemplateType,
    templates: Any,
    allowed_countries: frozenset[str],
    today: date,
) -> list[Any]:
    """Every contact of ``request`` screened (:func:`billing.domain.ingestion.screen_contact`, ``today``
    the tenant's local date) in request order, then the repeated phones rejected unless the request
    allows them: one ``AcceptedContact`` or ``RejectedContact`` per contact."""
    outcomes = [
        screen_contact(
            raw,
            index=index,
            template_type=path_type,
            templates=templates,
            allowed_countries=allowed_countries,
            today=today,
        )
        for index, raw in enumerate(request.contacts)
    ]
    if not request.allow_duplicate_phones:
        outcomes = reject_duplicate_phones(outcomes)
    return outcomes


def request_hash(request: BatchRequest) -> str:
    """SHA-256 of the canonical JSON of a request (sorted keys)."""
    return hashlib.sha256(msgspec.json.encode(request, order="sorted")).hexdigest()


class IngestService:
    """Accepts batches. Synchronous: call from async code through a worker thread."""

    def __init__(self, store: EventStore, queries: Queries, clock: Clock) -> None:
        self.store = store
        self.queries = queries
        self.clock = clock

    def sending_template(
        self, tenant_id: UUID, template_type: TemplateType, template_id: UUID | None = None
    ) -> tuple[UUID, int, list[Template]]:
        """The template a batch will be sent with — the named one, else the type's default — as ``(id,
        version, variations parsed)`` (a contact must satisfy every variation, since any may be chosen). A
        template that is neither is never used.

        Raises:
            InvalidValue (naming ``template_id`` or ``template_type``): ``template_not_found``,
                ``template_type_mismatch``, ``template_inactive`` for a named template;
                ``no_active_template`` when the type has no default.
        """
        row = self.queries.sending_template(tenant_id, template_type.value, template_id)
        if template_id is not None:
            if row is None:
                raise InvalidValue(
                    "template_id names no template", code="template_not_found", field="template_id"
                )
            if row["template_type"] != template_type.value:
                raise InvalidValue(
                    f"template_id names a {row['template_type']} template, not {template_type.value}",
                    code="template_type_mismatch",
                    field="template_id",
                )
        if row is None or not row["active"]:
            if template_id is not None:
                raise InvalidValue(
                    "template_id names an inactive template", code="template_inactive", field="template_id"
                )
            raise InvalidValue(
                f"no default {template_type.value} template: create one and make it the default",
                code="no_active_template",
                field="template_type",
            )
        return row["template_id"], int(row["version"]), [parse_template(text) for text in row["variations"]]

    def submit(
        self,
        *,
        tenant_id: UUID,
        path_type: TemplateType,
        request: BatchRequest,
        idempotency_key: str | None = None,
    ) -> SubmitResult:
        """Store a batch atomically and return the 202 answer.

        Raises:
            InvalidValue: ``template_type_mismatch``, ``no_active_template``, ``invalid_request``, and for
                a named ``template_id`` ``template_not_found`` / ``template_inactive``.
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
        template_id, template_version, templates = self.sending_template(
            tenant_id, path_type, request.template_id
        )
        now = self.clock.now()
        policy = self._tenant_policy(tenant_id)
        today = now.astimezone(policy.calendar.tz).date()
        outcomes = screen_batch(request, path_type, templates, policy.allowed_countries, today)
        contacts: list[Contact.Created] = []  # the creation events alone (Contact.creation_event)
        rejections: list[dict[str, Any]] = []
        ids = contact_ids(campaign_id, len(outcomes))
        for index, outcome in enumerate(outcomes):
            common: dict[str, Any] = {
                "id": ids[index],
                "at": now,
                "tenant_id": tenant_id,
                "campaign_id": campaign_id,
                "queue_id": queue_id,
                "index": index,
                "template_type": path_type.value,
                "external_id": request.external_id,
                "invoice_ref": invoice_ref(outcome.fields, request.external_id),
                "fields": outcome.fields,
                "telefone": outcome.telefone,
            }
            if isinstance(outcome, AcceptedContact):
                contacts.append(
                    Contact.creation_event(
                        Contact.Added,
                        phone=outcome.phone,
                        gateway_number=outcome.gateway_number,
                        amount=outcome.amount,
                        amount_total=outcome.amount_total,
                        due_date=outcome.due_date,
                        ordinal=len(contacts) - len(rejections),
                        template_id=template_id,
                        template_version=template_version,
                        **common,
                    )
                )
            else:
                rejection = _rejection(outcome)
                rejections.append(rejection)
                contacts.append(
                    Contact.creation_event(
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
            self.store.save(campaign, queue, *contacts)  # aggregates and bare creation events
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

    def preview(
        self, *, tenant_id: UUID, path_type: TemplateType, request: BatchRequest, messages: int = 3
    ) -> BatchPreview:
        """What :meth:`submit` would do with ``request`` now, storing nothing: the rejections (same
        screening, same codes) and the first ``messages`` accepted contacts' texts as they would read if
        sent now (the worker renders again at send time: days overdue may have moved by then).

        Raises:
            InvalidValue: as :meth:`submit` (template and request checks).
        """
        template_id, _, parsed = self.sending_template(tenant_id, path_type, request.template_id)
        now = self.clock.now()
        policy = self._tenant_policy(tenant_id)
        zone = policy.calendar.tz
        today = now.astimezone(zone).date()
        rejections: list[dict[str, Any]] = []
        texts: list[dict[str, Any]] = []
        ordinal = 0
        outcomes = screen_batch(request, path_type, parsed, policy.allowed_countries, today)
        for index, outcome in enumerate(outcomes):
            if not isinstance(outcome, AcceptedContact):
                rejections.append(_rejection(outcome))
                continue
            if len(texts) < messages:
                variables = message_variables(
                    outcome.fields,
                    amount=outcome.amount,
                    amount_total=outcome.amount_total,
                    due_date=outcome.due_date,
                    now=now,
                    tz=zone,
                )
                template = parsed[choose_variation(ordinal, len(parsed))]
                texts.append({"index": index, "phone": outcome.phone, "text": template.render(variables)})
            ordinal += 1
        return BatchPreview(
            template_id=template_id,
            total=len(request.contacts),
            accepted=len(request.contacts) - len(rejections),
            rejections=rejections,
            messages=texts,
        )

    def _tenant_policy(self, tenant_id: UUID) -> SendingPolicy:
        """The tenant's sending policy (zone, allowed countries). Raises NotFound for an unknown tenant."""
        tenant = get_owned(self.store, tenant_id, Tenant)
        if tenant is None:
            raise NotFound("tenant not found", code="tenant_not_found")
        return tenant.sending_policy

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
