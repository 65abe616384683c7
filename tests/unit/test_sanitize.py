"""Text sanitising for message values."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.domain.sanitize import sanitize_text

ZWJ = "\u200d"
SCOTLAND = "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"
FAMILY = f"\U0001f468{ZWJ}\U0001f469{ZWJ}\U0001f467"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ""),
        ("", ""),
        ("  Maria da Silva  ", "Maria da Silva"),
        (Decimal("1234.56"), "1234.56"),
        (42, "42"),
        ("Jose\u0301", "José"),  # NFC
        ("Jos\u200be\u0301", "José"),  # composes once the zero-width space is gone
        ("linha 1\nlinha 2\tfim", "linha 1\nlinha 2\tfim"),
        ("a\r\nb\rc\u2028d\u2029e", "a\nb\nc\nd\ne"),
        ("a\x00b\x07c\x1bd\x7fe\x85f", "abcdef"),
        ("\u202eevil\u202c", "evil"),  # bidi override
        ("\u2066x\u2069", "x"),  # bidi isolate
        ("\u200e\u200fa\u200b\u200c\u2060\ufeffb\u00ad", "ab"),
        (FAMILY, FAMILY),  # ZWJ kept
        ("\u2764\ufe0f", "\u2764\ufe0f"),  # variation selector kept
        (SCOTLAND, "\U0001f3f4"),  # emoji tag characters dropped
        ("a\ud800b", "ab"),  # lone surrogate
        (b"Jo\xc3\xa3o", "João"),
        (b"x\xffy", "x\ufffdy"),
        ("\u00a0 nome \u00a0", "nome"),
        ("\x00  \u200b", ""),
    ],
    ids=repr,
)
def test_sanitize_text(value: object, expected: str) -> None:
    result = sanitize_text(value)
    assert result == expected
    result.encode("utf-8")  # always encodable


@pytest.mark.parametrize(
    ("value", "max_length", "expected"),
    [
        ("abcdef", 3, "abc"),
        ("abc", 3, "abc"),
        ("abc", 0, ""),
        ("ab cd", 3, "ab"),  # no trailing space at the cut
        (f"a{FAMILY}", 3, "a\U0001f468"),  # dangling ZWJ removed
        ("ção" * 300, 500, ("ção" * 300)[:500]),
        ("\U0001f600" * 10, 4, "\U0001f600" * 4),  # counts code points, not UTF-16 units
    ],
    ids=repr,
)
def test_sanitize_text_truncates(value: str, max_length: int, expected: str) -> None:
    result = sanitize_text(value, max_length=max_length)
    assert result == expected
    assert len(result) <= max_length


def test_sanitize_text_default_max_length_is_500() -> None:
    assert len(sanitize_text("x" * 1000)) == 500


def test_sanitize_text_refuses_negative_max_length() -> None:
    with pytest.raises(ValueError, match="max_length"):
        sanitize_text("x", max_length=-1)
