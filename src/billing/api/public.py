"""The public API of the ERPs (``X-Billing-API-Key``), paths and fields as in DESIGN.md."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import Provide
from litestar.params import Parameter

from billing.api.deps import Services, provide_services, provide_tenant_id, run_sync
from billing.api.errors import error_body
from billing.domain.errors import InvalidValue, NotFound
from billing.domain.types import ContactStatus, TemplateType
from billing.services.cancel import ProjectionsBehind
from billing.services.history import HistoryFilter, HistoryQueries
from billing.services.ingest import decode_send_request

BASE = "/api/billing/v1/billing"
RETRY_AFTER_S = 1
"""``Retry-After`` (seconds) of a cancellation refused while the views catch up."""


class CancelContactsRequest(msgspec.Struct):
    """Body of ``POST /contacts/cancel``."""

    external_id: str


_cancel_decoder = msgspec.json.Decoder(CancelContactsRequest)


def decode_cancel_request(body: bytes) -> CancelContactsRequest:
    """Decode the body of ``POST /contacts/cancel``, refusing it as the sends do: not JSON → 400
    ``invalid_json``; not an object, ``external_id`` missing or not a string → 422 ``invalid_request``
    naming ``external_id`` (an empty one is refused by the service, also naming it).

    Raises:
        InvalidValue: as above.
    """
    try:
        return _cancel_decoder.decode(body)
    except msgspec.ValidationError as exc:
        field = "external_id" if "external_id" in str(exc) else None
        raise InvalidValue(f"invalid request: {exc}", code="invalid_request", field=field) from None
    except msgspec.DecodeError as exc:
        raise InvalidValue(f"body is not valid JSON: {exc}", code="invalid_json") from None


class PublicController(Controller):
    """Send batches, poll queues, read contacts, cancel."""

    path = BASE
    tags = ["public"]
    security = [{"ApiKey": []}]
    dependencies = {"services": Provide(provide_services), "tenant_id": Provide(provide_tenant_id)}

    async def _send(
        self,
        template_type: TemplateType,
        request: Request[Any, Any, Any],
        services: Services,
        tenant_id: UUID,
    ) -> Response[dict[str, Any]]:
        body = await request.body()
        send_request = decode_send_request(body)
        key = request.headers.get("Idempotency-Key")
        result = await run_sync(
            services.ingest.submit,
            tenant_id=tenant_id,
            path_type=template_type,
            request=send_request,
            idempotency_key=key,
        )
        headers = {"Idempotent-Replayed": "true"} if result.replayed else None
        return Response(result.document(), status_code=202, headers=headers)

    @post(
        "/send/overdue", status_code=202, summary="Queue reminders for overdue invoices (business hours only)"
    )
    async def send_overdue(
        self, request: Request[Any, Any, Any], services: Services, tenant_id: UUID
    ) -> Response[dict[str, Any]]:
        """Queue reminders for overdue invoices; answers 202 with campaign_id, queue_id and rejections."""
        return await self._send(TemplateType.OVERDUE, request, services, tenant_id)

    @post(
        "/send/upcoming",
        status_code=202,
        summary="Queue reminders for invoices about to fall due (business hours only)",
    )
    async def send_upcoming(
        self, request: Request[Any, Any, Any], services: Services, tenant_id: UUID
    ) -> Response[dict[str, Any]]:
        """Queue reminders for invoices about to fall due."""
        return await self._send(TemplateType.UPCOMING, request, services, tenant_id)

    @post("/send/notification", status_code=202, summary="Queue general notices (sent 24/7)")
    async def send_notification(
        self, request: Request[Any, Any, Any], services: Services, tenant_id: UUID
    ) -> Response[dict[str, Any]]:
        """Queue general notices."""
        return await self._send(TemplateType.NOTIFICATION, request, services, tenant_id)

    @get("/queue/{queue_id:uuid}/status", summary="A queue's status and counters")
    async def queue_status(self, queue_id: UUID, services: Services, tenant_id: UUID) -> dict[str, Any]:
        """The queue status document (404 for unknown or another tenant's queue)."""
        document = await run_sync(services.queries.queue_status, tenant_id, queue_id)
        if document is None:
            raise NotFound("queue not found", code="queue_not_found", field="queue_id")
        return document

    @get("/campaign/{campaign_id:uuid}/contacts", summary="A campaign's contacts (paged)")
    async def campaign_contacts(
        self,
        campaign_id: UUID,
        services: Services,
        tenant_id: UUID,
        status: ContactStatus | None = None,
        limit: Annotated[int, Parameter(ge=1, le=500)] = 100,
        cursor: str | None = None,
    ) -> dict[str, Any]:
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
        return page

    @get("/contacts", summary="The contacts of one invoice, across batches and campaigns")
    async def invoice_contacts(
        self, services: Services, tenant_id: UUID, external_id: Annotated[str, Parameter(min_length=1)]
    ) -> dict[str, Any]:
        """``{external_id, items}``: every contact about invoice ``external_id`` (its own reference, else
        its batch's), oldest first, with campaign, status, attempts, text sent and error."""
        history = HistoryQueries(services.container.pool)
        items = await run_sync(history.contacts, HistoryFilter(tenant_id, invoice=external_id))
        return {"external_id": external_id, "items": items}

    @post("/queue/{queue_id:uuid}/cancel", status_code=200, summary="Cancel a queue's unsent contacts")
    async def cancel_queue(self, queue_id: UUID, services: Services, tenant_id: UUID) -> dict[str, Any]:
        """Cancel the queue; answers how many contacts were cancelled."""
        count = await run_sync(services.cancel.cancel_queue, tenant_id, queue_id)
        return {"queue_id": str(queue_id), "cancelled": count}

    @post("/contacts/cancel", status_code=200, summary="Cancel every unsent reminder of an invoice")
    async def cancel_contacts(
        self, request: Request[Any, Any, Any], services: Services, tenant_id: UUID
    ) -> Response[dict[str, Any]]:
        """Cancel every unsent contact, across queues, whose batch carried ``external_id`` (paid).

        503 with ``Retry-After`` while the views still miss contacts stored before the call (the count
        would be short and those contacts left to be sent)."""
        data = decode_cancel_request(await request.body())
        try:
            count = await run_sync(services.cancel.cancel_by_external_id, tenant_id, data.external_id)
        except ProjectionsBehind as exc:
            return Response(
                error_body(exc.code, exc.message, details=exc.details),
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        return Response({"external_id": data.external_id, "cancelled": count}, status_code=200)
