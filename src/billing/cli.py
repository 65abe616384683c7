"""The ``billing`` command line: operations (migrate, tenants, keys, tokens), the production processes
(api, relay, projections, worker), the gateway simulator, and ``billing dev`` (everything in one process).

Configuration comes from ``BILLING_*`` environment variables (:class:`~billing.settings.Settings`); a
missing or malformed one stops the command with exit status 2 and a message naming it. Long-running
commands stop cleanly on SIGINT/SIGTERM (a second signal cancels what is still running). Results meant
for scripts (ids, keys, tokens) go to stdout; logs go to stderr.

The process entry points (``run_projections``, ``run_relay``, ``run_worker``, ``create_app``, ...) are
imported inside the commands, so ``billing --help`` and the admin commands work without them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NoReturn
from uuid import UUID

from billing.settings import Settings, SettingsError

__all__ = ["CliError", "build_parser", "main", "parse_instance"]

COMMANDS = """commands:
  migrate                       apply the event store's table and sql/ (idempotent)
  tenant create                 register a tenant with its gateway (prints the tenant id)
  tenant list                   list tenants
  api-key create                issue an API key for a tenant (prints the key once)
  admin token                   mint an admin JWT for a tenant (needs BILLING_JWT_SECRET)
  api                           serve the public API (uvicorn)
  relay                         publish new events to RabbitMQ (outbox relay)
  projections                   keep the read models up to date
  projections rebuild           rebuild the read models from the event log
  worker                        consume jobs and send messages through the Evolution API
  gateway-simulator             serve a fake Evolution API
  dev                           everything in one process on embedded defaults (first run, demos)

configuration: BILLING_* environment variables, e.g. BILLING_DATABASE_URL, BILLING_AMQP_URL"""

SHUTDOWN_GRACE_S = 15.0


class CliError(Exception):
    """A command failed in a way the user can act on; ``main`` prints the message and exits ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


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

    sub.add_parser("api", description="serve the public API").set_defaults(handler=cmd_api)
    sub.add_parser("relay", description="outbox relay to RabbitMQ").set_defaults(handler=cmd_relay)
    p = sub.add_parser("projections", description="run (or rebuild) the read models")
    p.set_defaults(handler=cmd_projections)
    p.add_subparsers(title="optional action", metavar="[ACTION]").add_parser(
        "rebuild", help="rebuild the read models from the event log"
    ).set_defaults(handler=cmd_projections_rebuild)
    sub.add_parser("worker", description="send messages").set_defaults(handler=cmd_worker)

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
    p.add_argument("--api-key", default=None, help="API key of the demo tenant (default: a new one)")
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


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, then structured logging configured from them.

    Raises:
        SettingsError: naming the missing or malformed variable.
    """
    settings = Settings.from_env(None, **overrides)
    from billing.logging import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    return settings


def _entry(module: str, name: str) -> Any:
    """``module.name``, imported now (parts of the system are built separately)."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise CliError(f"{module}.{name} is not available: {exc}") from None


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Await ``fn(*args)``; a plain (blocking) function runs in a worker thread."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    result = await asyncio.to_thread(fn, *args)
    return await result if inspect.isawaitable(result) else result


def _open_container_sync(settings: Settings, broker: Any = None) -> Any:
    """One :class:`~billing.bootstrap.Container` for this process (database errors become CliError)."""
    import psycopg
    from eventsourcing.persistence import PersistenceError
    from psycopg_pool import PoolTimeout

    from billing.bootstrap import build_container

    try:
        return build_container(settings, broker=broker)
    except (psycopg.Error, PersistenceError, PoolTimeout, OSError) as exc:
        raise CliError(f"cannot open the database ({_safe_url(settings.database_url)}): {exc}") from None


def _safe_url(url: str) -> str:
    from billing.logging import mask_text

    return mask_text(url)


async def _open_container(settings: Settings, *, broker: bool) -> Any:
    """The process's container; with ``broker``, RabbitMQ connected and its topology declared once."""
    rabbit = None
    if broker:
        from billing.outbox.rabbitmq import RabbitBroker

        try:
            rabbit = await RabbitBroker.connect(settings.amqp_url, prefix=settings.broker_prefix)
            await rabbit.declare_topology()
        except Exception as exc:
            if rabbit is not None:
                await rabbit.close()
            raise CliError(f"cannot reach RabbitMQ ({_safe_url(settings.amqp_url)}): {exc}") from None
    try:
        return await asyncio.to_thread(_open_container_sync, settings, rabbit)
    except BaseException:
        if rabbit is not None:
            await rabbit.close()
        raise


def _admin_container() -> Any:
    return _open_container_sync(load_settings())


def _close_sync(container: Any) -> None:
    asyncio.run(container.aclose())


def _install_stop_signals(stop: asyncio.Event) -> None:
    """SIGINT/SIGTERM set ``stop``; a second signal cancels the running main task."""
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()

    def on_signal(signum: int) -> None:
        if stop.is_set() and main_task is not None:
            main_task.cancel()
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, on_signal, signum)


async def supervise(components: Mapping[str, Awaitable[Any]], stop: asyncio.Event) -> int:
    """Run ``components`` concurrently until ``stop`` is set or one of them ends; then stop them all.

    A component that ends (returns or raises) before ``stop`` is a failure: it is logged and the others
    are stopped. Components get :data:`SHUTDOWN_GRACE_S` seconds to finish after ``stop``, then are
    cancelled. Returns 0, or 1 when a component failed.
    """
    from billing.logging import get_logger

    log = get_logger("billing.cli")
    tasks = {asyncio.ensure_future(coro): name for name, coro in components.items()}
    stopper = asyncio.ensure_future(stop.wait())
    reported: set[asyncio.Future[Any]] = set()
    try:
        done, _ = await asyncio.wait({*tasks, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in done - {stopper}:
            error = None if task.cancelled() else task.exception()
            if error is None and stop.is_set():
                continue  # it ended because we are stopping
            reported.add(task)
            log.error("component stopped unexpectedly", component=tasks[task], exc_info=error)
        stop.set()
        _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE_S)
        for task in pending:
            log.warning("component did not stop in time; cancelling", component=tasks[task])
    finally:
        stopper.cancel()
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for task, result in zip(tasks, results, strict=True):
        if isinstance(result, Exception) and task not in reported:
            reported.add(task)
            log.error("component failed while stopping", component=tasks[task], exc_info=result)
    return 1 if reported else 0


def _uvicorn_server(app: Any, host: str, port: int, *, interface: str = "auto") -> Any:
    """A ``uvicorn.Server`` that leaves signals to us and logging to :mod:`billing.logging` (access lines
    included: uvicorn decides per process, from the ``uvicorn.access`` logger, not per server)."""
    import uvicorn

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Any:  # our loop handles SIGINT/SIGTERM (stop event)
            yield

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        log_config=None,
        access_log=True,
        interface=interface,  # type: ignore[arg-type]
        timeout_graceful_shutdown=5,
    )
    return _Server(config)


async def serve_until(server: Any, stop: asyncio.Event, what: str) -> None:
    """Run a uvicorn ``server`` until ``stop`` is set. Raises RuntimeError if it could not start."""

    async def serve() -> None:
        try:
            await server.serve()
        except SystemExit as exc:  # uvicorn exits the process when it cannot start; we stop cleanly
            raise RuntimeError(f"{what} did not start (status {exc.code}; see the log above)") from None

    serving = asyncio.ensure_future(serve())
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({serving, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        server.should_exit = True
        await serving
    if not server.started and not stop.is_set():
        raise RuntimeError(f"{what} did not start (see the log above)")


def _build_app(create_app: Callable[[Any], Any], container: Any) -> Any:
    """``create_app(container)``, then our logging set up again (a framework may install its own)."""
    from billing.logging import configure_logging

    app = create_app(container)
    configure_logging(container.settings.log_format, container.settings.log_level)
    return app


async def _run_api(container: Any, stop: asyncio.Event, host: str, port: int) -> None:
    create_app = _entry("billing.api.app", "create_app")
    server = _uvicorn_server(_build_app(create_app, container), host, port)
    await serve_until(server, stop, f"the API on {host}:{port}")


def _run_process(command: str, entry: tuple[str, str] | None, *, broker: bool) -> int:
    """Settings, one container, stop signals; run the entry point ``(module, name)`` as
    ``fn(container, stop)`` (None: the API) until a signal; close the container."""
    from billing.logging import get_logger

    settings = load_settings()
    fn = _entry(*entry) if entry is not None else None
    log = get_logger("billing.cli")

    async def run() -> int:
        stop = asyncio.Event()
        _install_stop_signals(stop)
        container = await _open_container(settings, broker=broker)
        log.info("process started", command=command)
        try:
            if fn is None:
                main = _run_api(container, stop, settings.api_host, settings.api_port)
            else:
                main = _call(fn, container, stop)
            return await supervise({command: main}, stop)
        finally:
            await container.aclose()
            log.info("process stopped", command=command)

    return asyncio.run(run())


# ---- operations commands ------------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    """``billing migrate``: create the event store's table and apply ``sql/*.sql`` (idempotent)."""
    import psycopg

    from billing.db import migrate

    settings = load_settings()
    try:
        applied = migrate(settings.database_url)
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
        tenant_id = TenantService(container.store, container.clock).create_tenant(
            name=args.name, gateway=gateway
        )
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
    settings = load_settings()
    mint_token = _entry("billing.api.auth", "mint_token")
    print(mint_token(settings.require_jwt_secret(), str(args.tenant), args.ttl))
    return 0


# ---- processes ----------------------------------------------------------------------------------------


def cmd_api(args: argparse.Namespace) -> int:
    """``billing api``: serve the public API on ``BILLING_API_HOST``:``BILLING_API_PORT``."""
    return _run_process("api", None, broker=False)  # the API reads PostgreSQL only


def cmd_relay(args: argparse.Namespace) -> int:
    """``billing relay``: follow the event log and publish jobs to RabbitMQ."""
    return _run_process("relay", ("billing.outbox.relay", "run_relay"), broker=True)


def cmd_projections(args: argparse.Namespace) -> int:
    """``billing projections``: keep the read models up to date."""
    return _run_process("projections", ("billing.projections.views", "run_projections"), broker=False)


def cmd_projections_rebuild(args: argparse.Namespace) -> int:
    """``billing projections rebuild``: rebuild the read models from the event log, then exit."""
    settings = load_settings()
    rebuild = _entry("billing.projections.views", "rebuild_projections")

    async def run() -> Any:
        container = await _open_container(settings, broker=False)
        try:
            return await _call(rebuild, container)
        finally:
            await container.aclose()

    replayed = asyncio.run(run())
    print(f"projections rebuilt ({replayed} notifications replayed)")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """``billing worker``: consume jobs and send messages."""
    return _run_process("worker", ("billing.worker.runner", "run_worker"), broker=True)


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


def cmd_dev(args: argparse.Namespace) -> int:
    """``billing dev``: embedded PostgreSQL, in-process broker and gateway simulator, a demo tenant with an
    API key and default templates, and api + projections + relay + worker in one process."""
    _check_port_free(args.host, args.port)
    from billing.embedded import EmbeddedPostgresError, start_embedded_postgres

    try:
        postgres = start_embedded_postgres(args.data_dir)
    except EmbeddedPostgresError as exc:
        raise CliError(str(exc)) from None
    try:
        return _dev(args, postgres)
    finally:
        postgres.stop()


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise CliError(
                f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port"
            ) from None


def _dev(args: argparse.Namespace, postgres: Any) -> int:
    """Settings for the embedded server, migrate, then run :func:`_dev_main`."""
    import os
    import secrets

    import psycopg

    from billing.db import migrate

    overrides: dict[str, object] = {
        "database_url": postgres.url,
        "api_host": args.host,
        "api_port": args.port,
    }
    if not os.environ.get("BILLING_LOG_FORMAT"):
        overrides["log_format"] = "console"
    if not os.environ.get("BILLING_POOL_SIZE"):
        overrides["pool_size"] = 10  # api, projections, relay and worker share one pool
    if not os.environ.get("BILLING_JWT_SECRET"):
        overrides["jwt_secret"] = secrets.token_urlsafe(48)  # admin tokens live as long as this run
    settings = load_settings(**overrides)
    try:
        migrate(settings.database_url)
    except psycopg.Error as exc:
        raise CliError(f"migration of the embedded database failed: {exc}") from None
    return asyncio.run(_dev_main(settings, args))


class _DevState:
    """What ``billing dev`` remembers between runs in ``<data dir>/dev.json`` (ids, no API key)."""

    def __init__(self, data_dir: str) -> None:
        from pathlib import Path

        self.path = Path(data_dir) / "dev.json"
        self.values: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            import json

            loaded = json.loads(self.path.read_text())
            if isinstance(loaded, dict):
                self.values = loaded

    def save(self, **values: Any) -> None:
        import json

        self.values.update(values)
        self.path.write_text(json.dumps(self.values, indent=2) + "\n")


async def _dev_main(settings: Settings, args: argparse.Namespace) -> int:
    """The one-process system: in-memory broker, simulator, demo tenant, then the four components."""
    import secrets

    from billing.gateway.simulator import EvolutionSimulator
    from billing.outbox.memory import InMemoryBroker

    run_projections = _entry("billing.projections.views", "run_projections")
    run_relay = _entry("billing.outbox.relay", "run_relay")
    run_worker = _entry("billing.worker.runner", "run_worker")
    create_app = _entry("billing.api.app", "create_app")

    stop = asyncio.Event()
    _install_stop_signals(stop)
    broker = InMemoryBroker(prefix=settings.broker_prefix)
    await broker.declare_topology()
    container = await asyncio.to_thread(_open_container_sync, settings, broker)
    try:
        state = _DevState(args.data_dir)
        simulator = EvolutionSimulator()
        gateway_key = str(state.values.get("gateway_key") or secrets.token_urlsafe(16))
        simulator.add_instance("demo", api_key=gateway_key, api_version="v2")
        gateway_port = _free_port(state.values.get("gateway_port"))
        gateway = {
            "base_url": f"http://127.0.0.1:{gateway_port}",
            "instance": "demo",
            "api_key": gateway_key,
            "api_version": "v2",
        }
        tenant_id, api_key = await asyncio.to_thread(_seed_demo, container, state, gateway, args.api_key)
        state.save(tenant_id=str(tenant_id), gateway_key=gateway_key, gateway_port=gateway_port)

        gateway_server = _uvicorn_server(simulator.asgi_app, "127.0.0.1", gateway_port, interface="asgi3")
        api_server = _uvicorn_server(_build_app(create_app, container), args.host, args.port)
        components = {
            "gateway-simulator": serve_until(gateway_server, stop, "the gateway simulator"),
            "api": serve_until(api_server, stop, f"the API on {args.host}:{args.port}"),
            "projections": _call(run_projections, container, stop),
            "relay": _call(run_relay, container, stop),
            "worker": _call(run_worker, container, stop),
            "simulator-log": _log_simulator(simulator, stop),
        }
        banner = asyncio.ensure_future(
            _announce(
                api_server,
                stop,
                args,
                api_key=api_key,
                tenant_id=tenant_id,
                extra={
                    "PostgreSQL": settings.database_url,
                    "Gateway": f"Evolution API simulator at {gateway['base_url']} (instance demo, v2)",
                },
            )
        )
        try:
            return await supervise(components, stop)
        finally:
            banner.cancel()
    finally:
        await container.aclose()


def _free_port(preferred: object = None) -> int:
    """``preferred`` if it is a free local port, else any free port on 127.0.0.1."""
    candidates = [preferred] if isinstance(preferred, int) and 0 < preferred < 65536 else []
    for port in [*candidates, 0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            chosen: int = sock.getsockname()[1]
            return chosen
    raise CliError("no free local port for the gateway simulator")


def _seed_demo(
    container: Any, state: _DevState, gateway: dict[str, str], api_key: str | None
) -> tuple[UUID, str]:
    """The demo tenant (created once, its gateway kept pointing at this run's simulator) and its key."""
    from billing.domain.errors import NotFound
    from billing.services.tenants import TenantService

    service = TenantService(container.store, container.clock)
    tenant_id: UUID | None = None
    remembered = state.values.get("tenant_id")
    if remembered:
        try:
            tenant = service.get_tenant(UUID(str(remembered)))
        except (NotFound, ValueError):
            tenant = None  # the data directory was reset: create a new demo tenant
        if tenant is not None:
            tenant_id = tenant.id
            if dict(tenant.gateway) != gateway:
                service.configure_gateway(tenant.id, gateway)
    if tenant_id is None:
        tenant_id = service.create_tenant(name="Empresa Demo", gateway=gateway)
    try:
        key = service.issue_api_key(tenant_id, "dev", key=api_key)
    except ValueError as exc:
        raise CliError(f"--api-key: {exc}", code=2) from None
    return tenant_id, key


async def _log_simulator(simulator: Any, stop: asyncio.Event) -> None:
    """Log each message the simulator accepts (the demo's "message went out"), until ``stop``."""
    from billing.logging import get_logger

    log = get_logger("billing.dev.gateway")
    seen = 0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
        sent = simulator.sent
        for message in sent[seen:]:
            log.info(
                "gateway simulator accepted a message",
                instance=message.instance,
                number=message.number,
                message_id=message.message_id,
                text=message.text,
            )
        seen = len(sent)


DEMO_BODY = (
    '{"external_id": "demo-1", "contacts": ['
    '{"nome": "Maria Souza", "telefone": "+5511987654321", '
    '"mensagem": "Sua fatura de janeiro está disponível."}, '
    '{"nome": "João Lima", "telefone": "(21) 99876-5432", "mensagem": "Seu boleto foi registrado."}, '
    '{"nome": "Ana Costa", "telefone": "31998296801"}]}'
)


async def _announce(
    server: Any,
    stop: asyncio.Event,
    args: argparse.Namespace,
    *,
    api_key: str,
    tenant_id: UUID,
    extra: dict[str, str],
) -> None:
    """Once the API listens, print where everything is and a ready-to-copy curl command."""
    while not server.started:
        if stop.is_set():
            return
        await asyncio.sleep(0.05)
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host  # noqa: S104
    base = f"http://{f'[{host}]' if ':' in host else host}:{args.port}"
    api = f"{base}/api/billing/v1/billing"
    lines = [
        "",
        "billing dev is running (Ctrl-C to stop).",
        f"  API:        {base}   (OpenAPI: {base}/schema)",
        f"  API key:    {api_key}",
        f"  Tenant:     {tenant_id}",
        *(f"  {name + ':':<11} {value}" for name, value in extra.items()),
        "",
        "Send three notifications (sent 24/7):",
        f"  curl -sS -X POST {api}/send/notification \\",
        "    -H 'Content-Type: application/json' \\",
        f"    -H 'X-Billing-API-Key: {api_key}' \\",
        f"    -d '{DEMO_BODY}'",
        "",
        "Then poll the queue's status and list the campaign's contacts (ids from the answer above):",
        f"  curl -sS -H 'X-Billing-API-Key: {api_key}' {api}/queue/<queue_id>/status",
        f"  curl -sS -H 'X-Billing-API-Key: {api_key}' {api}/campaign/<campaign_id>/contacts",
        "",
    ]
    print("\n".join(lines), flush=True)
