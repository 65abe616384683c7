"""Ingestion rules on top of parsing: amounts in whole centavos, the due-date window, allowed countries,
duplicate phones in one batch, variables needed inside template branches, policy bounds."""

from __future__ import annotations

from datetime import date
from decimal import Context, Decimal, localcontext

import pytest

from billing.domain.calendar import PolicyError
from billing.domain.dates import require_due_window
from billing.domain.default_templates import DEFAULT_TEMPLATES
from billing.domain.errors import InvalidValue
from billing.domain.ingestion import (
    AcceptedContact,
    RejectedContact,
    branch_missing_variables,
    condition_at_ingestion,
    reject_duplicate_phones,
    screen_contact,
)
from billing.domain.money import require_cents
from billing.domain.policy import default_policy_spec, parse_policy
from billing.domain.templating import parse_template
from billing.domain.types import TemplateType

TODAY = date(2025, 1, 21)


@pytest.mark.parametrize("amount", ["1E-400", "0.001", "150.005", "0.0000000001"])
def test_an_amount_finer_than_a_centavo_is_refused(amount: str) -> None:
    with pytest.raises(InvalidValue) as caught:
        require_cents(Decimal(amount), field="valor")
    assert (caught.value.code, caught.value.field, caught.value.details) == (
        "invalid_amount",
        "valor",
        {"max_decimal_places": 2},
    )


@pytest.mark.parametrize("amount", ["0.01", "150.5", "1.500", "1000000000000", "-3.10"])
def test_whole_centavos_pass(amount: str) -> None:
    assert require_cents(Decimal(amount), field="valor") == Decimal(amount)


def test_the_centavo_rule_ignores_the_callers_decimal_context() -> None:
    with localcontext(Context(prec=3)):
        assert require_cents(Decimal("1234567.89"), field="valor") == Decimal("1234567.89")
        with pytest.raises(InvalidValue) as caught:
            require_cents(Decimal("1234567.891"), field="valor")
    assert caught.value.code == "invalid_amount"


def test_1e_minus_400_is_rejected_for_every_type() -> None:
    for kind in TemplateType:
        outcome = screen_contact(
            {"nome": "Ana", "telefone": "11987654321", "valor": Decimal("1e-400")},
            index=2,
            template_type=kind,
        )
        assert isinstance(outcome, RejectedContact)
        assert (outcome.code, outcome.field) == ("invalid_amount", "contacts[2].valor")


@pytest.mark.parametrize(
    ("due", "ok"),
    [
        (date(2020, 1, 21), True),  # exactly five years back
        (date(2020, 1, 20), False),
        (date(2027, 1, 21), True),  # exactly two years ahead
        (date(2027, 1, 22), False),
        (date(1900, 1, 1), False),
    ],
)
def test_the_due_date_window_is_five_years_back_and_two_ahead(due: date, ok: bool) -> None:
    if ok:
        assert require_due_window(due, TODAY) == due
        return
    with pytest.raises(InvalidValue) as caught:
        require_due_window(due, TODAY)
    assert caught.value.code == "due_date_out_of_range"
    assert caught.value.details == {"earliest": "2020-01-21", "latest": "2027-01-21"}


def test_the_window_of_29_february_ends_on_28_february() -> None:
    with pytest.raises(InvalidValue) as caught:
        require_due_window(date(1999, 1, 1), date(2024, 2, 29))
    assert caught.value.details == {"earliest": "2019-02-28", "latest": "2026-02-28"}


def test_the_window_only_applies_when_today_is_given() -> None:
    outcome = screen_contact(
        {"nome": "Ana", "telefone": "11987654321", "data_vencimento": "1900-01-01"},
        index=0,
        template_type=TemplateType.NOTIFICATION,
        today=TODAY,
    )
    assert isinstance(outcome, RejectedContact)
    assert (outcome.code, outcome.field) == ("due_date_out_of_range", "contacts[0].data_vencimento")


def test_a_number_of_a_country_not_allowed_is_rejected_naming_the_country() -> None:
    raw = {"nome": "Bob", "telefone": "+1 202 555 0123"}
    outcome = screen_contact(raw, index=1, template_type=TemplateType.NOTIFICATION)
    assert isinstance(outcome, RejectedContact)
    assert (outcome.code, outcome.field, outcome.details) == (
        "country_not_allowed",
        "contacts[1].telefone",
        {"country": "US"},
    )
    allowed = screen_contact(
        raw, index=1, template_type=TemplateType.NOTIFICATION, allowed_countries=frozenset({"BR", "US"})
    )
    assert isinstance(allowed, AcceptedContact)
    assert allowed.phone == "+12025550123"


def test_the_same_phone_spelled_three_ways_keeps_only_the_first() -> None:
    spellings = ["(11) 98765-4321", "abc", "11987654321", "0055 11 9 8765 4321", "+5511912345678"]
    outcomes = [
        screen_contact({"nome": "Ana", "telefone": t}, index=i, template_type=TemplateType.NOTIFICATION)
        for i, t in enumerate(spellings)
    ]
    screened = reject_duplicate_phones(outcomes)
    assert [(o.index, getattr(o, "code", "accepted")) for o in screened] == [
        (0, "accepted"),
        (1, "invalid_phone"),
        (2, "duplicate_phone"),
        (3, "duplicate_phone"),
        (4, "accepted"),
    ]
    duplicate = screened[3]
    assert isinstance(duplicate, RejectedContact)
    assert (duplicate.field, duplicate.details) == ("contacts[3].telefone", {"first_index": 0})


def _default(kind: TemplateType) -> list:
    return [parse_template(text) for text in DEFAULT_TEMPLATES[kind][2]]


def test_the_default_upcoming_template_needs_data_vencimento_although_only_branches_use_it() -> None:
    fields = {"nome": "Ana", "telefone": "11987654321", "valor": "10"}
    assert parse_template(DEFAULT_TEMPLATES[TemplateType.UPCOMING][2][0]).required_variables == {
        "nome_cliente"
    }
    assert branch_missing_variables(_default(TemplateType.UPCOMING), fields) == ["data_vencimento"]
    assert branch_missing_variables(_default(TemplateType.UPCOMING), {**fields, "data_vencimento": "x"}) == []
    outcome = screen_contact(
        fields, index=0, template_type=TemplateType.UPCOMING, templates=_default(TemplateType.UPCOMING)
    )
    assert isinstance(outcome, RejectedContact)
    assert (outcome.code, outcome.field, outcome.details) == (
        "missing_variable",
        "contacts[0].data_vencimento",
        {"names": ["data_vencimento"]},
    )


@pytest.mark.parametrize(
    ("source", "fields", "missing"),
    [
        ("{{#if mensagem}}{{mensagem}}{{else}}{{aviso}}{{/if}}", {"mensagem": "oi"}, []),
        ("{{#if mensagem}}{{mensagem}}{{else}}{{aviso}}{{/if}}", {}, ["aviso"]),
        ("{{#unless mensagem}}{{aviso}}{{/unless}}", {"mensagem": "oi"}, []),
        ("{{#unless mensagem}}{{aviso}}{{/unless}}", {"mensagem": ""}, ["aviso"]),
        (
            "{{#if vencida}}{{valor}}{{else}}{{valor_total}}{{/if}}",
            {"data_vencimento": "x"},
            ["valor", "valor_total"],
        ),
        ("{{#if vencida}}{{valor}}{{else}}{{valor_total}}{{/if}}", {}, ["valor_total"]),
        ("{{#if a}}{{#if b}}{{c}}{{/if}}{{/if}}", {"a": "1", "b": "1"}, ["c"]),
        ("{{#if a}}{{#if b}}{{c}}{{/if}}{{/if}}", {"a": "1"}, []),
    ],
)
def test_a_branch_that_may_render_needs_its_variables(source: str, fields: dict, missing: list[str]) -> None:
    assert branch_missing_variables([parse_template(source)], fields) == missing


def test_a_day_count_of_a_contact_with_a_due_date_is_decided_at_send_time() -> None:
    assert condition_at_ingestion("vence_hoje", {"data_vencimento": "2025-01-15"}) is None
    assert condition_at_ingestion("vence_hoje", {}) is False
    assert condition_at_ingestion("nome_cliente", {"nome": "Ana"}) is True


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"messages_per_minute": 1e9}, "messages_per_minute"),
        ({"messages_per_minute": 1001}, "messages_per_minute"),
        ({"messages_per_minute": 0}, "messages_per_minute"),
        ({"messages_per_minute": float("nan")}, "messages_per_minute"),
        ({"max_messages_per_day": 1_000_001}, "max_messages_per_day"),
        ({"pause_max_s": 61}, "pause_max_s"),
        ({"retry": {"max_attempts": 21}}, "retry.max_attempts"),
        ({"retry": {"max_delay_s": 86_401.0}}, "retry.max_delay_s"),
        ({"allowed_countries": []}, "allowed_countries"),
        ({"allowed_countries": "BR"}, "allowed_countries"),
        ({"allowed_countries": ["BR", "XX"]}, "allowed_countries[1]"),
    ],
)
def test_policy_figures_outside_their_bounds_are_refused(changes: dict, field: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy({**default_policy_spec(), **changes})
    assert caught.value.field == field


def test_policy_bounds_are_inclusive_and_countries_upper_cased() -> None:
    policy = parse_policy(
        {
            **default_policy_spec(),
            "messages_per_minute": 1000,
            "max_messages_per_day": 1_000_000,
            "allowed_countries": ["br", "PT"],
        }
    )
    assert (policy.limits.messages_per_minute, policy.allowed_countries) == (1000, frozenset({"BR", "PT"}))
    assert parse_policy(default_policy_spec()).allowed_countries == frozenset({"BR"})


@pytest.mark.parametrize(
    ("name", "description", "code", "field"),
    [
        ("n" * 101, "", "value_too_long", "name"),
        ("ok", "d" * 501, "value_too_long", "description"),
        ("k\x00ey", "", "nul_character", "name"),
        ("ok", "a\x00", "nul_character", "description"),
        ("  ", "", "invalid_name", "name"),
    ],
)
def test_template_name_and_description_have_limits(
    name: str, description: str, code: str, field: str
) -> None:
    from datetime import UTC, datetime
    from uuid import uuid4

    from billing.domain.template import MessageTemplate

    at = datetime(2025, 1, 1, tzinfo=UTC)
    with pytest.raises(InvalidValue) as caught:
        MessageTemplate.create(
            template_id=uuid4(),
            tenant_id=uuid4(),
            name=name,
            template_type="overdue",
            description=description,
            variations=["Oi"],
            active=True,
            at=at,
        )
    assert (caught.value.code, caught.value.field) == (code, field)
    template = MessageTemplate.create(
        template_id=uuid4(),
        tenant_id=uuid4(),
        name="ok",
        template_type="overdue",
        description="",
        variations=["Oi"],
        active=True,
        at=at,
    )
    with pytest.raises(InvalidValue) as caught:
        template.change(at=at, name=name, description=description)
    assert (caught.value.code, caught.value.field) == (code, field)
