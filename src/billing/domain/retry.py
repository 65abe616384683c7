"""The retry policy: how many attempts, and how long to wait between them.

Pure policy: randomness is passed in (a float in ``[0, 1)`` or a :class:`random.Random`), so every delay is
reproducible in tests. Which gateway failures are retryable is decided by the gateway adapter (from
``docs/evolution-api.md``); this module only receives the verdict.

Backoff: capped exponential backoff with jitter, after Marc Brooker, "Exponential Backoff And Jitter",
AWS Architecture Blog, 2015 (https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/).
The capped exponential delay ``d = min(max_delay_s, base_delay_s * 2 ** (attempt - 1))`` is randomised
downwards by the ``jitter`` fraction: ``delay = d * (1 - jitter) + d * jitter * rnd``, in
``[d * (1 - jitter), d)``. This is the blog's "Equal Jitter" generalised: ``jitter = 0.5`` is exactly
Equal Jitter, ``jitter = 1`` is "Full Jitter", ``jitter = 0`` is plain capped backoff. Jitter only ever
shortens the delay, so no delay exceeds ``max_delay_s`` and there is always a floor (no immediate
retry storm), while retries of many contacts failing together are spread apart.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from billing.domain.calendar import PolicyError
from billing.domain.errors import InvalidValue

__all__ = ["RetryPolicy"]

_MAX_EXPONENT = 1000  # 2.0 ** 1000 is finite; any larger exponent is capped anyway


def _positive_number(value: object) -> bool:
    return (
        not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value) and value > 0
    )


@dataclass(frozen=True)
class RetryPolicy:
    """How a contact's failed sends are retried.

    Attributes:
        max_attempts: total attempts per contact, the first one included (>= 1; 1 = never retry).
        base_delay_s: delay before the second attempt, in seconds, before jitter (> 0).
        max_delay_s: cap of the exponential delay, in seconds (>= base_delay_s).
        jitter: fraction of the delay that is randomised, 0..1 (see the module docstring).

    Raises:
        PolicyError: an attribute out of range (``field`` = the attribute name).
    """

    max_attempts: int = 5
    base_delay_s: float = 30.0
    max_delay_s: float = 3600.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_attempts, bool)
            or not isinstance(self.max_attempts, int)
            or self.max_attempts < 1
        ):
            raise PolicyError(
                f"max_attempts must be a whole number >= 1, got {self.max_attempts!r}", field="max_attempts"
            )
        if not _positive_number(self.base_delay_s):
            raise PolicyError(
                f"base_delay_s must be a number of seconds > 0, got {self.base_delay_s!r}",
                field="base_delay_s",
            )
        if not _positive_number(self.max_delay_s) or self.max_delay_s < self.base_delay_s:
            raise PolicyError(
                f"max_delay_s must be a number of seconds >= base_delay_s, got {self.max_delay_s!r}",
                field="max_delay_s",
            )
        if (
            isinstance(self.jitter, bool)
            or not isinstance(self.jitter, int | float)
            or not 0 <= self.jitter <= 1
        ):
            raise PolicyError(
                f"jitter must be a fraction between 0 and 1, got {self.jitter!r}", field="jitter"
            )

    def should_retry(self, attempt: int, retryable: bool) -> bool:
        """Whether to try again after a failure.

        Args:
            attempt: number of attempts already made, the failed one included (>= 1).
            retryable: whether the failure is transient (classified by the gateway adapter).

        Returns:
            True if the failure is retryable and fewer than ``max_attempts`` attempts were made.

        Raises:
            InvalidValue: ``attempt`` < 1.
        """
        _check_attempt(attempt)
        return retryable and attempt < self.max_attempts

    def next_delay(self, attempt: int, rnd: float | random.Random) -> float:
        """Seconds to wait before the next attempt, after ``attempt`` attempts were made.

        ``d = min(max_delay_s, base_delay_s * 2 ** (attempt - 1))``; result ``d * (1 - jitter) +
        d * jitter * r`` where ``r`` is ``rnd`` or ``rnd.random()``, in ``[0, 1)``. With the defaults:
        attempt 1 → 24..30 s, 2 → 48..60 s, 3 → 96..120 s, 8 and above → 2880..3600 s.

        Raises:
            InvalidValue: ``attempt`` < 1 or ``rnd`` outside ``[0, 1)``.
        """
        _check_attempt(attempt)
        r = rnd.random() if isinstance(rnd, random.Random) else rnd
        if isinstance(r, bool) or not isinstance(r, int | float) or not 0 <= r < 1:
            raise InvalidValue(f"rnd must be a number in [0, 1), got {r!r}", field="rnd")
        exponential = self.base_delay_s * 2.0 ** min(attempt - 1, _MAX_EXPONENT)
        capped = min(self.max_delay_s, exponential)
        return capped * (1 - self.jitter) + capped * self.jitter * r


def _check_attempt(attempt: int) -> None:
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise InvalidValue(f"attempt must be a whole number >= 1, got {attempt!r}", field="attempt")
