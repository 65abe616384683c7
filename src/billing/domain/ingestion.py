"""Screening of one contact of an incoming batch: accepted (normalised) or rejected alone with a code.

Structural problems (a contact that is not an object, values that are not scalars) are the caller's to
refuse for the whole batch; everything here concerns one contact's *data* (DESIGN.md, "Public API").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from billing.domain.dates import parse_due_date
from billing.domain.errors import InvalidValue
from billing.domain.money import parse_amount, require_positive
from billing.domain.phone import normalize_phone
from billing.domain.sanitize import sanitize_text
from billing.domain.types import TemplateType
from billing.domain.variables import DERIVED_FROM

MAX_FIELD_NAME_LENGTH = 64
MAX_FIELDS = 50


@dataclass(frozen=True)
class AcceptedContact:
    """A contact whose data is usable. ``fields`` are sanitised strings as sent."""

    index: int
    fields: dict[str, str]
    telefone: str
    phone: str
    gateway_number: str
    amount: Decimal | None
    amount_total: Decimal | None
    due_date: date | None


@dataclass(frozen=True)
class RejectedContact:
    """A contact refused alone: ``code`` (e.g. ``invalid_phone``, ``missing_variable``), a message naming
    the field, the field, and details (``{"names": [...]}`` for missing variables)."""

    index: int
    fields: dict[str, str]
    telefone: str
    code: str
    message: str
    field: str | None
    details: dict[str, object]


def _present(fields: Mapping[str, str], name: str) -> bool:
    value = fields.get(name)
    return value is not None and value.strip() != ""


def missing_variables(fields: Mapping[str, str], required: Iterable[str]) -> list[str]:
    """The ``required`` template variables (sorted) that contact ``fields`` cannot provide: a derived
    variable (``nome_cliente``, ``dias_atraso``…) needs its source field (:data:`DERIVED_FROM`); a blank
    value counts as absent."""
    return [name for name in sorted(set(required)) if not _present(fields, DERIVED_FROM.get(name, name))]


def screen_contact(
    raw: Mapping[str, object],
    *,
    index: int,
    template_type: TemplateType,
    required_variables: Iterable[str] = (),
    default_region: str = "BR",
    today: date | None = None,
) -> AcceptedContact | RejectedContact:
    """Normalise one contact or say why it is rejected.

    Args:
        raw: the contact object as decoded (scalar values only).
        index: its position in the request (0-based).
        template_type: the batch's type; overdue and upcoming need a positive amount when one is given.
        required_variables: names the type's active variations use outside any conditional.
        today: the tenant's local date at ingestion; when given, an ``overdue`` reminder whose due date
            is still ahead is refused (``not_yet_due``) and an ``upcoming`` one whose due date has passed
            (``already_due``) — a "your invoice is late" message about a future date is wrong either way.

    Rules, in order: phone (E.164 via phonenumbers, code ``invalid_phone``); ``valor`` / ``valor_total``
    (``invalid_amount`` / ``ambiguous_amount``; ``non_positive_amount`` for dunning types);
    ``data_vencimento`` (``invalid_date``, then ``not_yet_due`` / ``already_due``); then required variables
    (``missing_variable``: ``details.names`` are the template's variables, ``field`` the contact field to
    send, e.g. ``nome`` for ``nome_cliente``).
    """
    fields = {str(k): sanitize_text(v) for k, v in raw.items() if v is not None}
    telefone = fields.get("telefone", "")

    def reject(error: InvalidValue) -> RejectedContact:
        return RejectedContact(
            index=index,
            fields=fields,
            telefone=telefone,
            code=error.code,
            message=error.message,
            field=f"contacts[{index}].{error.field}" if error.field else None,
            details=dict(error.details),
        )

    try:
        if not telefone:
            raise InvalidValue("telefone is required", code="invalid_phone", field="telefone")
        phone = normalize_phone(raw.get("telefone"), default_region=default_region)
        amounts: dict[str, Decimal | None] = {}
        for name in ("valor", "valor_total"):
            if raw.get(name) is None or (isinstance(raw.get(name), str) and not fields.get(name)):
                amounts[name] = None
                continue
            amount = parse_amount(raw[name], field=name)
            if template_type is not TemplateType.NOTIFICATION:
                require_positive(amount, field=name)
            amounts[name] = amount
        due: date | None = None
        if fields.get("data_vencimento"):
            due = parse_due_date(raw["data_vencimento"])
            if today is not None and template_type is TemplateType.OVERDUE and due > today:
                raise InvalidValue(
                    f"data_vencimento {due.isoformat()} is still ahead: not an overdue invoice",
                    code="not_yet_due",
                    field="data_vencimento",
                )
            if today is not None and template_type is TemplateType.UPCOMING and due < today:
                raise InvalidValue(
                    f"data_vencimento {due.isoformat()} has passed: not an upcoming invoice",
                    code="already_due",
                    field="data_vencimento",
                )
        missing = missing_variables(fields, required_variables)
        if missing:
            sources = sorted({DERIVED_FROM.get(name, name) for name in missing})
            raise InvalidValue(
                f"missing variable(s) the template needs: {', '.join(missing)} (send: {', '.join(sources)})",
                code="missing_variable",
                field=DERIVED_FROM.get(missing[0], missing[0]),
                details={"names": missing},
            )
    except InvalidValue as error:
        return reject(error)
    return AcceptedContact(
        index=index,
        fields=fields,
        telefone=telefone,
        phone=phone.e164,
        gateway_number=phone.gateway_number,
        amount=amounts["valor"],
        amount_total=amounts["valor_total"],
        due_date=due,
    )
