"""Tests of the template engine (billing.domain.templating): shared cases T01-T09, edge cases, properties."""

from __future__ import annotations

import dataclasses
import unicodedata
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.domain.errors import DomainError
from billing.domain.templating import (
    MAX_NESTING,
    If,
    Template,
    TemplateSyntaxError,
    Text,
    Unless,
    Var,
    is_truthy,
    parse_template,
)
from tests.cases import load_cases

CASES = {case["id"]: case for case in load_cases("templates.json")}


def render(source: str, variables: dict[str, object] | None = None) -> str:
    return parse_template(source).render(variables or {})


def syntax_error(source: str) -> TemplateSyntaxError:
    with pytest.raises(TemplateSyntaxError) as info:
        parse_template(source)
    return info.value


def test_all_template_cases_are_covered() -> None:
    assert set(CASES) == {f"T0{i}" for i in range(1, 10)}


# ------------------------------------------------------------------------------------------ T01-T09


def test_T01_nothing_is_escaped() -> None:
    case = CASES["T01"]
    template = parse_template(case["template"])
    # The case's template says {{nome_cliente}} while its vars say "nome": the case is about escaping,
    # so its single value is bound to the template's single variable (the engine does no aliasing).
    [name] = template.variables
    [value] = case["vars"].values()
    assert template.render({name: value}) == case["expect"]


def test_T02_zero_is_falsy() -> None:
    case = CASES["T02"]
    assert render(case["template"], case["vars"]) == case["expect"]
    assert render(case["template"], {"dias_para_vencer": 3}) == "Faltam 3 dias"
    assert render(case["template"], {"dias_para_vencer": "0"}) == "Faltam 0 dias"


@pytest.mark.parametrize(("variables", "expected"), CASES["T03"]["cases"])
def test_T03_if_truthiness_table(variables: dict[str, Any], expected: str) -> None:
    assert render(CASES["T03"]["template"], variables) == expected


def test_T04_unless_takes_else_branch() -> None:
    case = CASES["T04"]
    assert render(case["template"], case["vars"]) == case["expect"]
    assert render(case["template"], {"pago": False, "data_vencimento": "15/01"}) == "Pague até 15/01"


@pytest.mark.parametrize(("variables", "expected"), CASES["T05"]["cases"])
def test_T05_nested_blocks(variables: dict[str, Any], expected: str) -> None:
    assert render(CASES["T05"]["template"], variables) == expected


def test_T06_standalone_block_lines_leave_no_blank_line() -> None:
    case = CASES["T06"]
    assert render(case["template"], case["vars"]) == case["expect"]


def test_T07_required_variables_and_missing_one() -> None:
    case = CASES["T07"]
    template = parse_template(case["template"])
    assert template.required_variables == {"nome", "valor", "data_vencimento"}
    assert case["expect"]["rejected"] is True
    assert template.missing_variables(case["vars"]) == case["expect"]["names"] == ["valor"]
    assert sorted(template.required_variables - case["vars"].keys()) == ["valor"]


def test_T08_accented_names_and_emoji() -> None:
    case = CASES["T08"]
    template = parse_template(case["template"])
    assert template.render(case["vars"]) == case["expect"]
    assert "último_vencimento" in template.variables


def test_T09_malformed_template_has_line_and_column() -> None:
    case = CASES["T09"]
    error = syntax_error(case["template"])
    assert case["expect"]["template_error"] is True
    assert (error.line, error.column) == (case["expect"]["line"], case["expect"]["column"]) == (1, 5)
    assert error.code == "template_error"
    assert isinstance(error, DomainError)
    assert error.details == {"line": 1, "column": 5}
    assert str(error) == error.message == "line 1, column 5: unclosed tag '{{'"


# ---------------------------------------------------------------------------------------- syntax


def test_whitespace_inside_braces() -> None:
    assert render("{{ nome }}|{{#if  a }}x{{ else }}y{{/if }}", {"nome": "Ana"}) == "Ana|y"
    assert render("{{\tnome\t}}", {"nome": "Ana"}) == "Ana"


def test_lone_braces_are_text() -> None:
    assert render("a } b }} c { d {x} e", {}) == "a } b }} c { d {x} e"
    assert render("{{x}}}}", {"x": 1}) == "1}}"
    assert render("{ {{x}}", {"x": 1}) == "{ 1"


def test_ast_shape() -> None:
    template = parse_template("Oi {{nome}}{{#if a}}A{{else}}{{#unless b}}B{{/unless}}{{/if}}")
    assert template.body == (
        Text("Oi "),
        Var("nome"),
        If("a", (Text("A"),), (Unless("b", (Text("B"),), ()),)),
    )


def test_nested_else_branches() -> None:
    source = "{{#if a}}{{#if b}}ab{{else}}a!b{{/if}}{{else}}{{#unless c}}!a!c{{else}}!ac{{/unless}}{{/if}}"
    assert render(source, {"a": 1, "b": 1}) == "ab"
    assert render(source, {"a": 1}) == "a!b"
    assert render(source, {}) == "!a!c"
    assert render(source, {"c": "x"}) == "!ac"


def test_unless_without_else() -> None:
    assert render("{{#unless pago}}Pague{{/unless}}", {"pago": True}) == ""
    assert render("{{#unless pago}}Pague{{/unless}}", {}) == "Pague"


def test_comments_render_nothing() -> None:
    assert render("a{{! nota }}b{{!-- com }} dentro --}}c", {}) == "abc"
    assert render("a{{!--\nvárias\nlinhas\n--}}b", {}) == "ab"
    assert render("a{{!}}b{{!----}}c", {}) == "abc"
    assert render("a{{!--}}b", {}) == "ab"
    # A short comment ends at the first "}}": here "{{! {{nome}}" is the comment.
    assert render("{{! {{nome}} }}x", {"nome": "Ana"}) == " }}x"


def test_values_are_not_reparsed_or_escaped() -> None:
    values = {"a": "{{b}} & <i>", "b": "NÃO"}
    assert render("{{a}}", values) == "{{b}} & <i>"


def test_value_conversions() -> None:
    source = "[{{v}}]"
    assert render(source, {"v": True}) == "[true]"
    assert render(source, {"v": False}) == "[false]"
    assert render(source, {"v": None}) == "[]"
    assert render(source, {}) == "[]"
    assert render(source, {"v": Decimal("1234.50")}) == "[1234.50]"
    assert render(source, {"v": 0}) == "[0]"
    assert render(source, {"v": 2.5}) == "[2.5]"


def test_render_survives_a_value_whose_str_raises() -> None:
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("boom")

        def __len__(self) -> int:
            raise RuntimeError("boom")

    assert render("[{{v}}]{{#if v}}T{{else}}F{{/if}}", {"v": Broken()}) == "[]T"


def test_variables_and_required_variables() -> None:
    template = parse_template(
        "{{nome}} {{#if vencida}}{{valor}}{{else}}{{#unless pago}}{{data}}{{/unless}}{{/if}} {{nome}}"
    )
    assert template.variables == frozenset({"nome", "vencida", "valor", "pago", "data"})
    assert template.required_variables == frozenset({"nome"})


def test_missing_variables_in_order_and_blank_counts_as_missing() -> None:
    template = parse_template("{{b}} {{a}} {{c}} {{b}} {{#if d}}{{d}}{{/if}}")
    assert template.missing_variables({"a": None, "c": "  "}) == ["b", "a", "c"]
    assert template.missing_variables({"a": 0, "b": False, "c": "x"}) == []


def test_template_is_immutable_and_keeps_source() -> None:
    source = "Olá {{ nome }}\n{{#if a}}\nx\n{{/if}}\n"
    template = parse_template(source)
    assert isinstance(template, Template)
    assert template.source == source
    with pytest.raises(dataclasses.FrozenInstanceError):
        template.source = "x"  # type: ignore[misc]
    assert parse_template(source) == template
    assert hash(parse_template(source)) == hash(template)


def test_decomposed_unicode_names_match_composed_ones() -> None:
    nfd = unicodedata.normalize("NFD", "último")
    assert nfd != "último"
    assert render("{{" + nfd + "}}", {"último": "ok"}) == "ok"
    assert render("{{último}}", {nfd: "ok"}) == "ok"
    assert parse_template("{{" + nfd + "}}").variables == {"último"}


@pytest.mark.parametrize("name", ["_x", "x1", "Ação", "último_vencimento", "nome_cliente", "ÉPOCA", "名前"])
def test_valid_names(name: str) -> None:
    assert render("{{" + name + "}}", {name: "v"}) == "v"


# ------------------------------------------------------------------------------------ standalone


def test_standalone_lines_with_crlf() -> None:
    source = "Olá\r\n{{#if a}}\r\nA\r\n{{else}}\r\nB\r\n{{/if}}\r\nFim\r\n"
    assert render(source, {"a": 1}) == "Olá\r\nA\r\nFim\r\n"
    assert render(source, {}) == "Olá\r\nB\r\nFim\r\n"


def test_standalone_else_and_indented_tags() -> None:
    source = "Início\n  {{#unless pago}}\t\n- Pague\n\t{{else}}  \n- Obrigado\n  {{/unless}}\nFim"
    assert render(source, {"pago": False}) == "Início\n- Pague\nFim"
    assert render(source, {"pago": True}) == "Início\n- Obrigado\nFim"


def test_standalone_comment_lines() -> None:
    assert render("a\n{{! nota }}\nb\n  {{!-- várias\nlinhas --}}  \nc\n", {}) == "a\nb\nc\n"


def test_standalone_at_template_start_and_end_without_newline() -> None:
    assert render("{{#if a}}\nA\n{{/if}}", {"a": 1}) == "A\n"
    assert render("  {{! só }}  ", {}) == ""
    assert render("x\n{{#if a}}\nA\n  {{/if}}  ", {}) == "x\n"


def test_tags_sharing_a_line_are_not_standalone() -> None:
    assert render("{{#if a}}{{/if}}\nx", {}) == "\nx"
    assert render("- {{#if a}}\nA\n{{/if}}\n", {"a": 1}) == "- \nA\n"
    assert render("{{nome}}\n{{#if a}} {{nome}}\n{{/if}}\n", {"nome": "N", "a": 1}) == "N\n N\n"
    assert render("{{#if a}}A{{/if}}\n", {"a": 1}) == "A\n"


def test_variable_tags_are_never_standalone() -> None:
    assert render("a\n{{x}}\nb", {}) == "a\n\nb"
    assert render("a\n  {{x}}  \nb", {}) == "a\n    \nb"


# ----------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("source", "line", "column", "fragment"),
    [
        ("Olá {{nome}", 1, 5, "unclosed tag '{{'"),
        ("Olá {{nome", 1, 5, "unclosed tag '{{'"),
        ("a\nb {{nome} e {{x}}", 2, 3, "unclosed tag '{{'"),
        ("x {{nome\n}}", 1, 3, "unclosed tag '{{'"),
        ("ok\n\n  {{upper nome}}", 3, 3, "helpers are not supported"),
        ("{{#each itens}}x{{/each}}", 1, 1, "unsupported block '{{#each}}'"),
        ("a {{#with c}}x{{/with}}", 1, 3, "unsupported block '{{#with}}'"),
        ("😀 {{> rodape}}", 1, 3, "partials"),
        ("{{{nome}}}", 1, 1, "triple-stash"),
        ("  {{&nome}}", 1, 3, "'{{&'"),
        ("{{#if a}}x{{else if b}}y{{/if}}", 1, 11, "'{{else if b}}' is not supported"),
        ("{{cliente.nome}}", 1, 1, "paths"),
        ("{{../nome}}", 1, 1, "paths"),
        ("x\n{{/if}}", 2, 1, "'{{/if}}' without a matching '{{#if}}'"),
        ("a {{else}} b", 1, 3, "'{{else}}' outside"),
        ("a\n {{#if x}}\nb", 2, 2, "never closed"),
        (
            "{{#if a}}\n{{#unless b}}x{{/if}}",
            2,
            15,
            "'{{/if}}' does not close the '{{#unless}}' opened at line 2",
        ),
        ("{{#if a}}x{{else}}y{{else}}z{{/if}}", 1, 20, "second '{{else}}'"),
        ("{{#if}}x{{/if}}", 1, 1, "takes exactly one variable name"),
        ("{{#if a b}}x{{/if}}", 1, 1, "takes exactly one variable name"),
        ("{{#if (eq a b)}}x{{/if}}", 1, 1, "takes exactly one variable name"),
        ("{{1nome}}", 1, 1, "invalid variable name"),
        ("{{no-me}}", 1, 1, "invalid variable name"),
        ("{{}}", 1, 1, "empty tag"),
        ("{{this}}", 1, 1, "reserved"),
        ("{{#if true}}x{{/if}}", 1, 1, "reserved"),
        ("{{~nome}}", 1, 1, "whitespace control"),
        ("{{^a}}x{{/a}}", 1, 1, "inverse sections"),
        ("{{/each}}", 1, 1, "unsupported closing tag"),
        ("a {{!-- aberto }}", 1, 3, "unclosed comment"),
        ("a {{! aberto", 1, 3, "unclosed comment"),
        ("{{*decorator}}", 1, 1, "invalid variable name"),
    ],
)
def test_syntax_errors_point_at_the_tag(source: str, line: int, column: int, fragment: str) -> None:
    error = syntax_error(source)
    assert (error.line, error.column) == (line, column), error.message
    assert fragment in error.message
    assert error.message.startswith(f"line {line}, column {column}: ")
    assert error.details == {"line": line, "column": column}


def test_nesting_limit() -> None:
    ok = "{{#if a}}" * MAX_NESTING + "x" + "{{/if}}" * MAX_NESTING
    assert render(ok, {"a": 1}) == "x"
    too_deep = "{{#if a}}" * (MAX_NESTING + 1) + "x" + "{{/if}}" * (MAX_NESTING + 1)
    error = syntax_error(too_deep)
    assert (error.line, error.column) == (1, 1 + len("{{#if a}}") * MAX_NESTING)


# ------------------------------------------------------------------------------------- truthiness


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, False),
        (False, False),
        (0, False),
        (0.0, False),
        (-0.0, False),
        (Decimal("0"), False),
        (Decimal("-0.00"), False),
        (float("nan"), False),
        (Decimal("NaN"), False),
        (Decimal("sNaN"), False),
        ("", False),
        ([], False),
        ({}, False),
        ((), False),
        (True, True),
        (1, True),
        (-1, True),
        (0.01, True),
        (Decimal("0.01"), True),
        ("0", True),
        ("false", True),
        (" ", True),
        ("não", True),
        ([0], True),
        ({"a": None}, True),
        (object(), True),
    ],
)
def test_is_truthy(value: object, expected: bool) -> None:
    assert is_truthy(value) is expected


# ------------------------------------------------------------------------------------- properties

# The first property test to run builds Hypothesis' Unicode charmap (about 1 s on a fresh checkout
# without .hypothesis/); that one-time cost must not fail the "too slow" health check.
properties = settings(suppress_health_check=[HealthCheck.too_slow])
many_examples = settings(properties, max_examples=300)

NAMES = ["nome", "valor", "x", "_a1", "último_vencimento", "vencida"]
names = st.sampled_from(NAMES)
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.decimals(),
    st.text(max_size=10),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)
variable_maps = st.dictionaries(names, values, max_size=len(NAMES))
# Inline text: no "{" (so it cannot touch a tag) and no line break (so no tag is standalone).
inline_text = st.text(st.characters(blacklist_characters="{\n\r", blacklist_categories=("Cs",)), max_size=8)

# A model AST: ("text", s) | ("var", name) | (kind, name, then, otherwise | None)
ModelNode = tuple[Any, ...]


def _blocks(children: st.SearchStrategy[list[ModelNode]]) -> st.SearchStrategy[ModelNode]:
    return st.tuples(st.sampled_from(["if", "unless"]), names, children, st.none() | children)


model_bodies = st.recursive(
    st.lists(
        st.one_of(st.tuples(st.just("text"), inline_text), st.tuples(st.just("var"), names)), max_size=4
    ),
    lambda children: st.lists(
        st.one_of(
            st.tuples(st.just("text"), inline_text), st.tuples(st.just("var"), names), _blocks(children)
        ),
        max_size=4,
    ),
    max_leaves=20,
)


def serialize(body: list[ModelNode]) -> str:
    out = []
    for node in body:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "var":
            out.append("{{" + node[1] + "}}")
        else:
            kind, name, then, otherwise = node
            out.append(f"{{{{#{kind} {name}}}}}" + serialize(then))
            if otherwise is not None:
                out.append("{{else}}" + serialize(otherwise))
            out.append(f"{{{{/{kind}}}}}")
    return "".join(out)


def reference_render(body: list[ModelNode], variables: dict[str, object]) -> str:
    out = []
    for node in body:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "var":
            out.append(_to_text(variables.get(node[1])))
        else:
            kind, name, then, otherwise = node
            condition = is_truthy(variables.get(name)) != (kind == "unless")
            out.append(reference_render(then if condition else (otherwise or []), variables))
    return "".join(out)


def _to_text(value: object) -> str:
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


@given(model_bodies, variable_maps)
@many_examples
def test_property_valid_templates_render_like_the_model_and_never_raise(
    body: list[ModelNode], variables: dict[str, object]
) -> None:
    template = parse_template(serialize(body))
    assert template.render(variables) == reference_render(body, variables)


# Line mode: every block tag on its own (indented) line, text lines in between; the standalone rule
# must make the output exactly the selected text lines.
line_text = st.text(st.characters(blacklist_characters="{\n\r", blacklist_categories=("Cs",)), max_size=6)
text_lines = st.lists(
    st.one_of(st.tuples(st.just("text"), line_text), st.tuples(st.just("var"), names)), max_size=3
)
line_bodies = st.recursive(
    st.lists(st.tuples(st.just("line"), text_lines), max_size=3),
    lambda children: st.lists(
        st.one_of(st.tuples(st.just("line"), text_lines), _blocks(children)), max_size=3
    ),
    max_leaves=12,
)
blanks = st.text(st.sampled_from(" \t"), max_size=2)


@st.composite
def line_templates(draw: st.DrawFn) -> tuple[str, list[ModelNode], str]:
    body = draw(line_bodies)
    newline = draw(st.sampled_from(["\n", "\r\n"]))

    def tag(inner: str) -> str:
        return draw(blanks) + "{{" + inner + "}}" + draw(blanks) + newline

    def emit(nodes: list[ModelNode]) -> str:
        out = []
        for node in nodes:
            if node[0] == "line":
                out.append(serialize(node[1]) + newline)
            else:
                kind, name, then, otherwise = node
                out.append(tag(f"#{kind} {name}") + emit(then))
                if otherwise is not None:
                    out.append(tag("else") + emit(otherwise))
                out.append(tag(f"/{kind}"))
        return "".join(out)

    return emit(body), body, newline


def reference_lines(body: list[ModelNode], variables: dict[str, object], newline: str) -> str:
    out = []
    for node in body:
        if node[0] == "line":
            out.append(reference_render(node[1], variables) + newline)
        else:
            kind, name, then, otherwise = node
            condition = is_truthy(variables.get(name)) != (kind == "unless")
            out.append(reference_lines(then if condition else (otherwise or []), variables, newline))
    return "".join(out)


@given(line_templates(), variable_maps)
@many_examples
def test_property_standalone_block_lines_vanish(
    generated: tuple[str, list[ModelNode], str], variables: dict[str, object]
) -> None:
    source, body, newline = generated
    assert parse_template(source).render(variables) == reference_lines(body, variables, newline)


any_text = st.text(st.characters(blacklist_categories=("Cs",)))


@given(any_text.filter(lambda s: "{{" not in s))
@properties
def test_property_text_without_tags_is_preserved(text: str) -> None:
    template = parse_template(text)
    assert template.render({}) == text
    assert template.variables == frozenset()


@properties
@given(
    st.lists(
        st.tuples(any_text.filter(lambda s: "{{" not in s and not s.endswith("{")), names, any_text),
        max_size=5,
    ),
    any_text.filter(lambda s: "{{" not in s),
)
def test_property_text_around_variables_is_preserved_byte_for_byte(
    pieces: list[tuple[str, str, str]], tail: str
) -> None:
    source = "".join(text + "{{" + name + "}}" for text, name, _ in pieces) + tail
    variables = {name: value for _, name, value in pieces}
    expected = "".join(text + variables[name] for text, name, _ in pieces) + tail
    assert parse_template(source).render(variables) == expected


tricky_values = st.lists(
    st.one_of(any_text, st.sampled_from(["{{", "}}", "{{x}}", "{{#if x}}", "{{/if}}", "{{!"]))
)


@given(tricky_values.map("".join))
@properties
def test_property_values_with_braces_come_out_literally(value: str) -> None:
    template = parse_template("A{{x}}B{{#if x}}[{{x}}]{{/if}}")
    expected = "A" + value + "B" + (f"[{value}]" if value else "")
    assert template.render({"x": value}) == expected


# (construct, offset of the reported tag inside the construct)
UNSUPPORTED = [
    ("{{upper nome}}", 0),
    ("{{#each itens}}x{{/each}}", 0),
    ("{{#with c}}x{{/with}}", 0),
    ("{{> parcial}}", 0),
    ("{{{nome}}}", 0),
    ("{{&nome}}", 0),
    ("{{#if a}}x{{else if b}}y{{/if}}", 10),
    ("{{a.b}}", 0),
    ("{{/if}}", 0),
    ("{{/unless}}", 0),
    ("{{else}}", 0),
    ("{{#if a}}x", 0),
    ("{{#unless a}}x{{else}}", 0),
    ("{{#if a}}x{{/unless}}", 10),
    ("{{nome", 0),
    ("{{nome}", 0),
    ("{{", 0),
    ("{{1x}}", 0),
    ("{{~nome~}}", 0),
    ("{{!-- aberto", 0),
]
plain = st.text(st.characters(blacklist_characters="{}", blacklist_categories=("Cs",)))


@given(plain, st.sampled_from(UNSUPPORTED), plain)
@properties
def test_property_unsupported_constructs_are_refused_with_position(
    prefix: str, construct: tuple[str, int], suffix: str
) -> None:
    text, offset = construct
    error = syntax_error(prefix + text + suffix)
    assert error.line == prefix.count("\n") + 1
    assert error.column == len(prefix) - (prefix.rfind("\n") + 1) + 1 + offset
