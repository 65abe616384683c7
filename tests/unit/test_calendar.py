"""Business-hours calendar: cases of tests/cases/business_hours.json plus weekends, holidays, DST."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from billing.domain.calendar import (
    BusinessCalendar,
    HolidayRules,
    PolicyError,
    Window,
    default_calendar_spec,
    parse_calendar,
)
from billing.domain.errors import DomainError, InvalidValue
from tests.cases import load_cases

SP = ZoneInfo("America/Sao_Paulo")
REFERENCE_MONDAY = date(2025, 1, 6)  # not a holiday; the week 06..12 January 2025 has none
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
CASES = {case["id"]: case for case in load_cases("business_hours.json")}
COVERED = {"H01", "H02", "H03", "H04"}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def spec_of(case: dict[str, Any]) -> dict[str, object]:
    spec: dict[str, object] = {"windows": case["windows"]}
    if "tz" in case:
        spec["timezone"] = case["tz"]
    if "holidays" in case:
        spec["holidays"] = case["holidays"]
    return spec


def reference_instant(label: str) -> datetime:
    """'Mon 22:00' → that wall time in São Paulo during the reference week."""
    day, hhmm = label.split()
    hours, minutes = map(int, hhmm.split(":"))
    return datetime.combine(REFERENCE_MONDAY + timedelta(days=DAYS.index(day)), time(hours, minutes), SP)


def sp_calendar(windows: Mapping[str, object], **holidays: object) -> BusinessCalendar:
    return parse_calendar({"timezone": "America/Sao_Paulo", "windows": windows, "holidays": holidays})


def test_every_business_hours_case_has_a_test() -> None:
    assert set(CASES) == COVERED


# ------------------------------------------------------------------------------------------ shared cases


def test_H01_window_crossing_midnight_start_inclusive_end_exclusive() -> None:
    case = CASES["H01"]
    calendar = parse_calendar(spec_of(case))
    for label, expected in case["checks"]:
        assert calendar.is_open(reference_instant(label)) is expected, label


def test_H01_crossing_window_end_and_next_opening() -> None:
    calendar = parse_calendar(spec_of(CASES["H01"]))
    assert calendar.current_window_end(reference_instant("Mon 22:00")) == at("2025-01-07T08:00:00-03:00")
    assert calendar.current_window_end(reference_instant("Mon 12:00")) is None
    assert calendar.next_opening(reference_instant("Tue 08:00")) == at("2025-01-07T20:00:00-03:00")


def test_H02_window_with_start_equal_to_end_is_refused() -> None:
    case = CASES["H02"]
    assert case["expect"]["config_error"] is True
    with pytest.raises(PolicyError) as caught:
        parse_calendar(spec_of(case))
    assert caught.value.code == "invalid_policy"
    assert caught.value.field == "windows.mon[0]"
    assert isinstance(caught.value, DomainError)


def test_H02_window_object_refuses_start_equal_to_end() -> None:
    with pytest.raises(PolicyError):
        Window(time(22, 0), time(22, 0))


def test_H03_no_dst_since_2019_checks_in_utc() -> None:
    case = CASES["H03"]
    calendar = parse_calendar(spec_of(case))
    for instant, expected in case["checks_utc"]:
        assert calendar.is_open(at(instant.replace("Z", "+00:00"))) is expected, instant


def test_H04_black_awareness_day_is_a_holiday_from_2024() -> None:
    case = CASES["H04"]
    calendar = parse_calendar(spec_of(case))
    now = at(case["at"])
    assert case["expect"]["paused_reason"] == "outside_business_hours"
    assert calendar.is_open(now) is False
    assert calendar.next_opening(now) == at(case["expect"]["resume_at"])
    assert calendar.next_opening(now).utcoffset() == timedelta(hours=-3)
    assert calendar.is_open(at("2024-11-20T10:00:00-03:00")) is False


def test_H04_20_november_2023_was_a_working_day() -> None:
    rules = HolidayRules()
    assert rules.is_holiday(date(2024, 11, 20)) is True
    assert rules.is_holiday(date(2023, 11, 20)) is False
    calendar = parse_calendar(spec_of(CASES["H04"]))
    assert calendar.is_open(at("2023-11-20T10:00:00-03:00")) is True
    assert calendar.next_opening(at("2023-11-19T12:00:00-03:00")) == at("2023-11-20T08:00:00-03:00")


# ------------------------------------------------------------------------------------------ next opening


def test_open_instant_is_its_own_next_opening_in_the_tenant_zone() -> None:
    calendar = parse_calendar(default_calendar_spec())
    opening = calendar.next_opening(at("2025-01-06T13:00:00+00:00"))  # 10:00 local
    assert opening == at("2025-01-06T10:00:00-03:00")
    assert opening.tzinfo == SP
    assert calendar.current_window_end(opening) == at("2025-01-06T18:00:00-03:00")


def test_next_opening_across_the_weekend() -> None:
    calendar = sp_calendar({"mon-fri": [["08:00", "18:00"]]})
    assert calendar.next_opening(at("2025-01-10T18:00:00-03:00")) == at("2025-01-13T08:00:00-03:00")
    assert calendar.next_opening(at("2025-01-11T11:00:00-03:00")) == at("2025-01-13T08:00:00-03:00")
    assert calendar.next_opening(at("2025-01-13T07:59:59-03:00")) == at("2025-01-13T08:00:00-03:00")


def test_default_calendar_saturday_morning_then_monday() -> None:
    calendar = parse_calendar(default_calendar_spec())
    assert calendar.next_opening(at("2025-01-10T18:00:00-03:00")) == at("2025-01-11T08:00:00-03:00")
    assert calendar.is_open(at("2025-01-11T11:59:00-03:00")) is True
    assert calendar.is_open(at("2025-01-11T12:00:00-03:00")) is False
    assert calendar.next_opening(at("2025-01-11T12:00:00-03:00")) == at("2025-01-13T08:00:00-03:00")


def test_holiday_in_the_middle_of_the_week() -> None:
    calendar = parse_calendar(default_calendar_spec())
    # 2025-05-01 (Thursday) is Worker's Day.
    assert calendar.is_holiday(date(2025, 5, 1)) is True
    assert calendar.is_open(at("2025-05-01T10:00:00-03:00")) is False
    assert calendar.next_opening(at("2025-04-30T18:30:00-03:00")) == at("2025-05-02T08:00:00-03:00")


def test_next_opening_skips_consecutive_closed_days() -> None:
    # Christmas (national) on Thursday 2025-12-25 plus the tenant's own 24th and 26th.
    calendar = sp_calendar({"mon-fri": [["08:00", "18:00"]]}, extra_dates=["2025-12-24", "2025-12-26"])
    assert calendar.next_opening(at("2025-12-23T19:00:00-03:00")) == at("2025-12-29T08:00:00-03:00")


def test_several_windows_a_day_with_a_lunch_break() -> None:
    calendar = sp_calendar({"mon-fri": [["13:00", "18:00"], ["08:00", "12:00"]]})
    assert calendar.weekly[0] == (Window(time(8), time(12)), Window(time(13), time(18)))
    assert calendar.is_open(at("2025-01-06T12:30:00-03:00")) is False
    assert calendar.next_opening(at("2025-01-06T12:30:00-03:00")) == at("2025-01-06T13:00:00-03:00")
    assert calendar.current_window_end(at("2025-01-06T09:00:00-03:00")) == at("2025-01-06T12:00:00-03:00")


def test_touching_windows_are_allowed_and_reopen_at_once() -> None:
    calendar = sp_calendar({"mon": [["08:00", "12:00"], ["12:00", "18:00"]]})
    end = calendar.current_window_end(at("2025-01-06T11:00:00-03:00"))
    assert end == at("2025-01-06T12:00:00-03:00")
    assert calendar.is_open(end) is True
    assert calendar.next_opening(end) == end


def test_calendar_that_never_opens_raises() -> None:
    calendar = sp_calendar({})
    assert calendar.is_open(at("2025-01-06T10:00:00-03:00")) is False
    with pytest.raises(PolicyError) as caught:
        calendar.next_opening(at("2025-01-06T10:00:00-03:00"))
    assert caught.value.field == "windows"


def test_naive_datetimes_are_refused() -> None:
    calendar = parse_calendar(default_calendar_spec())
    with pytest.raises(InvalidValue):
        calendar.is_open(datetime(2025, 1, 6, 10, 0))
    with pytest.raises(InvalidValue):
        calendar.next_opening(datetime(2025, 1, 6, 10, 0))


# ------------------------------------------------------------------------------------------ midnight


def test_friday_night_window_still_open_saturday_early_morning() -> None:
    calendar = sp_calendar({"fri": [["22:00", "06:00"]]})
    assert calendar.is_open(at("2025-01-10T21:59:00-03:00")) is False
    assert calendar.next_opening(at("2025-01-10T21:59:00-03:00")) == at("2025-01-10T22:00:00-03:00")
    assert calendar.is_open(at("2025-01-11T02:00:00-03:00")) is True
    assert calendar.current_window_end(at("2025-01-11T02:00:00-03:00")) == at("2025-01-11T06:00:00-03:00")
    assert calendar.is_open(at("2025-01-11T06:00:00-03:00")) is False
    assert calendar.next_opening(at("2025-01-11T06:00:00-03:00")) == at("2025-01-17T22:00:00-03:00")


def test_holiday_closes_windows_starting_on_it_only() -> None:
    window = {"fri": [["22:00", "06:00"]]}
    saturday_off = sp_calendar(window, extra_dates=["2025-01-11"])
    assert saturday_off.is_open(at("2025-01-11T02:00:00-03:00")) is True
    friday_off = sp_calendar(window, extra_dates=["2025-01-10"])
    assert friday_off.is_open(at("2025-01-10T23:00:00-03:00")) is False
    assert friday_off.is_open(at("2025-01-11T02:00:00-03:00")) is False
    assert friday_off.next_opening(at("2025-01-10T23:00:00-03:00")) == at("2025-01-17T22:00:00-03:00")


def test_window_to_midnight_written_as_00_00() -> None:
    calendar = sp_calendar({"mon": [["20:00", "00:00"]]})
    assert calendar.is_open(at("2025-01-06T23:59:59-03:00")) is True
    assert calendar.is_open(at("2025-01-07T00:00:00-03:00")) is False
    assert calendar.current_window_end(at("2025-01-06T21:00:00-03:00")) == at("2025-01-07T00:00:00-03:00")


# ------------------------------------------------------------------------------------------ DST


def test_pre_2019_dst_gap_window_opening_at_missing_midnight() -> None:
    # 2018-11-04 00:00 -03:00 → 01:00 -02:00: 00:00..00:59 never happened in São Paulo.
    calendar = sp_calendar({"every_day": [["00:00", "06:00"]]})
    assert calendar.local_datetime(date(2018, 11, 4), time(0, 0)) == at("2018-11-04T01:00:00-02:00")
    assert calendar.local_datetime(date(2018, 11, 4), time(0, 30)) == at("2018-11-04T01:00:00-02:00")
    assert calendar.next_opening(at("2018-11-03T23:00:00-03:00")) == at("2018-11-04T01:00:00-02:00")
    assert calendar.is_open(at("2018-11-04T03:00:00+00:00")) is True
    assert calendar.current_window_end(at("2018-11-04T03:00:00+00:00")) == at("2018-11-04T06:00:00-02:00")
    assert calendar.is_open(at("2018-11-04T02:59:59+00:00")) is False  # 23:59:59 -03:00 on the 3rd


def test_pre_2019_dst_offsets_move_business_hours_in_utc() -> None:
    calendar = sp_calendar({"mon-fri": [["08:00", "18:00"]]})
    # Monday 2018-11-05 was on -02:00: 10:30Z is 08:30 local (open), unlike H03 in 2019.
    assert calendar.is_open(at("2018-11-05T10:30:00+00:00")) is True
    assert calendar.is_open(at("2018-11-05T09:59:00+00:00")) is False
    assert calendar.next_opening(at("2018-11-05T09:00:00+00:00")) == at("2018-11-05T10:00:00+00:00")
    assert calendar.next_opening(at("2018-11-05T09:00:00+00:00")).utcoffset() == timedelta(hours=-2)


def test_window_entirely_inside_a_dst_gap_does_not_happen_that_day() -> None:
    calendar = sp_calendar({"every_day": [["00:10", "00:40"]]})
    assert calendar.next_opening(at("2018-11-03T23:00:00-03:00")) == at("2018-11-05T00:10:00-02:00")


def test_pre_2019_dst_fold_uses_the_first_occurrence() -> None:
    # 2019-02-17 00:00 -02:00 → 2019-02-16 23:00 -03:00: 23:00..23:59 on the 16th (a Saturday) happened twice.
    calendar = sp_calendar({"sat": [["20:00", "23:30"]]})
    first = calendar.local_datetime(date(2019, 2, 16), time(23, 30))
    # PEP 495: an ambiguous local time never compares equal across zones, so compare in UTC.
    assert first.fold == 0
    assert first.astimezone(UTC) == at("2019-02-17T01:30:00+00:00")
    assert calendar.is_open(at("2019-02-17T01:15:00+00:00")) is True  # 23:15 -02:00, first time
    end = calendar.current_window_end(at("2019-02-17T01:15:00+00:00"))
    assert end is not None
    assert end.astimezone(UTC) == at("2019-02-17T01:30:00+00:00")
    assert calendar.is_open(at("2019-02-17T02:15:00+00:00")) is False  # 23:15 -03:00, second time


# ------------------------------------------------------------------------------------------ holidays


def test_optional_days_are_off_by_default_and_on_when_enabled() -> None:
    windows = {"mon-fri": [["08:00", "18:00"]]}
    plain = sp_calendar(windows)
    optional = sp_calendar(windows, include_optional=True)
    carnival_monday = at("2025-03-03T10:00:00-03:00")
    corpus_christi = at("2025-06-19T10:00:00-03:00")
    assert plain.is_open(carnival_monday) is True
    assert plain.is_open(corpus_christi) is True
    assert optional.is_open(carnival_monday) is False
    assert optional.is_open(corpus_christi) is False
    # Carnival Monday, Tuesday and Ash Wednesday are all optional days.
    assert optional.next_opening(carnival_monday) == at("2025-03-06T08:00:00-03:00")


def test_tenant_extra_dates_close_the_day() -> None:
    calendar = sp_calendar({"mon-fri": [["08:00", "18:00"]]}, extra_dates=["2025-01-08"])
    assert calendar.holidays.extra_dates == frozenset({date(2025, 1, 8)})
    assert calendar.is_open(at("2025-01-08T10:00:00-03:00")) is False
    assert calendar.next_opening(at("2025-01-08T10:00:00-03:00")) == at("2025-01-09T08:00:00-03:00")


def test_state_holidays_with_a_subdivision() -> None:
    # 9 July (Revolução Constitucionalista) is a São Paulo state holiday.
    national = sp_calendar({"mon-fri": [["08:00", "18:00"]]})
    sao_paulo = sp_calendar({"mon-fri": [["08:00", "18:00"]]}, subdivision="sp")
    assert sao_paulo.holidays.subdivision == "SP"
    assert national.is_open(at("2024-07-09T10:00:00-03:00")) is True
    assert sao_paulo.is_open(at("2024-07-09T10:00:00-03:00")) is False


# ------------------------------------------------------------------------------------------ parsing


def test_default_spec() -> None:
    spec = default_calendar_spec()
    assert spec == {
        "timezone": "America/Sao_Paulo",
        "windows": {"mon-fri": [["08:00", "18:00"]], "sat": [["08:00", "12:00"]]},
        "holidays": {"country": "BR", "subdivision": None, "include_optional": False, "extra_dates": []},
    }
    assert default_calendar_spec() is not spec
    calendar = parse_calendar(spec)
    weekday = (Window(time(8), time(18)),)
    assert calendar == BusinessCalendar(
        tz=SP,
        weekly={0: weekday, 1: weekday, 2: weekday, 3: weekday, 4: weekday, 5: (Window(time(8), time(12)),)},
        holidays=HolidayRules(),
    )
    assert calendar.weekly[6] == ()
    assert parse_calendar({}) == calendar
    assert hash(parse_calendar({})) == hash(calendar)


def test_day_keys_ranges_and_every_day() -> None:
    wrap = sp_calendar({"FRI-Mon": [["09:00", "10:00"]]})
    assert [d for d in range(7) if wrap.weekly[d]] == [0, 4, 5, 6]
    every = sp_calendar({"every_day": [["09:00", "10:00"]]})
    assert all(every.weekly[d] for d in range(7))


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"timezone": "America/Sao_Paolo"}, "timezone"),
        ({"timezone": "../etc/passwd"}, "timezone"),
        ({"timezone": 3}, "timezone"),
        ({"windows": {"mon": [["08:00", "12:00"], ["11:00", "13:00"]]}}, "windows.mon[1]"),
        (
            {"windows": {"mon-fri": [["08:00", "18:00"]], "wed": [["17:00", "19:00"]]}},
            "windows.wed[1]",
        ),
        ({"windows": {"mon": [["22:00", "06:00"]], "tue": [["05:00", "09:00"]]}}, "windows.tue[0]"),
        ({"windows": {"sun": [["22:00", "06:00"]], "mon": [["05:00", "09:00"]]}}, "windows.sun[0]"),
        ({"windows": {"mon": [["8:00", "12:00"]]}}, "windows.mon[0][0]"),
        ({"windows": {"mon": [["08:00", "24:00"]]}}, "windows.mon[0][1]"),
        ({"windows": {"mon": [["08:00"]]}}, "windows.mon[0]"),
        ({"windows": {"mon": "08:00-18:00"}}, "windows.mon"),
        ({"windows": {"funday": [["08:00", "18:00"]]}}, "windows.funday"),
        ({"windows": [["08:00", "18:00"]]}, "windows"),
        ({"holidays": {"country": "XX"}}, "holidays.country"),
        ({"holidays": {"country": "BR", "subdivision": "ZZ"}}, "holidays.subdivision"),
        ({"holidays": {"include_optional": "yes"}}, "holidays.include_optional"),
        ({"holidays": {"extra_dates": ["24/12/2025"]}}, "holidays.extra_dates[0]"),
        ({"holidays": {"extra_dates": ["2025-12-24", "2025-02-30"]}}, "holidays.extra_dates[1]"),
        ({"holidays": {"state": "SP"}}, "holidays.state"),
        ({"messages_per_minute": 20}, "messages_per_minute"),
    ],
)
def test_invalid_specs_name_the_field(spec: dict[str, object], field: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_calendar(spec)
    assert caught.value.field == field
    assert caught.value.code == "invalid_policy"


def test_constructor_checks_overlaps_and_weekdays() -> None:
    with pytest.raises(PolicyError) as caught:
        BusinessCalendar(tz=SP, weekly={0: (Window(time(8), time(12)), Window(time(9), time(10)))})
    assert caught.value.field == "windows.mon[1]"
    with pytest.raises(PolicyError):
        BusinessCalendar(tz=SP, weekly={7: (Window(time(8), time(12)),)})


def test_holiday_rules_combine_library_and_extra_dates() -> None:
    rules = HolidayRules(extra_dates=frozenset({date(2030, 1, 2)}))
    assert rules.is_holiday(date(2030, 1, 1)) is True
    assert rules.is_holiday(date(2030, 1, 2)) is True
    assert rules.is_holiday(date(2030, 1, 3)) is False
    assert HolidayRules() == HolidayRules(extra_dates=frozenset())
