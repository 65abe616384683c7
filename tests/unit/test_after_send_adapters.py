"""Adapters of "after the send" without a database: the URL guard (fake resolver), the settings flag,
and the simulator's accounts, lookups and webhook callbacks (in memory, over ASGI)."""

from __future__ import annotations

import httpx
import pytest

from billing.domain.errors import InvalidValue
from billing.gateway.client import EvolutionClient, set_webhook
from billing.gateway.simulator import EvolutionSimulator
from billing.netguard import check_webhook_url
from billing.settings import Settings, SettingsError, boolean

JID = "@s.whatsapp.net"


def resolver(address: str):  # type: ignore[no-untyped-def]
    return lambda host, port: [address]


@pytest.mark.parametrize(
    ("address", "allow_private", "ok"),
    [
        ("93.184.216.34", False, True),
        ("169.254.169.254", True, False),  # metadata: never
        ("fe80::1", True, False),
        ("127.0.0.1", False, False),
        ("127.0.0.1", True, True),
        ("10.1.2.3", False, False),
        ("::ffff:169.254.169.254", True, False),
        ("0.0.0.0", True, False),
    ],
)
def test_url_guard(address: str, allow_private: bool, ok: bool) -> None:
    def check():
        return check_webhook_url(
            "https://erp.example/hooks", allow_private=allow_private, resolver=resolver(address)
        )

    if ok:
        check()
    else:
        with pytest.raises(InvalidValue) as exc:
            check()
        assert (exc.value.code, exc.value.field) == ("unsafe_url", "url")


def test_url_guard_refuses_other_schemes_and_credentials() -> None:
    for url in ("ftp://erp.example/x", "https://user:pw@erp.example/x", "https:///x"):
        with pytest.raises(InvalidValue):
            check_webhook_url(url, allow_private=True, resolver=resolver("93.184.216.34"))


def test_settings_flag() -> None:
    assert boolean("1") and boolean("true") and not boolean("off")
    with pytest.raises(ValueError):
        boolean("maybe")
    settings = Settings.from_env(
        {"BILLING_DATABASE_URL": "postgresql://x@127.0.0.1/db", "BILLING_WEBHOOKS_ALLOW_PRIVATE": "yes"}
    )
    assert settings.webhooks_allow_private is True
    with pytest.raises(SettingsError, match="BILLING_WEBHOOKS_ALLOW_PRIVATE"):
        Settings.from_env(
            {"BILLING_DATABASE_URL": "postgresql://x@127.0.0.1/db", "BILLING_WEBHOOKS_ALLOW_PRIVATE": "?"}
        )


def client(sim: EvolutionSimulator) -> tuple[httpx.AsyncClient, EvolutionClient]:
    transport = httpx.ASGITransport(app=sim.asgi_app)
    http = httpx.AsyncClient(transport=transport)
    return http, EvolutionClient(
        transport, base_url="http://sim", api_key="k", instance="loja", api_version="v2"
    )


async def test_simulator_lookup_finds_accounts_with_and_without_the_ninth_digit_in_any_order() -> None:
    sim = EvolutionSimulator(time_scale=0.0, seed=3)
    sim.add_instance("loja", api_key="k")
    sim.add_account("557588251234")
    sim.add_account("5547988123456")
    http, gateway = client(sim)
    numbers = [
        "5575988251234",
        "557588251234",
        "5547988123456",
        "554788123456",
        "5511987650000",
        "551187650000",
    ]
    answers = await gateway.lookup_accounts(numbers)
    assert answers == {
        "5575988251234": "557588251234" + JID,
        "557588251234": "557588251234" + JID,
        "5547988123456": "5547988123456" + JID,
        "554788123456": "5547988123456" + JID,
        "5511987650000": None,
        "551187650000": None,
    }
    raw = await http.post(
        "http://sim/chat/whatsappNumbers/loja", json={"numbers": numbers}, headers={"apikey": "k"}
    )
    assert [a["number"] for a in raw.json()] != numbers  # not in input order, as the real gateway
    # a bare number is resolved the gateway's way (ninth digit dropped): it never reaches the account
    sent = await gateway.send_text("5547988123456", "oi")
    assert sent.remote_jid == "554788123456" + JID
    to_jid = await gateway.send_text("5547988123456" + JID, "oi")
    assert to_jid.remote_jid == "5547988123456" + JID
    nobody = await gateway.send_text("5511987650000" + JID, "oi")
    assert nobody.code == "not_on_whatsapp"
    await http.aclose()


async def test_simulator_calls_the_webhook_back_with_receipts_duplicates_and_replies() -> None:
    received: list[dict[str, object]] = []

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        import json

        headers = dict(scope["headers"])
        assert headers[b"x-secret"] == b"s1"
        received.append(json.loads(body))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sim = EvolutionSimulator(time_scale=0.0, seed=5)
    sim.add_instance("loja", api_key="k")
    sim.webhook_http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    http, gateway = client(sim)
    assert await set_webhook(gateway, "http://erp/hook", headers={"x-secret": "s1"}, events=[]) == 201
    sent = await gateway.send_text("5511987654321", "oi")
    assert len(received) == 1  # one receipt before the send's own answer
    await sim.drain_webhooks()
    statuses = [r["data"]["status"] for r in received]  # type: ignore[index]
    assert sorted(set(statuses)) == ["DELIVERY_ACK", "READ", "SERVER_ACK"] and len(statuses) == 4
    assert all(r["data"]["keyId"] == sent.message_id for r in received)  # type: ignore[index]
    await sim.reply("loja", "5511987654321" + JID, "PARAR")
    await sim.change_state("loja", "close")
    assert [r["event"] for r in received[-2:]] == ["messages.upsert", "connection.update"]
    await sim.webhook_http.aclose()
    await http.aclose()
