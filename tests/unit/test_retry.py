"""Retry policy: attempts and capped exponential backoff with jitter, exact values."""

from __future__ import annotations

import math
import random

import pytest

from billing.domain.calendar import PolicyError
from billing.domain.errors import InvalidValue
from billing.domain.retry import RetryPolicy

DEFAULT = RetryPolicy()


def test_defaults() -> None:
    assert RetryPolicy(max_attempts=5, base_delay_s=30.0, max_delay_s=3600.0, jitter=0.2) == DEFAULT


@pytest.mark.parametrize(
    ("attempt", "rnd", "expected"),
    [
        (1, 0.0, 24.0),  # 30 s, 20 % randomised below
        (1, 0.5, 27.0),
        (2, 0.0, 48.0),
        (3, 0.5, 108.0),  # 120 s → 96 + 12
        (7, 0.0, 1536.0),  # 1920 s
        (8, 0.0, 2880.0),  # 3840 s capped to 3600
        (8, 0.75, 3420.0),
        (10_000, 0.0, 2880.0),  # no overflow
    ],
)
def test_next_delay_exact_values(attempt: int, rnd: float, expected: float) -> None:
    assert DEFAULT.next_delay(attempt, rnd) == pytest.approx(expected)


def test_delay_never_exceeds_the_cap_and_has_a_floor() -> None:
    for attempt in range(1, 30):
        for rnd in (0.0, 0.3, 0.999999):
            delay = DEFAULT.next_delay(attempt, rnd)
            capped = min(3600.0, 30.0 * 2 ** (attempt - 1))
            assert 0.8 * capped <= delay < capped or math.isclose(delay, 0.8 * capped)
            assert delay < 3600.0


def test_delay_grows_with_attempts_for_the_same_draw() -> None:
    delays = [DEFAULT.next_delay(a, 0.4) for a in range(1, 12)]
    assert delays == sorted(delays)


def test_jitter_zero_is_plain_capped_backoff_and_one_is_full_jitter() -> None:
    plain = RetryPolicy(jitter=0.0)
    assert [plain.next_delay(a, 0.9) for a in (1, 2, 3)] == [30.0, 60.0, 120.0]
    full = RetryPolicy(jitter=1.0)
    assert full.next_delay(3, 0.25) == pytest.approx(30.0)  # random_between(0, 120)
    equal = RetryPolicy(jitter=0.5)
    assert equal.next_delay(3, 0.25) == pytest.approx(75.0)  # 60 + random_between(0, 60)


def test_random_instance_is_accepted() -> None:
    expected = DEFAULT.next_delay(2, random.Random(7).random())
    assert DEFAULT.next_delay(2, random.Random(7)) == expected


@pytest.mark.parametrize(
    ("attempt", "rnd"), [(0, 0.5), (-1, 0.5), (1, 1.0), (1, -0.1), (1, math.nan), (True, 0.5)]
)
def test_bad_arguments_are_refused(attempt: int, rnd: float) -> None:
    with pytest.raises(InvalidValue):
        DEFAULT.next_delay(attempt, rnd)


@pytest.mark.parametrize(
    ("attempt", "retryable", "expected"),
    [
        (1, True, True),
        (4, True, True),
        (5, True, False),
        (6, True, False),
        (1, False, False),
        (4, False, False),
    ],
)
def test_should_retry(attempt: int, retryable: bool, expected: bool) -> None:
    assert DEFAULT.should_retry(attempt, retryable) is expected


def test_single_attempt_policy_never_retries() -> None:
    assert RetryPolicy(max_attempts=1).should_retry(1, True) is False
    with pytest.raises(InvalidValue):
        DEFAULT.should_retry(0, True)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 2.0}, "max_attempts"),
        ({"base_delay_s": 0}, "base_delay_s"),
        ({"base_delay_s": math.inf}, "base_delay_s"),
        ({"base_delay_s": math.nan}, "base_delay_s"),
        ({"max_delay_s": 10.0}, "max_delay_s"),
        ({"jitter": 1.5}, "jitter"),
        ({"jitter": -0.1}, "jitter"),
        ({"jitter": math.nan}, "jitter"),
    ],
)
def test_invalid_policy_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(PolicyError) as caught:
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field
