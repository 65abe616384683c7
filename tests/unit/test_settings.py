"""Settings are parsed once from BILLING_* and refused with a message naming the variable."""

from __future__ import annotations

import pytest

from billing.settings import Settings, SettingsError

URL = "postgresql://root@127.0.0.1:5432/billing"


def test_settings_come_from_billing_variables() -> None:
    settings = Settings.from_env(
        {"BILLING_DATABASE_URL": URL, "BILLING_API_PORT": "9000", "BILLING_DISPATCH_LEASE_S": "90"}
    )
    assert (settings.database_url, settings.api_port, settings.dispatch_lease_s) == (URL, 9000, 90.0)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({}, "BILLING_DATABASE_URL"),
        ({"BILLING_DATABASE_URL": "postgresql:///billing?host=/var/run/postgresql"}, "BILLING_DATABASE_URL"),
        ({"BILLING_DATABASE_URL": URL, "BILLING_API_PORT": "eighty"}, "BILLING_API_PORT"),
        ({"BILLING_DATABASE_URL": URL, "BILLING_JWT_SECRET": "short"}, "BILLING_JWT_SECRET"),
        ({"BILLING_DATABASE_URL": URL, "BILLING_DISPATCH_LEASE_S": "40"}, "BILLING_DISPATCH_LEASE_S"),
        ({"BILLING_DATABASE_URL": URL, "BILLING_DISPATCH_LEASE_S": "nan"}, "BILLING_DISPATCH_LEASE_S"),
        ({"BILLING_DATABASE_URL": URL, "BILLING_POLL_INTERVAL_S": "-1"}, "BILLING_POLL_INTERVAL_S"),
        ({"BILLING_DATABASE_URL": URL, "BILLING_GATEWAY_TIMEOUT_S": "0"}, "BILLING_GATEWAY_TIMEOUT_S"),
    ],
)
def test_a_missing_or_malformed_variable_is_refused_by_name(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)


def test_the_save_linger_is_milliseconds_from_0_to_1000() -> None:
    assert Settings.from_env({"BILLING_DATABASE_URL": URL}).save_linger_ms == 2.0
    assert (
        Settings.from_env({"BILLING_DATABASE_URL": URL, "BILLING_SAVE_LINGER_MS": "0"}).save_linger_ms == 0.0
    )
    for bad in ("-1", "1001", "nan"):
        with pytest.raises(SettingsError, match="BILLING_SAVE_LINGER_MS"):
            Settings.from_env({"BILLING_DATABASE_URL": URL, "BILLING_SAVE_LINGER_MS": bad})


def test_the_event_loop_is_uvloop_by_default_or_asyncio_and_nothing_else() -> None:
    assert Settings.from_env({"BILLING_DATABASE_URL": URL}).event_loop == "uvloop"
    chosen = Settings.from_env({"BILLING_DATABASE_URL": URL, "BILLING_EVENT_LOOP": "asyncio"})
    assert chosen.event_loop == "asyncio"
    with pytest.raises(SettingsError, match="BILLING_EVENT_LOOP must be one of uvloop, asyncio, got 'tokio'"):
        Settings.from_env({"BILLING_DATABASE_URL": URL, "BILLING_EVENT_LOOP": "tokio"})


def test_every_process_runs_on_the_event_loop_the_setting_names() -> None:
    import asyncio

    import uvloop

    from billing.runtime import run_on_loop

    async def loop_type() -> type:
        return type(asyncio.get_running_loop())

    chosen = Settings.from_env({"BILLING_DATABASE_URL": URL})
    assert run_on_loop(chosen, loop_type()) is uvloop.Loop
    standard = Settings.from_env({"BILLING_DATABASE_URL": URL, "BILLING_EVENT_LOOP": "asyncio"})
    assert issubclass(run_on_loop(standard, loop_type()), asyncio.BaseEventLoop)
    assert not issubclass(run_on_loop(standard, loop_type()), uvloop.Loop)
