"""Money: parse amounts sent by ERPs and render them as pt-BR Brazilian reais.

Amounts are always :class:`~decimal.Decimal` in reais (BRL), never binary floats.

Accepted input forms (see ``tests/cases/money.json``, M01–M04):

* JSON numbers: ``int`` and ``float`` (a float is converted through its shortest ``repr``, so ``1234.56``
  becomes ``Decimal("1234.56")``, not the binary value ``1234.55999999999994543031789362430572509765625``);
  ``Decimal`` is accepted as is. ``bool``, NaN and ±infinity are refused.
* Strings, optionally with ``R$``, spaces / no-break spaces anywhere, and one leading minus sign (before
  or after ``R$``):

  - plain integer: ``"1001"``;
  - dot decimal: ``"1234.56"``;
  - comma decimal (pt-BR): ``"1234,56"``;
  - pt-BR grouping: ``"1.234,56"``, ``"1.234.567"``, ``"1.234.567,89"`` (groups of exactly 3 digits).

Ambiguity rule (product decision M03): a string whose only separator is a single ``.`` or a single ``,``
with 1–3 digits before it and exactly 3 digits after it (``"1.234"``, ``"1,234"``) reads as a thousands
group in one convention and as 3 decimal places in the other. It is refused with code
``ambiguous_amount``, never guessed. ``"1234.567"`` is not ambiguous (4 digits before the dot cannot be a
pt-BR group) and parses as ``1234.567``.

English grouping (``"1,234.56"``) is not a pt-BR form and is refused as ``invalid_amount``; ERPs send a
plain number or the pt-BR form.

Decimal places: the parsed value is kept exactly as given (``1234567.891`` stays ``1234567.891``);
rounding to centavos happens only when rendering, with :func:`format_brl`.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext

from babel.numbers import format_currency

from billing.domain.errors import InvalidValue

__all__ = ["MAX_AMOUNT", "format_brl", "parse_amount", "require_cents", "require_positive"]

MAX_AMOUNT = Decimal(10) ** 12
"""Largest accepted absolute amount, in reais (R$ 1 trillion). Anything larger is an ERP bug."""

_MAX_STRING_LENGTH = 64
_CENT = Decimal("0.01")
# Enough precision to quantize any amount up to MAX_AMOUNT (and far beyond) without InvalidOperation.
_FORMAT_CONTEXT = Context(prec=60, rounding=ROUND_HALF_EVEN)
_CENTS_CONTEXT = Context(prec=60, rounding=ROUND_HALF_EVEN)  # require_cents' quantize (its own flags)

# re.ASCII: \d must not match other scripts' digits (e.g. Arabic-Indic "١٢٣").
# The string forms, tried in this order by ONE fullmatch (an alternation takes its first alternative that
# matches the whole string): plain integer, ambiguous (refused), dot decimal, comma decimal, pt-BR grouping.
_FORMS = re.compile(
    r"(?P<plain>\d+)"
    r"|(?P<ambiguous>\d{1,3}[.,]\d{3})"
    r"|(?P<dot>\d+\.\d+)"
    r"|(?P<comma>\d+,\d+)"
    r"|(?P<grouped>\d{1,3}(?:\.\d{3})+(?:,\d+)?)",
    re.ASCII,
)
# Spaces ERPs and spreadsheets put in amounts: space, tab, NBSP, figure space, narrow NBSP (deleted; one
# ``str.replace`` each: 5x faster than ``str.translate`` with a dict, which looks up every character).
_SPACES = (" ", "\t", "\u00a0", "\u2007", "\u202f")


def _invalid(field: str, value: object, reason: str) -> InvalidValue:
    return InvalidValue(
        f"{field}: {value!r} is not a valid amount ({reason})", code="invalid_amount", field=field
    )


def _check_range(amount: Decimal, field: str, value: object) -> Decimal:
    if not amount.is_finite():
        raise _invalid(field, value, "not a finite number")
    if amount.copy_abs() > MAX_AMOUNT:
        raise _invalid(field, value, f"larger than {MAX_AMOUNT}")
    return amount


def _parse_string(text: str, field: str) -> Decimal:
    if len(text) > _MAX_STRING_LENGTH:
        raise _invalid(field, text[:_MAX_STRING_LENGTH] + "…", "too long")
    body = text
    for space in _SPACES:
        body = body.replace(space, "")
    negative = False
    if body.startswith("-"):
        negative, body = True, body[1:]
    if body.startswith("R$"):
        body = body[2:]
    if not negative and body.startswith("-"):
        negative, body = True, body[1:]

    form = _FORMS.fullmatch(body)
    kind = form.lastgroup if form is not None else None
    if kind == "plain" or kind == "dot":
        digits = body
    elif kind == "ambiguous":
        raise InvalidValue(
            f"{field}: {text!r} is ambiguous (thousands separator or 3 decimal places?); "
            "send 1234.56 or 1.234,56",
            code="ambiguous_amount",
            field=field,
        )
    elif kind == "comma":
        digits = body.replace(",", ".")
    elif kind == "grouped":
        digits = body.replace(".", "").replace(",", ".")
    else:
        raise _invalid(field, text, "expected forms: 1234.56, 1234,56, 1.234,56 or R$ 1.234,56")
    amount = Decimal(digits)
    return amount.copy_negate() if negative else amount  # exact, whatever the decimal context


def parse_amount(value: object, *, field: str = "valor") -> Decimal:
    """Parse an ERP amount into a Decimal number of reais.

    Args:
        value: a JSON number (``int``/``float``), a ``Decimal`` or a string in one of the forms listed in
            the module docstring.
        field: input field name, used in error messages and ``InvalidValue.field``.

    Returns:
        The amount in reais, exactly as given (no rounding; sign kept: use :func:`require_positive` to
        refuse credits and zero). Floats go through ``repr`` (shortest round-tripping decimal form).

    Raises:
        InvalidValue: code ``ambiguous_amount`` for ``"1.234"`` / ``"1,234"`` (case M03); code
            ``invalid_amount`` for anything else that is not an amount (booleans, NaN, infinity, garbage
            strings, English grouping, absolute values above :data:`MAX_AMOUNT`).
    """
    if isinstance(value, bool):
        raise _invalid(field, value, "a boolean is not an amount")
    if isinstance(value, int):
        if abs(value) > MAX_AMOUNT:
            raise _invalid(field, value, f"larger than {MAX_AMOUNT}")
        return Decimal(value)
    if isinstance(value, float):
        # repr gives the shortest decimal literal that round-trips ('nan' and 'inf' included).
        return _check_range(Decimal(repr(value)), field, value)
    if isinstance(value, Decimal):
        return _check_range(value, field, value)
    if isinstance(value, str):
        return _check_range(_parse_string(value.strip(), field), field, value)
    raise _invalid(field, value, f"expected a number or a string, got {type(value).__name__}")


def format_brl(amount: Decimal) -> str:
    """Render an amount of reais as pt-BR currency text (CLDR), e.g. ``"R$\\u00a01.234,56"``.

    The amount is first rounded to centavos with ROUND_HALF_EVEN (banker's rounding: ``0,125 → 0,12``,
    ``0,135 → 0,14``). This is the rounding Babel itself applies under Python's default decimal context;
    doing it explicitly, in a local decimal context, makes the result independent of the caller's context.
    The text is then produced by ``babel.numbers.format_currency(…, "BRL", locale="pt_BR")``: ``R$``,
    a no-break space U+00A0, ``.`` thousands groups and ``,`` decimals. Negative amounts render as
    ``"-R$\\u00a0100,00"``; an amount that rounds to zero renders as ``"R$\\u00a00,00"`` (never ``-0,00``).

    Args:
        amount: finite Decimal, in reais.

    Returns:
        The formatted text.

    Raises:
        ValueError: if ``amount`` is not a finite Decimal (a programming error: amounts come from
            :func:`parse_amount`).
    """
    if not isinstance(amount, Decimal) or not amount.is_finite():
        raise ValueError(f"format_brl needs a finite Decimal, got {amount!r}")
    # Babel quantizes in the current decimal context: give it ours (local to this call and thread/task).
    with localcontext(_FORMAT_CONTEXT):
        cents = amount.quantize(_CENT)
        if cents.is_zero():
            cents = abs(cents)
        return format_currency(cents, "BRL", locale="pt_BR")


def require_positive(amount: Decimal, *, field: str) -> Decimal:
    """Refuse an amount that is zero or negative; return it unchanged otherwise.

    A credit or a zero total must not produce a "please pay" reminder (case M04).

    Args:
        amount: amount in reais, as returned by :func:`parse_amount`.
        field: input field name, used in the error.

    Returns:
        ``amount``, for chaining.

    Raises:
        InvalidValue: code ``non_positive_amount`` if ``amount <= 0``.
    """
    if not amount > 0:
        raise InvalidValue(
            f"{field}: amount must be greater than zero, got {amount}",
            code="non_positive_amount",
            field=field,
        )
    return amount


def require_cents(amount: Decimal, *, field: str) -> Decimal:
    """Refuse an amount with more than 2 decimal places (a fraction of a centavo); return it unchanged.

    Used at ingestion: an ERP amount is a whole number of centavos, so ``1e-400`` (which would render as
    ``R$ 0,00``) or ``0.001`` is an ERP bug, not something to round. Trailing zeros do not count
    (``1.500`` is ``1.50``). :func:`parse_amount` and :func:`format_brl` themselves keep and round any
    precision (case M02), this is the ingestion rule on top.

    Raises:
        InvalidValue: code ``invalid_amount`` naming the field.
    """
    # The context goes to quantize itself: the same precision as a ``localcontext``, without copying a
    # context per call (that copy was a third of the amount rules' cost at ingestion). Only its flags
    # change, which nothing reads.
    if amount != amount.quantize(_CENT, context=_CENTS_CONTEXT):
        raise InvalidValue(
            f"{field}: {amount} has more than 2 decimal places (amounts are whole centavos)",
            code="invalid_amount",
            field=field,
            details={"max_decimal_places": 2},
        )
    return amount
