"""Settings of the edges: operator token, Redis URL, rate limits, private gateways (no I/O)."""

from __future__ import annotations

import pytest

from billing.settings import Settings, SettingsError, parse_rate_limits

DB = {"BILLING_DATABASE_URL": "postgresql://root@127.0.0.1:5432/billing"}


@pytest.mark.parametrize(
    ("raw", "expected"), [("1", True), ("TRUE", True), ("on", True), ("0", False), ("no", False)]
)
def test_gateway_allow_private_is_a_boolean(raw: str, expected: bool) -> None:
    assert Settings.from_env({**DB, "BILLING_GATEWAY_ALLOW_PRIVATE": raw}).gateway_allow_private is expected


def test_defaults() -> None:
    settings = Settings.from_env(DB)
    assert (settings.gateway_allow_private, settings.rate_limit_per_minute, settings.redis_url) == (
        False,
        1200,
        "",
    )
    assert settings.operator_token == ""


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BILLING_GATEWAY_ALLOW_PRIVATE": "maybe"}, "BILLING_GATEWAY_ALLOW_PRIVATE must be a boolean"),
        ({"BILLING_OPERATOR_TOKEN": "short"}, "BILLING_OPERATOR_TOKEN must be at least 32 characters"),
        ({"BILLING_REDIS_URL": "127.0.0.1:6379"}, "BILLING_REDIS_URL must be a redis://"),
        ({"BILLING_RATE_LIMIT_PER_MINUTE": "0"}, "BILLING_RATE_LIMIT_PER_MINUTE must be positive"),
        ({"BILLING_RATE_LIMITS": "bk_abcde=lots"}, "BILLING_RATE_LIMITS is malformed"),
    ],
)
def test_malformed_values_are_refused_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env({**DB, **env})


def test_rate_limit_overrides() -> None:
    tenant = "6F1C1F0E-0000-4000-8000-000000000001"
    assert parse_rate_limits(f" bk_AbCdE=3000 , {tenant}=120,") == {"bk_AbCdE": 3000, tenant.lower(): 120}
    for bad in ("bk_AbCdE", "=5", "bk_AbCdE=0", "bk_AbCdE=-1"):
        with pytest.raises(ValueError, match="positive requests per minute"):
            parse_rate_limits(bad)
