"""The ``billing`` command line: help, argument parsing, and configuration errors (no I/O)."""

from __future__ import annotations

import argparse
import gc

import pytest

from billing.cli import build_parser, main, parse_instance
from billing.runtime import freeze_startup_heap

EVERY_COMMAND = [
    "migrate",
    "tenant create",
    "tenant list",
    "api-key create",
    "admin token",
    "api",
    "relay",
    "projections",
    "projections rebuild",
    "worker",
    "hooks",
    "history export",
    "user create",
    "gateway-simulator",
    "dev",
]


@pytest.fixture
def no_billing_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment with no ``BILLING_*`` variable."""
    import os

    for name in list(os.environ):
        if name.startswith("BILLING_"):
            monkeypatch.delenv(name)
    return monkeypatch


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    code = exit_info.value.code
    return 0 if code is None else int(code)


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--help"]) == 0

    out = capsys.readouterr().out
    listed = [line.strip().split("  ")[0] for line in out.splitlines() if line.startswith("  ")]
    for command in EVERY_COMMAND:
        assert command in listed, f"{command!r} missing from billing --help"
    assert "BILLING_DATABASE_URL" in out


def test_help_lists_every_command_the_parser_takes(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--help"]) == 0
    out = capsys.readouterr().out
    listed = {line.strip().split(" ")[0] for line in out.splitlines() if line.startswith("  ")}
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(commands.choices) - listed == set()


@pytest.mark.parametrize(
    ("argv", "options"),
    [
        (["dev", "--help"], ["--host", "--port", "--api-key", "--data-dir"]),
        (
            ["tenant", "create", "--help"],
            ["--name", "--gateway-url", "--instance", "--gateway-key", "--gateway-version"],
        ),
        (["api-key", "create", "--help"], ["--tenant", "--name"]),
        (["admin", "token", "--help"], ["--tenant", "--ttl"]),
        (["gateway-simulator", "--help"], ["--port", "--host", "--instance"]),
    ],
)
def test_subcommand_help_lists_its_options(
    argv: list[str], options: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(argv) == 0

    out = capsys.readouterr().out
    for option in options:
        assert option in out


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run([]) == 2

    assert "usage: billing" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["migrate"],
        ["tenant", "list"],
        ["api-key", "create", "--tenant", "6f1c1f0e-0000-4000-8000-000000000001"],
        ["api"],
        ["relay"],
        ["projections"],
        ["projections", "rebuild"],
        ["worker"],
    ],
    ids=" ".join,
)
def test_missing_database_url_exits_2_naming_it(
    argv: list[str], no_billing_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(argv) == 2

    err = capsys.readouterr().err
    assert err.startswith("billing: configuration error: BILLING_DATABASE_URL is required")


def test_admin_token_needs_only_the_jwt_secret(
    no_billing_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tenant = "6f1c1f0e-0000-4000-8000-000000000001"
    assert run(["admin", "token", "--tenant", tenant]) == 2
    assert "BILLING_JWT_SECRET must be set" in capsys.readouterr().err
    no_billing_env.setenv("BILLING_JWT_SECRET", "j" * 32)
    assert run(["admin", "token", "--tenant", tenant]) == 0
    token = capsys.readouterr().out.strip()
    from litestar.security.jwt import Token

    assert Token.decode(token, "j" * 32, "HS256").sub == tenant


def test_malformed_variable_exits_2_naming_it(
    no_billing_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    no_billing_env.setenv("BILLING_DATABASE_URL", "postgresql://root@127.0.0.1:5432/billing")
    no_billing_env.setenv("BILLING_API_PORT", "eighty")

    assert run(["api"]) == 2

    assert "BILLING_API_PORT must be a int, got 'eighty'" in capsys.readouterr().err


def test_socket_database_url_is_refused(
    no_billing_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    no_billing_env.setenv("BILLING_DATABASE_URL", "postgresql://root@/billing?host=/var/run/postgresql")

    assert run(["migrate"]) == 2

    assert "BILLING_DATABASE_URL must name a TCP host" in capsys.readouterr().err


def test_tenant_id_must_be_a_uuid(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["api-key", "create", "--tenant", "acme"]) == 2

    assert "not a UUID: 'acme'" in capsys.readouterr().err


def test_tenant_create_requires_the_gateway(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["tenant", "create", "--name", "Acme"]) == 2

    assert "--gateway-url" in capsys.readouterr().err


def test_dev_defaults() -> None:
    args = build_parser().parse_args(["dev"])

    assert (args.host, args.port, args.api_key, args.data_dir) == ("127.0.0.1", 8000, None, "./.billing")


def test_gateway_simulator_collects_instances() -> None:
    args = build_parser().parse_args(
        ["gateway-simulator", "--port", "9000", "--instance", "a:k1", "--instance", "b:k2:v1"]
    )

    assert args.port == 9000
    assert args.host == "127.0.0.1"
    assert args.instance == [("a", "k1", "v2"), ("b", "k2", "v1")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("demo:secret", ("demo", "secret", "v2")),
        ("demo:secret:v1", ("demo", "secret", "v1")),
        ("demo:secret:v2", ("demo", "secret", "v2")),
    ],
)
def test_parse_instance(text: str, expected: tuple[str, str, str]) -> None:
    assert parse_instance(text) == expected


@pytest.mark.parametrize("text", ["demo", ":key", "demo:", "demo:key:v3", "a:b:c:d"])
def test_parse_instance_refuses_malformed_values(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="expected NAME:KEY"):
        parse_instance(text)


def test_the_startup_heap_is_frozen_out_of_the_collectors_reach() -> None:
    alive_at_startup: list[object] = [object()]
    try:
        frozen = freeze_startup_heap()
        assert frozen == gc.get_freeze_count() > 0
        assert not any(obj is alive_at_startup for obj in gc.get_objects())
        created_after: list[object] = [object()]
        assert any(obj is created_after for obj in gc.get_objects())
    finally:
        gc.unfreeze()
    assert any(obj is alive_at_startup for obj in gc.get_objects())
