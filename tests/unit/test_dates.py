"""Due-date parsing, pt-BR rendering and the day counter (cases: tests/cases/dates.json)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from billing.domain.dates import DueDayCounts, count_days, format_date_br, parse_due_date
from billing.domain.errors import InvalidValue
from tests.cases import load_cases

CASES = {case["id"]: case for case in load_cases("dates.json")}
SAO_PAULO = ZoneInfo("America/Sao_Paulo")


def test_all_date_cases_are_covered() -> None:
    assert set(CASES) == {"D01", "D02", "D03", "D04", "D05", "D06"}


def _count(case: dict[str, object]) -> DueDayCounts:
    now = datetime.fromisoformat(str(case["now_utc"]))
    return count_days(parse_due_date(case["data_vencimento"]), now, ZoneInfo(str(case["tz"])))


def test_D01_today_is_the_tenant_local_date() -> None:
    counts = _count(CASES["D01"])
    assert counts.dias_atraso == CASES["D01"]["expect"]["dias_atraso"] == 5
    assert counts == DueDayCounts(dias_atraso=5, dias_para_vencer=0, vencida=True, vence_hoje=False)


def test_D02_due_today_in_local_time() -> None:
    counts = _count(CASES["D02"])
    expect = CASES["D02"]["expect"]
    assert counts.dias_atraso == expect["dias_atraso"] == 0
    assert counts.vence_hoje is expect["vence_hoje"] is True
    assert counts.vencida is expect["vencida"] is False
    assert counts.dias_para_vencer == 0


def test_D03_calendar_days_across_dst_start() -> None:
    counts = _count(CASES["D03"])
    assert counts.dias_atraso == CASES["D03"]["expect"]["dias_atraso"] == 6
    assert counts.vencida is True


@pytest.mark.parametrize(
    ("given", "expected"),
    list(zip(CASES["D04"]["data_vencimento"], CASES["D04"]["expect"], strict=True)),
    ids=repr,
)
def test_D04_day_first(given: str, expected: str) -> None:
    parsed = parse_due_date(given)
    assert parsed == date.fromisoformat(expected)
    assert format_date_br(parsed) == given


def test_D05_month_13_rejected() -> None:
    with pytest.raises(InvalidValue) as exc_info:
        parse_due_date(CASES["D05"]["data_vencimento"])
    assert exc_info.value.code == CASES["D05"]["expect"]["code"] == "invalid_date"
    assert exc_info.value.field == "data_vencimento"
    assert "data_vencimento" in exc_info.value.message


def test_D06_iso_goes_through_iso_parser() -> None:
    parsed = parse_due_date(CASES["D06"]["data_vencimento"])
    assert parsed == date.fromisoformat(CASES["D06"]["expect"]) == date(2024, 11, 6)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2/3/2021", date(2021, 3, 2)),
        ("02/3/2021", date(2021, 3, 2)),
        (" 29/02/2024 ", date(2024, 2, 29)),
        ("2024-02-29", date(2024, 2, 29)),
        ("\t2025-01-15 ", date(2025, 1, 15)),
        ("1900-01-01", date(1900, 1, 1)),
        ("31/12/2999", date(2999, 12, 31)),
        (date(2025, 1, 15), date(2025, 1, 15)),
    ],
    ids=repr,
)
def test_accepted_dates(given: object, expected: date) -> None:
    assert parse_due_date(given) == expected


@pytest.mark.parametrize(
    "given",
    [
        "",
        "abc",
        "29/02/2025",
        "31/04/2025",
        "00/01/2025",
        "2025-02-30",
        "2025-13-01",
        "2025-1-5",
        "20250115",
        "2025/01/15",
        "15-01-2025",
        "15.01.2025",
        "15/01/25",
        "015/01/2025",
        "2025-01-15T00:00:00",
        "\u0662\u0660\u0662\u0665-01-15",
        "01/01/1899",
        "01/01/3000",
        "0024-01-15",
        datetime(2025, 1, 15, tzinfo=UTC),
        20250115,
        None,
    ],
    ids=repr,
)
def test_rejected_dates(given: object) -> None:
    with pytest.raises(InvalidValue) as exc_info:
        parse_due_date(given, field="contacts[3].data_vencimento")
    assert exc_info.value.code == "invalid_date"
    assert exc_info.value.field == "contacts[3].data_vencimento"
    assert "contacts[3].data_vencimento" in exc_info.value.message


@pytest.mark.parametrize(
    ("d", "expected"),
    [(date(2025, 2, 3), "03/02/2025"), (date(2014, 12, 31), "31/12/2014"), (date(1900, 1, 1), "01/01/1900")],
    ids=repr,
)
def test_format_date_br(d: date, expected: str) -> None:
    assert format_date_br(d) == expected


def test_count_days_before_due() -> None:
    now = datetime(2025, 1, 10, 12, 0, tzinfo=SAO_PAULO)
    assert count_days(date(2025, 1, 15), now, SAO_PAULO) == DueDayCounts(
        dias_atraso=0, dias_para_vencer=5, vencida=False, vence_hoje=False
    )


def test_count_days_uses_tz_not_now_offset() -> None:
    # 2025-01-21 01:00 in UTC+3 is 2025-01-20 19:00 in São Paulo.
    now = datetime(2025, 1, 21, 1, 0, tzinfo=timezone(timedelta(hours=3)))
    assert count_days(date(2025, 1, 20), now, SAO_PAULO).vence_hoje is True


def test_count_days_across_dst_end() -> None:
    # DST ended 2019-02-17 00:00 (clocks back to 2019-02-16 23:00): 2019-02-16 had 25 hours.
    now = datetime(2019, 2, 18, 0, 30, tzinfo=SAO_PAULO)
    assert count_days(date(2019, 2, 16), now, SAO_PAULO).dias_atraso == 2


def test_count_days_refuses_naive_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        count_days(date(2025, 1, 15), datetime(2025, 1, 21, 2, 30), SAO_PAULO)


def test_due_day_counts_is_frozen() -> None:
    counts = DueDayCounts(dias_atraso=1, dias_para_vencer=0, vencida=True, vence_hoje=False)
    with pytest.raises(AttributeError):
        counts.dias_atraso = 2  # type: ignore[misc]
