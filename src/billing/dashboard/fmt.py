"""pt-BR formatting of the dashboard's values (babel's CLDR data): money ``R$ 1.234,56``, dates
``dd/mm/aaaa``, instants in the tenant's time zone, numbers ``1.234``, percentages ``97,5%``."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from babel.dates import format_date, format_datetime
from babel.numbers import format_decimal, format_percent

from billing.domain.ingestion import missing_fields
from billing.domain.money import format_brl

LOCALE = "pt_BR"
WEEKDAYS = ("Segunda", "Terça", "Quarta", "Quinta", "Sexta", "Sábado", "Domingo")
"""Weekday names, index 0 = Monday (as :data:`billing.domain.calendar.DAY_NAMES`)."""

STATUS_LABELS = {
    "queued": "na fila",
    "running": "enviando",
    "paused": "pausada",
    "completed": "concluída",
    "cancelled": "cancelada",
    "pending": "pendente",
    "dispatched": "em envio",
    "sent": "enviada",
    "failed": "falhou",
    "skipped": "ignorada",
    "rejected": "rejeitada",
    "delivered": "entregue",
    "read": "lida",
    "replied": "respondida",
}
TYPE_LABELS = {"overdue": "Cobrança atrasada", "upcoming": "A vencer", "notification": "Aviso"}
PAUSE_LABELS = {
    "outside_business_hours": "fora do horário comercial",
    "daily_limit_reached": "limite diário atingido",
    "gateway_disconnected": "WhatsApp desconectado",
    "gateway_misconfigured": "gateway mal configurado",
    "throttled": "limite por minuto",
    "rate_limited": "limite por minuto",
    "paused_by_admin": "pausada pelo administrador",
    "debtor_daily_cap": "limite diário por cliente",
    "queue_paused": "fila pausada",
}

ERROR_LABELS = {
    "invalid_phone": "telefone inválido",
    "invalid_amount": "valor inválido",
    "ambiguous_amount": "valor ambíguo (use 1.234,56 ou 1234.56)",
    "non_positive_amount": "o valor deve ser maior que zero",
    "invalid_date": "data de vencimento inválida",
    "not_yet_due": "a fatura ainda não venceu (use o tipo 'a vencer')",
    "already_due": "a fatura já venceu (use o tipo 'cobrança atrasada')",
    "missing_variable": "falta um campo que o template usa",
    "duplicate_phone": "telefone repetido no lote",
    "not_on_whatsapp": "o número não tem WhatsApp",
    "template_error": "erro de sintaxe no template",
    "opted_out": "o cliente pediu para não receber",
    "template_type_mismatch": "o template escolhido é de outro tipo de envio",
    "template_inactive": "o template escolhido está desativado",
    "template_not_found": "template não encontrado",
    "no_active_template": "não há template ativo para este tipo",
    "country_not_allowed": "país não permitido para este cliente",
    "due_date_out_of_range": "data de vencimento fora do intervalo aceito",
}


def money(value: Decimal | int | float | str | None) -> str:
    """``R$ 1.234,56`` (empty for None)."""
    if value is None or value == "":
        return ""
    return format_brl(Decimal(str(value)))


def day(value: date | datetime | str | None, tz: ZoneInfo | None = None) -> str:
    """``dd/mm/aaaa``; an instant is first moved to ``tz``."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value) if "T" in value else date.fromisoformat(value)
    if isinstance(value, datetime) and tz is not None:
        value = value.astimezone(tz)
    return format_date(value, "dd/MM/yyyy", locale=LOCALE)


def instant(value: datetime | str | None, tz: ZoneInfo) -> str:
    """``dd/mm/aaaa HH:MM`` in the tenant's zone ``tz`` (empty for None)."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return format_datetime(value.astimezone(tz), "dd/MM/yyyy HH:mm", tzinfo=tz, locale=LOCALE)


def number(value: int | float | None) -> str:
    """``1.234`` (pt-BR grouping)."""
    return format_decimal(value or 0, locale=LOCALE)


def percent(value: float | None) -> str:
    """``97,5%`` (``—`` for None)."""
    if value is None:
        return "—"
    return format_percent(value, "#,##0.0%", locale=LOCALE)


COUNTED = {
    "total": ("total", "total"),
    "pending": ("pendente", "pendentes"),
    "dispatched": ("em envio", "em envio"),
    "sent": ("enviada", "enviadas"),
    "failed": ("falhou", "falharam"),
    "skipped": ("ignorada", "ignoradas"),
    "rejected": ("rejeitada", "rejeitadas"),
    "cancelled": ("cancelada", "canceladas"),
    "delivered": ("entregue", "entregues"),
    "read": ("lida", "lidas"),
    "replied": ("respondida", "respondidas"),
}
"""A counter's words ``(one, many)`` after its number: "1 enviada", "3 enviadas"."""


def plural(n: int | None, one: str, many: str) -> str:
    """``one`` for exactly 1, else ``many`` (pt-BR: "0 mensagens", "1 mensagem", "2 mensagens")."""
    return one if n == 1 else many


def counted(n: int | None, key: str) -> str:
    """The words after the number ``n`` of a counter of ``key`` (a contact status or ``total``), in
    agreement with ``n``: ``counted(1, "failed") == "falhou"``, ``counted(2, "failed") == "falharam"``;
    the key itself when unknown."""
    one, many = COUNTED.get(key, (key, key))
    return plural(n, one, many)


ACTION_LABELS = {
    "api_key.create": "criou uma chave de API",
    "api_key.revoke": "revogou uma chave de API",
    "campaign.send": "enviou uma campanha",
    "queue.cancel": "cancelou uma fila",
    "template.activate": "ativou um template",
    "template.deactivate": "desativou um template",
    "template.change": "alterou um template",
    "template.create": "criou um template",
    "template.default": "escolheu o template padrão",
    "user.invite": "convidou um usuário",
    "user.remove": "removeu um usuário",
    "settings.hours": "alterou o horário comercial",
    "settings.holidays": "alterou os feriados",
    "settings.limits": "alterou os limites de envio",
    "settings.gateway": "alterou o gateway do WhatsApp",
}
SETTINGS_LABELS = {
    "hours": "horário comercial",
    "holidays": "feriados",
    "limits": "limites de envio",
    "gateway": "gateway do WhatsApp",
}
"""The settings forms, as the ``settings.<form>`` admin actions name them in their target."""


def action_target(action: str, target: str, names: Mapping[str, str]) -> str:
    """The readable target of an admin action as recorded (``billing.dashboard.pages`` records ids, a
    form's name, a key's ``name (prefix)``, a queue's ``id (count)``, a user's email): a template or key
    by its name from ``names`` (id → name; the short id when unknown), a settings form by its
    Portuguese name."""
    if action.startswith("settings."):
        return SETTINGS_LABELS.get(target, target)
    if action.startswith("template."):
        return f"template «{names[target]}»" if target in names else f"template {target[:8]}"
    if action == "api_key.revoke":
        return f"chave «{names[target]}»" if target in names else f"chave {target[:8]}"
    if action == "api_key.create":
        name, _, prefix = target.rpartition(" (")
        return f"chave «{name}» ({prefix.rstrip(')')}…)" if name else f"chave «{target}»"
    if action == "campaign.send":
        return f"campanha {target[:8]}"
    if action == "queue.cancel":
        queue, _, count = target.partition(" (")
        n = int(count.rstrip(")")) if count.rstrip(")").isdigit() else None
        if n is None:
            return f"fila {queue[:8]}"
        return f"fila {queue[:8]} ({number(n)} {plural(n, 'envio cancelado', 'envios cancelados')})"
    return target


EVENT_LABELS = {
    "added": "aceito no lote",
    "rejected": "rejeitado",
    "dispatched": "envio iniciado",
    "sent": "enviado",
    "failed": "falhou",
    "skipped": "ignorado",
    "deferred": "adiado",
    "cancelled": "cancelado",
    "delivered": "entregue",
    "read": "lido",
    "played": "reproduzido",
    "replied": "respondido",
}
"""A contact's domain events (``billing.Contact.<Name>``, lower-cased) in the history page."""


def label(value: str | None, table: str = "status") -> str:
    """The Portuguese label of a status, template type, pause reason, error code, admin action or contact
    event (``table``); the code itself when unknown."""
    labels = {
        "status": STATUS_LABELS,
        "type": TYPE_LABELS,
        "pause": PAUSE_LABELS,
        "error": ERROR_LABELS,
        "action": ACTION_LABELS,
        "event": EVENT_LABELS,
    }[table]
    return labels.get(value or "", value or "")


def words(items: list[str]) -> str:
    """A pt-BR list: ``a``, ``a e b``, ``a, b e c``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " e " + items[-1]


def error_text(error: Mapping[str, str | None] | None) -> str:
    """The Portuguese text of a contact's stored error ``{code, message}``: a ``missing_variable`` names
    the contact fields its message names ("falta o campo valor", "faltam os campos nome e valor"); any
    other code its label (:func:`label`)."""
    if not error:
        return ""
    code = error.get("code") or ""
    fields = missing_fields(error.get("message")) if code == "missing_variable" else []
    if fields:
        return f"falta o campo {fields[0]}" if len(fields) == 1 else f"faltam os campos {words(fields)}"
    return label(code, "error")
