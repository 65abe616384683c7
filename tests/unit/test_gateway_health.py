"""The gateway health probe on the shared gateway transport (as the gateway clients call it): the
simulator's answers over ``ASGITransport``, and the probe's timeouts."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import httpx

from billing.domain.sending import GatewayVerdict
from billing.gateway.simulator import EvolutionSimulator
from billing.worker.health import GatewayHealth, Probe, probe_connection_state

GATEWAY = {"base_url": "http://sim", "instance": "loja", "api_key": "k"}


async def test_the_probe_reads_the_state_over_the_shared_transport() -> None:
    sim = EvolutionSimulator(time_scale=0.0, seed=1)
    sim.add_instance("loja", api_key="k", state="open")
    transport = httpx.ASGITransport(app=sim.asgi_app)
    assert await probe_connection_state(transport, GATEWAY, timeout_s=5) == Probe("open")
    sim.set_state("loja", None)
    assert await probe_connection_state(transport, GATEWAY, timeout_s=5) == Probe(None)
    wrong_key = {**GATEWAY, "api_key": "nope"}
    assert await probe_connection_state(transport, wrong_key, timeout_s=5) == Probe(None, "unauthorized")
    unknown = {**GATEWAY, "instance": "outra"}
    assert await probe_connection_state(transport, unknown, timeout_s=5) == Probe(None, "instance_not_found")


class Recording(httpx.AsyncBaseTransport):
    """Answers 200 ``open`` (after ``hold`` seconds), keeping the requests it was given."""

    def __init__(self, hold: float = 0.0) -> None:
        self.hold = hold
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        await asyncio.sleep(self.hold)
        return httpx.Response(200, json={"instance": {"instanceName": "loja", "state": "open"}})


async def test_the_probe_keeps_its_timeouts() -> None:
    transport = Recording()
    assert await probe_connection_state(transport, GATEWAY, timeout_s=2.5) == Probe("open")
    [request] = transport.requests
    assert (str(request.url), request.method) == ("http://sim/instance/connectionState/loja", "GET")
    assert (request.headers["apikey"], request.headers["accept"]) == ("k", "application/json")
    assert request.extensions["timeout"] == {"connect": 2.5, "read": 2.5, "write": 2.5, "pool": 2.5}
    slow = Recording(hold=5.0)  # a transport that ignores httpx timeouts (as ASGITransport does)
    started = asyncio.get_running_loop().time()
    assert await probe_connection_state(slow, GATEWAY, timeout_s=0.05) == Probe(None)
    assert asyncio.get_running_loop().time() - started < 1.0


async def test_an_accepted_send_stands_for_an_open_state_until_it_is_cache_s_old() -> None:
    health = GatewayHealth(cache_s=10.0)
    transport = Recording()
    tenant = uuid.UUID(int=1)
    t0 = datetime(2025, 1, 20, 13, 0, tzinfo=UTC)

    async def check(at: datetime, generation: int = 1) -> GatewayVerdict:
        verdict, _ = await health.check(
            tenant, generation, transport=transport, gateway=GATEWAY, timeout_s=1, now=at
        )
        return verdict

    assert await check(t0) is GatewayVerdict.OPEN
    assert len(transport.requests) == 1  # nothing known yet: probed
    health.record_success(tenant, 1, at=t0 + timedelta(seconds=8))
    assert await check(t0 + timedelta(seconds=15)) is GatewayVerdict.OPEN
    assert len(transport.requests) == 1  # the send 7 s ago answered it
    health.record_success(tenant, 1, at=t0 + timedelta(seconds=2))  # older than what is known: no change
    assert await check(t0 + timedelta(seconds=18, microseconds=1)) is GatewayVerdict.OPEN
    assert len(transport.requests) == 2  # 10 s after the last accepted send: probed again
    health.record_success(tenant, 2, at=t0 + timedelta(seconds=19))  # new gateway settings: no probe yet
    assert await check(t0 + timedelta(seconds=20), generation=2) is GatewayVerdict.OPEN
    assert len(transport.requests) == 3  # a success never stands in for a generation's first probe
    assert await check(t0 + timedelta(seconds=21)) is GatewayVerdict.OPEN  # generation 1 was forgotten
    assert len(transport.requests) == 4


async def test_a_send_in_flight_when_the_gateway_was_found_down_does_not_skip_the_re_check() -> None:
    health = GatewayHealth(cache_s=10.0, base_backoff_s=30.0)
    transport = Recording()
    tenant = uuid.UUID(int=1)
    t0 = datetime(2025, 1, 20, 13, 0, tzinfo=UTC)
    await health.check(tenant, 1, transport=transport, gateway=GATEWAY, timeout_s=1, now=t0)
    health.trip(tenant, 1, now=t0 + timedelta(seconds=1))  # found down
    health.record_success(tenant, 1, at=t0 + timedelta(seconds=2))  # a send that was already under way
    verdict, _ = await health.check(
        tenant, 1, transport=transport, gateway=GATEWAY, timeout_s=1, now=t0 + timedelta(seconds=3)
    )
    assert verdict is GatewayVerdict.OPEN  # the probe (Recording answers open) decided, not the send
    assert len(transport.requests) == 2
