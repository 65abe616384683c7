"""Changing a tenant's sending configuration: one path for the admin API's ``PATCH /config/`` and the
dashboard's settings forms, so a change re-evaluates the paused queues the same way from either."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from billing.domain.tenant import Tenant
from billing.services.engagement import EngagementService
from billing.services.tenants import TenantService

__all__ = ["ConfigService"]


class ConfigService:
    """The tenant's policy and gateway settings, then its paused queues reviewed at once."""

    def __init__(self, tenants: TenantService, engagement: EngagementService) -> None:
        self.tenants = tenants
        self.engagement = engagement

    def change(
        self,
        tenant_id: UUID,
        *,
        policy: dict[str, Any] | None = None,
        gateway: dict[str, Any] | None = None,
    ) -> Tenant:
        """Apply ``policy`` changes and/or the ``gateway`` settings (:meth:`TenantService.configure`, one
        save), then re-evaluate the tenant's paused queues (:meth:`EngagementService.review_pauses`): wider
        hours resume an ``outside_business_hours`` pause at once instead of at its old ``resume_at``.

        Raises:
            NotFound; PolicyError / InvalidValue naming the field (nothing is saved nor reviewed then).
        """
        tenant = self.tenants.configure(tenant_id, policy=policy, gateway=gateway)
        self.engagement.review_pauses(
            tenant_id, policy_changed=policy is not None, gateway_changed=gateway is not None
        )
        return tenant
