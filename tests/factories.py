"""Domain objects the unit tests build the same way: one ``Contact.Added`` with ordinary values."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import uuid4

from billing.domain.contact import Contact


def added_contact(*, at: datetime, **overrides: Any) -> Contact:
    """A contact just added at ``at``: a new id, tenant, campaign and queue, an overdue reminder to Ana at
    +55 11 98765-4321 for R$ 150,00 due 2025-01-15; ``overrides`` replace any ``Contact.Added`` field."""
    values: dict[str, Any] = {
        "id": uuid4(),
        "tenant_id": uuid4(),
        "campaign_id": uuid4(),
        "queue_id": uuid4(),
        "index": 0,
        "template_type": "overdue",
        "external_id": None,
        "fields": {"nome": "Ana"},
        "telefone": "11987654321",
        "phone": "+5511987654321",
        "gateway_number": "5511987654321",
        "amount": Decimal("150.00"),
        "amount_total": None,
        "due_date": date(2025, 1, 15),
    }
    values.update(overrides)
    return Contact._create(Contact.Added, timestamp=at, **values)
