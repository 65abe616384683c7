"""Money parsing and pt-BR formatting (cases: tests/cases/money.json)."""

from __future__ import annotations

import re
from decimal import Decimal, localcontext

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.domain.errors import InvalidValue
from billing.domain.money import _FORMS, format_brl, parse_amount, require_positive
from tests.cases import load_cases

CASES = {case["id"]: case for case in load_cases("money.json")}
NBSP = "\u00a0"


def test_all_money_cases_are_covered() -> None:
    assert set(CASES) == {"M01", "M02", "M03", "M04"}


@pytest.mark.parametrize("given", CASES["M01"]["given"], ids=repr)
def test_M01_amount_forms(given: object) -> None:
    expect = CASES["M01"]["expect"]
    amount = parse_amount(given)
    assert isinstance(amount, Decimal)
    assert amount == Decimal(expect["amount"])
    assert str(amount) == "1234.56"
    assert format_brl(amount) == expect["valor"] == f"R${NBSP}1.234,56"


@pytest.mark.parametrize(
    ("given", "expected"), list(zip(CASES["M02"]["given"], CASES["M02"]["expect"], strict=True)), ids=repr
)
def test_M02_formatting(given: object, expected: str) -> None:
    assert format_brl(parse_amount(given)) == expected


def test_M02_parse_keeps_given_digits() -> None:
    assert str(parse_amount(1234567.891)) == "1234567.891"
    assert str(parse_amount("1001")) == "1001"


def test_M03_ambiguous_amount_rejected() -> None:
    case = CASES["M03"]
    with pytest.raises(InvalidValue) as exc_info:
        parse_amount(case["given"])
    assert exc_info.value.code == case["expect"]["code"] == "ambiguous_amount"
    assert exc_info.value.field == "valor"
    assert "valor" in exc_info.value.message


def test_M04_non_positive_amount_rejected() -> None:
    case = CASES["M04"]
    amount = parse_amount(case["given"])
    assert amount == Decimal(-100)
    assert format_brl(amount) == f"-R${NBSP}100,00"
    with pytest.raises(InvalidValue) as exc_info:
        require_positive(amount, field="valor")
    assert exc_info.value.code == case["expect"]["code"] == "non_positive_amount"
    assert exc_info.value.field == "valor"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("1,234", "ambiguous_amount"),
        ("R$ 1.234", "ambiguous_amount"),
        ("-1.234", "ambiguous_amount"),
        ("999,999", "ambiguous_amount"),
        ("", "invalid_amount"),
        ("R$", "invalid_amount"),
        ("abc", "invalid_amount"),
        ("1,234.56", "invalid_amount"),
        ("1.234.56", "invalid_amount"),
        ("12.34.567", "invalid_amount"),
        ("1234.", "invalid_amount"),
        (".50", "invalid_amount"),
        ("1e3", "invalid_amount"),
        ("--5", "invalid_amount"),
        ("+5", "invalid_amount"),
        ("NaN", "invalid_amount"),
        ("١٢٣", "invalid_amount"),
        (True, "invalid_amount"),
        (None, "invalid_amount"),
        ([1], "invalid_amount"),
        (float("nan"), "invalid_amount"),
        (float("inf"), "invalid_amount"),
        (Decimal("NaN"), "invalid_amount"),
        (10**12 + 1, "invalid_amount"),
        ("1000000000000,01", "invalid_amount"),
        (1e13, "invalid_amount"),
        ("9" * 100, "invalid_amount"),
    ],
    ids=repr,
)
def test_rejected_amounts(given: object, expected: str) -> None:
    with pytest.raises(InvalidValue) as exc_info:
        parse_amount(given, field="contacts[0].valor")
    assert exc_info.value.code == expected
    assert exc_info.value.field == "contacts[0].valor"
    assert "contacts[0].valor" in exc_info.value.message


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (0, "0"),
        (100, "100"),
        (0.1, "0.1"),
        (Decimal("12.5"), "12.5"),
        ("  1001  ", "1001"),
        ("1.5", "1.5"),
        ("1234.567", "1234.567"),
        ("1234,567", "1234.567"),
        ("0,5", "0.5"),
        ("1.234.567", "1234567"),
        ("1.234.567,891", "1234567.891"),
        ("R$\u00a01.234,56", "1234.56"),
        ("R$ 1 234,56", "1234.56"),
        ("-R$ 100,00", "-100.00"),
        ("R$ -100,00", "-100.00"),
        ("-1234.56", "-1234.56"),
        ("1000000000000", "1000000000000"),
    ],
    ids=repr,
)
def test_accepted_amounts(given: object, expected: str) -> None:
    assert str(parse_amount(given)) == expected


@pytest.mark.parametrize(
    ("amount", "expected"),
    [
        ("0.125", f"R${NBSP}0,12"),
        ("0.135", f"R${NBSP}0,14"),
        ("0.005", f"R${NBSP}0,00"),
        ("-0.001", f"R${NBSP}0,00"),
        ("0", f"R${NBSP}0,00"),
        ("1000000000000", f"R${NBSP}1.000.000.000.000,00"),
    ],
    ids=repr,
)
def test_format_brl_rounds_half_even(amount: str, expected: str) -> None:
    assert format_brl(Decimal(amount)) == expected


def test_format_brl_ignores_caller_decimal_context() -> None:
    with localcontext() as ctx:
        ctx.prec = 3
        assert format_brl(Decimal("1234567.891")) == f"R${NBSP}1.234.567,89"


@pytest.mark.parametrize("bad", [Decimal("NaN"), Decimal("Infinity"), 1.5])
def test_format_brl_refuses_non_finite(bad: object) -> None:
    with pytest.raises(ValueError):
        format_brl(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("amount", ["0", "-0", "-0.01"])
def test_require_positive_refuses(amount: str) -> None:
    with pytest.raises(InvalidValue) as exc_info:
        require_positive(Decimal(amount), field="valor_total")
    assert exc_info.value.code == "non_positive_amount"
    assert exc_info.value.field == "valor_total"
    assert "valor_total" in exc_info.value.message


def test_require_positive_returns_amount() -> None:
    assert require_positive(Decimal("0.01"), field="valor") == Decimal("0.01")


def test_parse_amount_ignores_caller_decimal_context() -> None:
    with localcontext() as ctx:
        ctx.prec = 3
        assert str(parse_amount("-R$ 1.234.567,89")) == "-1234567.89"


SEPARATE_FORMS = [  # the string forms as separate patterns, in the order the module docstring gives
    ("plain", re.compile(r"\d+", re.ASCII)),
    ("ambiguous", re.compile(r"\d{1,3}[.,]\d{3}", re.ASCII)),
    ("dot", re.compile(r"\d+\.\d+", re.ASCII)),
    ("comma", re.compile(r"\d+,\d+", re.ASCII)),
    ("grouped", re.compile(r"\d{1,3}(?:\.\d{3})+(?:,\d+)?", re.ASCII)),
]


@settings(max_examples=3000, deadline=None)
@given(body=st.text(alphabet="0123456789.,١", max_size=14))
def test_one_fullmatch_names_the_first_form_that_matches_the_whole_string(body: str) -> None:
    first = next((name for name, pattern in SEPARATE_FORMS if pattern.fullmatch(body)), None)
    form = _FORMS.fullmatch(body)
    assert (form.lastgroup if form else None) == first
