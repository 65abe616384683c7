"""The template editor's Portuguese words for every template syntax error the domain raises (chosen by
the error's ``kind``, never from its English text), and for the other refusals of a template."""

from __future__ import annotations

import pytest

from billing.dashboard.template_errors import template_error
from billing.domain.errors import InvalidValue
from billing.domain.template import parse_variations
from billing.domain.templating import SYNTAX_ERROR_KINDS, TemplateSyntaxError, parse_template

CASES = [
    (
        "unclosed_comment",
        "a {{!-- b",
        "Linha 1, coluna 3: o comentário '{{!--' não é fechado (termine-o com '--}}').",
    ),
    (
        "triple_stash",
        "{{{nome}}}",
        "Linha 1, coluna 1: '{{{' não é aceito (nada é escapado): use '{{nome}}'.",
    ),
    ("unclosed_tag", "Oi {{nome", "Linha 1, coluna 4: a tag '{{' não é fechada com '}}' na mesma linha."),
    ("empty_tag", "{{ }}", "Linha 1, coluna 1: tag vazia '{{}}'."),
    (
        "whitespace_control",
        "{{~nome}}",
        "Linha 1, coluna 1: o controle de espaços '~' não é aceito: '{{~nome}}'.",
    ),
    (
        "block_without_name",
        "{{#}}",
        "Linha 1, coluna 1: o bloco '{{#}}' não tem nome: use {{#if campo}} ou {{#unless campo}}.",
    ),
    (
        "unsupported_block",
        "{{#each itens}}{{/each}}",
        "Linha 1, coluna 1: o bloco '{{#each}}' não existe: só #if e #unless.",
    ),
    (
        "block_arguments",
        "{{#if a b}}x{{/if}}",
        "Linha 1, coluna 1: '{{#if}}' leva exatamente um nome de campo: '{{#if a b}}'.",
    ),
    (
        "unsupported_closing",
        "{{/each}}",
        "Linha 1, coluna 1: o fechamento '{{/each}}' não existe: só /if e /unless.",
    ),
    ("partial", "{{> rodape}}", "Linha 1, coluna 1: partials não são aceitos: '{{> rodape}}'."),
    ("ampersand", "{{& nome}}", "Linha 1, coluna 1: '{{&' não é aceito (nada é escapado): '{{& nome}}'."),
    (
        "inverse_section",
        "{{^nome}}x{{/nome}}",
        "Linha 1, coluna 1: seções invertidas não são aceitas, use {{#unless}}: '{{^nome}}'.",
    ),
    (
        "else_arguments",
        "{{#if a}}x{{else if b}}y{{/if}}",
        "Linha 1, coluna 11: '{{else if b}}' não é aceito: coloque um {{#if}} dentro do {{else}}.",
    ),
    ("helper", "{{upper nome}}", "Linha 1, coluna 1: helpers não são aceitos: '{{upper nome}}'."),
    (
        "path",
        "{{cliente.nome}}",
        "Linha 1, coluna 1: caminhos como «cliente.nome» não são aceitos, só nomes simples de campos.",
    ),
    ("reserved_word", "{{this}}", "Linha 1, coluna 1: «this» é uma palavra reservada, não um nome de campo."),
    (
        "invalid_name",
        "{{1nome}}",
        "Linha 1, coluna 1: nome de campo inválido «1nome»: use letras, dígitos e '_', sem começar por "
        "dígito.",
    ),
    (
        "else_outside_block",
        "a {{else}} b",
        "Linha 1, coluna 3: '{{else}}' fora de um bloco {{#if}} ou {{#unless}}.",
    ),
    (
        "close_without_open",
        "a {{/unless}}",
        "Linha 1, coluna 3: '{{/unless}}' sem o '{{#unless}}' que ele fecharia.",
    ),
    (
        "nesting_too_deep",
        "{{#if a}}" * 33,
        "Linha 1, coluna 289: blocos aninhados em mais de 32 níveis.",
    ),
    (
        "second_else",
        "{{#if a}}x{{else}}y{{else}}z{{/if}}",
        "Linha 1, coluna 20: segundo '{{else}}' no bloco '{{#if}}' aberto na linha 1, coluna 1.",
    ),
    (
        "unclosed_block",
        "Oi {{#unless pago}} x",
        "Linha 1, coluna 4: o bloco '{{#unless}}' aberto aqui não é fechado com '{{/unless}}'.",
    ),
    (
        "mismatched_close",
        "{{#if a}}\n x {{/unless}}",
        "Linha 2, coluna 4: '{{/unless}}' não fecha o bloco '{{#if}}' aberto na linha 1, coluna 1.",
    ),
]


def test_every_kind_of_syntax_error_has_a_case() -> None:
    assert sorted(kind for kind, _, _ in CASES) == sorted(SYNTAX_ERROR_KINDS)


@pytest.mark.parametrize(("kind", "source", "message"), CASES, ids=[c[0] for c in CASES])
def test_a_syntax_error_reads_in_portuguese(kind: str, source: str, message: str) -> None:
    with pytest.raises(TemplateSyntaxError) as raised:
        parse_template(source)
    assert raised.value.kind == kind
    assert template_error(raised.value) == {
        "code": "template_error",
        "message": message,
        "field": None,
        "line": raised.value.line,
        "column": raised.value.column,
    }


def test_the_variation_is_named_unless_the_preview_asks_not_to() -> None:
    with pytest.raises(TemplateSyntaxError) as raised:
        parse_variations(["Oi", "Olá {{nome"])
    assert template_error(raised.value)["message"] == (
        "Linha 1, coluna 5 da variação 2: a tag '{{' não é fechada com '}}' na mesma linha."
    )
    assert template_error(raised.value, name_variation=False)["message"] == (
        "Linha 1, coluna 5: a tag '{{' não é fechada com '}}' na mesma linha."
    )


def test_other_refusals_are_worded_by_code_and_field() -> None:
    cases = [
        (InvalidValue("x", code="value_too_long", field="name"), "Nome: no máximo 100 caracteres."),
        (
            InvalidValue("x", code="value_too_long", field="description"),
            "Descrição: no máximo 500 caracteres.",
        ),
        (InvalidValue("x", code="invalid_variations", field="variations"), "Escreva de 1 a 20 variações."),
        (
            InvalidValue("x", code="invalid_variations", field="variations[2]"),
            "Variação 3: escreva um texto de até 4.096 caracteres.",
        ),
        (
            InvalidValue("x", code="nul_character", field="variations[0]"),
            "Variação 1: remova o caractere nulo (U+0000).",
        ),
        (InvalidValue("x", code="invalid_amount", field="valor"), "Valor inválido."),
        (
            InvalidValue("x", code="something_new", field="x"),
            "O template não pôde ser salvo: revise os campos.",
        ),
    ]
    assert [template_error(exc)["message"] for exc, _ in cases] == [message for _, message in cases]
