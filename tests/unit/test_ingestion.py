"""Screening of one contact at ingestion: cases T07, M03, M04, D05, P04, P05 at the contact level."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from billing.domain.ingestion import AcceptedContact, RejectedContact, screen_contact
from billing.domain.templating import parse_template
from billing.domain.types import TemplateType
from tests.cases import load_cases


def case(file: str, case_id: str) -> dict:
    return next(c for c in load_cases(file) if c["id"] == case_id)


def test_T07_contact_lacking_a_required_variable_is_rejected_naming_it() -> None:
    c = case("templates.json", "T07")
    required = parse_template(c["template"]).required_variables
    outcome = screen_contact(
        {**c["vars"], "telefone": "11987654321"},
        index=4,
        template_type=TemplateType.OVERDUE,
        required_variables=required,
    )
    assert isinstance(outcome, RejectedContact)
    assert outcome.code == c["expect"]["code"] == "missing_variable"
    assert outcome.details == {"names": c["expect"]["names"]}
    assert outcome.field == "contacts[4].valor"


def test_M03_ambiguous_amount_rejects_the_contact() -> None:
    c = case("money.json", "M03")
    outcome = screen_contact(
        {"nome": "Ana", "telefone": "11987654321", "valor": c["given"]},
        index=0,
        template_type=TemplateType.OVERDUE,
    )
    assert isinstance(outcome, RejectedContact)
    assert outcome.code == c["expect"]["code"] == "ambiguous_amount"


def test_M04_non_positive_amount_for_overdue_is_rejected() -> None:
    c = case("money.json", "M04")
    outcome = screen_contact(
        {"nome": "Ana", "telefone": "11987654321", "valor": c["given"]},
        index=0,
        template_type=TemplateType(c["template_type"]),
    )
    assert isinstance(outcome, RejectedContact)
    assert outcome.code == c["expect"]["code"] == "non_positive_amount"


def test_negative_amount_is_allowed_in_a_notification() -> None:
    outcome = screen_contact(
        {"nome": "Ana", "telefone": "11987654321", "valor": -100},
        index=0,
        template_type=TemplateType.NOTIFICATION,
    )
    assert isinstance(outcome, AcceptedContact)
    assert outcome.amount == Decimal("-100")


def test_D05_month_13_rejects_the_contact_with_invalid_date() -> None:
    c = case("dates.json", "D05")
    outcome = screen_contact(
        {"nome": "Ana", "telefone": "11987654321", "data_vencimento": c["data_vencimento"]},
        index=2,
        template_type=TemplateType.UPCOMING,
    )
    assert isinstance(outcome, RejectedContact)
    assert (outcome.code, outcome.field) == ("invalid_date", "contacts[2].data_vencimento")


@pytest.mark.parametrize("case_id", ["P04", "P05"])
def test_invalid_phone_rejects_the_contact_alone(case_id: str) -> None:
    c = case("phones.json", case_id)
    outcome = screen_contact({"nome": "Ana", **c["given"]}, index=0, template_type=TemplateType.NOTIFICATION)
    assert isinstance(outcome, RejectedContact)
    assert outcome.code == c["expect"]["code"] == "invalid_phone"
    assert outcome.field == "contacts[0].telefone"


def test_accepted_contact_is_normalised() -> None:
    outcome = screen_contact(
        {
            "nome": " Maria\u0000 Souza ",
            "telefone": "0055 11 98765-4321",
            "valor": "R$ 1.234,56",
            "valor_total": 1234.56,
            "data_vencimento": "15/01/2025",
            "codigo": 42,
        },
        index=0,
        template_type=TemplateType.OVERDUE,
        required_variables={"nome_cliente", "valor", "dias_atraso"},
    )
    assert outcome == AcceptedContact(
        index=0,
        fields={
            "nome": "Maria Souza",
            "telefone": "0055 11 98765-4321",
            "valor": "R$ 1.234,56",
            "valor_total": "1234.56",
            "data_vencimento": "15/01/2025",
            "codigo": "42",
        },
        telefone="0055 11 98765-4321",
        phone="+5511987654321",
        gateway_number="5511987654321",
        amount=Decimal("1234.56"),
        amount_total=Decimal("1234.56"),
        due_date=date(2025, 1, 15),
    )


def test_derived_variable_needs_its_source_field() -> None:
    outcome = screen_contact(
        {"telefone": "11987654321"},
        index=0,
        template_type=TemplateType.NOTIFICATION,
        required_variables={"nome_cliente", "dias_atraso"},
    )
    assert isinstance(outcome, RejectedContact)
    assert outcome.details == {"names": ["dias_atraso", "nome_cliente"]}


@pytest.mark.parametrize(
    ("kind", "due", "code"),
    [
        (TemplateType.OVERDUE, "2025-01-21", "not_yet_due"),
        (TemplateType.UPCOMING, "2025-01-19", "already_due"),
    ],
)
def test_reminder_of_the_wrong_kind_for_its_due_date_is_rejected(
    kind: TemplateType, due: str, code: str
) -> None:
    outcome = screen_contact(
        {"nome": "Ana", "telefone": "11987654321", "valor": "10", "data_vencimento": due},
        index=3,
        template_type=kind,
        today=date(2025, 1, 20),
    )
    assert isinstance(outcome, RejectedContact)
    assert (outcome.code, outcome.field) == (code, "contacts[3].data_vencimento")


@pytest.mark.parametrize(
    ("kind", "due"), [(TemplateType.OVERDUE, "2025-01-20"), (TemplateType.UPCOMING, "2025-01-20")]
)
def test_an_invoice_due_today_is_both_overdue_and_upcoming_material(kind: TemplateType, due: str) -> None:
    outcome = screen_contact(
        {"nome": "Ana", "telefone": "11987654321", "valor": "10", "data_vencimento": due},
        index=0,
        template_type=kind,
        today=date(2025, 1, 20),
    )
    assert isinstance(outcome, AcceptedContact)


def test_missing_derived_variable_names_the_field_to_send() -> None:
    outcome = screen_contact(
        {"telefone": "11987654321"},
        index=1,
        template_type=TemplateType.NOTIFICATION,
        required_variables={"nome_cliente"},
    )
    assert isinstance(outcome, RejectedContact)
    assert (outcome.field, outcome.details) == ("contacts[1].nome", {"names": ["nome_cliente"]})


def test_contact_ids_are_uuid5_of_the_campaign_and_each_index() -> None:
    from uuid import UUID, uuid5

    from billing.domain.ingestion import contact_ids

    campaign_id = UUID("6f1c1d3e-2b7a-4c1e-9a57-0d6a2f4b8c90")
    ids = contact_ids(campaign_id, 1_001)
    assert ids == [uuid5(campaign_id, str(index)) for index in range(1_001)]
    assert ids[0] == UUID("ce03351a-2b46-5eb9-bb96-719d559976dc")  # the stdlib's uuid5 of this pair
    assert contact_ids(campaign_id, 0) == []
