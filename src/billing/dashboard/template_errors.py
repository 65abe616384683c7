"""The template editor's words for the domain's template errors.

The domain refuses a template with a :class:`~billing.domain.templating.TemplateSyntaxError` (code
``template_error``, line and column) or an :class:`~billing.domain.errors.InvalidValue` naming the field,
in English for the API; the dashboard speaks Portuguese to the tenant's admin, so it words the refusal
from the error's ``kind`` and ``params`` (a syntax error) or its ``code`` and ``field``, never from the
English text (as :mod:`billing.dashboard.policy_errors` does for the sending policy).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from billing.dashboard import fmt
from billing.domain.errors import DomainError
from billing.domain.template import (
    MAX_DESCRIPTION_LENGTH,
    MAX_NAME_LENGTH,
    MAX_TEMPLATE_LENGTH,
    MAX_VARIATIONS,
)
from billing.domain.templating import TemplateSyntaxError

__all__ = ["SYNTAX_MESSAGES", "template_error"]

Params = Mapping[str, Any]


def _opened(p: Params) -> str:
    return f"o bloco '{{{{#{p['block']}}}}}' aberto na linha {p['opened_line']}, coluna {p['opened_column']}"


SYNTAX_MESSAGES: dict[str, Callable[[Params], str]] = {
    "unclosed_comment": lambda p: (
        f"o comentário '{p['tag']}' não é fechado (termine-o com '{'--}}' if p['tag'] == '{{!--' else '}}'}')"
    ),
    "triple_stash": lambda p: "'{{{' não é aceito (nada é escapado): use '{{nome}}'",
    "unclosed_tag": lambda p: "a tag '{{' não é fechada com '}}' na mesma linha",
    "empty_tag": lambda p: "tag vazia '{{}}'",
    "whitespace_control": lambda p: f"o controle de espaços '~' não é aceito: {p['tag']}",
    "block_without_name": lambda p: "o bloco '{{#}}' não tem nome: use {{#if campo}} ou {{#unless campo}}",
    "unsupported_block": lambda p: f"o bloco {p['tag']} não existe: só #if e #unless",
    "block_arguments": lambda p: f"'{{{{#{p['block']}}}}}' leva exatamente um nome de campo: {p['tag']}",
    "unsupported_closing": lambda p: f"o fechamento {p['tag']} não existe: só /if e /unless",
    "partial": lambda p: f"partials não são aceitos: {p['tag']}",
    "ampersand": lambda p: f"'{{{{&' não é aceito (nada é escapado): {p['tag']}",
    "inverse_section": lambda p: f"seções invertidas não são aceitas, use {{{{#unless}}}}: {p['tag']}",
    "else_arguments": lambda p: f"{p['tag']} não é aceito: coloque um {{{{#if}}}} dentro do {{{{else}}}}",
    "helper": lambda p: f"helpers não são aceitos: {p['tag']}",
    "path": lambda p: f"caminhos como «{p['name']}» não são aceitos, só nomes simples de campos",
    "reserved_word": lambda p: f"«{p['name']}» é uma palavra reservada, não um nome de campo",
    "invalid_name": lambda p: (
        f"nome de campo inválido «{p['name']}»: use letras, dígitos e '_', sem começar por dígito"
    ),
    "else_outside_block": lambda p: "'{{else}}' fora de um bloco {{#if}} ou {{#unless}}",
    "close_without_open": lambda p: f"'{{{{/{p['block']}}}}}' sem o '{{{{#{p['block']}}}}}' que ele fecharia",
    "nesting_too_deep": lambda p: f"blocos aninhados em mais de {p['limit']} níveis",
    "second_else": lambda p: f"segundo '{{{{else}}}}' n{_opened(p)}",
    "unclosed_block": lambda p: (
        f"o bloco '{{{{#{p['block']}}}}}' aberto aqui não é fechado com '{{{{/{p['block']}}}}}'"
    ),
    "mismatched_close": lambda p: f"'{{{{/{p['closing']}}}}}' não fecha {_opened(p)}",
}
"""A syntax error's Portuguese reason by its ``kind`` (``billing.domain.templating.SYNTAX_ERROR_KINDS``)."""

_VARIATION = re.compile(r"variations\[(\d+)\]")
_FIELDS = {"name": "Nome", "description": "Descrição", "template_type": "Tipo"}


def _syntax(exc: TemplateSyntaxError, variation: int | None) -> str:
    wording = SYNTAX_MESSAGES.get(exc.kind)
    try:
        reason = wording(exc.params) if wording else "erro de sintaxe"
    except KeyError:  # a kind raised without the parts its wording names
        reason = "erro de sintaxe"
    where = f"Linha {exc.line}, coluna {exc.column}"
    return f"{where} da variação {variation}: {reason}." if variation else f"{where}: {reason}."


def _invalid(exc: DomainError) -> str:
    field = exc.field or ""
    variation = _VARIATION.fullmatch(field)
    label = f"Variação {int(variation[1]) + 1}" if variation else _FIELDS.get(field, "")
    if exc.code == "invalid_name":
        return "Dê um nome ao template."
    if exc.code == "invalid_template_type":
        return "Escolha o tipo do template: cobrança atrasada, a vencer ou aviso."
    if exc.code == "value_too_long":
        limit = MAX_NAME_LENGTH if field == "name" else MAX_DESCRIPTION_LENGTH
        return f"{label or 'Texto'}: no máximo {fmt.number(limit)} caracteres."
    if exc.code == "nul_character":
        return f"{label or 'Texto'}: remova o caractere nulo (U+0000)."
    if exc.code == "invalid_variations":
        if variation:
            return f"{label}: escreva um texto de até {fmt.number(MAX_TEMPLATE_LENGTH)} caracteres."
        return f"Escreva de 1 a {MAX_VARIATIONS} variações."
    if exc.code in fmt.ERROR_LABELS:
        text = fmt.label(exc.code, "error")
        return f"{text[0].upper()}{text[1:]}."
    return "O template não pôde ser salvo: revise os campos."


def template_error(exc: DomainError, *, name_variation: bool = True) -> dict[str, Any]:
    """The editor's ``error`` for ``exc``: ``{"code", "message", "field", "line", "column"}`` with a
    Portuguese ``message`` (a syntax error's says where and what, from its ``kind``; another refusal's is
    chosen by its ``code`` and ``field``) and no ``field`` (the message names it). A syntax error in the
    variation ``variations[i]`` reads ``Linha …, coluna … da variação <i + 1>: …`` unless not
    ``name_variation`` (the live preview, whose every box is already one variation's)."""
    if isinstance(exc, TemplateSyntaxError):
        found = _VARIATION.fullmatch(exc.field or "")
        variation = int(found[1]) + 1 if found and name_variation else None
        message = _syntax(exc, variation)
        return {"code": exc.code, "message": message, "field": None, "line": exc.line, "column": exc.column}
    return {"code": exc.code, "message": _invalid(exc), "field": None, "line": None, "column": None}
