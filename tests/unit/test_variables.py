"""Message variables at send time (cases D01–D03 through the variables) and variation rotation."""

from __future__ import annotations

import itertools
from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from billing.domain.variables import choose_variation, message_variables
from tests.cases import load_cases

DAY_CASES = [c for c in load_cases("dates.json") if "now_utc" in c]


@pytest.mark.parametrize("case", DAY_CASES, ids=[c["id"] for c in DAY_CASES])
def test_day_counts_use_the_tenant_local_date_at_send_time(case: dict) -> None:
    now = datetime.fromisoformat(case["now_utc"].replace("Z", "+00:00"))
    variables = message_variables(
        {"nome": "Ana"},
        amount=None,
        amount_total=None,
        due_date=date.fromisoformat(case["data_vencimento"]),
        now=now,
        tz=ZoneInfo(case["tz"]),
    )
    for name, expected in case["expect"].items():
        assert variables[name] == expected


def test_variables_format_money_and_dates_in_pt_br() -> None:
    variables = message_variables(
        {"nome": "Ana", "valor": "1234.56", "codigo": "X1"},
        amount=Decimal("1234.56"),
        amount_total=Decimal("1001"),
        due_date=date(2025, 1, 15),
        now=datetime.fromisoformat("2025-01-20T12:00:00+00:00"),
        tz=ZoneInfo("America/Sao_Paulo"),
    )
    assert variables == {
        "nome": "Ana",
        "nome_cliente": "Ana",
        "valor": "R$\u00a01.234,56",
        "valor_total": "R$\u00a01.001,00",
        "codigo": "X1",
        "data_vencimento": "15/01/2025",
        "dias_atraso": 5,
        "dias_para_vencer": 0,
        "vencida": True,
        "vence_hoje": False,
    }


def test_consecutive_messages_never_share_a_variation() -> None:
    chosen = [choose_variation(i, 3) for i in range(7)]
    assert chosen == [0, 1, 2, 0, 1, 2, 0]
    assert all(a != b for a, b in itertools.pairwise(chosen))
    assert [choose_variation(i, 1) for i in range(3)] == [0, 0, 0]


def test_T01_nome_cliente_comes_from_nome_and_nothing_is_escaped() -> None:
    from billing.domain.templating import parse_template

    case = next(c for c in load_cases("templates.json") if c["id"] == "T01")
    variables = message_variables(
        case["vars"],
        amount=None,
        amount_total=None,
        due_date=None,
        now=datetime.fromisoformat("2025-01-20T12:00:00+00:00"),
        tz=ZoneInfo("America/Sao_Paulo"),
    )
    assert parse_template(case["template"]).render(variables) == case["expect"]
