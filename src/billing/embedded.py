"""An embedded PostgreSQL for ``billing dev``, run from the ``pgserver`` package's bundled binaries.

``pgserver.get_server()`` starts PostgreSQL on a Unix socket only (``-h ""``). A large pipelined save
through a Unix socket stalls (see the event store's notes), so this module drives the same binaries with
pgserver's own ``initdb`` / ``pg_ctl`` helpers and listens on **TCP 127.0.0.1, on a free port**, plus a
Unix socket inside the data directory when its path is short enough (for ``psql``).

Running as root: PostgreSQL refuses to run as root, so — as pgserver does — the server runs as the system
user ``pgserver`` (created if missing) and the data directory and its ancestors are made traversable.

One process at a time uses a data directory: :func:`start_embedded_postgres` takes an exclusive lock on
``<data_dir>/embedded.lock``. A server left running by a process that died (SIGKILL) is adopted when it
listens on TCP, else restarted.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import socket
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg.sql import SQL, Identifier

__all__ = ["EmbeddedPostgres", "EmbeddedPostgresError", "start_embedded_postgres"]

HOST = "127.0.0.1"
SUPERUSER = "postgres"
DATABASE = "billing"
SYSTEM_USER = "pgserver"
START_TIMEOUT_S = 60
_START_ATTEMPTS = 3
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux; ".s.PGSQL.NNNNN" is appended to the dir


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be initialised, started or reached (the message says why)."""


@dataclass
class EmbeddedPostgres:
    """A running embedded server. Stop it with :meth:`stop` (also a context manager).

    Attributes:
        pgdata: the PostgreSQL data directory.
        port: the TCP port on 127.0.0.1.
        database: the application database (created if missing).
        system_user: the OS user the server runs as (``pgserver`` when we are root, else None: ourselves).
    """

    pgdata: Path
    port: int
    database: str = DATABASE
    system_user: str | None = None
    _lock_file: IO[str] | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        """libpq URL of the application database over TCP: ``postgresql://postgres@127.0.0.1:PORT/billing``."""
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{self.database}"

    @property
    def admin_url(self) -> str:
        """libpq URL of the ``postgres`` maintenance database over TCP."""
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/postgres"

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are ended) and release the data directory.

        Idempotent; never raises for a server that is already gone.
        """
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        try:
            _pg_ctl(["-w", "-t", str(START_TIMEOUT_S), "-m", "fast", "stop"], self.pgdata, self.system_user)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pass  # already stopped (or gone): nothing left to do
        finally:
            if self._lock_file is not None:
                self._lock_file.close()  # closing releases the flock
                self._lock_file = None

    def __enter__(self) -> EmbeddedPostgres:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_embedded_postgres(data_dir: str | Path, *, database: str = DATABASE) -> EmbeddedPostgres:
    """Start (initialising on first use) PostgreSQL with its data in ``<data_dir>/pgdata``, on TCP.

    The server listens on 127.0.0.1 on a free port; ``database`` is created if missing. A later start on
    the same ``data_dir`` reuses the data (a new port may be chosen each time: use ``.url``).

    Raises:
        EmbeddedPostgresError: another process uses ``data_dir``, ``initdb`` or ``pg_ctl`` failed (with
            the tail of the server log), or the server cannot be reached.
    """
    root = Path(data_dir).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    lock_file = _lock(root)
    try:
        pgdata = root / "pgdata"
        system_user = _prepare(pgdata)
        port = _ensure_running(pgdata, system_user)
        server = EmbeddedPostgres(pgdata, port, database, system_user, lock_file)
    except BaseException:
        lock_file.close()
        raise
    atexit.register(server.stop)
    try:
        _create_database(server)
    except BaseException:
        server.stop()
        raise
    return server


def _lock(root: Path) -> IO[str]:
    """Hold an exclusive, non-blocking lock on ``root/embedded.lock`` for this process's lifetime."""
    lock_file = (root / "embedded.lock").open("a+")
    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock_file.close()
        raise EmbeddedPostgresError(
            f"{root} is in use by another process (another `billing dev`?); stop it or use --data-dir"
        ) from None
    return lock_file


def _commands() -> Any:
    """pgserver's command helpers (imported lazily: the package probes its binaries at import)."""
    with warnings.catch_warnings():
        # pgserver computes a runtime dir at import; without XDG_RUNTIME_DIR platformdirs warns (harmless).
        warnings.simplefilter("ignore")
        import pgserver._commands as commands
        import pgserver.utils  # noqa: F401

    return commands


def _pg_ctl(args: list[str], pgdata: Path, user: str | None) -> str:
    out: str = _commands().pg_ctl(
        args, pgdata=pgdata, user=user, cwd=str(pgdata), timeout=START_TIMEOUT_S + 30
    )
    return out


def _prepare(pgdata: Path) -> str | None:
    """Create and initialise ``pgdata`` if needed; returns the system user the server runs as."""
    system_user: str | None = None
    pgdata.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        import pwd
        import stat

        commands = _commands()
        from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        system_user = SYSTEM_USER
        ensure_user_exists(system_user)
        bin_path: Path = commands.POSTGRES_BIN_PATH
        ensure_prefix_permissions(pgdata)
        ensure_prefix_permissions(bin_path)
        read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
        ensure_folder_permissions(bin_path, execute | read)
        ensure_folder_permissions(bin_path.parent / "lib", read)
        entry = pwd.getpwnam(system_user)
        os.chown(pgdata, entry.pw_uid, entry.pw_gid)
    if (pgdata / "PG_VERSION").exists():
        return system_user
    if any(pgdata.iterdir()):
        raise EmbeddedPostgresError(
            f"{pgdata} is not empty but holds no PostgreSQL cluster (no PG_VERSION); move it away and retry"
        )
    try:
        _commands().initdb(
            ["--auth=trust", "--auth-local=trust", "--encoding=UTF8", "--no-locale", "-U", SUPERUSER],
            pgdata=pgdata,
            user=system_user,
            cwd=str(pgdata),
            timeout=120,
        )
    except subprocess.CalledProcessError as exc:
        raise EmbeddedPostgresError(f"initdb failed for {pgdata}: {exc}") from None
    return system_user


def _running_postmaster(pgdata: Path) -> tuple[str | None, int | None] | None:
    """``(listen address, port)`` of a live server on ``pgdata``, or None when none runs."""
    _commands()
    from pgserver.utils import PostmasterInfo

    try:
        info = PostmasterInfo.read_from_pgdata(pgdata)
    except (AssertionError, ValueError, OSError):
        return None  # a partly written or foreign postmaster.pid: let pg_ctl decide
    if info is None or not info.is_running():
        return None
    return info.hostname, info.port


def _ensure_running(pgdata: Path, system_user: str | None) -> int:
    """Start the server on TCP (adopting or restarting one left running); returns its port."""
    running = _running_postmaster(pgdata)
    if running is not None:
        hostname, port = running
        if hostname == HOST and port:
            return port  # left by a process that died: we hold the lock, so it is ours now
        # Socket-only (e.g. started by pgserver.get_server()): restart it on TCP.
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            _pg_ctl(["-w", "-m", "fast", "stop"], pgdata, system_user)
    socket_dir = str(pgdata) if len(str(pgdata)) <= _SOCKET_PATH_MAX else ""
    log = pgdata / "log"
    error = ""
    for _ in range(_START_ATTEMPTS):  # a free port can be taken between probing and binding: retry
        port = _free_port()
        options = f"-h {HOST} -p {port} -k '{socket_dir}'"
        try:
            _pg_ctl(
                ["-w", "-t", str(START_TIMEOUT_S), "-o", options, "-l", str(log), "start"],
                pgdata,
                system_user,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            error = f"{exc}\n{_tail(log)}"
            continue
        return port
    raise EmbeddedPostgresError(f"PostgreSQL did not start on {pgdata}: {error}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _create_database(server: EmbeddedPostgres) -> None:
    """Create the application database over TCP if it does not exist."""
    try:
        with psycopg.connect(server.admin_url, autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (server.database,)
            ).fetchone()
            if exists is None:
                conn.execute(SQL("CREATE DATABASE {}").format(Identifier(server.database)))
    except psycopg.Error as exc:
        raise EmbeddedPostgresError(
            f"embedded PostgreSQL on port {server.port} is unreachable: {exc}"
        ) from None
