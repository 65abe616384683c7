"""The shared fast clock of tests and demos (``ScaledClock``, ``BILLING_CLOCK``) and the other clocks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from billing.services import clock as clock_module
from billing.services.clock import FakeClock, ScaledClock, SystemClock, parse_scaled_clock
from billing.settings import Settings, SettingsError

DB = "postgresql://root@127.0.0.1:5432/billing"
MONDAY_0758 = datetime(2025, 1, 20, 7, 58, tzinfo=timezone(timedelta(hours=-3)))


@pytest.fixture
def frozen_time(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """``time.time()`` as seen by the clock module: the test sets ``frozen_time[0]``."""
    now = [1_764_400_000.5]
    monkeypatch.setattr(clock_module.time, "time", lambda: now[0])
    return now


def test_scaled_clock_reads_start_at_the_anchor_and_runs_scale_times_faster(frozen_time: list[float]) -> None:
    clock = ScaledClock(MONDAY_0758, 1_764_400_000.5, 30)
    assert clock.now() == MONDAY_0758
    assert clock.now().tzinfo is UTC
    frozen_time[0] += 4  # 4 real seconds = 2 clock minutes
    assert clock.now() == datetime(2025, 1, 20, 11, 0, tzinfo=UTC)
    frozen_time[0] -= 6  # before the anchor it reads instants before start
    assert clock.now() == MONDAY_0758 - timedelta(minutes=1)


def test_scaled_clock_at_and_unix_at_are_inverse() -> None:
    clock = ScaledClock(MONDAY_0758, 1000.0, 20)
    assert clock.at(1003.0) == MONDAY_0758 + timedelta(seconds=60)
    assert clock.unix_at(MONDAY_0758 + timedelta(seconds=60)) == 1003.0
    assert clock.unix_at(clock.at(1234.5)) == pytest.approx(1234.5)


def test_two_scaled_clocks_of_one_spec_agree(frozen_time: list[float]) -> None:
    spec = "2025-01-20T07:58:00-03:00@1764400000.5x30"
    assert parse_scaled_clock(spec).now() == parse_scaled_clock(spec).now() == MONDAY_0758


def test_scaled_clock_spec_round_trips() -> None:
    clock = ScaledClock(MONDAY_0758, 1_764_400_000.25, 12.5)
    again = parse_scaled_clock(clock.spec())
    assert (again.start, again.anchor_unix, again.scale) == (clock.start, 1_764_400_000.25, 12.5)


@pytest.mark.parametrize(
    ("text", "start", "anchor", "scale"),
    [
        ("2025-01-20T07:58:00-03:00@1764400000.5x30", MONDAY_0758, 1_764_400_000.5, 30.0),
        ("2025-01-20T10:58:00Z@0x1", MONDAY_0758, 0.0, 1.0),
        ("2025-01-20T10:58:00+00:00@1764400000x0.5", MONDAY_0758, 1_764_400_000.0, 0.5),
        (" 2025-01-20T07:58:00-03:00@1e9x2 ", MONDAY_0758, 1e9, 2.0),
    ],
)
def test_parse_scaled_clock(text: str, start: datetime, anchor: float, scale: float) -> None:
    clock = parse_scaled_clock(text)
    assert (clock.start, clock.anchor_unix, clock.scale) == (start, anchor, scale)
    assert clock.start.tzinfo is UTC


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "expected <ISO start"),
        ("2025-01-20T07:58:00-03:00", "expected <ISO start"),
        ("2025-01-20T07:58:00-03:00@1764400000", "expected <ISO start"),
        ("2025-01-20T07:58:00-03:00x30", "expected <ISO start"),
        ("@1764400000x30", "expected <ISO start"),
        ("2025-01-20T07:58:00@1764400000x30", "needs a UTC offset"),
        ("monday@1764400000x30", "not an ISO 8601 instant"),
        ("2025-01-20T07:58:00-03:00@soonx30", "must be numbers"),
        ("2025-01-20T07:58:00-03:00@1764400000xfast", "must be numbers"),
        ("2025-01-20T07:58:00-03:00@1764400000x0", "scale must be a finite number > 0"),
        ("2025-01-20T07:58:00-03:00@1764400000x-2", "scale must be a finite number > 0"),
        ("2025-01-20T07:58:00-03:00@1764400000xinf", "scale must be a finite number > 0"),
        ("2025-01-20T07:58:00-03:00@nanx2", "anchor must be finite"),
    ],
)
def test_parse_scaled_clock_refuses_malformed_text(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_scaled_clock(text)


def test_scaled_clock_needs_an_aware_start() -> None:
    with pytest.raises(ValueError, match="aware"):
        ScaledClock(datetime(2025, 1, 20, 7, 58), 0.0, 1.0)


def test_settings_without_billing_clock_use_the_system_clock() -> None:
    settings = Settings.from_env({"BILLING_DATABASE_URL": DB})
    assert settings.clock == ""
    assert settings.scaled_clock() is None


def test_settings_parse_billing_clock() -> None:
    env = {"BILLING_DATABASE_URL": DB, "BILLING_CLOCK": "2025-01-20T07:58:00-03:00@1764400000.5x30"}
    clock = Settings.from_env(env).scaled_clock()
    assert isinstance(clock, ScaledClock)
    assert (clock.start, clock.anchor_unix, clock.scale) == (MONDAY_0758, 1_764_400_000.5, 30.0)


@pytest.mark.parametrize("value", ["tomorrow", "2025-01-20T07:58:00@1x2", "2025-01-20T07:58:00Z@1x0"])
def test_malformed_billing_clock_stops_start_up_naming_it(value: str) -> None:
    with pytest.raises(SettingsError, match="BILLING_CLOCK"):
        Settings.from_env({"BILLING_DATABASE_URL": DB, "BILLING_CLOCK": value})


def test_system_and_fake_clocks_are_aware_utc() -> None:
    assert SystemClock().now().tzinfo is UTC
    fake = FakeClock(MONDAY_0758)
    assert fake.advance(30) == datetime(2025, 1, 20, 10, 58, 30, tzinfo=UTC)


def test_throttle_margin_is_one_real_second_at_the_clocks_rate() -> None:
    from billing.worker.ledger import margin_for

    assert margin_for(SystemClock()) == timedelta(seconds=1)
    assert margin_for(FakeClock(MONDAY_0758)) == timedelta(seconds=1)
    scaled = ScaledClock(MONDAY_0758, anchor_unix=1_700_000_000.0, scale=20)
    assert margin_for(scaled) == timedelta(seconds=20)  # BILLING_CLOCK at 20x: a real second
