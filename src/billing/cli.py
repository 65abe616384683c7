"""The ``billing`` command line: operations (migrate, tenants, keys, tokens), the production processes
(api, relay, projections, worker), the gateway simulator, and ``billing dev`` (everything in one process).

Configuration comes from ``BILLING_*`` environment variables (:class:`~billing.settings.Settings`); a
missing or malformed one stops the command with exit status 2 and a message naming it. Long-running
commands stop cleanly on SIGINT/SIGTERM (a second signal cancels what is still running). Results meant
for scripts (ids, keys, tokens) go to stdout; logs go to stderr.

The process entry points (``run_projections_process``, ``run_relay_process``, ``create_app``, ...) are
imported inside the commands, so ``billing --help`` and the admin commands work without them.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn
from uuid import UUID

from billing import cli_ops
from billing.cli_errors import SHUTDOWN_GRACE_S, CliError  # noqa: F401
from billing.devmode import cmd_dev
from billing.runtime import (
    _admin_container,
    _call,
    _close_sync,
    _open_container,
    _run_process,
    _safe_url,
    load_cli_settings,
)
from billing.settings import SettingsError

__all__ = ["CliError", "build_parser", "main", "parse_instance"]

COMMANDS = """commands:
  migrate                       apply the event store's table and the package's DDL (idempotent)
  tenant create                 register a tenant with its gateway (prints the tenant id)
  tenant list                   list tenants
  api-key create                issue an API key for a tenant (prints the key once)
  admin token                   mint an admin JWT for a tenant (needs BILLING_JWT_SECRET)
  user create                   create a dashboard user of a tenant (prompts for the password)
  api                           serve the public API (uvicorn)
  relay                         publish new events to RabbitMQ (outbox relay)
  projections                   keep the read models up to date
  projections rebuild           rebuild the read models from the event log
  projections rebuild --verify  rebuild into a scratch schema and compare with the live views
  projections status            each follower's position, lag and recorded errors
  history export                write a tenant's history (evidence) to a CSV/JSON file
  worker                        consume jobs and send messages through the Evolution API
  hooks                         apply the gateway's receipts and replies, deliver the signed ERP webhooks
  gateway-simulator             serve a fake Evolution API
  dev                           everything in one process on embedded defaults (first run, demos)

configuration: BILLING_* environment variables, e.g. BILLING_DATABASE_URL, BILLING_AMQP_URL"""


# ---- entry point ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the ``billing`` command line with ``argv`` (default ``sys.argv[1:]``) and exit.

    Exit status: 0 on success, 1 when the command failed, 2 for bad usage or configuration
    (e.g. ``BILLING_DATABASE_URL`` missing), 130 when interrupted.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int | None] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        sys.exit(2)
    try:
        code = handler(args) or 0
    except SettingsError as exc:
        print(f"billing: configuration error: {exc}", file=sys.stderr)
        code = 2
    except CliError as exc:
        print(f"billing: {exc}", file=sys.stderr)
        code = exc.code
    except (KeyboardInterrupt, asyncio.CancelledError):  # a second signal cancels what still runs
        print("billing: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command (each sub-parser sets ``handler``)."""
    parser = argparse.ArgumentParser(
        prog="billing",
        description="Multi-tenant WhatsApp billing reminders.",
        epilog=COMMANDS,  # one list of every command, sub-commands included
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(title="command", metavar="COMMAND", help="one of the commands below")

    p = sub.add_parser("migrate", description="apply the schema (idempotent)")
    p.set_defaults(handler=cmd_migrate)

    group = sub.add_parser("tenant", description="create or list tenants")
    group.set_defaults(handler=_usage_of(group))
    tenant = group.add_subparsers(metavar="ACTION")
    p = tenant.add_parser("create", help="register a tenant (prints its id)")
    p.add_argument("--name", required=True)
    p.add_argument("--gateway-url", required=True, help="Evolution API base URL")
    p.add_argument("--instance", required=True, help="Evolution API instance name")
    p.add_argument("--gateway-key", required=True, help="Evolution API key of the instance")
    p.add_argument("--gateway-version", choices=("v1", "v2"), default="v2")
    p.set_defaults(handler=cmd_tenant_create)
    p = tenant.add_parser("list", help="list tenants")
    p.set_defaults(handler=cmd_tenant_list)

    group = sub.add_parser("api-key", description="manage API keys")
    group.set_defaults(handler=_usage_of(group))
    keys = group.add_subparsers(metavar="ACTION")
    p = keys.add_parser("create", help="issue an API key (prints it once)")
    p.add_argument("--tenant", required=True, type=_uuid, help="tenant id")
    p.add_argument("--name", default="default")
    p.set_defaults(handler=cmd_api_key_create)

    group = sub.add_parser("admin", description="admin helpers")
    group.set_defaults(handler=_usage_of(group))
    admin = group.add_subparsers(metavar="ACTION")
    p = admin.add_parser("token", help="mint an admin JWT (needs BILLING_JWT_SECRET)")
    p.add_argument("--tenant", required=True, type=_uuid, help="tenant id")
    p.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    p.set_defaults(handler=cmd_admin_token)

    group = sub.add_parser("user", description="dashboard users")
    group.set_defaults(handler=_usage_of(group))
    users = group.add_subparsers(metavar="ACTION")
    p = users.add_parser("create", help="create a dashboard user (prompts for the password; or reads stdin)")
    p.add_argument("--tenant", required=True, type=_uuid, help="tenant id")
    p.add_argument("--email", required=True)
    p.add_argument("--role", choices=("admin", "viewer"), default="admin")
    p.set_defaults(handler=cmd_user_create)

    sub.add_parser("api", description="serve the public API").set_defaults(handler=cmd_api)
    sub.add_parser("relay", description="outbox relay to RabbitMQ").set_defaults(handler=cmd_relay)
    p = sub.add_parser("projections", description="run (or rebuild) the read models")
    p.set_defaults(handler=cmd_projections)
    actions = p.add_subparsers(title="optional action", metavar="[ACTION]")
    rebuild = actions.add_parser("rebuild", help="rebuild the read models from the event log")
    rebuild.set_defaults(handler=cmd_projections_rebuild)
    rebuild.add_argument(
        "--verify",
        action="store_const",
        const=cli_ops.cmd_projections_verify,
        dest="handler",
        help="rebuild into a scratch schema and compare with the live views (exit 1 on a difference)",
    )
    rebuild.add_argument("--max-differences", type=int, default=20, help="with --verify (default 20)")
    status = actions.add_parser("status", help="each follower's position, lag and recorded errors")
    status.add_argument("--json", action="store_true", help="as JSON")
    status.set_defaults(handler=cli_ops.cmd_projections_status)
    cli_ops.add_history_parser(sub)
    sub.add_parser("worker", description="send messages").set_defaults(handler=cmd_worker)
    sub.add_parser(
        "hooks", description="apply the gateway's webhooks (receipts, replies) and deliver the ERP's"
    ).set_defaults(handler=cmd_hooks)

    p = sub.add_parser("gateway-simulator", description="serve a fake Evolution API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument(
        "--instance",
        action="append",
        type=parse_instance,
        default=[],
        metavar="NAME:KEY[:v1|v2]",
        help="an instance (repeatable); default: 'demo' with a random key",
    )
    p.add_argument("--global-api-key", default=None, help="a key accepted for every instance")
    p.add_argument("--time-scale", type=float, default=1.0, help="factor applied to typing delays")
    p.set_defaults(handler=cmd_gateway_simulator)

    p = sub.add_parser("dev", description="everything in one process on embedded defaults")
    p.add_argument("--host", default="127.0.0.1", help="API address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    p.add_argument(
        "--api-key",
        default=None,
        help="API key of the demo tenant (default: the one in DATA_DIR/dev-secrets.json, else a new one)",
    )
    p.add_argument("--data-dir", default="./.billing", help="embedded data (default ./.billing)")
    p.set_defaults(handler=cmd_dev)
    return parser


def _usage_of(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """A handler for a command group run without its action: print the group's help, exit 2."""

    def usage(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return usage


def parse_instance(text: str) -> tuple[str, str, str]:
    """Parse ``NAME:KEY[:v1|v2]`` into ``(name, key, version)`` (version defaults to ``v2``).

    Raises:
        argparse.ArgumentTypeError: malformed value.
    """
    parts = text.split(":")
    if len(parts) == 3 and parts[2] in ("v1", "v2"):
        name, key, version = parts
    elif len(parts) == 2:
        (name, key), version = parts, "v2"
    else:
        raise argparse.ArgumentTypeError(f"expected NAME:KEY[:v1|v2], got {text!r}")
    if not name or not key:
        raise argparse.ArgumentTypeError(f"expected NAME:KEY[:v1|v2], got {text!r}")
    return name, key, version


def _uuid(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {text!r}") from None


# ---- shared plumbing ----------------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    """``billing migrate``: create the event store's table and apply the package's ``billing/sql/*.sql``
    (idempotent); a package without them is an error (exit status 1), never a silent success."""
    import psycopg

    from billing.db import MigrationError, migrate

    settings = load_cli_settings()
    try:
        applied = migrate(settings.database_url)
    except MigrationError as exc:
        raise CliError(str(exc)) from None
    except psycopg.Error as exc:
        raise CliError(f"migration failed ({_safe_url(settings.database_url)}): {exc}") from None
    for name in applied:
        print(f"applied {name}")
    return 0


def cmd_tenant_create(args: argparse.Namespace) -> int:
    """``billing tenant create``: register a tenant with default templates; prints its id."""
    from billing.domain.errors import InvalidValue
    from billing.services.tenants import TenantService

    gateway = {
        "base_url": args.gateway_url,
        "instance": args.instance,
        "api_key": args.gateway_key,
        "api_version": args.gateway_version,
    }
    container = _admin_container()
    try:
        guard = container.check_gateway_url
        service = TenantService(container.store, container.clock, gateway_url_guard=guard)
        tenant_id = service.create_tenant(name=args.name, gateway=gateway)
    except (InvalidValue, ValueError) as exc:
        raise CliError(str(exc), code=2) from None
    finally:
        _close_sync(container)
    print(tenant_id)
    return 0


def cmd_tenant_list(args: argparse.Namespace) -> int:
    """``billing tenant list``: one line per tenant (id, name, gateway instance, version, URL), read from the
    event log (works before any projection ran)."""
    from billing.domain.tenant import Tenant

    container = _admin_container()
    try:
        for tenant in _tenants(container.store, Tenant):
            gateway = tenant.gateway
            print(
                f"{tenant.id}\t{tenant.name}\t{gateway['instance']}\t{gateway['api_version']}\t{gateway['base_url']}"
            )
    finally:
        _close_sync(container)
    return 0


def _tenants(store: Any, tenant_cls: Any) -> list[Any]:
    topic = tenant_cls.Registered.TOPIC
    found, start = [], 1
    while True:
        page = store.recorder.select_notifications(start=start, limit=500, topics=[topic])
        found += [store.repository.get(n.originator_id) for n in page]
        if len(page) < 500:
            return found
        start = page[-1].id + 1


def cmd_api_key_create(args: argparse.Namespace) -> int:
    """``billing api-key create``: issue a key for the tenant and print it (the only time it is shown)."""
    from billing.domain.errors import NotFound
    from billing.services.tenants import TenantService

    container = _admin_container()
    try:
        key = TenantService(container.store, container.clock).issue_api_key(args.tenant, args.name)
    except NotFound as exc:
        raise CliError(f"tenant {args.tenant}: {exc}") from None
    finally:
        _close_sync(container)
    print(key)
    return 0


def cmd_admin_token(args: argparse.Namespace) -> int:
    """``billing admin token``: print an admin JWT for the tenant, valid ``--ttl`` seconds."""
    if args.ttl <= 0:
        raise CliError("--ttl must be positive", code=2)
    import os

    secret = os.environ.get("BILLING_JWT_SECRET", "")
    if len(secret) < 32:
        raise CliError(
            "BILLING_JWT_SECRET must be set to the API's secret (at least 32 characters); "
            "`billing dev` prints a ready admin token instead",
            code=2,
        )
    from billing.api.auth import mint_token

    print(mint_token(secret, str(args.tenant), args.ttl))
    return 0


def cmd_user_create(args: argparse.Namespace) -> int:
    """``billing user create``: a dashboard user; the password is prompted twice on a terminal, or read
    as the first line of standard input otherwise (scripts, tests). Prints the user id."""
    import getpass
    import sys

    from billing.domain.errors import InvalidValue, NotFound
    from billing.services.users import UserService

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise CliError("the passwords differ", code=2)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    container = _admin_container()
    try:
        user = UserService(container.store, container.pool, container.clock).create(
            args.tenant, email=args.email, password=password, role=args.role
        )
    except NotFound as exc:
        raise CliError(f"tenant {args.tenant}: {exc}") from None
    except InvalidValue as exc:
        raise CliError(f"{exc.field}: {exc.message}", code=2) from None
    finally:
        _close_sync(container)
    print(user.id)
    return 0


# ---- processes ----------------------------------------------------------------------------------------


def cmd_api(args: argparse.Namespace) -> int:
    """``billing api``: serve the public API on ``BILLING_API_HOST``:``BILLING_API_PORT``."""
    return _run_process("api", None, broker=False)  # the API reads PostgreSQL only


def cmd_relay(args: argparse.Namespace) -> int:
    """``billing relay``: follow the event log and publish jobs to RabbitMQ."""
    from billing.bootstrap import run_relay_process

    return _run_process("relay", run_relay_process, broker=True)


def cmd_projections(args: argparse.Namespace) -> int:
    """``billing projections``: keep the read models up to date."""
    from billing.bootstrap import run_projections_process

    return _run_process("projections", run_projections_process, broker=False)


def cmd_projections_rebuild(args: argparse.Namespace) -> int:
    """``billing projections rebuild``: rebuild the read models from the event log, then exit."""
    settings = load_cli_settings()
    from billing.progress import replay_progress
    from billing.projections.rebuild import rebuild_projections as rebuild

    async def run() -> Any:
        container = await _open_container(settings, broker=False)
        try:
            with replay_progress("rebuilding projections") as progress:
                return await _call(
                    functools.partial(rebuild, container.store, container.pool, progress=progress)
                )
        finally:
            await container.aclose()

    started = time.monotonic()
    replayed = asyncio.run(run())
    print(f"projections rebuilt in {time.monotonic() - started:.1f} s ({replayed} notifications replayed)")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """``billing worker``: consume jobs and send messages."""
    from billing.bootstrap import run_worker_process

    return _run_process("worker", run_worker_process, broker=True)


def cmd_hooks(args: argparse.Namespace) -> int:
    """``billing hooks``: apply receipts and replies, deliver signed webhooks to the ERPs."""
    from billing.bootstrap import run_hooks_process

    return _run_process("hooks", run_hooks_process, broker=False)


def cmd_gateway_simulator(args: argparse.Namespace) -> int:
    """``billing gateway-simulator``: serve a fake Evolution API until SIGINT/SIGTERM."""
    import secrets

    from billing.gateway.simulator import run_simulator
    from billing.logging import configure_logging

    configure_logging("console", "INFO")
    instances = args.instance or [("demo", secrets.token_urlsafe(16), "v2")]
    for name, key, version in instances:
        print(f"instance {name} ({version}) apikey {key}  http://{args.host}:{args.port}", flush=True)

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # run_simulator ends quietly on it

    signal.signal(signal.SIGTERM, terminate)
    run_simulator(
        args.host,
        args.port,
        instances=instances,
        global_api_key=args.global_api_key,
        time_scale=args.time_scale,
    )
    return 0
