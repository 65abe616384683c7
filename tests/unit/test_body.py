"""Decoding request bodies against their Structs: the one mapping of msgspec's errors to
``{code, message, field}`` with the exact field path, without recursing into hostile nesting."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from billing.api.body import _SendWithoutNul, decode_body, is_json
from billing.api.schemas import (
    CancelContactsRequest,
    ConfigPatch,
    PreviewRequest,
    SendRequest,
    TemplateCreate,
)
from billing.domain.errors import InvalidValue

OK_CONTACT = '{"nome": "Ana", "telefone": "11987654321"}'


def refused(body: str | bytes, kind: type = SendRequest) -> InvalidValue:
    with pytest.raises(InvalidValue) as caught:
        decode_body(body.encode() if isinstance(body, str) else body, kind)
    return caught.value


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ('{"contatos": []}', "unknown_field", "contatos"),
        ('{"contacts": [{"a": 1}], "x": 1}', "unknown_field", "x"),
        ('{"contacts": []}', "invalid_request", "contacts"),
        ("{}", "invalid_request", "contacts"),
        ("[]", "invalid_request", "body"),
        (
            f'{{"contacts": [{OK_CONTACT}, {OK_CONTACT}, {OK_CONTACT}, {{"telefone": [1]}}]}}',
            "invalid_request",
            "contacts[3].telefone",
        ),
        (
            f'{{"contacts": [{OK_CONTACT}, {{"nome": "Ana", "extra": {{"a": 1}}}}]}}',
            "invalid_request",
            "contacts[1].extra",
        ),
        ('{"contacts": [{"nome": "' + "a" * 501 + '"}]}', "value_too_long", "contacts[0].nome"),
        ('{"contacts": [{"nome": "A\\u0000na"}]}', "nul_character", "contacts[0].nome"),
        ('{"contacts": [{"": "x"}]}', "invalid_field_name", "contacts[0]"),
        ('{"contacts": [{"n\\u0000": "x"}]}', "invalid_field_name", "contacts[0]"),
        ('{"contacts": [{"a": 1}], "external_id": ""}', "invalid_request", "external_id"),
        ('{"contacts": [{"a": 1}], "template_type": "cobranca"}', "invalid_request", "template_type"),
        (
            '{"contacts": [{"a": 1}], "allow_duplicate_phones": "yes"}',
            "invalid_request",
            "allow_duplicate_phones",
        ),
    ],
)
def test_a_send_body_that_does_not_fit_names_the_exact_field(body: str, code: str, field: str) -> None:
    error = refused(body)
    assert (error.code, error.field) == (code, field)


def test_an_over_long_value_names_its_limit() -> None:
    error = refused('{"external_id": "' + "e" * 201 + '", "contacts": [{"a": 1}]}')
    assert (error.code, error.field, error.details) == ("value_too_long", "external_id", {"max_length": 200})
    assert "200" in error.message


def test_more_than_10000_contacts_is_too_many_contacts() -> None:
    error = refused('{"contacts": [' + ",".join(["{}"] * 10_001) + "]}")
    assert (error.code, error.field, error.details) == (
        "too_many_contacts",
        "contacts",
        {"max_items": 10_000},
    )


def test_more_than_50_fields_in_a_contact_is_too_many_fields() -> None:
    fields = ", ".join(f'"f{i}": 1' for i in range(51))
    error = refused(f'{{"contacts": [{{{fields}}}]}}')
    assert (error.code, error.field) == ("too_many_fields", "contacts[0]")


def test_10000_levels_of_nesting_are_refused_at_the_first_level_without_recursing() -> None:
    deep = "[" * 10_000 + "]" * 10_000
    start = time.perf_counter()
    error = refused(f'{{"contacts": [{OK_CONTACT}, {{"nome": "x", "fundo": {deep}}}]}}')
    assert (error.code, error.field) == ("invalid_request", "contacts[1].fundo")
    assert time.perf_counter() - start < 1.0
    error = refused(f'{{"variables": {{"nome": {deep}}}}}', PreviewRequest)
    assert (error.code, error.field) == ("invalid_request", "variables.nome")
    error = refused(f'{{"external_id": {deep}}}', CancelContactsRequest)
    assert (error.code, error.field) == ("invalid_request", "external_id")
    error = refused(f'{{"policy": {{"windows": {{"mon": [[{deep}]]}}}}}}', ConfigPatch)
    assert (error.code, error.field) == ("invalid_request", "policy.windows.mon[0][0]")


@pytest.mark.parametrize(
    ("body", "kind", "code", "field"),
    [
        (
            '{"policy": {"messages_per_minute": 1001}}',
            ConfigPatch,
            "out_of_range",
            "policy.messages_per_minute",
        ),
        (
            '{"policy": {"messages_per_minute": 1e9}}',
            ConfigPatch,
            "invalid_request",
            "policy.messages_per_minute",
        ),
        ('{"policy": {"retry": {"tries": 1}}}', ConfigPatch, "unknown_field", "policy.retry.tries"),
        ('{"policy": {"pause_min_s": -1}}', ConfigPatch, "out_of_range", "policy.pause_min_s"),
        ('{"gateway": {"base_url": "x"}}', ConfigPatch, "invalid_request", "gateway.instance"),
        (
            '{"name": "x", "template_type": "overdue", "variations": ["a\\u0000"]}',
            TemplateCreate,
            "nul_character",
            "variations[0]",
        ),
        (
            '{"name": "x", "template_type": "overdue", "variations": []}',
            TemplateCreate,
            "invalid_request",
            "variations",
        ),
        (
            '{"name": "' + "n" * 101 + '", "template_type": "overdue", "variations": ["a"]}',
            TemplateCreate,
            "value_too_long",
            "name",
        ),
        ("not json", TemplateCreate, "invalid_json", "body"),
        ("", TemplateCreate, "invalid_json", "body"),
        ("[]", TemplateCreate, "invalid_request", "body"),
    ],
)
def test_admin_bodies_use_the_same_mapping(body: str, kind: type, code: str, field: str) -> None:
    error = refused(body, kind)
    assert (error.code, error.field) == (code, field)


def test_numbers_in_contacts_are_exact_decimals() -> None:
    request = decode_body(b'{"contacts": [{"valor": 1e-400, "b": 99.9, "c": 3}]}', SendRequest)
    assert request.contacts == [{"valor": Decimal("1e-400"), "b": Decimal("99.9"), "c": 3}]


@pytest.mark.parametrize(
    ("content_type", "ok"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/JSON", True),
        ("text/plain", False),
        (None, False),
        ("application/jsonx", False),
    ],
)
def test_only_json_is_json(content_type: str | None, ok: bool) -> None:
    assert is_json(content_type) is ok


def _schema_of(kind: type) -> dict[str, Any]:
    """The JSON schema of a Struct without its prose (descriptions, examples, titles), and without the
    patterns inside ``contacts``."""

    def strip(node: Any, drop: frozenset[str]) -> Any:
        if isinstance(node, dict):
            return {
                key: strip(value, drop | {"pattern"} if key == "contacts" else drop)
                for key, value in node.items()
                if key not in drop
            }
        if isinstance(node, list):
            return [strip(value, drop) for value in node]
        return node

    _, components = msgspec.json.schema_components([kind])
    schema: dict[str, Any] = strip(components[kind.__name__], frozenset({"description", "examples", "title"}))
    return schema


def test_the_nul_free_send_decoder_is_send_request_without_the_contacts_nul_patterns() -> None:
    assert _SendWithoutNul.__struct_fields__ == SendRequest.__struct_fields__
    assert _SendWithoutNul.__struct_defaults__ == SendRequest.__struct_defaults__
    assert _schema_of(_SendWithoutNul) == _schema_of(SendRequest)
    assert "pattern" in str(_schema_of(SendRequest))  # external_id keeps its own


def test_a_body_without_nul_decodes_to_the_send_request_the_full_decoder_gives() -> None:
    body = (
        b'{"contacts": [{"nome": "Ana", "telefone": "11987654321", "valor": 150.5, "n": 3, "ok": true,'
        b' "nada": null}], "external_id": "lote-1", "allow_duplicate_phones": true,'
        b' "template_id": "00000000-0000-0000-0000-000000000001", "template_type": "overdue"}'
    )
    decoded = decode_body(body, SendRequest)
    full = msgspec.json.decode(body, type=SendRequest)
    assert type(decoded) is SendRequest
    assert decoded.contacts == [
        {
            "nome": "Ana",
            "telefone": "11987654321",
            "valor": Decimal("150.5"),
            "n": 3,
            "ok": True,
            "nada": None,
        }
    ]
    assert [
        decoded.external_id,
        decoded.allow_duplicate_phones,
        decoded.template_id,
        decoded.template_type,
    ] == [
        full.external_id,
        full.allow_duplicate_phones,
        full.template_id,
        full.template_type,
    ]
