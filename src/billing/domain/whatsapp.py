"""Which WhatsApp account does a phone number reach? (pure decisions around the gateway's lookup).

Brazil added a ninth digit to every mobile (2012–2016); WhatsApp accounts registered before often keep
the 8-digit id (``557588251234@s.whatsapp.net`` for ``+55 75 98825-1234``), and the gateway has been seen
dropping or keeping the 9 on its own (``docs/evolution-api.md``). So before the first send to a number
the worker asks ``/chat/whatsappNumbers`` for **both forms** of a Brazilian mobile (batched ≤ 50,
throttled: bulk checks get accounts flagged) and sends to the JID that exists; the answer is remembered
per tenant and number (:data:`FOUND_TTL`, :data:`ABSENT_TTL`) so a number is looked up once, not per
message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = [
    "ABSENT_TTL",
    "FOUND_TTL",
    "Account",
    "choose_account",
    "is_fresh",
    "lookup_batches",
    "lookup_candidates",
]

JID_SUFFIX = "@s.whatsapp.net"
FOUND_TTL = timedelta(days=30)
"""How long an existing account is trusted without asking again."""
ABSENT_TTL = timedelta(days=1)
"""How long "no account" is trusted (people install WhatsApp; a day keeps a daily campaign honest)."""
LOOKUP_BATCH = 50
"""Numbers per lookup call at most (``docs/evolution-api.md``: bulk checks get accounts flagged)."""


@dataclass(frozen=True)
class Account:
    """The lookup's answer for one phone: ``jid`` of the account that exists (None: none does)."""

    jid: str | None

    @property
    def exists(self) -> bool:
        """True when an account exists."""
        return self.jid is not None


def lookup_candidates(e164: str) -> tuple[str, ...]:
    """The gateway numbers to ask for ``e164``, preferred first.

    A Brazilian mobile (``+55`` DDD ``9`` + 8 digits) gives both forms, with and without the ninth digit:
    ``+5575988251234`` → ``("5575988251234", "557588251234")``. Anything else gives its digits only.
    """
    digits = e164.removeprefix("+")
    if digits.startswith("55") and len(digits) == 13 and digits[4] == "9":
        return digits, digits[:4] + digits[5:]
    return (digits,)


def choose_account(candidates: Sequence[str], answers: Mapping[str, str | None]) -> Account:
    """Pick the account from the lookup's ``answers`` (``{number asked: jid that exists, or None}``),
    the first candidate that exists winning. A candidate missing from ``answers`` counts as absent."""
    for number in candidates:
        jid = answers.get(number)
        if jid:
            return Account(jid=jid if "@" in jid else jid + JID_SUFFIX)
    return Account(jid=None)


def is_fresh(account: Account, checked_at: datetime, now: datetime) -> bool:
    """True while a remembered answer checked at ``checked_at`` may be used at ``now`` (aware)."""
    ttl = FOUND_TTL if account.exists else ABSENT_TTL
    return now - checked_at < ttl


def lookup_batches(phones: Iterable[str], *, size: int = LOOKUP_BATCH) -> list[list[str]]:
    """Group the candidates of ``phones`` (E.164) into batches of at most ``size`` numbers, never
    splitting one phone's candidates across two batches. Duplicates are dropped."""
    batches: list[list[str]] = [[]]
    seen: set[str] = set()
    for phone in phones:
        candidates = [c for c in lookup_candidates(phone) if c not in seen]
        if not candidates:
            continue
        seen.update(candidates)
        if len(batches[-1]) + len(candidates) > size:
            batches.append([])
        batches[-1].extend(candidates)
    return [b for b in batches if b]
