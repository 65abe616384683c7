"""The Clock port: the only place the current time comes from (the domain never reads a clock)."""

from __future__ import annotations

import math
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Source of the current instant."""

    def now(self) -> datetime:
        """The current instant, timezone-aware, UTC."""
        ...


class SystemClock:
    """The machine's clock."""

    def now(self) -> datetime:
        """``datetime.now(UTC)``."""
        return datetime.now(UTC)


class FakeClock:
    """A clock tests move by hand (thread-safe)."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs an aware start instant")
        self._now = start.astimezone(UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        """The fake current instant (UTC)."""
        with self._lock:
            return self._now

    def advance(self, delta: timedelta | float) -> datetime:
        """Move forward by ``delta`` (a timedelta or seconds); returns the new instant."""
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        with self._lock:
            self._now += step
            return self._now

    def set(self, at: datetime) -> None:
        """Jump to ``at`` (aware)."""
        with self._lock:
            self._now = at.astimezone(UTC)


class ScaledClock:
    """A clock that several processes share, running ``scale`` times faster than the machine's, from
    ``start`` at the Unix instant ``anchor_unix`` — for tests and demos only, never in production.

    ``now() = start + (time.time() - anchor_unix) * scale``: every process given the same three values
    (``BILLING_CLOCK``, see :func:`parse_scaled_clock`) reads the same instant at the same moment, so
    business hours, throttle windows and ``resume_at`` pass together for all of them. Before
    ``anchor_unix`` it reads instants before ``start``.

    Args:
        start: aware instant the clock reads at ``anchor_unix``.
        anchor_unix: Unix time (seconds, ``time.time()``) at which it reads ``start``.
        scale: clock seconds per real second (> 0; 1 is real speed shifted to ``start``).

    Raises:
        ValueError: naive ``start``, or a non-finite ``anchor_unix`` / non-positive or non-finite ``scale``.
    """

    def __init__(self, start: datetime, anchor_unix: float, scale: float) -> None:
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError("ScaledClock needs an aware start instant (with a UTC offset)")
        if not math.isfinite(anchor_unix):
            raise ValueError(f"anchor must be finite Unix seconds, got {anchor_unix!r}")
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
        self.start = start.astimezone(UTC)
        self.anchor_unix = float(anchor_unix)
        self.scale = float(scale)

    def now(self) -> datetime:
        """The scaled current instant (UTC)."""
        return self.at(time.time())

    def at(self, unix: float) -> datetime:
        """The instant this clock reads (read, or will read) at Unix time ``unix`` (UTC)."""
        return self.start + timedelta(seconds=(unix - self.anchor_unix) * self.scale)

    def unix_at(self, instant: datetime) -> float:
        """The Unix time at which this clock reads the aware ``instant`` (inverse of :meth:`at`)."""
        if instant.tzinfo is None:
            raise ValueError("unix_at needs an aware instant")
        return self.anchor_unix + (instant - self.start).total_seconds() / self.scale

    def spec(self) -> str:
        """The ``BILLING_CLOCK`` text of this clock (``<ISO start>@<anchor>x<scale>``)."""
        return f"{self.start.isoformat()}@{self.anchor_unix!r}x{self.scale!r}"

    def __repr__(self) -> str:
        return f"ScaledClock({self.spec()!r})"


def parse_scaled_clock(text: str) -> ScaledClock:
    """Parse ``<ISO start with offset>@<anchor Unix seconds>x<scale>``, e.g.
    ``2025-01-20T07:58:00-03:00@1764400000.5x30``: the clock reads 07:58 (-03:00) at Unix time
    1764400000.5 and runs 30 times faster than real time from there.

    Raises:
        ValueError: naming the part that is malformed.
    """
    start_text, at, rest = text.strip().rpartition("@")
    anchor_text, x, scale_text = rest.rpartition("x")
    if not at or not x or not start_text:
        raise ValueError(f"expected <ISO start with offset>@<anchor unix seconds>x<scale>, got {text!r}")
    try:
        start = datetime.fromisoformat(start_text)
    except ValueError:
        raise ValueError(f"start {start_text!r} is not an ISO 8601 instant") from None
    if start.tzinfo is None:
        raise ValueError(f"start {start_text!r} needs a UTC offset (e.g. -03:00 or Z)")
    try:
        anchor, scale = float(anchor_text), float(scale_text)
    except ValueError:
        raise ValueError(f"anchor {anchor_text!r} and scale {scale_text!r} must be numbers") from None
    return ScaledClock(start, anchor, scale)
