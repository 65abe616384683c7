"""``billing dev``: embedded PostgreSQL, in-process broker and gateway simulator, a demo tenant with an API
key and default templates, and api + projections + relay + worker in one process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
from typing import Any
from uuid import UUID

from billing.cli_errors import CliError
from billing.runtime import (
    _build_app,
    _call,
    _install_stop_signals,
    _open_container_sync,
    _uvicorn_server,
    load_settings,
    run_on_loop,
    serve_until,
    supervise,
)
from billing.settings import Settings


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

    import psycopg

    from billing.db import MigrationError, migrate

    overrides: dict[str, object] = {
        "database_url": postgres.url,
        "api_host": args.host,
        "api_port": args.port,
    }
    if not os.environ.get("BILLING_LOG_FORMAT"):
        overrides["log_format"] = "console"
    if not os.environ.get("BILLING_POOL_SIZE"):
        overrides["pool_size"] = 10  # api, projections, relay and worker share one pool
    if not os.environ.get("BILLING_GATEWAY_ALLOW_PRIVATE"):
        overrides["gateway_allow_private"] = True  # the simulator listens on 127.0.0.1
    if not os.environ.get("BILLING_WEBHOOKS_ALLOW_PRIVATE"):
        overrides["webhooks_allow_private"] = True  # a demo ERP receiver on this machine
    secrets_file = DevSecrets(args.data_dir)
    if not os.environ.get("BILLING_JWT_SECRET"):
        overrides["jwt_secret"] = secrets_file.get("jwt_secret")  # admin tokens survive a restart
    if not os.environ.get("BILLING_OPERATOR_TOKEN"):
        overrides["operator_token"] = secrets_file.get("operator_token")
    settings = load_settings(**overrides)
    try:
        migrate(settings.database_url)
    except (psycopg.Error, MigrationError) as exc:
        raise CliError(f"migration of the embedded database failed: {exc}") from None
    return run_on_loop(settings, _dev_main(settings, args))


class DevSecrets:
    """The dev run's secrets, kept in ``<data dir>/dev-secrets.json`` (mode 0600) so a restart keeps
    working credentials: ``jwt_secret`` (admin tokens), ``operator_token`` (``/health/detail``) and
    ``api_key`` (the demo key). Each is minted (``secrets``) the first time it is asked for."""

    def __init__(self, data_dir: str) -> None:
        import json
        from pathlib import Path

        self.path = Path(data_dir) / "dev-secrets.json"
        self.values: dict[str, str] = {}
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(self.path.read_text())
            if isinstance(loaded, dict):
                self.values = {k: v for k, v in loaded.items() if isinstance(v, str) and len(v) >= 32}

    def get(self, name: str) -> str:
        """The kept value of ``name``, or a new random one (48 bytes, URL-safe) saved at once."""
        import secrets

        if name not in self.values:
            self.put(name, secrets.token_urlsafe(48))
        return self.values[name]

    def put(self, name: str, value: str) -> None:
        """Keep ``value`` as ``name`` (the file is rewritten, owner-only)."""
        import json
        import os

        self.values[name] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(self.values, indent=2) + "\n")
        os.chmod(self.path, 0o600)


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

    from billing.bootstrap import (
        run_hooks_process,
        run_projections_process,
        run_relay_process,
        run_worker_process,
    )
    from billing.gateway.simulator import EvolutionSimulator
    from billing.metrics import register_database_collector
    from billing.outbox.memory import InMemoryBroker
    from billing.webapp import create_app

    stop = asyncio.Event()
    _install_stop_signals(stop)
    broker = InMemoryBroker(prefix=settings.broker_prefix)
    await broker.declare_topology()
    container = await asyncio.to_thread(_open_container_sync, settings, broker)
    # the projections run here, so the API's /metrics carries the database gauges (billing_queues,
    # billing_follower_*) as the projections process's own port does in production
    register_database_collector(container.store.recorder.max_notification_id, container.pool)
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
        tenant_id, api_key = await asyncio.to_thread(
            _seed_demo, container, state, gateway, args.api_key, DevSecrets(args.data_dir)
        )
        state.save(tenant_id=str(tenant_id), gateway_key=gateway_key, gateway_port=gateway_port)
        login = await asyncio.to_thread(_seed_demo_user, container, state, tenant_id)
        await asyncio.to_thread(_wire_gateway_webhook, container, simulator, tenant_id, args)

        gateway_server = _uvicorn_server(simulator.asgi_app, "127.0.0.1", gateway_port, interface="asgi3")
        api_server = _uvicorn_server(_build_app(create_app, container), args.host, args.port)
        components = {
            "gateway-simulator": serve_until(gateway_server, stop, "the gateway simulator"),
            "api": serve_until(api_server, stop, f"the API on {args.host}:{args.port}"),
            "projections": _call(run_projections_process, container, stop),
            "relay": _call(run_relay_process, container, stop),
            "worker": _call(run_worker_process, container, stop),
            "hooks": _call(run_hooks_process, container, stop),
            "simulator-log": _log_simulator(simulator, stop),
        }
        banner = asyncio.ensure_future(
            _announce(
                api_server,
                stop,
                args,
                api_key=api_key,
                tenant_id=tenant_id,
                login=login,
                extra={
                    "Admin JWT": _admin_token(settings, tenant_id),
                    "Operator": f"{settings.operator_token}   (Bearer token of /health/detail)",
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
    container: Any, state: _DevState, gateway: dict[str, str], api_key: str | None, kept: DevSecrets
) -> tuple[UUID, str]:
    """The demo tenant (created once, its gateway kept pointing at this run's simulator) and its key:
    ``api_key`` (``--api-key``), else the key kept in ``kept`` while it still authenticates, else a new
    one (kept for the next start)."""
    from billing.domain.errors import NotFound
    from billing.services.tenants import TenantService

    service = TenantService(container.store, container.clock, gateway_url_guard=container.check_gateway_url)
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
                service.configure(tenant.id, gateway=gateway)
    if tenant_id is None:
        tenant_id = service.create_tenant(name="Empresa Demo", gateway=gateway)
    if api_key is not None:
        try:
            return tenant_id, service.issue_api_key(tenant_id, "dev", key=api_key)
        except ValueError as exc:
            raise CliError(f"--api-key: {exc}", code=2) from None
    remembered_key = kept.values.get("api_key")
    if remembered_key and service.authenticate(remembered_key) == tenant_id:
        return tenant_id, remembered_key
    key = service.issue_api_key(tenant_id, "dev")
    kept.put("api_key", key)
    return tenant_id, key


DEMO_EMAIL = "demo@empresa.demo"


def _seed_demo_user(container: Any, state: _DevState, tenant_id: UUID) -> tuple[str, str]:
    """The demo tenant's dashboard admin (email, password): created once, its password kept in the data
    directory's state file so it stays the same across runs."""
    import secrets

    from billing.domain.user import User, user_id_for
    from billing.eventstore import get_owned
    from billing.services.users import UserService

    password = str(state.values.get("dashboard_password") or secrets.token_urlsafe(12))
    user = get_owned(container.store, user_id_for(DEMO_EMAIL), User)
    if user is None or user.tenant_id != tenant_id or user.removed:
        if user is not None and user.tenant_id != tenant_id:
            raise CliError("the demo user belongs to another tenant: reset the data directory")
        UserService(container.store, container.pool, container.clock).create(
            tenant_id, email=DEMO_EMAIL, password=password, role="admin"
        )
    state.save(dashboard_password=password)
    return DEMO_EMAIL, password


def _wire_gateway_webhook(container: Any, simulator: Any, tenant_id: UUID, args: argparse.Namespace) -> None:
    """Point the simulator's webhook at this API with a fresh secret (receipts and replies come back)."""
    from billing.api.hooks import GATEWAY_SECRET_HEADER
    from billing.api.public import BASE
    from billing.services.engagement import EngagementService

    secret = EngagementService(container.store, container.pool, container.clock).new_gateway_secret(tenant_id)
    url = f"http://127.0.0.1:{args.port}{BASE}/gateway/events/{tenant_id}"
    simulator.set_webhook("demo", url, headers={GATEWAY_SECRET_HEADER: secret})


async def _log_simulator(simulator: Any, stop: asyncio.Event) -> None:
    """Log each message the simulator accepts (the demo's "message went out"), until ``stop``. The text
    itself is personal data and stays out of the log: the campaign's contact list shows it."""
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
                text_chars=len(message.text),
            )
        seen = len(sent)


DEMO_BODY = (
    '{"external_id": "demo-1", "contacts": ['
    '{"nome": "Maria Souza", "telefone": "+5511987654321", '
    '"mensagem": "Sua fatura de janeiro está disponível."}, '
    '{"nome": "João Lima", "telefone": "(21) 99876-5432", "mensagem": "Seu boleto foi registrado."}, '
    '{"nome": "Ana Costa", "telefone": "31998296801"}]}'
)
DEMO_IDEMPOTENCY_KEY = "demo-1"
"""The ``Idempotency-Key`` of the printed curl command: run twice, it queues one batch."""


def _admin_token(settings: Settings, tenant_id: UUID) -> str:
    """An admin token of the demo tenant for this run (valid 24 h), to try the admin API with
    ``-H 'Authorization: Bearer …'``; the run's secret is ``BILLING_JWT_SECRET`` or a random one."""
    from billing.api.auth import mint_token

    return mint_token(settings.require_jwt_secret(), tenant_id, 24 * 3600)


async def _wait_ready(server: Any, stop: asyncio.Event, url: str) -> bool:
    """Poll ``url`` (every 0.2 s, once the server listens) until it answers 200: True; False if ``stop``."""
    import httpx

    from billing.logging import get_logger

    failures = 0
    async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
        while not stop.is_set():
            if server.started:
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(url)).status_code == 200:
                        return True
                failures += 1
                if failures == 25:  # ~5 s
                    get_logger("billing.dev").warning("still waiting for readiness", url=url)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
    return False


async def _announce(
    server: Any,
    stop: asyncio.Event,
    args: argparse.Namespace,
    *,
    api_key: str,
    tenant_id: UUID,
    login: tuple[str, str],
    extra: dict[str, str],
) -> None:
    """Once ``/health/ready`` answers 200 (never before: "running" means a request would work), print where
    everything is and a ready-to-copy curl command."""
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host  # noqa: S104
    base = f"http://{f'[{host}]' if ':' in host else host}:{args.port}"
    if not await _wait_ready(server, stop, f"{base}/health/ready"):
        return
    api = f"{base}/api/billing/v1/billing"
    lines = [
        "",
        "billing dev is running (Ctrl-C to stop).",
        f"  Dashboard:  {base}/dashboard/   (e-mail {login[0]}, senha {login[1]})",
        f"  API:        {base}   (OpenAPI: {base}/schema)",
        f"  API key:    {api_key}",
        f"  Tenant:     {tenant_id}",
        *(f"  {name + ':':<11} {value}" for name, value in extra.items()),
        "",
        "Send three notifications (sent 24/7); a repeat with the same Idempotency-Key is answered from",
        "the first (header Idempotent-Replayed: true), so change the key for a new batch:",
        f"  curl -sS -i -X POST {api}/send/notification \\",
        "    -H 'Content-Type: application/json' \\",
        f"    -H 'X-Billing-API-Key: {api_key}' \\",
        f"    -H 'Idempotency-Key: {DEMO_IDEMPOTENCY_KEY}' \\",
        f"    -d '{DEMO_BODY}'",
        "",
        "Then poll the queue's status and list the campaign's contacts (ids from the answer above):",
        f"  curl -sS -H 'X-Billing-API-Key: {api_key}' {api}/queue/<queue_id>/status",
        f"  curl -sS -H 'X-Billing-API-Key: {api_key}' {api}/campaign/<campaign_id>/contacts",
        "",
        "Admin API (templates, keys, config), with the Admin JWT above:",
        f"  curl -sS -H 'Authorization: Bearer <Admin JWT>' {api}/templates/",
        "",
    ]
    print("\n".join(lines), flush=True)
