"""Template use cases for the admin API: create, change, deactivate, preview."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

from billing.domain.dates import parse_due_date
from billing.domain.errors import Conflict, InvalidValue, NotFound
from billing.domain.money import parse_amount
from billing.domain.sanitize import sanitize_text
from billing.domain.template import MessageTemplate, parse_variations
from billing.domain.tenant import Tenant
from billing.domain.variables import message_variables
from billing.eventstore import EventStore, get_owned
from billing.services.clock import Clock

SCALARS = (str, int, float, Decimal, bool, type(None))


class TemplateService:
    """Use cases on the Template aggregate, scoped to the caller's tenant."""

    def __init__(self, store: EventStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    def get(self, tenant_id: UUID, template_id: UUID) -> MessageTemplate:
        """The tenant's template. Raises NotFound (unknown or another tenant's)."""
        template = get_owned(self.store, template_id, MessageTemplate, tenant_id)
        if template is None:
            raise NotFound("template not found", code="template_not_found", field="template_id")
        return template

    def create(
        self,
        tenant_id: UUID,
        *,
        name: str,
        template_type: str,
        description: str,
        variations: Sequence[str],
        active: bool = True,
    ) -> MessageTemplate:
        """Create a template.

        Raises:
            InvalidValue / TemplateSyntaxError naming the field (422); NotFound: unknown tenant (a token
            signed for a tenant that was never registered must not leave orphan templates).
        """
        if get_owned(self.store, tenant_id, Tenant) is None:
            raise NotFound("tenant not found", code="tenant_not_found")
        template = MessageTemplate.create(
            template_id=uuid4(),
            tenant_id=tenant_id,
            name=name,
            template_type=template_type,
            description=description,
            variations=variations,
            active=active,
            at=self.clock.now(),
        )
        self.store.save(template)
        return template

    def change(self, tenant_id: UUID, template_id: UUID, **changes: Any) -> MessageTemplate:
        """Change name, description, variations or active.

        Raises:
            NotFound, InvalidValue, TemplateSyntaxError (naming the field); Conflict ``default_template``
            when deactivating the type's default.
        """
        template = self.get(tenant_id, template_id)
        if changes.get("active") is False and template.active:
            tenant = get_owned(self.store, tenant_id, Tenant)
            if tenant is not None and tenant.default_template(template.template_type) == template.id:
                raise Conflict(
                    "the default template of its type cannot be deactivated: make another one the default "
                    "first",
                    code="default_template",
                    field="active",
                )
        template.change(at=self.clock.now(), **changes)
        self.store.save(template)
        return template

    def make_default(self, tenant_id: UUID, template_id: UUID) -> MessageTemplate:
        """Make the template the default of its type: sends of that type that name no ``template_id``
        rotate its variations (and only its). One default per type, kept by the Tenant aggregate.

        Raises:
            NotFound (unknown or another tenant's template); InvalidValue ``template_inactive``.
        """
        template = self.get(tenant_id, template_id)
        tenant = get_owned(self.store, tenant_id, Tenant)
        if tenant is None:
            raise NotFound("tenant not found", code="tenant_not_found")
        tenant.choose_default_template(
            template_id=template.id,
            template_tenant=template.tenant_id,
            template_type=template.template_type,
            active=template.active,
            at=self.clock.now(),
        )
        self.store.save(tenant)
        return template

    def deactivate(self, tenant_id: UUID, template_id: UUID) -> MessageTemplate:
        """Deactivate (DELETE): the history stays. Raises NotFound."""
        return self.change(tenant_id, template_id, active=False)

    @staticmethod
    def preview(
        variations: Sequence[str], sample: Mapping[str, Any], *, now: datetime, tz: ZoneInfo
    ) -> list[str]:
        """Render every variation for sample contact fields, as a message sent at ``now`` would read.

        ``sample`` holds contact fields as an ERP sends them (``valor`` as a number or pt-BR string,
        ``data_vencimento`` ISO or dd/mm/aaaa); they are read exactly as ingestion reads a contact (blank
        values count as absent), so the preview shows what the worker will send.

        Raises:
            InvalidValue: a value that is not a scalar (``invalid_request``), or an unusable amount or date
                (``invalid_amount``, ``ambiguous_amount``, ``invalid_date``), naming the field.
        """
        parsed = parse_variations(variations)
        for name, value in sample.items():
            if not isinstance(value, SCALARS):
                raise InvalidValue(
                    f"{name} must be a text, a number, a boolean or null", code="invalid_request", field=name
                )
        fields = {str(k): sanitize_text(v) for k, v in sample.items() if v is not None}

        def amount(name: str) -> Decimal | None:
            raw = sample.get(name)
            if raw is None or (isinstance(raw, str) and not fields.get(name)):
                return None
            return parse_amount(raw, field=name)

        due = parse_due_date(sample["data_vencimento"]) if fields.get("data_vencimento") else None
        variables = message_variables(
            fields, amount=amount("valor"), amount_total=amount("valor_total"), due_date=due, now=now, tz=tz
        )
        return [template.render(variables) for template in parsed]
