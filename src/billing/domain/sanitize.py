"""Text sanitising for values that end up inside WhatsApp messages (names, descriptions, free fields).

Rules of :func:`sanitize_text` (Unicode categories from the Unicode Character Database, UAX #44; NFC
from UAX #15; bidi controls from UAX #9):

1. ``None`` → ``""``; ``bytes`` are decoded as UTF-8 (invalid sequences → U+FFFD); any other value →
   ``str(value)`` (``Decimal("1234.56")`` → ``"1234.56"``, ``42`` → ``"42"``).
2. Line breaks are unified: ``\\r\\n``, ``\\r``, U+2028 LINE SEPARATOR and U+2029 PARAGRAPH SEPARATOR
   become ``\\n``.
3. Removed: control characters (category Cc) except ``\\n`` and ``\\t``; format characters (category
   Cf) — bidi embeddings/overrides/isolates (U+202A–U+202E, U+2066–U+2069), zero-width space/non-joiner
   (U+200B, U+200C), LRM/RLM, word joiner, BOM U+FEFF, soft hyphen, and the emoji tag characters
   U+E0020–U+E007F (they can smuggle invisible text; subdivision flags degrade to a plain black flag) —
   EXCEPT U+200D ZERO WIDTH JOINER, which emoji sequences need (family = man ZWJ woman ZWJ girl);
   and lone surrogates (category Cs), which cannot be encoded as UTF-8. Variation selectors (e.g.
   U+FE0F, category Mn) are kept.
4. Unicode normalisation form NFC (composed accents: ``"e\\u0301"`` → ``"é"``), applied after the
   removals so that an accent separated from its letter only by a removed character still composes.
5. Leading and trailing whitespace is stripped (``str.strip``: Unicode whitespace, NBSP included).
6. The result is cut to at most ``max_length`` code points. Decision: plain truncation by code points
   (no grapheme-cluster segmentation, which the stdlib lacks); it can cut an emoji ZWJ sequence or a
   flag in two, but never yields invalid text. Whitespace and ZWJs left dangling at the cut are removed.
"""

from __future__ import annotations

import unicodedata

__all__ = ["sanitize_text"]

_ZWJ = "\u200d"
_KEPT_CONTROLS = frozenset("\n\t")
_LINE_BREAKS = str.maketrans({"\u2028": "\n", "\u2029": "\n"})


def _keep(char: str) -> bool:
    category = unicodedata.category(char)
    if category == "Cc":
        return char in _KEPT_CONTROLS
    if category == "Cf":
        return char == _ZWJ
    return category != "Cs"


def sanitize_text(value: object, *, max_length: int = 500) -> str:
    """Turn any value into safe, single-normalised text of bounded length.

    Args:
        value: the value to render (``None``, ``str``, ``bytes``, numbers, ``Decimal``, anything with
            ``str()``).
        max_length: maximum length of the result, in Unicode code points (>= 0).

    Returns:
        The cleaned text (rules in the module docstring); ``""`` for ``None`` or if nothing is left.

    Raises:
        ValueError: if ``max_length`` is negative.
    """
    if max_length < 0:
        raise ValueError(f"max_length must be >= 0, got {max_length}")
    if value is None:
        return ""
    if type(value) is str and value.isprintable():
        # Fast path, same result: a printable string (str.isprintable) holds no character of categories
        # Cc, Cf, Cs, Zl or Zp, so rules 2 and 3 change nothing; only NFC, strip and the cut remain.
        text = value if unicodedata.is_normalized("NFC", value) else unicodedata.normalize("NFC", value)
        return _cut(text.strip(), max_length)
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode("utf-8", errors="replace")
    else:
        text = str(value)
    text = text.replace("\r\n", "\n").replace("\r", "\n").translate(_LINE_BREAKS)
    # Filter before NFC, so that marks separated only by a removed character still compose.
    text = unicodedata.normalize("NFC", "".join(char for char in text if _keep(char))).strip()
    return _cut(text, max_length)


def _cut(text: str, max_length: int) -> str:
    """Rule 6: at most ``max_length`` code points, no whitespace or ZWJ left dangling at the cut."""
    if len(text) > max_length:
        text = text[:max_length].rstrip().rstrip(_ZWJ).rstrip()
    return text
