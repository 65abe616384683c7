"""Gateway health per tenant, as seen by one worker process (issue 4, "Gateway health").

Two signals (``docs/evolution-api.md``, "Instance health"): the advisory ``connectionState`` (cached
:attr:`GatewayHealth.cache_s` seconds per tenant and gateway generation), and send outcomes flagged
``connection_problem`` ("Connection Closed", instance not loaded) — the gateway has been seen reporting
``open`` while sends fail, so :attr:`GatewayHealth.problem_threshold` consecutive problems count as
down too. When a tenant is found down the caller pauses the queue with ``gateway_disconnected`` until the
instant :meth:`GatewayHealth.trip` returns: capped exponential backoff (``base_backoff_s`` doubled per
consecutive outage up to ``max_backoff_s``); the next job after that re-checks ``connectionState``. A
successful send resets everything and counts as an ``open`` answer at its instant (no probe while a tenant
keeps sending). All instants come from the injected clock.

State is per process (a restart starts afresh, re-checking at once); the durable effect — the queue's
pause and the contacts' ``not_before`` — is in the event store.

The probe is made here rather than with ``EvolutionClient.connection_state`` because that method answers
None for every failure, and a 401/404 (wrong key, unknown instance: evolution-api.md, "Conventions") must
be told apart from a closed connection: it means ``gateway_misconfigured``, not ``gateway_disconnected``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import quote
from uuid import UUID

import httpx
import msgspec

from billing.domain.delivery import OutcomeKind, classify_send_response
from billing.domain.sending import GatewayVerdict
from billing.netguard import refused_by_guard

__all__ = ["GatewayHealth", "Probe", "Verdict", "probe_connection_state"]

OPEN = "open"


Verdict = GatewayVerdict
"""What the worker may do with a tenant's gateway now (the domain's :class:`GatewayVerdict`)."""


@dataclass(frozen=True)
class Probe:
    """One ``connectionState`` answer: ``state`` (``open``, ``connecting``, ``close``, or None when missing
    or unanswered) and, for a configuration error, its code (``unauthorized``, ``instance_not_found``...)."""

    state: str | None
    misconfigured: str | None = None


async def probe_connection_state(
    transport: httpx.AsyncBaseTransport, gateway: Mapping[str, str], *, timeout_s: float
) -> Probe:
    """``GET {base_url}/instance/connectionState/{instance}`` with header ``apikey``, straight on
    ``transport`` (the shared gateway transport, as :class:`~billing.gateway.client.EvolutionClient`
    calls it), within ``timeout_s`` seconds overall (also on transports that ignore httpx timeouts, such
    as ``ASGITransport``).

    200 ``{"instance": {"instanceName", "state"?}}`` → the state; an answer that
    :func:`~billing.domain.delivery.classify_send_response` calls MISCONFIGURED (401, 403, 404, 3xx) → its
    code; a connection the SSRF guard refused → ``gateway_address_refused``; anything else (5xx, transport
    error, timeout, odd body) → state None. Never raises.
    """
    url = f"{gateway['base_url'].rstrip('/')}/instance/connectionState/{quote(gateway['instance'], safe='')}"
    headers = {"apikey": gateway["api_key"], "accept": "application/json"}
    request = httpx.Request(
        "GET", url, headers=headers, extensions={"timeout": httpx.Timeout(timeout_s).as_dict()}
    )
    try:
        async with asyncio.timeout(timeout_s):
            response = await transport.handle_async_request(request)
            try:
                content = await response.aread()
            finally:
                await response.aclose()
    except (httpx.HTTPError, TimeoutError) as exc:
        if refused_by_guard(exc) is not None:  # the URL points at a refused address (billing.netguard)
            return Probe(None, misconfigured="gateway_address_refused")
        return Probe(None)
    try:
        body: object = msgspec.json.decode(content) if content else None
    except msgspec.DecodeError:
        body = None
    if response.status_code == 200:
        instance = body.get("instance") if isinstance(body, dict) else None
        state = instance.get("state") if isinstance(instance, dict) else None
        return Probe(state if isinstance(state, str) and state else None)
    outcome = classify_send_response(response.status_code, body)
    if outcome.kind is OutcomeKind.MISCONFIGURED:
        return Probe(None, misconfigured=outcome.code)
    return Probe(None)


@dataclass
class _TenantHealth:
    generation: int = 0
    probe: Probe | None = None
    checked_at: datetime | None = None
    problems: int = 0
    outages: int = 0
    down_until: datetime | None = None


class GatewayHealth:
    """Cached health of each tenant's gateway.

    Args:
        cache_s: seconds a ``connectionState`` answer is trusted (about 10 s).
        problem_threshold: consecutive ``connection_problem`` send outcomes that mean "down".
        base_backoff_s / max_backoff_s: pause after the first outage, and its cap (seconds).
    """

    def __init__(
        self,
        *,
        cache_s: float = 10.0,
        problem_threshold: int = 3,
        base_backoff_s: float = 30.0,
        max_backoff_s: float = 600.0,
    ) -> None:
        self.cache_s = cache_s
        self.problem_threshold = problem_threshold
        self.base_backoff_s = base_backoff_s
        self.max_backoff_s = max_backoff_s
        self._tenants: dict[UUID, _TenantHealth] = {}
        self._locks: dict[UUID, asyncio.Lock] = {}

    def _entry(self, tenant_id: UUID, generation: int) -> _TenantHealth:
        entry = self._tenants.get(tenant_id)
        if entry is None or entry.generation != generation:
            entry = _TenantHealth(generation=generation)  # new gateway settings: forget the old verdicts
            self._tenants[tenant_id] = entry
        return entry

    async def check(
        self,
        tenant_id: UUID,
        generation: int,
        *,
        transport: httpx.AsyncBaseTransport,
        gateway: Mapping[str, str],
        timeout_s: float,
        now: datetime,
    ) -> tuple[Verdict, str | None]:
        """The verdict on the tenant's gateway at ``now``, with the misconfiguration code if any.

        DOWN while a previous :meth:`trip` is in force; otherwise from the cached probe
        (:func:`probe_connection_state`), made again — one call per tenant at a time — when older than
        :attr:`cache_s`. A missing state or a failed call counts as DOWN.
        """
        entry = self._entry(tenant_id, generation)
        if entry.down_until is not None and now < entry.down_until:
            return Verdict.DOWN, None
        if self._stale(entry, now):
            lock = self._locks.setdefault(tenant_id, asyncio.Lock())
            async with lock:
                entry = self._entry(tenant_id, generation)
                if self._stale(entry, now):
                    entry.probe = await probe_connection_state(transport, gateway, timeout_s=timeout_s)
                    entry.checked_at = now
        probe = entry.probe
        assert probe is not None
        if probe.misconfigured is not None:
            return Verdict.MISCONFIGURED, probe.misconfigured
        return (Verdict.OPEN if probe.state == OPEN else Verdict.DOWN), None

    def _stale(self, entry: _TenantHealth, now: datetime) -> bool:
        return (
            entry.probe is None
            or entry.checked_at is None
            or not timedelta(0) <= now - entry.checked_at < timedelta(seconds=self.cache_s)
        )

    def trip(self, tenant_id: UUID, generation: int, *, now: datetime) -> datetime:
        """Declare the tenant's gateway down; returns when to look again (the pause's ``resume_at``).

        Idempotent while in force: every job finding the gateway down during one outage gets the same
        instant. Each new outage doubles the backoff, up to :attr:`max_backoff_s`.
        """
        entry = self._entry(tenant_id, generation)
        if entry.down_until is not None and now < entry.down_until:
            return entry.down_until
        entry.outages += 1
        entry.problems = 0
        delay = min(self.max_backoff_s, self.base_backoff_s * 2 ** (entry.outages - 1))
        entry.down_until = now + timedelta(seconds=delay)
        entry.checked_at = None  # re-ask connectionState once the backoff is over
        return entry.down_until

    def record_problem(self, tenant_id: UUID, generation: int) -> bool:
        """Count a ``connection_problem`` send outcome; True when the threshold is reached (then trip)."""
        entry = self._entry(tenant_id, generation)
        entry.problems += 1
        return entry.problems >= self.problem_threshold

    def record_success(self, tenant_id: UUID, generation: int, *, at: datetime) -> None:
        """A send went through: the gateway is healthy, backoff and problem counts start over. ``at``:
        the instant the gateway accepted it, which also stands for a ``connectionState`` of ``open`` at
        that instant (the instance took a message, so its connection was open), so a tenant that keeps
        sending is not probed: the probe is made when the last accepted send is :attr:`cache_s` old. It
        never stands in for the first probe of a tenant and gateway generation, nor for the re-check
        after a :meth:`trip`."""
        entry = self._entry(tenant_id, generation)
        entry.problems = 0
        entry.outages = 0
        entry.down_until = None
        # only over a probe already made: after a trip (checked_at cleared) the next job re-asks, so a send
        # that was in flight when the gateway was found down does not stand for its state
        if entry.checked_at is not None and at >= entry.checked_at:
            entry.probe = Probe(OPEN)
            entry.checked_at = at
