"""Screening of one contact of an incoming batch: accepted (normalised) or rejected alone with a code.

Structural problems (a contact that is not an object, values that are not scalars) are the caller's to
refuse for the whole batch; everything here concerns one contact's *data* (DESIGN.md, "Public API").
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from uuid import UUID

from billing.domain.dates import parse_due_date, require_due_window
from billing.domain.errors import InvalidValue
from billing.domain.money import parse_amount, require_cents, require_positive
from billing.domain.phone import normalize_phone, require_allowed_region
from billing.domain.policy import DEFAULT_ALLOWED_COUNTRIES
from billing.domain.sanitize import sanitize_text
from billing.domain.templating import If, Node, Template, Unless, Var
from billing.domain.types import TemplateType
from billing.domain.variables import DERIVED_FROM

MAX_FIELD_NAME_LENGTH = 64
MAX_FIELDS = 50


_UUID5_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID5_SET = (5 << 76) | (0x8000 << 48)  # version 5, RFC 4122 variant


def contact_ids(campaign_id: UUID, count: int) -> list[UUID]:
    """The ids of a campaign's contacts 0 … ``count`` - 1: contact ``i`` is ``uuid5(campaign_id, str(i))``
    (RFC 4122 §4.3, name-based with SHA-1), so they are known from the campaign and its size alone (an
    idempotent retry, a bulk cancel). The same UUIDs as :func:`uuid.uuid5`, twice as fast for a batch: the
    namespace is hashed once and each name added to a copy of that hash."""
    prefix = hashlib.sha1(campaign_id.bytes, usedforsecurity=False)
    ids = []
    for index in range(count):
        digest = prefix.copy()
        digest.update(str(index).encode())
        ids.append(UUID(int=(int.from_bytes(digest.digest()[:16]) & _UUID5_CLEAR) | _UUID5_SET))
    return ids


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


_SEND = re.compile(r"\(send: ([^)]*)\)")
_NEEDS = re.compile(r"needs:? ([^(]*)")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def missing_fields(message: str | None) -> list[str]:
    """The contact fields (sorted, no repeats) a stored ``missing_variable`` error ``message`` names: the
    ``(send: …)`` list of an ingestion rejection (:func:`screen_contact`), else the variables after
    ``needs`` (the worker's render failure, "the template needs valor, nome_cliente") each turned into
    its source field (:data:`DERIVED_FROM`). Empty when the message names none."""
    found = _SEND.search(message or "") or _NEEDS.search(message or "")
    if found is None:
        return []
    names = (name.strip() for name in found.group(1).split(","))
    return sorted({DERIVED_FROM.get(name, name) for name in names if _NAME.fullmatch(name)})


SEND_TIME_VARIABLES = frozenset({"dias_atraso", "dias_para_vencer", "vencida", "vence_hoje"})
"""Variables whose value depends on the day of sending (day counts), not only on the contact."""


def condition_at_ingestion(name: str, fields: Mapping[str, str]) -> bool | None:
    """How ``{{#if name}}`` will be decided for a contact with these ``fields``: True / False when the
    contact alone decides it, None when it depends on the day of sending.

    A variable whose source field is absent or blank renders as missing, so it is false. A day count
    (:data:`SEND_TIME_VARIABLES`) of a contact with a due date is unknown until sent (``vence_hoje`` is
    true on one day only). Any other variable is a non-blank string, so true (Handlebars: any non-empty
    string, ``"0"`` included).
    """
    if not _present(fields, DERIVED_FROM.get(name, name)):
        return False
    if name in SEND_TIME_VARIABLES:
        return None
    return True


def needed_variables(template: Template, fields: Mapping[str, str]) -> set[str]:
    """The variables written as ``{{x}}`` in every part of ``template`` that may render for a contact
    with these ``fields``: outside any block, and inside each ``#if`` / ``#unless`` branch that
    :func:`condition_at_ingestion` cannot rule out (both branches when it depends on the day of sending).
    A branch that never renders for this contact needs nothing."""
    needed: set[str] = set()
    stack: list[tuple[Node, ...]] = [template.body]
    while stack:  # iterative: no recursion however deep the (already bounded) nesting
        for node in stack.pop():
            if isinstance(node, Var):
                needed.add(node.name)
            elif isinstance(node, If | Unless):
                truth = condition_at_ingestion(node.name, fields)
                if truth is not None and isinstance(node, Unless):
                    truth = not truth
                if truth is None or truth:
                    stack.append(node.then)
                if truth is None or not truth:
                    stack.append(node.otherwise)
    return needed


def branch_missing_variables(templates: Sequence[Template], fields: Mapping[str, str]) -> list[str]:
    """The variables (sorted) some variation among ``templates`` would render for this contact but the
    contact cannot provide (:func:`needed_variables`, :func:`missing_variables`). Every active variation
    counts, since any of them may be chosen for the message."""
    # The answer depends on ``fields`` only through which of the templates' variable sources are present
    # (:func:`condition_at_ingestion` and :func:`missing_variables` look at nothing else), so it is
    # computed once per presence pattern and reused for the next contacts of the batch.
    memo = _memo_for(templates)
    presence = tuple(_present(fields, source) for source in memo.sources)
    answer = memo.answers.get(presence)
    if answer is None:
        needed: set[str] = set()
        for template in templates:
            needed |= needed_variables(template, fields)
        answer = memo.answers[presence] = tuple(missing_variables(fields, needed))
    return list(answer)


@dataclass
class _BranchMemo:
    templates: tuple[Template, ...]  # held, so the ids keying this memo cannot be reused meanwhile
    sources: tuple[str, ...]
    answers: dict[tuple[bool, ...], tuple[str, ...]]


_MEMOS: dict[tuple[int, ...], _BranchMemo] = {}


def _memo_for(templates: Sequence[Template]) -> _BranchMemo:
    key = tuple(map(id, templates))
    memo = _MEMOS.get(key)
    if memo is None:
        if len(_MEMOS) >= 64:
            _MEMOS.clear()
        names = {name for template in templates for name in template.variables}
        sources = tuple(sorted({DERIVED_FROM.get(name, name) for name in names}))
        memo = _MEMOS[key] = _BranchMemo(tuple(templates), sources, {})
    return memo


def screen_contact(
    raw: Mapping[str, object],
    *,
    index: int,
    template_type: TemplateType,
    required_variables: Iterable[str] = (),
    templates: Sequence[Template] = (),
    default_region: str = "BR",
    allowed_countries: frozenset[str] = frozenset(DEFAULT_ALLOWED_COUNTRIES),
    today: date | None = None,
) -> AcceptedContact | RejectedContact:
    """Normalise one contact or say why it is rejected.

    Args:
        raw: the contact object as decoded (scalar values only).
        index: its position in the request (0-based).
        template_type: the batch's type; overdue and upcoming need a positive amount when one is given.
        required_variables: names that must be present whatever the contact (e.g. the type's variations'
            names outside any conditional).
        templates: the type's active variations, parsed; a variable any branch that may render for this
            contact needs is required too (:func:`branch_missing_variables`).
        allowed_countries: regions the tenant may send to (policy ``allowed_countries``).
        today: the tenant's local date at ingestion; when given, the due date must lie within the window
            of :func:`~billing.domain.dates.require_due_window`, an ``overdue`` reminder whose due date
            is still ahead is refused (``not_yet_due``) and an ``upcoming`` one whose due date has passed
            (``already_due``) — a "your invoice is late" message about a future date is wrong either way.

    Rules, in order: phone (E.164 via phonenumbers, code ``invalid_phone``; ``country_not_allowed``
    outside ``allowed_countries``); ``valor`` / ``valor_total`` (``invalid_amount`` / ``ambiguous_amount``,
    ``invalid_amount`` with more than 2 decimal places; ``non_positive_amount`` for dunning types, so a
    dunning amount is at least R$ 0,01); ``data_vencimento`` (``invalid_date``, ``due_date_out_of_range``,
    then ``not_yet_due`` / ``already_due``); then variables (``missing_variable``: ``details.names`` are
    the template's variables, ``field`` the contact field to send, e.g. ``nome`` for ``nome_cliente``).
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
        require_allowed_region(phone, allowed_countries)
        amounts: dict[str, Decimal | None] = {}
        for name in ("valor", "valor_total"):
            if raw.get(name) is None or (isinstance(raw.get(name), str) and not fields.get(name)):
                amounts[name] = None
                continue
            amount = require_cents(parse_amount(raw[name], field=name), field=name)
            if template_type is not TemplateType.NOTIFICATION:
                require_positive(amount, field=name)
            amounts[name] = amount
        due: date | None = None
        if fields.get("data_vencimento"):
            due = parse_due_date(raw["data_vencimento"])
            if today is not None:
                require_due_window(due, today)
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
        # Both lists are sorted and without repeats: their union only needs sorting when both hold names.
        always = missing_variables(fields, required_variables)
        branches = branch_missing_variables(templates, fields)
        missing = sorted(set(always) | set(branches)) if always and branches else always or branches
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


def reject_duplicate_phones(
    outcomes: Sequence[AcceptedContact | RejectedContact],
) -> list[AcceptedContact | RejectedContact]:
    """Reject every accepted contact whose normalised phone (E.164) an earlier accepted contact of the
    batch already has: ``(11) 98765-4321``, ``11987654321`` and ``0055 11 9 8765 4321`` are one person,
    who would otherwise get the same reminder three times.

    Returns the outcomes in the same order; a later duplicate becomes a :class:`RejectedContact` with code
    ``duplicate_phone``, field ``contacts[i].telefone`` and ``details.first_index`` (the index of the
    first contact with that number). Already rejected contacts neither count nor change.
    """
    first: dict[str, int] = {}
    out: list[AcceptedContact | RejectedContact] = []
    for outcome in outcomes:
        if isinstance(outcome, AcceptedContact):
            seen = first.setdefault(outcome.phone, outcome.index)
            if seen != outcome.index:
                out.append(
                    RejectedContact(
                        index=outcome.index,
                        fields=outcome.fields,
                        telefone=outcome.telefone,
                        code="duplicate_phone",
                        message=f"telefone is the same number as contacts[{seen}] (one reminder per person "
                        "per batch; send allow_duplicate_phones: true to send both)",
                        field=f"contacts[{outcome.index}].telefone",
                        details={"first_index": seen},
                    )
                )
                continue
        out.append(outcome)
    return out
