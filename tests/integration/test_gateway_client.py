"""EvolutionClient against the in-process Evolution API simulator (evolution-api.md)."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC

import httpx
import pytest

from billing.domain.delivery import OutcomeKind
from billing.gateway import EvolutionClient, GatewayError
from billing.gateway.simulator import EvolutionSimulator, remote_jid_for

KEY = "inst-key"
MSG_ID = re.compile(r"^3EB0[0-9A-F]{18}$")


@pytest.fixture
def sim() -> EvolutionSimulator:
    simulator = EvolutionSimulator(time_scale=0, hang_s=5, seed=7, global_api_key="global-key")
    simulator.add_instance("acme v2", api_key=KEY, api_version="v2")
    simulator.add_instance("legacy", api_key=KEY, api_version="v1")
    return simulator


class SimHttp(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` on the simulator that keeps its transport (``transport``): the Evolution
    client under test calls the transport itself, the tests' own requests go through the client."""

    def __init__(self, transport: httpx.AsyncBaseTransport, base_url: str = "") -> None:
        self.transport = transport
        super().__init__(transport=transport, base_url=base_url)


@pytest.fixture
async def http(sim: EvolutionSimulator) -> AsyncIterator[SimHttp]:
    async with SimHttp(httpx.ASGITransport(app=sim.asgi_app), base_url="http://sim") as client:
        yield client


def client_for(
    http: SimHttp,
    instance: str = "acme v2",
    *,
    version: str = "v2",
    key: str = KEY,
    timeout_s: float = 5.0,
) -> EvolutionClient:
    return EvolutionClient(
        http.transport,
        base_url="http://sim/",
        api_key=key,
        instance=instance,
        api_version=version,  # type: ignore[arg-type]
        timeout_s=timeout_s,
    )


async def test_v2_send_success(sim: EvolutionSimulator, http: SimHttp) -> None:
    before = time.time()
    outcome = await client_for(http).send_text("+55 (11) 98765-4321", "Olá Maria", delay_ms=1200)
    assert outcome.kind is OutcomeKind.SENT
    assert outcome.code == "sent"
    assert outcome.http_status == 201
    assert outcome.message_id is not None and MSG_ID.match(outcome.message_id)
    assert outcome.remote_jid == "5511987654321@s.whatsapp.net"
    assert outcome.message_timestamp is not None and outcome.message_timestamp >= int(before)
    [received] = sim.sent
    assert received.instance == "acme v2"  # URL-quoted space survives the round trip
    assert received.number == "+55 (11) 98765-4321"
    assert received.text == "Olá Maria"
    assert received.message_id == outcome.message_id
    assert received.api_version == "v2"
    assert received.delay_ms == 1200
    assert received.link_preview is False
    assert received.received_at.tzinfo is UTC
    assert received.received_monotonic <= time.monotonic()
    assert sim.requests == [("POST", "/message/sendText/acme%20v2", 201)]


async def test_v1_send_success(sim: EvolutionSimulator, http: SimHttp) -> None:
    outcome = await client_for(http, "legacy", version="v1").send_text("5511987654321", "Olá", delay_ms=500)
    assert outcome.kind is OutcomeKind.SENT
    assert outcome.message_id is not None and MSG_ID.match(outcome.message_id)
    assert outcome.remote_jid == "5511987654321@s.whatsapp.net"
    assert outcome.message_timestamp is not None
    [received] = sim.sent
    assert (received.api_version, received.delay_ms, received.text) == ("v1", 500, "Olá")


async def test_raw_success_bodies_per_version(sim: EvolutionSimulator, http: SimHttp) -> None:
    v2 = await http.post(
        "/message/sendText/acme%20v2", json={"number": "5511987654321", "text": "a"}, headers={"apikey": KEY}
    )
    assert v2.status_code == 201
    body = v2.json()
    assert isinstance(body["messageTimestamp"], int)
    assert body["message"] == {"conversation": "a"}
    assert body["key"]["fromMe"] is True
    assert {"pushName", "status", "messageType", "instanceId", "source"} <= body.keys()
    v1 = await http.post(
        "/message/sendText/legacy",
        json={"number": "5511987654321", "textMessage": {"text": "b"}, "options": {"delay": 0}},
        headers={"apikey": KEY},
    )
    assert v1.status_code == 201
    body = v1.json()
    assert isinstance(body["messageTimestamp"], str) and body["messageTimestamp"].isdigit()
    assert body["message"] == {"extendedTextMessage": {"text": "b"}}
    assert body["status"] == "PENDING"


@pytest.mark.parametrize(
    ("number", "jid"),
    [
        ("5531998296801", "553198296801@s.whatsapp.net"),  # DDD 31, 9 then 9: ninth digit dropped
        ("+55 31 9 7829-6801", "553178296801@s.whatsapp.net"),
        ("5531969829680", "5531969829680@s.whatsapp.net"),  # 9 then 6: kept
        ("5521998296801", "5521998296801@s.whatsapp.net"),  # DDD 21 < 31: kept
        ("5511987654321@s.whatsapp.net", "5511987654321@s.whatsapp.net"),
    ],
)
async def test_ninth_digit_remote_jid(http: SimHttp, number: str, jid: str) -> None:
    assert remote_jid_for(number) == jid
    outcome = await client_for(http).send_text(number, "x")
    assert outcome.remote_jid == jid


@pytest.mark.parametrize(
    ("kind", "status", "code", "outcome_kind", "connection_problem"),
    [
        ("connection_closed_500", 500, "connection_closed", OutcomeKind.RETRYABLE, True),
        ("connection_closed_400", 400, "connection_closed", OutcomeKind.RETRYABLE, True),
        ("timed_out", 400, "timed_out", OutcomeKind.RETRYABLE, False),
        ("instance_not_loaded", 500, "instance_not_loaded", OutcomeKind.RETRYABLE, True),
        ("http_503", 503, "gateway_unavailable", OutcomeKind.RETRYABLE, False),
    ],
)
async def test_scripted_failures(
    sim: EvolutionSimulator,
    http: SimHttp,
    kind: str,
    status: int,
    code: str,
    outcome_kind: OutcomeKind,
    connection_problem: bool,
) -> None:
    for version, instance in (("v2", "acme v2"), ("v1", "legacy")):
        sim.script_failure(kind)
        client = client_for(http, instance, version=version)
        outcome = await client.send_text("5511987654321", "x")
        assert (outcome.kind, outcome.code, outcome.http_status) == (outcome_kind, code, status)
        assert outcome.retryable
        assert outcome.connection_problem is connection_problem
        # times=1: the next send goes through
        assert (await client.send_text("5511987654321", "x")).kind is OutcomeKind.SENT
    assert len(sim.sent) == 2


async def test_scripted_failure_for_one_number_and_times(sim: EvolutionSimulator, http: SimHttp) -> None:
    sim.script_failure("connection_closed_500", number="+55 11 98765-4321", times=2)
    client = client_for(http)
    assert (await client.send_text("5511911112222", "x")).kind is OutcomeKind.SENT
    assert (await client.send_text("5511987654321", "x")).code == "connection_closed"
    assert (await client.send_text("5511987654321", "x")).code == "connection_closed"
    assert (await client.send_text("5511987654321", "x")).kind is OutcomeKind.SENT


async def test_not_on_whatsapp(sim: EvolutionSimulator, http: SimHttp) -> None:
    sim.mark_not_on_whatsapp("5511900000000")
    outcome = await client_for(http).send_text("+5511900000000", "x")
    assert (outcome.kind, outcome.code, outcome.http_status) == (
        OutcomeKind.NOT_ON_WHATSAPP,
        "not_on_whatsapp",
        400,
    )
    assert outcome.remote_jid == "5511900000000@s.whatsapp.net"
    assert not outcome.retryable
    assert sim.sent == []


async def test_hang_is_a_retryable_timeout(sim: EvolutionSimulator, http: SimHttp) -> None:
    sim.script_failure("hang")
    started = time.monotonic()
    outcome = await client_for(http, timeout_s=0.2).send_text("5511987654321", "x")
    assert time.monotonic() - started < 2
    assert (outcome.kind, outcome.code) == (OutcomeKind.RETRYABLE, "gateway_timeout")
    assert outcome.retryable
    assert outcome.outcome_unknown
    assert outcome.http_status is None


async def test_timeout_includes_the_typing_delay(http: SimHttp) -> None:
    sim = EvolutionSimulator(time_scale=1.0)
    sim.add_instance("acme v2", api_key=KEY)
    async with SimHttp(httpx.ASGITransport(app=sim.asgi_app)) as slow_http:
        client = client_for(slow_http, timeout_s=0.3)
        outcome = await client.send_text("5511987654321", "x", delay_ms=400)  # longer than timeout_s alone
    assert outcome.kind is OutcomeKind.SENT
    assert sim.sent[0].delay_ms == 400


async def test_transport_error_is_classified() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with SimHttp(httpx.MockTransport(refuse)) as http:
        outcome = await client_for(http).send_text("5511987654321", "x")
    assert (outcome.kind, outcome.code, outcome.outcome_unknown) == (
        OutcomeKind.RETRYABLE,
        "transport_error",
        False,
    )


async def test_bad_key_is_misconfigured(sim: EvolutionSimulator, http: SimHttp) -> None:
    outcome = await client_for(http, key="wrong").send_text("5511987654321", "x")
    assert (outcome.kind, outcome.code, outcome.http_status) == (
        OutcomeKind.MISCONFIGURED,
        "unauthorized",
        401,
    )
    response = await http.post("/message/sendText/legacy", json={}, headers={"apikey": "wrong"})
    assert response.json() == {
        "status": 401,
        "error": "Unauthorized",
        "response": {"message": "Unauthorized"},
    }
    assert sim.sent == []


async def test_global_key_works_for_every_instance(http: SimHttp) -> None:
    outcome = await client_for(http, "legacy", version="v1", key="global-key").send_text("5511987654321", "x")
    assert outcome.kind is OutcomeKind.SENT


async def test_unknown_instance_is_checked_before_the_key(http: SimHttp) -> None:
    outcome = await client_for(http, "nope", key="wrong").send_text("5511987654321", "x")
    assert (outcome.kind, outcome.code, outcome.http_status) == (
        OutcomeKind.MISCONFIGURED,
        "instance_not_found",
        404,
    )
    response = await http.post("/message/sendText/nope", json={}, headers={"apikey": "wrong"})
    assert response.json() == {
        "status": 404,
        "error": "Not Found",
        "response": {"message": ['The "nope" instance does not exist']},
    }


@pytest.mark.parametrize(
    ("instance", "client_version", "missing"), [("acme v2", "v1", "text"), ("legacy", "v2", "textMessage")]
)
async def test_wrong_version_body_is_a_schema_error(
    sim: EvolutionSimulator, http: SimHttp, instance: str, client_version: str, missing: str
) -> None:
    outcome = await client_for(http, instance, version=client_version).send_text("5511987654321", "x")
    assert (outcome.kind, outcome.code, outcome.http_status) == (OutcomeKind.PERMANENT, "schema_error", 400)
    assert not outcome.retryable
    raw = await http.post(
        f"/message/sendText/{instance.replace(' ', '%20')}",
        json=client_for(http, instance, version=client_version).send_body(
            "5511987654321", "x", delay_ms=None, link_preview=False
        ),
        headers={"apikey": KEY},
    )
    assert raw.json() == {
        "status": 400,
        "error": "Bad Request",
        "response": {"message": [[f'instance requires property "{missing}"']]},
    }
    assert sim.sent == []


@pytest.mark.parametrize(("instance", "version"), [("acme v2", "v2"), ("legacy", "v1")])
async def test_empty_text(http: SimHttp, instance: str, version: str) -> None:
    outcome = await client_for(http, instance, version=version).send_text("5511987654321", "")
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "empty_text")
    raw = await http.post(
        "/message/sendText/acme%20v2", json={"number": "5511987654321", "text": ""}, headers={"apikey": KEY}
    )
    assert raw.json()["response"]["message"] == ["Text is required"]


async def test_whatsapp_numbers_batches_and_matches(sim: EvolutionSimulator, http: SimHttp) -> None:
    numbers = [f"55119{i:08d}" for i in range(120)]
    absent = set(numbers[5::7])
    for number in absent:
        sim.mark_not_on_whatsapp(number)
    result = await client_for(http).whatsapp_numbers([*numbers, numbers[0], numbers[1]])  # duplicates dropped
    assert result == {n: n not in absent for n in numbers}
    checks = sim.number_checks
    assert [len(batch) for batch in checks] == [50, 50, 20]
    assert [n for batch in checks for n in batch] == numbers
    assert [r for r in sim.requests if r[1].startswith("/chat/")] == [
        ("POST", "/chat/whatsappNumbers/acme%20v2", 200)
    ] * 3


async def test_whatsapp_numbers_answers_are_not_in_input_order(http: SimHttp) -> None:
    numbers = ["5511911110000", "5511911110001", "5511911110002"]
    response = await http.post(
        "/chat/whatsappNumbers/legacy", json={"numbers": numbers}, headers={"apikey": KEY}
    )
    assert response.status_code == 200
    answers = response.json()
    assert [a["number"] for a in answers] != numbers
    assert sorted(a["number"] for a in answers) == numbers
    assert all(a["exists"] is True and a["jid"] == a["number"] + "@s.whatsapp.net" for a in answers)


async def test_whatsapp_numbers_failure_raises_gateway_error(http: SimHttp) -> None:
    with pytest.raises(GatewayError) as caught:
        await client_for(http, key="wrong").whatsapp_numbers(["5511911110000"])
    assert caught.value.outcome.code == "unauthorized"
    assert caught.value.partial == {}
    assert await client_for(http).whatsapp_numbers([]) == {}


@pytest.mark.parametrize("state", ["open", "connecting", "close"])
async def test_connection_state(sim: EvolutionSimulator, http: SimHttp, state: str) -> None:
    sim.set_state("legacy", state)
    assert await client_for(http, "legacy", version="v1").connection_state() == state


async def test_connection_state_missing_or_failing(sim: EvolutionSimulator, http: SimHttp) -> None:
    sim.set_state("acme v2", None)
    raw = await http.get("/instance/connectionState/acme%20v2", headers={"apikey": KEY})
    assert raw.json() == {"instance": {"instanceName": "acme v2"}}
    assert await client_for(http).connection_state() is None
    assert await client_for(http, key="wrong").connection_state() is None
    assert await client_for(http, "nope").connection_state() is None


async def test_welcome(http: SimHttp) -> None:
    response = await http.get("/")
    assert response.status_code == 200
    assert {"status", "message", "version"} <= response.json().keys()


def test_client_repr_hides_the_key() -> None:
    client = EvolutionClient(
        httpx.AsyncHTTPTransport(), base_url="http://x", api_key="s3cret", instance="i", api_version="v2"
    )
    assert "s3cret" not in repr(client)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_over_real_http() -> None:
    sim = EvolutionSimulator(time_scale=0)
    sim.add_instance("real", api_key=KEY, api_version="v2")
    port = free_port()
    server = asyncio.create_task(sim.serve("127.0.0.1", port))
    try:
        for _ in range(200):
            if sim.started:
                break
            await asyncio.sleep(0.02)
        assert sim.started
        async with httpx.AsyncHTTPTransport() as transport:
            client = EvolutionClient(
                transport, base_url=f"http://127.0.0.1:{port}", api_key=KEY, instance="real", api_version="v2"
            )
            outcome = await client.send_text("5531998296801", "Olá pela rede", delay_ms=10)
            assert await client.connection_state() == "open"
        assert outcome.kind is OutcomeKind.SENT
        assert outcome.remote_jid == "553198296801@s.whatsapp.net"
        assert [m.message_id for m in sim.sent] == [outcome.message_id]
    finally:
        sim.shutdown()
        await asyncio.wait_for(server, 5)


async def test_the_guarded_pool_reuses_a_live_connection_and_drops_one_the_server_closed() -> None:
    from billing.netguard import guarded_client

    connections = 0
    closing = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            request = await reader.readuntil(b"\r\n\r\n")
            assert request.startswith(b"GET ")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            if closing.is_set():  # the server ends this idle keep-alive connection
                writer.close()
                return

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, guarded_client(allow_private=True) as client:
        for _ in range(3):
            assert (await client.get(f"http://127.0.0.1:{port}/")).text == "ok"
        assert connections == 1  # kept alive: the readable check saw nothing to read
        closing.set()
        assert (await client.get(f"http://127.0.0.1:{port}/")).text == "ok"
        await asyncio.sleep(0.05)  # the server has closed it: the socket reads as its end
        assert (await client.get(f"http://127.0.0.1:{port}/")).text == "ok"
        assert connections == 2
