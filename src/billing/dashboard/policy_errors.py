"""The settings page's words for the domain's sending-policy errors.

The domain refuses a policy with a :class:`~billing.domain.calendar.PolicyError` whose English message is
the API's (with the machine ``code`` ``invalid_policy`` and the ``field``); the dashboard speaks
Portuguese to the tenant's admin, so it says what to fix from the error's ``field`` (which names the
setting the same way for every refusal of it), never from the English text.
"""

from __future__ import annotations

import re
from typing import Any

from billing.dashboard import fmt
from billing.domain.calendar import DAY_NAMES, PolicyError
from billing.domain.policy import MAX_MESSAGES_PER_DAY, MAX_MESSAGES_PER_MINUTE, MAX_PAUSE_S

__all__ = ["policy_error"]

WEEKDAYS = dict(zip(DAY_NAMES, fmt.WEEKDAYS, strict=True))
_WINDOW = re.compile(r"windows\.(?P<day>[a-z]+)\[\d+\](?:\[(?P<end>[01])\])?")
_TIME = "em HH:MM (00:00 a 23:59)"
_FIXED = {
    "timezone": "Fuso horário desconhecido: use um nome como America/Sao_Paulo.",
    "windows": "Horário comercial inválido: informe abertura e fechamento dos dias em que a loja abre.",
    "holidays.subdivision": "Estado desconhecido para os feriados: use a sigla da UF, como SP.",
    "holidays.country": "País desconhecido para os feriados: use o código do país, como BR.",
    "holidays.include_optional": "Pontos facultativos: marque ou desmarque a opção.",
    "messages_per_minute": (
        f"Mensagens por minuto: informe um número inteiro de 1 a {fmt.number(MAX_MESSAGES_PER_MINUTE)}."
    ),
    "max_messages_per_day": (
        f"Limite diário: informe um número inteiro de 1 a {fmt.number(MAX_MESSAGES_PER_DAY)}."
    ),
}
_PAUSE = f"Pausa entre mensagens: de 0 a {fmt.number(MAX_PAUSE_S)} segundos, a mínima não maior que a máxima."


def _message(field: str | None) -> str:
    name = field or ""
    if name in _FIXED:
        return _FIXED[name]
    window = _WINDOW.fullmatch(name)
    if window is not None and window["day"] in WEEKDAYS:
        day = WEEKDAYS[window["day"]]
        if window["end"] == "0":
            return f"{day}: informe a hora em que abre {_TIME}."
        if window["end"] == "1":
            return f"{day}: informe a hora em que fecha {_TIME}."
        return (
            f"{day}: horário inválido — abertura e fechamento devem ser diferentes, e o horário não pode "
            "invadir o de outro dia."
        )
    if name.startswith("holidays.extra_dates"):
        return "Datas próprias: use dd/mm/aaaa, uma por linha."
    if name in ("pause_min_s", "pause_max_s"):
        return _PAUSE
    if name.startswith("retry"):
        return "Novas tentativas: configuração inválida."
    if name.startswith("allowed_countries"):
        return "Países permitidos: use códigos de país como BR."
    return "Configuração de envio inválida."


def policy_error(exc: PolicyError) -> dict[str, Any]:
    """The settings page's ``error`` for ``exc``: ``{"code", "message", "field"}`` with a Portuguese
    ``message`` chosen by ``exc.field`` (the setting it names; a generic one for a setting the forms do not
    show) and no ``field`` (the message names the setting)."""
    return {"code": exc.code, "message": _message(exc.field), "field": None}
