"""The public API of the ERPs (``X-Billing-API-Key``), paths and fields as in DESIGN.md."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from litestar import Controller, Response, get, post
from litestar.di import Provide
from litestar.openapi.spec import Example
from litestar.params import Parameter

from billing.api.deps import Services, api_key_guard, provide_services, provide_tenant_id, run_sync
from billing.api.docs import BODY_ERRORS, with_common
from billing.api.errors import error_body
from billing.api.schemas import (
    MAX_EXTERNAL_ID,
    MAX_IDEMPOTENCY_KEY,
    CancelContactsRequest,
    ContactsCancelled,
    ContactsPage,
    InvoiceContacts,
    QueueCancelled,
    QueueStatusDoc,
    SendAccepted,
    SendRequest,
    as_struct,
)
from billing.domain.errors import InvalidValue, NotFound
from billing.domain.types import ContactStatus, TemplateType
from billing.services.cancel import ProjectionsBehind
from billing.services.history import HistoryFilter
from billing.services.queries import MAX_PAGE

BASE = "/api/billing/v1/billing"
RETRY_AFTER_S = 1
"""``Retry-After`` (seconds) of a cancellation refused while the views catch up."""

ESCAPED_CHAR_BYTES = 12
"""Most bytes one character can take in JSON text: an astral character written as two ``\\uXXXX``."""
SEND_MAX_BODY = 16 * 1024 * 1024
"""Body limit of a send (bytes). Decision: 10,000 contacts of ~1.6 KB each, ten times a typical contact;
a larger batch is split by the ERP (413 ``body_too_large``). The per-value limits alone would allow far
more (50 fields of 500 characters per contact), which no real batch needs."""
CANCEL_MAX_BODY = 1024 + MAX_EXTERNAL_ID * ESCAPED_CHAR_BYTES
"""Body limit of ``/contacts/cancel``: the largest valid ``external_id`` fully escaped, plus the object."""

SEND_CODES = (
    "unknown_field",
    "value_too_long",
    "too_many_fields",
    "nul_character",
    "invalid_field_name",
    "invalid_request",
    "template_type_mismatch",
    "no_active_template",
    "idempotency_key_reused",
)
SEND_EXAMPLE = {
    "external_id": "fatura-12345",
    "contacts": [
        {
            "nome": "Maria Souza",
            "telefone": "(11) 98765-4321",
            "valor": "R$ 150,00",
            "data_vencimento": "2025-01-15",
        }
    ],
}

IdempotencyKey = Annotated[
    str | None,
    Parameter(
        header="Idempotency-Key",
        min_length=1,
        max_length=MAX_IDEMPOTENCY_KEY,
        pattern=r"^[^\x00]*$",
        description="Makes a retried POST return the first answer instead of queueing a second campaign; "
        "the same key with another body is refused (idempotency_key_reused).",
        required=False,
    ),
]


def _send_doc(summary: str) -> dict[str, Any]:
    return {
        "status_code": 202,
        "summary": summary,
        "request_max_body_size": SEND_MAX_BODY,
        "responses": with_common(
            {**BODY_ERRORS, 413: ("body_too_large", "too_many_contacts"), 422: SEND_CODES}
        ),
        "response_description": "Queued: campaign_id, queue_id, counters and the contacts rejected alone "
        "(codes in the README: invalid_phone, country_not_allowed, invalid_amount, ambiguous_amount, "
        "non_positive_amount, invalid_date, due_date_out_of_range, not_yet_due, already_due, "
        "missing_variable, duplicate_phone).",
    }


SendBody = Annotated[SendRequest, Parameter(examples=[Example(summary="one contact", value=SEND_EXAMPLE)])]
"""The body of the three sends, documented with one example."""


class PublicController(Controller):
    """Send batches, poll queues, read contacts, cancel."""

    path = BASE
    tags = ["public"]
    security = [{"ApiKey": []}]
    guards = [api_key_guard]
    dependencies = {"services": Provide(provide_services), "tenant_id": Provide(provide_tenant_id)}

    async def _send(
        self,
        template_type: TemplateType,
        data: SendRequest,
        idempotency_key: str | None,
        services: Services,
        tenant_id: UUID,
    ) -> Response[SendAccepted]:
        result = await run_sync(
            services.ingest.submit,
            tenant_id=tenant_id,
            path_type=template_type,
            request=data,
            idempotency_key=idempotency_key,
        )
        headers = {"Idempotent-Replayed": "true"} if result.replayed else None
        return Response(as_struct(result.document(), SendAccepted), status_code=202, headers=headers)

    @post("/send/overdue", **_send_doc("Queue reminders for overdue invoices (business hours only)"))
    async def send_overdue(
        self,
        data: SendBody,
        services: Services,
        tenant_id: UUID,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[SendAccepted]:
        """Queue reminders for overdue invoices; answers 202 with campaign_id, queue_id and rejections."""
        return await self._send(TemplateType.OVERDUE, data, idempotency_key, services, tenant_id)

    @post(
        "/send/upcoming", **_send_doc("Queue reminders for invoices about to fall due (business hours only)")
    )
    async def send_upcoming(
        self,
        data: SendBody,
        services: Services,
        tenant_id: UUID,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[SendAccepted]:
        """Queue reminders for invoices about to fall due."""
        return await self._send(TemplateType.UPCOMING, data, idempotency_key, services, tenant_id)

    @post("/send/notification", **_send_doc("Queue general notices (sent 24/7)"))
    async def send_notification(
        self,
        data: SendBody,
        services: Services,
        tenant_id: UUID,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[SendAccepted]:
        """Queue general notices."""
        return await self._send(TemplateType.NOTIFICATION, data, idempotency_key, services, tenant_id)

    @get(
        "/queue/{queue_id:str}/status",
        summary="A queue's status and counters",
        responses=with_common({404: ("queue_not_found",), 422: ("invalid_request",)}),
    )
    async def queue_status(self, queue_id: UUID, services: Services, tenant_id: UUID) -> QueueStatusDoc:
        """The queue status document (404 for unknown or another tenant's queue)."""
        document = await services.status.queue_status(tenant_id, queue_id)
        if document is None:
            raise NotFound("queue not found", code="queue_not_found", field="queue_id")
        result: QueueStatusDoc = as_struct(document, QueueStatusDoc)
        return result

    @get(
        "/campaign/{campaign_id:str}/contacts",
        summary="A campaign's contacts (paged)",
        responses=with_common({404: ("campaign_not_found",), 422: ("invalid_request", "out_of_range")}),
    )
    async def campaign_contacts(
        self,
        campaign_id: UUID,
        services: Services,
        tenant_id: UUID,
        status: ContactStatus | None = None,
        limit: Annotated[int, Parameter(ge=1, le=MAX_PAGE)] = 100,
        cursor: Annotated[str | None, Parameter(max_length=64, pattern=r"^[A-Za-z0-9_-]*$")] = None,
    ) -> ContactsPage:
        """``{items, next_cursor}`` in request order, filtered by ``status``."""
        try:
            page = await run_sync(
                services.queries.campaign_contacts,
                tenant_id,
                campaign_id,
                status=status,
                limit=limit,
                cursor=cursor,
            )
        except ValueError:
            raise InvalidValue("cursor is not valid", code="invalid_request", field="cursor") from None
        if page is None:
            raise NotFound("campaign not found", code="campaign_not_found", field="campaign_id")
        result: ContactsPage = as_struct(page, ContactsPage)
        return result

    @get(
        "/contacts",
        summary="The contacts of one invoice, across batches and campaigns",
        responses=with_common({422: ("invalid_request",)}),
    )
    async def invoice_contacts(
        self,
        services: Services,
        tenant_id: UUID,
        external_id: Annotated[str, Parameter(min_length=1, max_length=MAX_EXTERNAL_ID)],
    ) -> InvoiceContacts:
        """``{external_id, items}``: every contact about invoice ``external_id`` (a contact's own
        ``external_id`` field, else its batch's), oldest first, with campaign, status, attempts, text sent
        and error; ``items`` is empty when the tenant has none."""
        items = await run_sync(services.history.contacts, HistoryFilter(tenant_id, invoice=external_id))
        result: InvoiceContacts = as_struct({"external_id": external_id, "items": items}, InvoiceContacts)
        return result

    @post(
        "/queue/{queue_id:str}/cancel",
        status_code=200,
        summary="Cancel a queue's unsent contacts",
        responses=with_common({404: ("queue_not_found",), 422: ("invalid_request",)}),
    )
    async def cancel_queue(self, queue_id: UUID, services: Services, tenant_id: UUID) -> QueueCancelled:
        """Cancel the queue; answers how many contacts were cancelled."""
        count = await run_sync(services.cancel.cancel_queue, tenant_id, queue_id)
        return QueueCancelled(queue_id=queue_id, cancelled=count)

    @post(
        "/contacts/cancel",
        status_code=200,
        summary="Cancel every unsent reminder of an invoice",
        request_max_body_size=CANCEL_MAX_BODY,
        responses=with_common({**BODY_ERRORS, 503: ("projections_behind",)}),
    )
    async def cancel_contacts(
        self,
        data: Annotated[
            CancelContactsRequest,
            Parameter(examples=[Example(summary="an invoice paid", value={"external_id": "fatura-12345"})]),
        ],
        services: Services,
        tenant_id: UUID,
    ) -> Response[ContactsCancelled]:
        """Cancel every unsent contact, across queues, whose batch carried ``external_id`` (paid).

        503 with ``Retry-After`` while the views still miss contacts stored before the call (the count
        would be short and those contacts left to be sent)."""
        try:
            count = await run_sync(services.cancel.cancel_by_external_id, tenant_id, data.external_id)
        except ProjectionsBehind as exc:
            return Response(
                error_body(exc.code, exc.message, details=exc.details),  # type: ignore[arg-type]
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        return Response(ContactsCancelled(external_id=data.external_id, cancelled=count), status_code=200)
