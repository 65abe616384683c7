"""Typed settings, parsed once from ``BILLING_*`` environment variables at start-up.

A missing or malformed value stops the process with a :class:`SettingsError` naming the variable
(DESIGN.md, "Processes and configuration"). Nothing here is read at import time.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from psycopg.conninfo import conninfo_to_dict

if TYPE_CHECKING:
    from billing.services.clock import ScaledClock

PREFIX = "BILLING_"
EVENT_LOOPS = ("uvloop", "asyncio")
"""The values of ``BILLING_EVENT_LOOP``."""
DEFAULT_EVENT_LOOP = "asyncio" if sys.platform == "win32" else "uvloop"
"""uvloop where it installs (the dependency is skipped on Windows)."""


class SettingsError(Exception):
    """A ``BILLING_*`` variable is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Settings:
    """Everything a process needs, validated.

    Attributes:
        database_url: libpq URL of PostgreSQL (must be TCP: host and port, not a Unix socket — a large
            save through a Unix-socket pipeline stalls, see docs/architecture.md).
        amqp_url: RabbitMQ URL.
        jwt_secret: HS256 secret of admin tokens (at least 32 characters).
        log_format: ``json`` (production) or ``console``.
        api_host / api_port: where ``billing api`` listens.
        pool_size: PostgreSQL connections per pool.
        worker_prefetch: unsettled deliveries a worker holds per job queue (``basic.qos`` per consumer);
            it consumes every shard of every kind, so a process holds up to ``shards × 3 ×
            worker_prefetch`` at once (8 × 3 × 2 = 48 by default; see docs/architecture.md, "Broker").
        save_linger_ms: ``BILLING_SAVE_LINGER_MS``, milliseconds a worker's group commit waits before it
            takes the saves queued so far into one transaction (default 2; 0: one turn of the event loop;
            :class:`~billing.worker.groupcommit.GroupCommitter`). Larger groups, fewer commits, each save
            that much later; at most 1000.
        event_loop: ``BILLING_EVENT_LOOP``, the asyncio event loop every process runs on: ``uvloop``
            (default but on Windows; uvloop's loop on libuv, about 10 % less CPU per message for the
            whole system in ``bench/fleet.py`` here) or ``asyncio`` (the standard library's).
        dispatch_lease_s: seconds a worker's claim on a contact lasts before another may retry it.
        poll_interval_s: seconds between polls of the notification log when no NOTIFY arrives.
        gateway_timeout_s: seconds an Evolution API call may take (on top of its typing delay).
        broker_prefix: prefix of every exchange and queue name (tests isolate themselves with it).
        public_url: ``BILLING_PUBLIC_URL``, the address tenants reach the API at (the dashboard's curl
            examples use it; an ``https://`` one makes the dashboard's session cookie ``Secure``). Empty:
            the address of each request. The gateway's webhook is configured to call it; empty:
            ``POST /gateway/webhook/setup`` must be given one.
        operator_token: ``BILLING_OPERATOR_TOKEN`` (at least 32 characters): the bearer token of
            ``GET /health/detail`` (event counts, projection lag and errors); empty: it answers 401.
        redis_url: ``BILLING_REDIS_URL``, e.g. ``redis://127.0.0.1:6379/0``: the store of the per-API-key rate
            limit shared by every ``api`` process; empty: each process counts on its own (memory).
        rate_limit_per_minute: requests one API key may make per one-minute window (the default; see
            ``rate_limits``).
        rate_limits: ``BILLING_RATE_LIMITS``, per-key or per-tenant overrides of it,
            ``<key prefix or tenant id>=<requests per minute>,...`` (:func:`parse_rate_limits`).
        gateway_allow_private: ``BILLING_GATEWAY_ALLOW_PRIVATE``: gateway URLs may point at loopback and
            private addresses (a self-hosted Evolution API on the private network; ``billing dev``).
            Link-local and cloud-metadata addresses are refused regardless (:mod:`billing.netguard`).
        metrics_port / metrics_host: where ``worker``, ``relay`` and ``projections`` serve their Prometheus
            metrics (0, the default: not served; the API serves ``/metrics`` on its own port).
        clock: ``BILLING_CLOCK`` — **tests and demos only; never in production.** Empty (the default): the
            machine's clock. Otherwise ``<ISO start with offset>@<anchor unix seconds>x<scale>``, e.g.
            ``2025-01-20T07:58:00-03:00@1764400000.5x30``: every process reads ``start`` at Unix time
            ``anchor`` and time runs ``scale`` times faster from there
            (:class:`~billing.services.clock.ScaledClock`), so several processes share one fast clock.
        webhooks_allow_private: ERP webhook endpoints may be loopback or private addresses
            (``BILLING_WEBHOOKS_ALLOW_PRIVATE=1``; link-local and metadata addresses never are).
    """

    database_url: str
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    jwt_secret: str = field(default="", repr=False)
    log_format: Literal["json", "console"] = "json"
    log_level: str = "INFO"
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    pool_size: int = 5
    worker_prefetch: int = 2
    save_linger_ms: float = 2.0
    event_loop: str = DEFAULT_EVENT_LOOP
    dispatch_lease_s: float = 120.0
    poll_interval_s: float = 1.0
    gateway_timeout_s: float = 30.0
    broker_prefix: str = "billing"
    operator_token: str = field(default="", repr=False)
    redis_url: str = field(default="", repr=False)
    rate_limit_per_minute: int = 1200
    rate_limits: str = ""
    gateway_allow_private: bool = False
    clock: str = ""
    webhooks_allow_private: bool = False
    public_url: str = ""
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from ``env`` (default ``os.environ``); ``overrides`` win over the environment.

        Raises:
            SettingsError: naming the variable that is missing or malformed.
        """
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for name, kind in _FIELDS.items():
            key = PREFIX + name.upper()
            if name in overrides:
                values[name] = overrides[name]
                continue
            raw = env.get(key)
            if raw is None or raw == "":
                continue
            try:
                values[name] = kind(raw)
            except ValueError:
                what = getattr(kind, "__name__", "value")
                raise SettingsError(f"{key} must be a {what}, got {raw!r}") from None
        if "database_url" not in values:
            raise SettingsError(
                f"{PREFIX}DATABASE_URL is required (e.g. postgresql://root@127.0.0.1:5432/billing)"
            )
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        """Check cross-field rules. Raises :class:`SettingsError`."""
        try:
            info = conninfo_to_dict(self.database_url)
        except Exception as exc:
            raise SettingsError(f"{PREFIX}DATABASE_URL is not a valid PostgreSQL URL: {exc}") from None
        host = str(info.get("host") or "")
        if not host or host.startswith("/"):
            raise SettingsError(f"{PREFIX}DATABASE_URL must name a TCP host (e.g. 127.0.0.1), not a socket")
        if not info.get("dbname"):
            raise SettingsError(f"{PREFIX}DATABASE_URL must name a database")
        if self.log_format not in ("json", "console"):
            raise SettingsError(f"{PREFIX}LOG_FORMAT must be 'json' or 'console'")
        if self.jwt_secret and len(self.jwt_secret) < 32:
            raise SettingsError(f"{PREFIX}JWT_SECRET must be at least 32 characters")
        if self.operator_token and len(self.operator_token) < 32:
            raise SettingsError(f"{PREFIX}OPERATOR_TOKEN must be at least 32 characters")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError(f"{PREFIX}REDIS_URL must be a redis:// (or rediss://, unix://) URL")
        for name in ("dispatch_lease_s", "poll_interval_s", "gateway_timeout_s"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value <= 0:
                raise SettingsError(f"{PREFIX}{name.upper()} must be a number of seconds > 0, got {value!r}")
        linger = float(self.save_linger_ms)
        if not math.isfinite(linger) or not 0 <= linger <= 1000:
            raise SettingsError(
                f"{PREFIX}SAVE_LINGER_MS must be a number of milliseconds in 0..1000, got {linger!r}"
            )
        if self.event_loop not in EVENT_LOOPS:
            raise SettingsError(
                f"{PREFIX}EVENT_LOOP must be one of {', '.join(EVENT_LOOPS)}, got {self.event_loop!r}"
            )
        if self.dispatch_lease_s < self.gateway_timeout_s + 30:
            raise SettingsError(
                f"{PREFIX}DISPATCH_LEASE_S must exceed {PREFIX}GATEWAY_TIMEOUT_S by at least 30 s "
                "(a claim must outlive the gateway call it covers)"
            )
        if self.rate_limits:
            try:
                parse_rate_limits(self.rate_limits)
            except ValueError as exc:
                raise SettingsError(f"{PREFIX}RATE_LIMITS is malformed: {exc}") from None
        for name in ("pool_size", "worker_prefetch", "api_port", "rate_limit_per_minute"):
            if int(getattr(self, name)) <= 0:
                raise SettingsError(f"{PREFIX}{name.upper()} must be positive")
        if self.public_url and not self.public_url.startswith(("http://", "https://")):
            raise SettingsError(f"{PREFIX}PUBLIC_URL must be an http(s) URL, got {self.public_url!r}")
        if not 0 <= int(self.metrics_port) <= 65535:
            raise SettingsError(f"{PREFIX}METRICS_PORT must be a TCP port (0 = off), got {self.metrics_port}")
        self.scaled_clock()

    def scaled_clock(self) -> ScaledClock | None:
        """The shared fast clock of ``BILLING_CLOCK`` (tests and demos only), or None: the system clock.

        Raises:
            SettingsError: ``BILLING_CLOCK`` is malformed (the message names it and says why).
        """
        if not self.clock:
            return None
        from billing.services.clock import parse_scaled_clock

        try:
            return parse_scaled_clock(self.clock)
        except ValueError as exc:
            raise SettingsError(f"{PREFIX}CLOCK is malformed: {exc}") from None

    def rate_limit_overrides(self) -> dict[str, int]:
        """``BILLING_RATE_LIMITS`` parsed (:func:`parse_rate_limits`): requests per minute by API key prefix
        or tenant id; empty when it is not set. Validated at start-up, so it raises no error here."""
        return parse_rate_limits(self.rate_limits)

    def require_jwt_secret(self) -> str:
        """The admin JWT secret. Raises :class:`SettingsError` when it is not set."""
        if not self.jwt_secret:
            raise SettingsError(f"{PREFIX}JWT_SECRET is required (at least 32 characters)")
        return self.jwt_secret


def parse_rate_limits(text: str) -> dict[str, int]:
    """``BILLING_RATE_LIMITS``: comma-separated ``<who>=<requests per minute>``, where ``who`` is an API
    key's prefix (its first 8 characters, as ``GET /api-keys/`` lists them) or a tenant id; a key's own
    entry wins over its tenant's. Example: ``bk_AbCdE=3000,6f1c1f0e-0000-4000-8000-000000000001=120``.

    Raises:
        ValueError: an entry is not ``who=N`` with N a positive integer.
    """
    limits: dict[str, int] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        who, sep, value = entry.partition("=")
        who = who.strip()
        if not sep or not who or not value.strip().isdigit() or int(value) <= 0:
            raise ValueError(f"{entry!r} is not <key prefix or tenant id>=<positive requests per minute>")
        limits[who.lower() if len(who) == 36 else who] = int(value)
    return limits


def boolean(raw: str) -> bool:
    """``1/true/yes/on`` → True, ``0/false/no/off`` → False (any case). Raises ValueError otherwise."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


_FIELDS: dict[str, Callable[[str], object]] = {
    "database_url": str,
    "amqp_url": str,
    "jwt_secret": str,
    "log_format": str,
    "log_level": str,
    "api_host": str,
    "api_port": int,
    "pool_size": int,
    "worker_prefetch": int,
    "save_linger_ms": float,
    "event_loop": str,
    "dispatch_lease_s": float,
    "poll_interval_s": float,
    "gateway_timeout_s": float,
    "broker_prefix": str,
    "operator_token": str,
    "redis_url": str,
    "rate_limit_per_minute": int,
    "rate_limits": str,
    "gateway_allow_private": boolean,
    "clock": str,
    "webhooks_allow_private": boolean,
    "public_url": str,
    "metrics_port": int,
    "metrics_host": str,
}
