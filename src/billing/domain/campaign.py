"""The Campaign aggregate: one ERP request (one POST of a batch of contacts).

A campaign is created once, in the same transaction as its queue and its contacts (DESIGN.md promise 1),
and records the request's facts: tenant, type, the ERP's ``external_id``, the idempotency key and the
counts of accepted and rejected contacts.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.domain import Aggregate


class Campaign(Aggregate):
    """One ERP request. Identity: a random UUID chosen by the application service."""

    TOPIC = "billing.Campaign"

    if TYPE_CHECKING:  # the library builds __init__ from class annotations; keep these for mypy only
        tenant_id: UUID
        template_type: str
        external_id: str | None
        queue_id: UUID
        accepted: int
        rejected: int
        idempotency_key: str | None
        request_hash: str
        rejections: list[dict[str, Any]]
        created_at: datetime

    class Created(Aggregate.Created):
        """The campaign was accepted (202). ``timestamp`` is the ingestion time, UTC."""

        TOPIC = "billing.Campaign.Created"
        tenant_id: UUID
        template_type: str
        external_id: str | None
        queue_id: UUID
        accepted: int
        rejected: int
        idempotency_key: str | None
        request_hash: str
        rejections: list[dict[str, Any]]

        def apply(self, aggregate: Campaign) -> None:
            aggregate.tenant_id = self.tenant_id
            aggregate.template_type = self.template_type
            aggregate.external_id = self.external_id
            aggregate.queue_id = self.queue_id
            aggregate.accepted = self.accepted
            aggregate.rejected = self.rejected
            aggregate.idempotency_key = self.idempotency_key
            aggregate.request_hash = self.request_hash
            aggregate.rejections = list(self.rejections)
            aggregate.created_at = self.timestamp

    @classmethod
    def start(
        cls,
        *,
        campaign_id: UUID,
        tenant_id: UUID,
        template_type: str,
        external_id: str | None,
        queue_id: UUID,
        accepted: int,
        rejected: int,
        idempotency_key: str | None,
        request_hash: str,
        rejections: list[dict[str, Any]],
        at: datetime,
    ) -> Campaign:
        """Record a new campaign. ``at`` is the aware ingestion instant (UTC); ``request_hash`` the
        SHA-256 of the canonical request body (to tell a retry from a reused idempotency key);
        ``rejections`` the rejected contacts' ``{index, code, message, field, details}``."""
        return cls._create(
            cls.Created,
            id=campaign_id,
            tenant_id=tenant_id,
            template_type=template_type,
            external_id=external_id,
            queue_id=queue_id,
            accepted=accepted,
            rejected=rejected,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            rejections=rejections,
            timestamp=at,
        )
