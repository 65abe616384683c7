"""Template variables of one message, computed at the moment of sending (DESIGN.md, "Template variables").

Every contact field as sent, plus ``nome_cliente`` (from ``nome``), ``valor`` and ``valor_total`` in pt-BR
money (``R$ 1.234,56``, CLDR via babel), ``data_vencimento`` as ``dd/mm/aaaa``, and the day counts
``dias_atraso``, ``dias_para_vencer``, ``vencida``, ``vence_hoje`` — calendar-date differences in the
tenant's zone at ``now`` (send time, not ingestion time).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from billing.domain.dates import count_days, format_date_br
from billing.domain.money import format_brl

DERIVED_FROM: dict[str, str] = {
    "nome_cliente": "nome",
    "dias_atraso": "data_vencimento",
    "dias_para_vencer": "data_vencimento",
    "vencida": "data_vencimento",
    "vence_hoje": "data_vencimento",
}
"""Derived variable → the contact field it needs."""


def message_variables(
    fields: Mapping[str, str],
    *,
    amount: Decimal | None,
    amount_total: Decimal | None,
    due_date: date | None,
    now: datetime,
    tz: ZoneInfo,
) -> dict[str, object]:
    """The variables of one message.

    Args:
        fields: the contact's sanitised fields as sent (strings).
        amount / amount_total: parsed ``valor`` / ``valor_total`` (reais, exact), or None.
        due_date: parsed ``data_vencimento``, or None.
        now: aware instant of sending; tz: the tenant's zone.

    Returns:
        ``{name: value}``; counts are ``int``, flags ``bool``, everything else ``str``.

    Raises:
        ValueError: ``now`` is naive.
    """
    variables: dict[str, object] = dict(fields)
    if "nome" in fields:
        variables["nome_cliente"] = fields["nome"]
    if amount is not None:
        variables["valor"] = format_brl(amount)
    if amount_total is not None:
        variables["valor_total"] = format_brl(amount_total)
    if due_date is not None:
        variables["data_vencimento"] = format_date_br(due_date)
        counts = count_days(due_date, now, tz)
        variables["dias_atraso"] = counts.dias_atraso
        variables["dias_para_vencer"] = counts.dias_para_vencer
        variables["vencida"] = counts.vencida
        variables["vence_hoje"] = counts.vence_hoje
    return variables


def choose_variation(index: int, count: int) -> int:
    """The variation of the message at position ``index`` of its queue among ``count`` active variations.

    Round-robin by position: consecutive messages of a queue never use the same variation when there are
    two or more, and a redelivery of the same contact renders the same text (anti-ban rotation).

    Raises:
        ValueError: ``count`` < 1.
    """
    if count < 1:
        raise ValueError("a template needs at least one variation")
    return index % count
