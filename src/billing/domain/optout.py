"""Opt-out: does a debtor's reply ask us to stop? (pure; the tenant edits the list of stop words).

Matching ignores case and accents (Unicode NFKD, combining marks dropped, ``casefold``) and
punctuation; a stop word (or phrase such as "não quero mais") matches when it appears as whole words in
the reply ("PARAR!" and "por favor parar" match, "separar" does not). Default pt-BR words: the ones
WhatsApp's own business-messaging policy asks senders to honour (a reply asking to stop), as used by
Brazilian collection agencies: PARAR, PARE, SAIR, CANCELAR, STOP, DESCADASTRAR, "não quero mais",
"não enviar", "não mande mais".
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

from billing.domain.errors import InvalidValue

__all__ = ["DEFAULT_STOP_WORDS", "MAX_STOP_WORDS", "fold", "matching_stop_word", "validate_stop_words"]

DEFAULT_STOP_WORDS: tuple[str, ...] = (
    "parar",
    "pare",
    "sair",
    "cancelar",
    "stop",
    "descadastrar",
    "não quero mais",
    "não enviar",
    "não mande mais",
)
MAX_STOP_WORDS = 100
MAX_STOP_WORD_LENGTH = 60
_NON_WORD = re.compile(r"[^\w]+")


def fold(text: str) -> str:
    """``"  Não QUERO   mais!"`` → ``"nao quero mais"``: accents and case dropped, punctuation and runs of
    spaces become one space."""
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()
    return " ".join(_NON_WORD.sub(" ", bare).split())


def validate_stop_words(words: object, *, field: str = "stop_words") -> tuple[str, ...]:
    """Check a tenant's list: 1..100 non-empty strings of at most 60 characters; duplicates (after
    folding) dropped, order kept.

    Raises:
        InvalidValue: code ``invalid_stop_words`` naming ``field`` (or ``field[i]``).
    """
    if not isinstance(words, list) or not words:
        raise InvalidValue(
            f"{field} must be a non-empty list of words", code="invalid_stop_words", field=field
        )
    if len(words) > MAX_STOP_WORDS:
        raise InvalidValue(
            f"{field} holds at most {MAX_STOP_WORDS} words", code="invalid_stop_words", field=field
        )
    seen: dict[str, str] = {}
    for i, word in enumerate(words):
        if not isinstance(word, str) or not fold(word) or len(word) > MAX_STOP_WORD_LENGTH:
            raise InvalidValue(
                f"{field}[{i}] must be a word or phrase of 1 to {MAX_STOP_WORD_LENGTH} characters",
                code="invalid_stop_words",
                field=f"{field}[{i}]",
            )
        seen.setdefault(fold(word), word.strip())
    return tuple(seen.values())


def matching_stop_word(text: str, stop_words: Iterable[str]) -> str | None:
    """The first of ``stop_words`` (as the tenant wrote it) found as whole words in ``text``, or None."""
    haystack = f" {fold(text)} "
    for word in stop_words:
        needle = fold(word)
        if needle and f" {needle} " in haystack:
            return word
    return None


def stop_words_or_default(words: Sequence[str] | None) -> tuple[str, ...]:
    """The tenant's list, or :data:`DEFAULT_STOP_WORDS` when it set none."""
    return tuple(words) if words else DEFAULT_STOP_WORDS
