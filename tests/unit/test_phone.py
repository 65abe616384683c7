"""Phone normalisation and masking (cases: tests/cases/phones.json)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.domain.errors import InvalidValue
from billing.domain.phone import Phone, _brazilian_fast_path, _full_path, mask_phone, normalize_phone
from tests.cases import load_cases

CASES = {case["id"]: case for case in load_cases("phones.json")}


def test_all_phone_cases_are_covered() -> None:
    assert set(CASES) == {"P01", "P02", "P03", "P04", "P05"}


def test_P01_national_number_is_brazilian_not_japanese() -> None:
    case = CASES["P01"]
    phone = normalize_phone(case["given"]["telefone"])
    assert phone == Phone(e164=case["expect"]["phone"], gateway_number=case["expect"]["gateway_number"])
    assert phone == Phone(e164="+5581999998888", gateway_number="5581999998888")


def test_P02_landline_stays_landline() -> None:
    case = CASES["P02"]
    phone = normalize_phone(case["given"]["telefone"])
    assert phone.e164 == case["expect"]["phone"] == "+553130001234"
    assert phone.gateway_number == case["expect"]["gateway_number"] == "553130001234"


@pytest.mark.parametrize("given", CASES["P03"]["given"]["telefone"], ids=repr)
def test_P03_brazilian_mobile_forms(given: str) -> None:
    phone = normalize_phone(given)
    assert phone.e164 == CASES["P03"]["expect"]["phone"] == "+5511987654321"
    assert phone.gateway_number == "5511987654321"


@pytest.mark.parametrize("case_id", ["P04", "P05"])
def test_P04_P05_invalid_phone_rejected(case_id: str) -> None:
    case = CASES[case_id]
    with pytest.raises(InvalidValue) as exc_info:
        normalize_phone(case["given"]["telefone"])
    assert exc_info.value.code == case["expect"]["code"] == "invalid_phone"
    assert exc_info.value.field == "telefone"
    assert "telefone" in exc_info.value.message


def test_P04_reason_is_too_few_digits() -> None:
    with pytest.raises(InvalidValue) as exc_info:
        normalize_phone(CASES["P04"]["given"]["telefone"])
    assert exc_info.value.details == {"reason": "too few digits for a mobile: DDD + 9 digits"}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (11987654321, "+5511987654321"),
        ("(0xx11) 98765-4321", "+5511987654321"),
        ("0 XX 11 98765-4321", "+5511987654321"),
        ("021 11 98765-4321", "+5511987654321"),
        ("11.98765.4321", "+5511987654321"),
        ("11\u00a098765\u00a04321", "+5511987654321"),
        ("+55 31 3000-1234", "+553130001234"),
        ("0055 31 3000-1234", "+553130001234"),
        ("(21) 2345-6789", "+552123456789"),
        ("+1 650 253 0000", "+16502530000"),
        ("0021 1 650 253 0000", "+16502530000"),
        ("+44 20 7946 0958", "+442079460958"),
        ("0044 20 7946 0958", "+442079460958"),
    ],
    ids=repr,
)
def test_accepted_phones(given: object, expected: str) -> None:
    phone = normalize_phone(given)
    assert phone.e164 == expected
    assert phone.gateway_number == expected[1:]


@pytest.mark.parametrize(
    "given",
    [
        "",
        "   ",
        "+",
        "11 9552-3230",  # 8 digits starting 9: a 9-digit mobile missing a digit (P04), not an old one
        "0800 123 4567",  # toll-free
        "0300 123 4567",  # shared cost
        "4004-1234",  # shared cost, no area code
        "+900 123 4567",
        "(11) 3000-1234 ramal 22",  # extension (letters would otherwise become keypad digits)
        "11 98765-4321 x12",
        "0800-FLORES",
        "11 98765-4321#",
        "+55 11 98765-4321+",
        "5511987654321" * 6,
        "\u0661\u0661987654321",
        "+0055 11 98765-4321",
        True,
        None,
        11987654321.0,
    ],
    ids=repr,
)
def test_rejected_phones(given: object) -> None:
    with pytest.raises(InvalidValue) as exc_info:
        normalize_phone(given, field="contacts[1].telefone")
    assert exc_info.value.code == "invalid_phone"
    assert exc_info.value.field == "contacts[1].telefone"
    assert "contacts[1].telefone" in exc_info.value.message


@pytest.mark.parametrize(
    ("given", "e164"),
    [
        ("(75) 8825-1234", "+5575988251234"),  # old 8-digit mobile: a lookup candidate, not invalid
        ("557588251234", "+5575988251234"),
        ("+55 11 8765-4321", "+5511987654321"),
        ("+55 75 98825-1234", "+5575988251234"),
    ],
)
def test_old_eight_digit_mobiles_are_read_with_their_ninth_digit(given: str, e164: str) -> None:
    assert normalize_phone(given).e164 == e164


def test_rejected_toll_free_says_why() -> None:
    with pytest.raises(InvalidValue) as exc_info:
        normalize_phone("0800 123 4567")
    assert "not a mobile or landline" in str(exc_info.value.details["reason"])


def test_default_region_is_used_for_national_numbers() -> None:
    assert normalize_phone("020 7946 0958", default_region="GB").e164 == "+442079460958"


@pytest.mark.parametrize(
    ("e164", "expected"),
    [
        ("+5511987654321", "+55 11 9****-4321"),
        ("+553130001234", "+55 31 3***-1234"),
        ("+16502530000", "+1 ******0000"),
        ("+442079460958", "+44 ******0958"),
        ("5511987654321", "*********4321"),
        ("+999123456", "*****3456"),
        ("1234", "****"),
        ("", "****"),
        ("abc", "****"),
        (None, "****"),
        (5511987654321, "****"),
    ],
    ids=repr,
)
def test_mask_phone(e164: object, expected: str) -> None:
    assert mask_phone(e164) == expected  # type: ignore[arg-type]


def test_error_message_does_not_leak_the_number() -> None:
    with pytest.raises(InvalidValue) as exc_info:
        normalize_phone("(11) 9-552-3230")
    assert "552" not in exc_info.value.message
    assert exc_info.value.message.startswith("telefone: ")


# --- the fast path for Brazilian numbers answers exactly as the full path --------------------------------


def _full_or_none(text: str) -> object:
    try:
        return _full_path(text, "BR", "telefone")
    except InvalidValue:
        return None


@settings(max_examples=3000, deadline=None)
@given(
    prefix=st.sampled_from(["", "+55", "+55 ", "55", "0", "+1", "+", "90", "0055"]),
    ddd=st.integers(min_value=0, max_value=99),
    first=st.sampled_from("0123456789"),
    rest=st.text(alphabet="0123456789", min_size=6, max_size=9),
    style=st.sampled_from(["plain", "paren", "dash"]),
)
def test_fast_path_accepts_only_what_the_full_path_accepts_and_the_same_way(
    prefix: str, ddd: int, first: str, rest: str, style: str
) -> None:
    number = f"{ddd:02d}{first}{rest}"
    if style == "paren":
        number = f"({number[:2]}) {number[2:-4]}-{number[-4:]}"
    elif style == "dash":
        number = f"{number[:2]}-{number[2:]}"
    text = prefix + number
    fast = _brazilian_fast_path(text)
    if fast is not None:
        assert fast == _full_or_none(text)


def test_fast_path_takes_the_common_forms() -> None:
    for text in ("+5511987654321", "(11) 98765-4321", "11 3000-1234", "+55 (81) 99999-8888"):
        assert _brazilian_fast_path(text) == _full_or_none(text) != None  # noqa: E711
    for text in ("5511987654321", "011987654321", "0055 11 98765-4321", "+16502530000", "1198765432"):
        assert _brazilian_fast_path(text) is None


@settings(max_examples=3000, deadline=None)
@given(national=st.text(alphabet="0123456789", min_size=8, max_size=13))
def test_brazilian_plan_check_is_the_librarys_number_type(national: str) -> None:
    import phonenumbers

    from billing.domain.phone import _ACCEPTED_TYPES, _brazilian_plan_accepts

    number = phonenumbers.PhoneNumber(country_code=55, national_number=int(national))
    if national.startswith("0"):
        return  # never asked (the fast path leaves leading zeros to the full path)
    assert _brazilian_plan_accepts(national) == (phonenumbers.number_type(number) in _ACCEPTED_TYPES)
