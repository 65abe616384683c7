"""Due dates: strict parsing, pt-BR rendering and the day counter.

Cases: ``tests/cases/dates.json`` (D01–D06).

Parsing accepts exactly two shapes and never guesses between them or beyond them:

* ISO 8601 calendar date ``aaaa-mm-dd`` (exactly ``\\d{4}-\\d{2}-\\d{2}``), read by
  :meth:`datetime.date.fromisoformat` (D06: ``2024-11-06`` is 6 November, never 11 June);
* Brazilian ``dd/mm/aaaa``, strictly day-first (D04, D05). Decision: a one-digit day or month
  (``2/3/2021``) is accepted as well, because spreadsheet exports drop leading zeros and the order is
  day-first either way; the year must have 4 digits. ``02/13/2025`` is refused (month 13), never read as
  month-first.

Decision: years outside 1900–2999 are refused as ``invalid_date`` (a due date in year 0024 is a
truncated or two-digit year from the ERP, not a date to count days from).

Day counting (D01–D03, DESIGN.md "Template variables"): days are counted in the tenant's time zone, as
the difference between two calendar dates (today's local date and the due date), never as elapsed hours
divided by 24 — so DST changes and days without a local midnight (Brazil 2018-11-04) do not matter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

from billing.domain.errors import InvalidValue

__all__ = ["DueDayCounts", "count_days", "format_date_br", "parse_due_date", "require_due_window"]

DUE_YEARS_BACK = 5
DUE_YEARS_AHEAD = 2
"""Window of a due date at ingestion, relative to the tenant's local date then: at most 5 years past
(older debts are outside any dunning practice and typically time-barred: Código Civil art. 206 §5 I gives
five years for debts in a written instrument) and at most 2 years ahead (an "upcoming" reminder further
out is an ERP bug such as a wrong year)."""

_MIN_YEAR = 1900
_MAX_YEAR = 2999
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_BR = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})", re.ASCII)


def _invalid(field: str, value: object, reason: str) -> InvalidValue:
    return InvalidValue(
        f"{field}: {value!r} is not a valid date ({reason})", code="invalid_date", field=field
    )


def parse_due_date(value: object, *, field: str = "data_vencimento") -> date:
    """Parse a due date sent by an ERP.

    Args:
        value: a string ``aaaa-mm-dd`` (ISO) or ``dd/mm/aaaa`` (day-first; one-digit day/month allowed),
            surrounding whitespace ignored; or a :class:`datetime.date` (not a ``datetime``), returned
            as is.
        field: input field name, used in error messages and ``InvalidValue.field``.

    Returns:
        The calendar date.

    Raises:
        InvalidValue: code ``invalid_date`` for any other shape, impossible dates (``31/02/2025``,
            month 13), years outside 1900–2999, datetimes and non-string values.
    """
    if isinstance(value, datetime):
        raise _invalid(field, value, "a date and time is not a calendar date")
    if isinstance(value, date):
        parsed = value
    elif isinstance(value, str):
        parsed = _parse_string(value.strip(), field)
    else:
        raise _invalid(field, value, f"expected a string, got {type(value).__name__}")
    if not _MIN_YEAR <= parsed.year <= _MAX_YEAR:
        raise _invalid(field, value, f"year must be between {_MIN_YEAR} and {_MAX_YEAR}")
    return parsed


def _parse_string(text: str, field: str) -> date:
    if _ISO.fullmatch(text):
        try:
            return date.fromisoformat(text)
        except ValueError as exc:
            raise _invalid(field, text, "no such day") from exc
    match = _BR.fullmatch(text)
    if match:
        day, month, year = (int(part) for part in match.groups())
        try:
            return date(year, month, day)
        except ValueError as exc:
            raise _invalid(field, text, "no such day; dd/mm/aaaa is read day-first") from exc
    raise _invalid(field, text, "expected aaaa-mm-dd or dd/mm/aaaa")


def _years_from(day: date, years: int) -> date:
    """``day`` moved by whole years; 29 February becomes 28 February in a common year."""
    try:
        return day.replace(year=day.year + years)
    except ValueError:
        return day.replace(year=day.year + years, day=28)


def require_due_window(due: date, today: date, *, field: str = "data_vencimento") -> date:
    """Refuse a due date outside ``[today - 5 years, today + 2 years]`` (:data:`DUE_YEARS_BACK`,
    :data:`DUE_YEARS_AHEAD`); return it unchanged otherwise.

    Args:
        due: the parsed due date.
        today: the tenant's local date at ingestion (passed in: this module reads no clock).

    Raises:
        InvalidValue: code ``due_date_out_of_range`` naming the field, with ``details`` ``earliest`` and
            ``latest`` (ISO dates).
    """
    earliest, latest = _years_from(today, -DUE_YEARS_BACK), _years_from(today, DUE_YEARS_AHEAD)
    if not earliest <= due <= latest:
        raise InvalidValue(
            f"{field}: {due.isoformat()} is outside {earliest.isoformat()} .. {latest.isoformat()} "
            f"({DUE_YEARS_BACK} years back, {DUE_YEARS_AHEAD} ahead)",
            code="due_date_out_of_range",
            field=field,
            details={"earliest": earliest.isoformat(), "latest": latest.isoformat()},
        )
    return due


def format_date_br(d: date) -> str:
    """Render a date as Brazilian ``dd/mm/aaaa`` (zero-padded): ``date(2025, 2, 3)`` → ``"03/02/2025"``."""
    return f"{d.day:02d}/{d.month:02d}/{d.year:04d}"


@dataclass(frozen=True)
class DueDayCounts:
    """Whole-day counts of a due date relative to "today" in the tenant's time zone.

    Attributes:
        dias_atraso: whole days past due (0 if not overdue).
        dias_para_vencer: whole days until due (0 if due today or overdue).
        vencida: True if today is after the due date.
        vence_hoje: True if today is the due date.
    """

    dias_atraso: int
    dias_para_vencer: int
    vencida: bool
    vence_hoje: bool


def count_days(due: date, now: datetime, tz: ZoneInfo) -> DueDayCounts:
    """Count days between ``due`` and today's date in ``tz``.

    ``today = now.astimezone(tz).date()``; the counts are calendar-date differences
    (``(today - due).days``), so 23:30 on the 20th in São Paulo is still the 20th even though it is the
    21st in UTC (D01, D02), and DST transitions do not shift the count (D03).

    Args:
        due: the due date.
        now: the current instant; must be timezone-aware (pass the clock's value, this module reads none).
        tz: the tenant's time zone, e.g. ``ZoneInfo("America/Sao_Paulo")``.

    Returns:
        The :class:`DueDayCounts`.

    Raises:
        ValueError: if ``now`` is naive (no tzinfo or no UTC offset).
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("count_days needs a timezone-aware 'now'")
    today = now.astimezone(tz).date()
    diff = (today - due).days
    return DueDayCounts(
        dias_atraso=max(0, diff),
        dias_para_vencer=max(0, -diff),
        vencida=diff > 0,
        vence_hoje=diff == 0,
    )
