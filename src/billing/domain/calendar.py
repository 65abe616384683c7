"""The business-hours calendar: weekly windows in the tenant's time zone, holidays, next opening.

Pure policy: no I/O and no clock reads. Every instant is passed in as a timezone-aware ``datetime``; every
instant returned is aware and expressed in the tenant's zone. Internally all comparisons are made in UTC,
because Python compares two datetimes that share a ``tzinfo`` by wall clock, ignoring ``fold``.

Rules (the "Business hours" section of ``issue 4`` and ``tests/cases/business_hours.json``):

- A :class:`Window` is a local wall-clock interval ``[start, end)``. ``end < start`` means the window crosses
  midnight; it belongs to the weekday on which it *starts* (H01). ``start == end`` is refused (H02).
- A holiday closes the windows that *start* on that date. A window that started the evening before a
  holiday and crosses midnight stays open until its end.
- Holidays come from the ``holidays`` library (national, plus a state when ``subdivision`` is given). Its
  Brazilian calendar puts Carnival, Ash Wednesday, Corpus Christi, Public Servant's Day, Christmas Eve and
  New Year's Eve in the ``optional`` category: they are holidays only with ``include_optional``. 20 November
  (Dia Nacional de Zumbi e da Consciência Negra) is a national holiday from 2024 on (Lei 14.759/2023); it
  was a working day nationally in 2023 (H04).
- Time zones come from the IANA database through :mod:`zoneinfo` (the ``tzdata`` package is a dependency),
  so the historical Brazilian daylight-saving rules (abolished in 2019) are applied to old dates (H03).

Daylight-saving gaps and folds. A window boundary is turned into an instant with
:meth:`BusinessCalendar.local_datetime`:

- in a fold (a wall time that happens twice) the *first* occurrence is used (``fold=0``);
- in a gap (a wall time that never happens, e.g. 2018-11-04 00:00 to 00:59 in São Paulo) the first valid
  instant after it is used, i.e. the instant of the transition (2018-11-04 01:00-02:00).

A window is therefore the interval of instants ``[local_datetime(start), local_datetime(end))``; it is
skipped for that day if the DST change leaves it empty (both ends inside the same gap). Note (PEP 495): a
returned datetime that falls in a fold never compares *equal* to a datetime of another zone; compare such
values after ``.astimezone(UTC)``.
"""

from __future__ import annotations

import itertools
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays as holidays_lib

from billing.domain.errors import DomainError, InvalidValue

__all__ = [
    "DAY_NAMES",
    "DEFAULT_TIMEZONE",
    "SEARCH_DAYS",
    "WINDOWS_FIELD",
    "BusinessCalendar",
    "HolidayRules",
    "PolicyError",
    "Window",
    "default_calendar_spec",
    "parse_calendar",
    "parse_zone",
]

DAY_NAMES: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
"""Short weekday names, index 0 = Monday (as :meth:`datetime.date.weekday`)."""

DEFAULT_TIMEZONE = "America/Sao_Paulo"
"""The time zone of a tenant that did not choose one."""

SEARCH_DAYS = 400
"""How many local days :meth:`BusinessCalendar.next_opening` looks ahead before giving up."""

WINDOWS_FIELD = "windows"
"""Prefix of the ``field`` named by errors about windows, e.g. ``"windows.mon[0]"``."""

_TIME_RE = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_SPEC_KEYS = frozenset({"timezone", "windows", "holidays"})
_HOLIDAY_KEYS = frozenset({"country", "subdivision", "include_optional", "extra_dates"})


class PolicyError(DomainError):
    """A tenant sending policy (calendar, throttle, retry limits) is invalid.

    ``field`` names the offending setting, e.g. ``"windows.mon[0]"``, ``"timezone"``,
    ``"holidays.subdivision"``, ``"messages_per_minute"``. The API answers it with 422.
    """

    code = "invalid_policy"


@dataclass(frozen=True)
class Window:
    """One opening interval of a weekday, in local wall-clock time.

    Attributes:
        start: local time the window opens (inclusive), naive ``datetime.time``.
        end: local time the window closes (exclusive). ``end < start`` means the window crosses midnight
            and ends on the next day; it still belongs to the weekday it starts on.

    Raises:
        PolicyError: ``start == end`` (ambiguous between always-open and always-closed, case H02), or a
            time carries a ``tzinfo`` (windows are wall-clock times of the calendar's zone).
    """

    start: time
    end: time

    def __post_init__(self) -> None:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise PolicyError("window times are local wall-clock times and must not carry a time zone")
        if self.start == self.end:
            raise PolicyError(
                f"window start equals its end ({self.start.strftime('%H:%M')}); "
                "a window must open and close at different times"
            )

    @property
    def crosses_midnight(self) -> bool:
        """True when the window ends on the day after the one it starts on (``end < start``)."""
        return self.end < self.start

    def minutes(self) -> tuple[float, float]:
        """The window as ``(start, end)`` minutes from the start of its own day; ``end`` may exceed 1440."""
        start = _minutes(self.start)
        end = _minutes(self.end)
        return start, end + 1440.0 if end < start else end


def _minutes(t: time) -> float:
    return t.hour * 60 + t.minute + t.second / 60 + t.microsecond / 60_000_000


# ---------------------------------------------------------------------------------------------- holidays


@lru_cache(maxsize=256)
def _check_holiday_source(country: str, subdivision: str | None) -> None:
    """Raise PolicyError if the ``holidays`` library does not know the country or subdivision."""
    try:
        holidays_lib.country_holidays(country, subdiv=subdivision, years=())
    except NotImplementedError as exc:
        if subdivision is not None:
            try:
                holidays_lib.country_holidays(country, years=())
            except NotImplementedError:
                pass
            else:
                raise PolicyError(
                    f"unknown subdivision {subdivision!r} of {country}", field="holidays.subdivision"
                ) from exc
        raise PolicyError(f"unknown holiday country {country!r}", field="holidays.country") from exc


@lru_cache(maxsize=4096)
def _library_holidays(
    country: str, subdivision: str | None, include_optional: bool, year: int
) -> frozenset[date]:
    """The dates the ``holidays`` library lists for one year (cached per rules and year)."""
    public = holidays_lib.country_holidays(country, subdiv=subdivision, years=year)
    dates = set(public.keys())
    if include_optional and "optional" in public.supported_categories:
        optional = holidays_lib.country_holidays(
            country, subdiv=subdivision, years=year, categories=("optional",)
        )
        dates.update(optional.keys())
    return frozenset(dates)


@dataclass(frozen=True)
class HolidayRules:
    """Which dates are holidays for a tenant.

    Attributes:
        country: ISO 3166-1 alpha-2 code understood by the ``holidays`` library (default ``"BR"``).
        subdivision: state code (``"SP"``, ``"RJ"``...) to add state holidays, or None for national only.
        include_optional: also treat the library's ``optional`` category as holidays (for Brazil: Carnival,
            Ash Wednesday, Corpus Christi, Public Servant's Day, Christmas Eve, New Year's Eve). Ignored for
            countries that have no such category.
        extra_dates: the tenant's own closed dates (local calendar dates).

    Raises:
        PolicyError: unknown country (``field="holidays.country"``) or subdivision
            (``field="holidays.subdivision"``), or an extra date that is not a ``date``.
    """

    country: str = "BR"
    subdivision: str | None = None
    include_optional: bool = False
    extra_dates: frozenset[date] = frozenset()

    def __post_init__(self) -> None:
        extra = frozenset(self.extra_dates)
        for day in extra:
            if isinstance(day, datetime) or not isinstance(day, date):
                raise PolicyError(f"extra date {day!r} is not a date", field="holidays.extra_dates")
        object.__setattr__(self, "extra_dates", extra)
        _check_holiday_source(self.country, self.subdivision)

    def is_holiday(self, day: date) -> bool:
        """True if ``day`` (a local calendar date) is a holiday under these rules."""
        if day in self.extra_dates:
            return True
        return day in _library_holidays(self.country, self.subdivision, self.include_optional, day.year)


# ---------------------------------------------------------------------------------------------- calendar


def _aware(at: datetime, name: str = "at") -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidValue(f"{name} must be a timezone-aware datetime", field=name)
    return at.astimezone(UTC)


def _weekly_field(weekday: int, index: int) -> str:
    return f"{WINDOWS_FIELD}.{DAY_NAMES[weekday]}[{index}]"


@dataclass(frozen=True)
class BusinessCalendar:
    """A tenant's sending hours: weekly windows in its zone, minus holidays.

    Attributes:
        tz: the tenant's IANA zone.
        weekly: windows per weekday, ``0`` = Monday … ``6`` = Sunday; missing days are closed. Normalised
            on construction to a read-only mapping with all seven days, windows sorted by start.
        holidays: the holiday rules; a holiday closes the windows that start on it.

    Raises:
        PolicyError: a weekday key outside 0..6 or a value that is not a :class:`Window`
            (``field="windows"``), or windows that overlap, on the same day or across midnight
            into the next day (``field="windows.<day>[<i>]"`` naming the later window).
    """

    tz: ZoneInfo
    weekly: Mapping[int, tuple[Window, ...]] = field(hash=False)
    holidays: HolidayRules = field(default_factory=HolidayRules)

    def __post_init__(self) -> None:
        if not isinstance(self.tz, ZoneInfo):
            raise PolicyError("tz must be a zoneinfo.ZoneInfo", field="timezone")
        days: dict[int, list[Window]] = {d: [] for d in range(7)}
        for key, windows in self.weekly.items():
            if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key <= 6:
                raise PolicyError(f"weekday {key!r} is not in 0..6 (0 = Monday)", field=WINDOWS_FIELD)
            for window in windows:
                if not isinstance(window, Window):
                    raise PolicyError(f"{window!r} is not a Window", field=WINDOWS_FIELD)
                days[key].append(window)
        normalised = {d: tuple(sorted(ws, key=lambda w: w.start)) for d, ws in days.items()}
        _check_overlaps(normalised)
        object.__setattr__(self, "weekly", types.MappingProxyType(normalised))

    # -- conversions ------------------------------------------------------------------------------------

    def local_date(self, at: datetime) -> date:
        """The tenant-local calendar date of the aware instant ``at``."""
        return _aware(at).astimezone(self.tz).date()

    def local_datetime(self, day: date, at_time: time) -> datetime:
        """The instant at which the tenant's wall clock reads ``at_time`` on ``day``, in the tenant zone.

        Folds (wall time happening twice): the first occurrence. Gaps (wall time skipped by a DST change):
        the first valid instant after it, which is the instant of the transition.
        """
        return self._instant(day, at_time).astimezone(self.tz)

    def _instant(self, day: date, at_time: time) -> datetime:
        naive = datetime.combine(day, at_time)
        first = naive.replace(tzinfo=self.tz, fold=0).astimezone(UTC)
        if first.astimezone(self.tz).replace(tzinfo=None) == naive:
            return first
        # In a gap: fold=0 used the offset before the transition (too late), fold=1 the offset after
        # (too early). Binary-search, to the microsecond, the first instant whose wall time is >= naive.
        lo = naive.replace(tzinfo=self.tz, fold=1).astimezone(UTC)
        hi = first
        if lo > hi:
            lo, hi = hi, lo
        step = timedelta(microseconds=1)
        while hi - lo > step:
            mid = lo + (hi - lo) // 2
            if mid.astimezone(self.tz).replace(tzinfo=None) >= naive:
                hi = mid
            else:
                lo = mid
        return hi

    # -- queries ----------------------------------------------------------------------------------------

    def is_holiday(self, day: date) -> bool:
        """True if the local date ``day`` is a holiday (library holidays or the tenant's extra dates)."""
        return self.holidays.is_holiday(day)

    def _intervals(self, day: date) -> list[tuple[datetime, datetime]]:
        """UTC ``[start, end)`` of the windows that start on local date ``day``, sorted; none on holidays."""
        windows = self.weekly[day.weekday()]
        if not windows or self.is_holiday(day):
            return []
        result = []
        for window in windows:
            start = self._instant(day, window.start)
            end = self._instant(day + timedelta(days=1) if window.crosses_midnight else day, window.end)
            if end > start:
                result.append((start, end))
        return result

    def _containing(self, at_utc: datetime) -> tuple[datetime, datetime] | None:
        today = at_utc.astimezone(self.tz).date()
        for day in (today - timedelta(days=1), today):
            for start, end in self._intervals(day):
                if start <= at_utc < end:
                    return start, end
        return None

    def is_open(self, at: datetime) -> bool:
        """True if sending is allowed at the aware instant ``at`` (inside a window that is not closed by a
        holiday). Start inclusive, end exclusive.

        Raises:
            InvalidValue: ``at`` is naive.
        """
        return self._containing(_aware(at)) is not None

    def current_window_end(self, at: datetime) -> datetime | None:
        """The instant (tenant zone) the window containing ``at`` closes, or None if closed at ``at``.

        Only the containing window is considered: when another window opens at that very instant
        (e.g. 08:00–12:00 then 12:00–18:00), ``next_opening`` of the returned instant is that instant.

        Raises:
            InvalidValue: ``at`` is naive.
        """
        found = self._containing(_aware(at))
        return None if found is None else found[1].astimezone(self.tz)

    def window_at(self, at: datetime) -> tuple[datetime, datetime] | None:
        """The business-hours window ``(start, end)`` (tenant zone, end exclusive) containing the aware
        instant ``at``, or None when closed at ``at`` (the auditor's "which window allowed this send").

        Raises:
            InvalidValue: ``at`` is naive.
        """
        found = self._containing(_aware(at))
        return None if found is None else (found[0].astimezone(self.tz), found[1].astimezone(self.tz))

    def next_opening(self, at: datetime) -> datetime:
        """The first instant at or after ``at`` at which sending is allowed, in the tenant zone.

        Returns ``at`` itself (converted to the tenant zone) when open; otherwise the start of the next
        window, skipping holidays. Looks ahead :data:`SEARCH_DAYS` local days.

        Raises:
            InvalidValue: ``at`` is naive.
            PolicyError: no window opens within :data:`SEARCH_DAYS` days (``field="windows"``).
        """
        at_utc = _aware(at)
        if self._containing(at_utc) is not None:
            return at_utc.astimezone(self.tz)
        if any(self.weekly.values()):
            today = at_utc.astimezone(self.tz).date()
            for offset in range(-1, SEARCH_DAYS + 1):
                for start, _end in self._intervals(today + timedelta(days=offset)):
                    if start > at_utc:
                        return start.astimezone(self.tz)
        raise PolicyError(
            f"the business-hours calendar never opens within {SEARCH_DAYS} days", field=WINDOWS_FIELD
        )


def _check_overlaps(weekly: Mapping[int, tuple[Window, ...]]) -> None:
    """Refuse overlapping windows on a circular week (a Sunday window crossing midnight meets Monday)."""
    week = 7 * 1440.0
    spans: list[tuple[float, float, int, int]] = []
    for day, windows in weekly.items():
        for index, window in enumerate(windows):
            start, end = window.minutes()
            spans.append((day * 1440 + start, day * 1440 + end, day, index))
    spans.sort()
    for (_s1, e1, d1, i1), (s2, _e2, d2, i2) in itertools.pairwise(spans):
        if e1 > s2:
            raise PolicyError(
                f"window {_weekly_field(d2, i2)} overlaps window {_weekly_field(d1, i1)}",
                field=_weekly_field(d2, i2),
            )
    if len(spans) > 1:
        _s_last, e_last, d_last, i_last = spans[-1]
        s_first, _e_first, d_first, i_first = spans[0]
        if e_last - week > s_first:
            raise PolicyError(
                f"window {_weekly_field(d_last, i_last)} overlaps window {_weekly_field(d_first, i_first)}",
                field=_weekly_field(d_last, i_last),
            )


# ---------------------------------------------------------------------------------------------- parsing


def default_calendar_spec() -> dict[str, object]:
    """The default calendar spec (a fresh dict, JSON-like, accepted by :func:`parse_calendar`):
    ``America/Sao_Paulo``, Monday to Friday 08:00–18:00, Saturday 08:00–12:00, Brazilian national
    holidays without the optional days (issue 4, "Tenant sending policy")."""
    return {
        "timezone": DEFAULT_TIMEZONE,
        "windows": {"mon-fri": [["08:00", "18:00"]], "sat": [["08:00", "12:00"]]},
        "holidays": {"country": "BR", "subdivision": None, "include_optional": False, "extra_dates": []},
    }


def _day_key(key: str, field_name: str) -> list[int]:
    name = key.strip().lower()
    if name in ("every_day", "everyday", "daily"):
        return list(range(7))
    if name in DAY_NAMES:
        return [DAY_NAMES.index(name)]
    first, sep, last = name.partition("-")
    if sep and first.strip() in DAY_NAMES and last.strip() in DAY_NAMES:
        a, b = DAY_NAMES.index(first.strip()), DAY_NAMES.index(last.strip())
        return [(a + i) % 7 for i in range((b - a) % 7 + 1)]
    raise PolicyError(
        f"unknown day {key!r}: use mon..sun, a range such as mon-fri, or every_day", field=field_name
    )


def _parse_time(value: object, field_name: str) -> time:
    if not isinstance(value, str) or not _TIME_RE.fullmatch(value.strip()):
        raise PolicyError(f"{value!r} is not a time of day in HH:MM (00:00..23:59)", field=field_name)
    hours, minutes = value.strip().split(":")
    return time(int(hours), int(minutes))


def _parse_windows(raw: object) -> dict[int, list[Window]]:
    if not isinstance(raw, Mapping):
        raise PolicyError("windows must be an object of day -> [[start, end], ...]", field=WINDOWS_FIELD)
    weekly: dict[int, list[Window]] = {}
    for key, value in raw.items():
        key_field = f"{WINDOWS_FIELD}.{key}"
        if not isinstance(key, str):
            raise PolicyError(f"day key {key!r} is not a string", field=key_field)
        days = _day_key(key, key_field)
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise PolicyError("expected a list of [start, end] pairs", field=key_field)
        for index, pair in enumerate(value):
            pair_field = f"{key_field}[{index}]"
            if isinstance(pair, str | bytes) or not isinstance(pair, Sequence) or len(pair) != 2:
                raise PolicyError(f"{pair!r} is not a [start, end] pair", field=pair_field)
            start = _parse_time(pair[0], f"{pair_field}[0]")
            end = _parse_time(pair[1], f"{pair_field}[1]")
            try:
                window = Window(start, end)
            except PolicyError as exc:
                raise PolicyError(exc.message, field=pair_field) from exc
            for day in days:
                weekly.setdefault(day, []).append(window)
    return weekly


def _parse_holidays(raw: object) -> HolidayRules:
    if not isinstance(raw, Mapping):
        raise PolicyError("holidays must be an object", field="holidays")
    unknown = sorted(str(k) for k in raw if k not in _HOLIDAY_KEYS)
    if unknown:
        raise PolicyError(f"unknown holiday setting {unknown[0]!r}", field=f"holidays.{unknown[0]}")
    country = raw.get("country", "BR")
    if not isinstance(country, str) or not country.strip():
        raise PolicyError("country must be a country code such as 'BR'", field="holidays.country")
    subdivision = raw.get("subdivision")
    if subdivision is not None and (not isinstance(subdivision, str) or not subdivision.strip()):
        raise PolicyError(
            "subdivision must be a state code such as 'SP', or null", field="holidays.subdivision"
        )
    include_optional = raw.get("include_optional", False)
    if not isinstance(include_optional, bool):
        raise PolicyError("include_optional must be true or false", field="holidays.include_optional")
    extra_raw = raw.get("extra_dates", [])
    if isinstance(extra_raw, str | bytes) or not isinstance(extra_raw, Sequence):
        raise PolicyError("extra_dates must be a list of YYYY-MM-DD dates", field="holidays.extra_dates")
    extra: set[date] = set()
    for index, item in enumerate(extra_raw):
        item_field = f"holidays.extra_dates[{index}]"
        if not isinstance(item, str) or not _DATE_RE.fullmatch(item.strip()):
            raise PolicyError(f"{item!r} is not a YYYY-MM-DD date", field=item_field)
        try:
            extra.add(date.fromisoformat(item.strip()))
        except ValueError as exc:
            raise PolicyError(f"{item!r} is not a valid date", field=item_field) from exc
    sub = subdivision.strip() if isinstance(subdivision, str) else None
    if sub is not None and len(sub) <= 3:  # state codes are upper case; long names are kept as written
        sub = sub.upper()
    return HolidayRules(
        country=country.strip().upper(),
        subdivision=sub,
        include_optional=include_optional,
        extra_dates=frozenset(extra),
    )


def parse_zone(name: object) -> ZoneInfo:
    """The :class:`ZoneInfo` for an IANA zone name such as ``"America/Sao_Paulo"``.

    Raises:
        PolicyError: not a string, or not a zone of the IANA database (``field="timezone"``).
    """
    if not isinstance(name, str) or not name.strip():
        raise PolicyError("timezone must be an IANA zone name such as 'America/Sao_Paulo'", field="timezone")
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise PolicyError(f"unknown time zone {name!r}", field="timezone") from exc


def parse_calendar(spec: Mapping[str, object]) -> BusinessCalendar:
    """Build a :class:`BusinessCalendar` from a JSON-like spec, validating every field.

    Shape (each key optional; a missing key takes its value from :func:`default_calendar_spec`)::

        {"timezone": "America/Sao_Paulo",
         "windows": {"mon-fri": [["08:00", "18:00"]], "sat": [["08:00", "12:00"]]},
         "holidays": {"country": "BR", "subdivision": null, "include_optional": false,
                      "extra_dates": ["2025-12-24"]}}

    Window keys: ``mon`` … ``sun``, ranges such as ``mon-fri`` (wrapping ranges such as ``fri-mon`` allowed)
    and ``every_day``; case-insensitive. Keys that name the same day add their windows together. A day
    absent from ``windows`` (or with an empty list) is closed. Times are ``"HH:MM"`` local wall-clock;
    ``["20:00", "08:00"]`` crosses midnight, ``["20:00", "00:00"]`` runs to midnight.

    Raises:
        PolicyError: with ``field`` naming the culprit: ``"timezone"``; ``"windows.<key>"`` for an
            unknown day key, ``"windows.<key>[i]"`` for a bad or empty (start = end) window,
            ``"windows.<key>[i][0|1]"`` for a bad time, ``"windows.<day>[i]"`` for
            overlapping windows (``i`` counts that day's windows sorted by start); ``"holidays.<setting>"``
            or ``"holidays.extra_dates[i]"``; or the name of an unknown top-level key.
    """
    if not isinstance(spec, Mapping):
        raise PolicyError("the calendar spec must be an object", field=WINDOWS_FIELD)
    unknown = sorted(str(k) for k in spec if k not in _SPEC_KEYS)
    if unknown:
        raise PolicyError(f"unknown calendar setting {unknown[0]!r}", field=unknown[0])
    defaults = default_calendar_spec()
    tz = parse_zone(spec.get("timezone", defaults["timezone"]))
    weekly = _parse_windows(spec.get("windows", defaults["windows"]))
    rules = _parse_holidays(spec.get("holidays", defaults["holidays"]))
    return BusinessCalendar(tz=tz, weekly={d: tuple(ws) for d, ws in weekly.items()}, holidays=rules)
