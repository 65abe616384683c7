"""Phone numbers: normalise what ERPs send to E.164, and mask numbers for logs.

Cases: ``tests/cases/phones.json`` (P01–P05).

Sources: ITU-T Recommendation E.164 (international numbering: ``+`` country code + national significant
number, at most 15 digits; ``00`` is the ITU-recommended international prefix) and the Anatel Brazilian
numbering plan (Regulamento de Numeração, PGNU/STFC and SMP): country code 55, two-digit area code (DDD,
11–99), 9-digit mobile numbers starting with 9, 8-digit landlines starting with 2–5, national trunk
prefix ``0`` optionally followed by a two-digit carrier selection code (CSP, written ``xx`` when left
open: ``0xx11 …``), international access ``00`` + CSP + country code. The plan data itself comes from
Google's libphonenumber metadata (Python port ``phonenumbers``), which tracks Anatel's plan.

Rules of :func:`normalize_phone`:

1. The value must be a string (or a non-boolean int) of digits and the punctuation people use when
   writing numbers: spaces, ``( ) - . /``, a single leading ``+``, and the literal ``xx`` of an open
   carrier code right after a leading ``0`` (``0xx11``). Any other letter is refused — this refuses
   extensions (``ramal 22``, ``x12``: WhatsApp cannot dial them) and vanity numbers (``0800-FLORES``),
   which the library would otherwise silently turn into digits.
2. With a leading ``+`` the number is international as written.
3. Digits starting with ``00`` are international: first read as ``00`` + country code (ITU prefix,
   ``0055 11 98765-4321`` → ``+5511987654321``, P03), then, if that is not a valid number, as the
   Brazilian ``00`` + carrier code + country code (``0021 1 650 253 0000`` → ``+16502530000``).
4. Anything else is read in ``default_region`` (Brazil): national numbers with or without the trunk
   prefix / carrier code (``11987654321``, ``011 …``, ``0xx11 …``) and numbers that start with the
   country code but no ``+`` (``55 11 98765 4321``, ``(55) (11) …``). A national reading wins, so
   ``81999998888`` is DDD 81 (Pernambuco), never Japan (+81) (P01).
5. The result must be valid per the plan (length and ranges for its area code; P04 has too few digits
   for a DDD 11 mobile) and of type MOBILE, FIXED_LINE or FIXED_LINE_OR_MOBILE. Toll-free (0800),
   shared-cost (0300, 4004), premium-rate, VoIP, pagers etc. are refused.
6. Nothing is repaired: a landline stays a landline (P02, no ninth digit added). One exception, the old
   8-digit mobiles (Brazil added the ninth digit to every mobile from 2012 to 2016, and WhatsApp accounts
   registered before often still carry the 8-digit id): a Brazilian DDD + 8 digits starting with 6, 7 or
   8 is read as that mobile with its ninth digit (``(75) 8825-1234`` → ``+5575988251234``); the gateway
   lookup before the first send then asks for both forms and sends to the one that exists. An 8-digit
   number starting with 9 stays refused (P04: a 9-digit mobile missing a digit, not an old number).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType, ValidationResult

from billing.domain.errors import InvalidValue

__all__ = ["Phone", "mask_phone", "normalize_phone", "require_allowed_region"]

_MAX_INPUT_LENGTH = 64
_ACCEPTED_TYPES = frozenset(
    {PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE, PhoneNumberType.FIXED_LINE_OR_MOBILE}
)
# Leading trunk prefix "0" with an open carrier code written "xx": "0xx11", "0 XX 11", "(0xx11)".
_OPEN_CARRIER = re.compile(r"^(\(?\s*0)\s*[xX]{2}")
_ALLOWED = re.compile(r"\+?[0-9()\-./ \t\u00a0\u2007\u202f]*", re.ASCII)
_NON_DIGITS = re.compile(r"[^0-9]", re.ASCII)
_POSSIBILITY_REASONS = {
    ValidationResult.INVALID_COUNTRY_CODE: "unknown country code",
    ValidationResult.TOO_SHORT: "too few digits",
    ValidationResult.TOO_LONG: "too many digits",
    ValidationResult.INVALID_LENGTH: "wrong number of digits",
}


@dataclass(frozen=True)
class Phone:
    """A normalised, dialable phone number.

    Attributes:
        e164: E.164 form with ``+``, e.g. ``"+5511987654321"``.
        gateway_number: the same digits without ``+``, as the WhatsApp gateway expects them,
            e.g. ``"5511987654321"``.
        region: ISO 3166-1 alpha-2 region of the number per the numbering plan, e.g. ``"BR"``, ``"US"``.
    """

    e164: str
    gateway_number: str
    region: str = "BR"


def _invalid(field: str, reason: str) -> InvalidValue:
    # The number itself is personal data and stays out of the message (errors end up in logs).
    return InvalidValue(
        f"{field}: not a valid phone number ({reason})",
        code="invalid_phone",
        field=field,
        details={"reason": reason},
    )


def _invalid_reason(number: phonenumbers.PhoneNumber) -> str:
    """Say why a parsed number is not valid, as precisely as the plan allows."""
    possibility = phonenumbers.is_possible_number_with_reason(number)
    if possibility in _POSSIBILITY_REASONS:
        return _POSSIBILITY_REASONS[possibility]
    national = phonenumbers.national_significant_number(number)
    # Anatel: Brazilian mobile numbers are DDD + 9 digits starting with 9 (11 digits in all).
    if number.country_code == 55 and len(national) >= 3 and national[2] == "9" and len(national) != 11:
        return "too few digits for a mobile: DDD + 9 digits" if len(national) < 11 else "too many digits"
    return "not a number of the numbering plan for its area code"


def _candidates(text: str) -> list[str]:
    """Return the readings of ``text`` to try, best first (rules 2–4 of the module docstring)."""
    digits = _NON_DIGITS.sub("", text)
    if text.startswith("+"):
        return ["+" + digits]
    if digits.startswith("00"):
        return ["+" + digits[2:], digits]
    return [digits]


def _brazilian_fast_path(text: str, digits: str | None = None) -> Phone | None:
    """The common case without ``phonenumbers.parse`` (the cost of ingestion): a Brazilian number written
    ``+55`` + DDD + number, or DDD + number alone, that the plan accepts. None means "take the full path",
    which then decides (and explains a refusal).

    Same answer as the full path: parsing such text yields exactly these national digits — it has no
    ``00``/``0``/``90`` prefix to strip, and a national reading is not taken to start with country code 55
    — and :func:`phonenumbers.number_type` is the check :func:`phonenumbers.is_valid_number` makes (the
    number's type per its region's plan, UNKNOWN when invalid), on the same metadata. ``digits`` are the
    digits of ``text`` when the caller has them already.
    """
    if digits is None:
        digits = _NON_DIGITS.sub("", text)
    if text.startswith("+"):
        if not digits.startswith("55"):
            return None
        national = digits[2:]
    elif digits.startswith(("0", "55")):
        return None
    else:
        national = digits
    if len(national) not in (10, 11) or national.startswith(("0", "90")):
        return None
    if not _brazilian_plan_accepts(national):
        return None
    return Phone(e164="+55" + national, gateway_number="55" + national, region="BR")


_Desc = tuple[frozenset[int], re.Pattern[str]] | None
_REFUSED_TYPES = (
    "premium_rate",
    "toll_free",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
)


@functools.cache
def _brazilian_plan() -> tuple[_Desc, tuple[_Desc, ...], _Desc, _Desc, bool]:
    """Brazil's number descriptions from the ``phonenumbers`` metadata, compiled once: general, the types
    refused here, fixed line, mobile, and whether the last two share one pattern."""
    meta = phonenumbers.PhoneMetadata.metadata_for_region("BR")
    assert meta is not None

    def desc(number_desc: Any) -> _Desc:
        if number_desc is None or not number_desc.national_number_pattern:
            return None
        return frozenset(number_desc.possible_length or ()), re.compile(number_desc.national_number_pattern)

    refused = tuple(desc(getattr(meta, name)) for name in _REFUSED_TYPES)
    return (
        desc(meta.general_desc),
        refused,
        desc(meta.fixed_line),
        desc(meta.mobile),
        bool(meta.same_mobile_and_fixed_line_pattern),
    )


def _matches(national: str, desc: _Desc) -> bool:
    """``phonenumbers``' own test of a number against a description: a possible length, then the whole
    national number matching its pattern."""
    if desc is None:
        return False
    lengths, pattern = desc
    return (not lengths or len(national) in lengths) and pattern.fullmatch(national) is not None


@functools.cache
def _refused_patterns(length: int) -> tuple[re.Pattern[str], ...]:
    """The patterns of the refused types (:data:`_REFUSED_TYPES`) that a national number of ``length``
    digits can match: those whose possible lengths include it (or that list none), as :func:`_matches`
    decides per type."""
    return tuple(
        desc[1] for desc in _brazilian_plan()[1] if desc is not None and (not desc[0] or length in desc[0])
    )


def _brazilian_plan_accepts(national: str) -> bool:
    """True when ``phonenumbers.number_type`` of +55 ``national`` is MOBILE, FIXED_LINE or
    FIXED_LINE_OR_MOBILE: the library's own decision (its ``_number_type_helper``, in its order) on its
    own metadata, with the patterns compiled once instead of looked up per call (the refused types' per
    length of number, :func:`_refused_patterns`)."""
    general, _, fixed_line, mobile, same_pattern = _brazilian_plan()
    if not _matches(national, general):
        return False
    for pattern in _refused_patterns(len(national)):
        if pattern.fullmatch(national) is not None:
            return False
    return _matches(national, fixed_line) or (not same_pattern and _matches(national, mobile))


def normalize_phone(raw: object, *, default_region: str = "BR", field: str = "telefone") -> Phone:
    """Normalise a phone number as written by an ERP into E.164.

    Args:
        raw: the number as sent, e.g. ``"(11) 9 8765-4321"``, ``"0055 11 98765-4321"``,
            ``"0xx11 98765-4321"``, ``"81999998888"`` or an int ``11987654321``.
        default_region: ISO 3166-1 alpha-2 region for numbers written without country code.
        field: input field name, used in error messages and ``InvalidValue.field``.

    Returns:
        The :class:`Phone` (E.164 and gateway digits).

    Raises:
        InvalidValue: code ``invalid_phone`` (with ``details["reason"]``) when the value is not a
            string/int, holds letters or other characters, is not a valid number of the plan, or is not a
            mobile or landline number. The message names the field and the reason, never the number
            (personal data). Rules and sources: module docstring.
    """
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise _invalid(field, f"expected a string, got {type(raw).__name__}")
    text = str(raw).strip()
    if len(text) > _MAX_INPUT_LENGTH:
        raise _invalid(field, "too long")
    if "x" in text or "X" in text:  # the only letter allowed, in an open carrier code
        text = _OPEN_CARRIER.sub(r"\1", text)
    digits = _NON_DIGITS.sub("", text)
    if not _ALLOWED.fullmatch(text) or not digits:
        raise _invalid(field, "only digits, spaces, + ( ) - . / are allowed")

    fast = _brazilian_fast_path(text, digits) if default_region == "BR" else None
    return fast if fast is not None else _full_path(text, default_region, field)


def _full_path(text: str, default_region: str, field: str) -> Phone:
    """Rules 2–5 through ``phonenumbers.parse`` (``text`` passed rule 1)."""
    reason = "not a number of the numbering plan"
    for candidate in _candidates(text):
        try:
            number = phonenumbers.parse(candidate, default_region)
        except NumberParseException:
            continue
        if not phonenumbers.is_valid_number(number):
            reason = _invalid_reason(number)
            legacy = _legacy_mobile(number)
            if legacy is None:
                continue
            number = legacy
        if phonenumbers.number_type(number) not in _ACCEPTED_TYPES:
            reason = "not a mobile or landline number (toll-free, shared-cost, premium...)"
            continue
        e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        region = phonenumbers.region_code_for_number(number) or "ZZ"
        return Phone(e164=e164, gateway_number=e164.removeprefix("+"), region=region)
    raise _invalid(field, reason)


def _legacy_mobile(number: phonenumbers.PhoneNumber) -> phonenumbers.PhoneNumber | None:
    """An old Brazilian 8-digit mobile (DDD + 8 digits starting 6-8) with its ninth digit, when that is a
    valid mobile; else None (rule 6)."""
    national = phonenumbers.national_significant_number(number)
    if number.country_code != 55 or len(national) != 10 or national[2] not in "678":
        return None
    modern = phonenumbers.PhoneNumber(country_code=55, national_number=int(f"{national[:2]}9{national[2:]}"))
    if phonenumbers.is_valid_number(modern) and phonenumbers.number_type(modern) is PhoneNumberType.MOBILE:
        return modern
    return None


def require_allowed_region(phone: Phone, allowed: frozenset[str], *, field: str = "telefone") -> Phone:
    """Refuse a number of a country the tenant may not send to; return it unchanged otherwise.

    Args:
        phone: a normalised number (:func:`normalize_phone`).
        allowed: ISO 3166-1 alpha-2 regions of the tenant's policy (``allowed_countries``, default BR).
        field: input field name for the error.

    Raises:
        InvalidValue: code ``country_not_allowed`` naming the field; ``details.country`` is the number's
            region (never the number: personal data).
    """
    if phone.region not in allowed:
        raise InvalidValue(
            f"{field}: numbers of {phone.region} are not allowed for this tenant "
            f"(allowed_countries: {', '.join(sorted(allowed))})",
            code="country_not_allowed",
            field=field,
            details={"country": phone.region},
        )
    return phone


def _country_code_length(digits: str) -> int:
    """Length of the country code at the start of ``digits`` (ITU country codes are prefix-free)."""
    for length in (1, 2, 3):
        if int(digits[:length] or "0") in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            return length
    return 0


def mask_phone(e164: str) -> str:
    """Mask a phone number for logs, keeping just enough to tell numbers apart.

    * Brazil: country code, DDD, first digit of the subscriber number and its last 4 digits:
      ``"+5511987654321"`` → ``"+55 11 9****-4321"``, ``"+553130001234"`` → ``"+55 31 3***-1234"``.
    * Other countries: ``+`` country code and the last 4 digits: ``"+16502530000"`` →
      ``"+1 ******0000"``.
    * Anything else (unknown country code, too short, not a string): every digit but the last 4 starred;
      4 digits or fewer are fully starred.

    Never raises: logging must not fail because of a bad value.
    """
    try:
        digits = _NON_DIGITS.sub("", e164) if isinstance(e164, str) else ""
        cc_length = _country_code_length(digits) if isinstance(e164, str) and e164.startswith("+") else 0
        country, national = digits[:cc_length], digits[cc_length:]
        if country == "55" and len(national) >= 2 + 6:  # DDD + at least one starred digit
            ddd, subscriber = national[:2], national[2:]
            return f"+55 {ddd} {subscriber[0]}{'*' * (len(subscriber) - 5)}-{subscriber[-4:]}"
        if country and len(national) > 4:
            return f"+{country} {'*' * (len(national) - 4)}{national[-4:]}"
        if len(digits) > 4:
            return "*" * (len(digits) - 4) + digits[-4:]
        return "*" * max(len(digits), 4)
    except Exception:
        return "****"
