"""Process plumbing shared by the CLI commands and ``billing dev``: settings, containers, signal handling,
supervision of concurrent components, uvicorn servers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, TypeVar

from billing.cli_errors import SHUTDOWN_GRACE_S, CliError
from billing.settings import Settings

T = TypeVar("T")


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, then structured logging configured from them.

    Raises:
        SettingsError: naming the missing or malformed variable.
    """
    settings = Settings.from_env(None, **overrides)
    from billing.logging import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    return settings


def load_cli_settings() -> Settings:
    """:func:`load_settings` for a one-shot command a person runs (migrate, rebuild, tenant create…):
    its log lines are in the console format, read next to its progress and output, unless
    ``BILLING_LOG_FORMAT`` chooses one; the long-running processes keep the settings' format (json)."""
    overrides: dict[str, object] = {}
    if not os.environ.get("BILLING_LOG_FORMAT"):
        overrides["log_format"] = "console"
    return load_settings(**overrides)


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

    clock = settings.scaled_clock()
    # BILLING_CLOCK (tests and demos only): every process shares one fast clock; the worker's throttle
    # margin follows its rate (billing.worker.ledger.margin_for)
    try:
        return build_container(settings, broker=broker, clock=clock)
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
    return _open_container_sync(load_cli_settings())


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
        server_header=False,  # no "server: uvicorn" banner
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
    """``create_app(container)``, then our logging set up again (a framework may install its own), then
    the startup heap frozen (:func:`freeze_startup_heap`)."""
    from billing.logging import configure_logging

    app = create_app(container)
    configure_logging(container.settings.log_format, container.settings.log_level)
    freeze_startup_heap()
    return app


def freeze_startup_heap() -> int:
    """Collect the garbage of startup, then move every object still alive (modules, the app, the
    container: they live as long as the process) out of the cyclic garbage collector's reach with
    :func:`gc.freeze`. Returns how many objects were frozen.

    Why: a full collection traverses every tracked object. A 10,000-contact POST allocates enough to
    trigger one or two, and each traversed the ~137,000 startup objects as well: 70-140 ms of the POST
    went to the collector, 20-30 ms once they were frozen (``bench/ingest.py``; median POST 0.59 s ->
    0.51 s). Frozen objects are still freed by reference counting; only a cycle among them would stay.
    Call it once, when the process is built and about to serve: the API once its app is built, the other
    processes once their container is open.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


async def _run_api(container: Any, stop: asyncio.Event, host: str, port: int) -> None:
    from billing.webapp import create_app

    server = _uvicorn_server(_build_app(create_app, container), host, port)
    await serve_until(server, stop, f"the API on {host}:{port}")


def _run_process(
    command: str, fn: Callable[[Any, asyncio.Event], Awaitable[Any]] | None, *, broker: bool
) -> int:
    """Settings, one container, stop signals; run the process body ``fn(container, stop)`` (None: the
    API) until a signal; close the container."""
    from billing.logging import get_logger

    settings = load_settings()
    log = get_logger("billing.cli")

    async def run() -> int:
        stop = asyncio.Event()
        _install_stop_signals(stop)
        container = await _open_container(settings, broker=broker)
        if command != "api":  # the API serves /metrics on its own port
            from billing.metrics import serve as serve_metrics

            serve_metrics(
                command,
                port=settings.metrics_port,
                host=settings.metrics_host,
                head=container.store.recorder.max_notification_id,
                pool=container.pool,
            )
        if fn is not None:
            freeze_startup_heap()  # the API freezes once its app is built (_build_app)
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

    return run_on_loop(settings, run())


def run_on_loop(settings: Settings, main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to its end on the event loop ``BILLING_EVENT_LOOP`` chooses (:func:`loop_factory`)
    and return its result; every process's ``asyncio.run``."""
    with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
        return runner.run(main)


def loop_factory(event_loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop factory of ``BILLING_EVENT_LOOP`` for ``asyncio.Runner``: uvloop's, or None (the
    standard library's)."""
    if event_loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


# ---- operations commands ------------------------------------------------------------------------------
