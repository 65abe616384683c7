"""After the send, through the API on the real PostgreSQL: the gateway's webhook endpoint (secret header,
both envelopes, duplicates, a receipt before its Sent, unknown ids counted), replies and the opt-out
ledger, connection.update, manual pause/resume, paused queues re-evaluated on a policy change, ERP
endpoint URLs guarded, and the settings' validation."""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

import billing.netguard as netguard
from billing.domain.contact import Contact
from billing.domain.queue import Queue
from billing.hooks.erp import ErpDispatcher
from billing.hooks.inbox import InboxApplier
from billing.netguard import guarded_client
from tests.integration.test_admin_api import BASE, Api, api, contact, send

__all__ = ["api"]  # the fixture

JID = "@s.whatsapp.net"


async def secret(api: Api) -> dict[str, str]:
    value = await asyncio.to_thread(
        api.client.app.state.services.engagement.new_gateway_secret, api.tenant_id
    )
    return {"X-Billing-Webhook-Secret": value}


def mark_sent(api: Api, contact_id: UUID, message_id: str) -> None:
    """The worker's part: claim and record the gateway's 201 with ``message_id``."""
    store, now = api.container.store, api.container.clock.now()
    found = store.repository.get(contact_id)
    assert isinstance(found, Contact)
    found.dispatch(at=now, lease=timedelta(seconds=120))
    found.record_sent(
        gateway_message_id=message_id, remote_jid=f"{found.gateway_number}{JID}", text="t", at=now
    )
    store.save(found)
    api.project()


def applier(api: Api) -> InboxApplier:
    return InboxApplier(api.container.store, api.container.pool, api.container.clock)


async def hook(api: Api, body: dict[str, Any], headers: dict[str, str], suffix: str = "") -> Any:
    return await api.client.post(f"{BASE}/gateway/events/{api.tenant_id}{suffix}", json=body, headers=headers)


def v2_update(message_id: str, status: str) -> dict[str, Any]:
    data = {"keyId": message_id, "remoteJid": "x" + JID, "fromMe": True, "status": status, "messageId": "db1"}
    return {"event": "messages.update", "instance": "demo", "data": data}


async def test_webhook_needs_the_tenants_secret(api: Api) -> None:
    assert (await hook(api, v2_update("M", "READ"), {})).status_code == 401
    headers = await secret(api)
    assert (await hook(api, v2_update("M", "READ"), {"X-Billing-Webhook-Secret": "wrong"})).status_code == 401
    ok = await hook(api, v2_update("M", "READ"), headers)
    assert ok.status_code == 200, ok.text
    assert ok.json() == {
        "event": "messages.update",
        "received": 1,
        "new": 1,
        "ignored": 0,
        "queues_changed": 0,
    }
    bad = await api.client.post(f"{BASE}/gateway/events/{api.tenant_id}", content=b"{", headers=headers)
    assert (bad.status_code, bad.json()["code"], bad.json()["field"]) == (400, "invalid_json", "body")


async def test_receipts_before_the_send_duplicated_and_out_of_order_are_applied_once(api: Api) -> None:
    headers = await secret(api)
    batch = await send(api, [contact(1), contact(2)])
    rows = (
        await api.client.get(f"{BASE}/campaign/{batch['campaign_id']}/contacts", headers=api.public)
    ).json()
    first, second = (UUID(i["contact_id"]) for i in rows["items"])

    # A READ arrives before the send's own answer was saved: it waits
    assert (await hook(api, v2_update("MSG-1", "READ"), headers)).json()["new"] == 1
    assert await applier(api).apply_pending() == 0
    mark_sent(api, first, "MSG-1")
    assert await applier(api).apply_pending() == 1
    # then the older DELIVERY_ACK and a duplicate READ: nothing more
    await hook(api, v2_update("MSG-1", "DELIVERY_ACK"), headers)
    duplicate = await hook(api, v2_update("MSG-1", "READ"), headers)
    assert duplicate.json()["new"] == 0
    # a v1 envelope (upper-case event, list data) for the second contact, and an id we never sent
    mark_sent(api, second, "MSG-2")
    v1 = {"event": "MESSAGES_UPDATE", "data": [{"id": "MSG-2", "fromMe": True, "status": "DELIVERY_ACK"}]}
    await hook(api, v1, headers, "/messages-update")
    await hook(api, v2_update("NEVER-SENT", "READ"), headers)
    assert await applier(api).apply_pending() == 2
    api.project()

    contact_one = api.container.store.repository.get(first)
    assert [type(e).__name__ for e in api.container.store.events.get(first)][-2:] == ["Delivered", "Read"]
    assert contact_one.read_at is not None
    status = (await api.client.get(f"{BASE}/queue/{batch['queue_id']}/status", headers=api.public)).json()
    assert {k: status["contacts"][k] for k in ("sent", "delivered", "read", "replied")} == {
        "sent": 2, "delivered": 2, "read": 1, "replied": 0,
    }  # fmt: skip
    counts = (await api.client.get(f"{BASE}/gateway-webhook/", headers=api.admin)).json()
    assert (counts["applied"], counts["waiting"]) == (3, 1)  # the unknown id waits, counted
    api.container.clock.advance(timedelta(hours=2))  # type: ignore[attr-defined]
    assert (await api.client.get(f"{BASE}/gateway-webhook/", headers=api.admin)).json()["unmatched"] == 1


async def test_a_stop_reply_opts_the_phone_out_and_an_admin_lifts_it(api: Api) -> None:
    headers = await secret(api)
    batch = await send(api, [contact(1)])
    items = (
        await api.client.get(f"{BASE}/campaign/{batch['campaign_id']}/contacts", headers=api.public)
    ).json()
    contact_id = UUID(items["items"][0]["contact_id"])
    mark_sent(api, contact_id, "MSG-9")
    changed = await api.client.patch(
        f"{BASE}/engagement/", json={"stop_words": ["Chega", "não quero mais"]}, headers=api.admin
    )
    assert changed.json()["stop_words"] == ["Chega", "não quero mais"]
    key = {"remoteJid": "5511987654301" + JID, "fromMe": False, "id": "IN-1"}
    reply = {"event": "messages.upsert", "data": {"key": key, "message": {"conversation": "NAO QUERO MAIS!"}}}
    assert (await hook(api, reply, headers)).json()["received"] == 1
    await hook(api, reply, headers)  # the gateway's retry
    assert await applier(api).apply_pending() == 1
    api.project()

    listed = (await api.client.get(f"{BASE}/opt-outs/", headers=api.admin)).json()
    assert [(o["phone"], o["stop_word"], o["message_id"], o["contact_id"]) for o in listed] == [
        ("+5511987654301", "não quero mais", "IN-1", str(contact_id))
    ]
    row = (
        await api.client.get(f"{BASE}/campaign/{batch['campaign_id']}/contacts", headers=api.public)
    ).json()
    assert row["items"][0]["replied_at"] is not None
    lifted = await api.client.post(f"{BASE}/opt-outs/+5511987654301/lift", json={}, headers=api.admin)
    assert lifted.status_code == 200, lifted.text
    again = await api.client.post(f"{BASE}/opt-outs/+5511987654301/lift", json={}, headers=api.admin)
    assert (again.status_code, again.json()["code"]) == (409, "not_opted_out")
    unknown = await api.client.post(f"{BASE}/opt-outs/+5511987650000/lift", json={}, headers=api.admin)
    assert (unknown.status_code, unknown.json()["code"]) == (404, "conversation_not_found")
    api.project()
    assert (await api.client.get(f"{BASE}/opt-outs/", headers=api.admin)).json() == []
    history = (await api.client.get(f"{BASE}/history/phone/+5511987654301", headers=api.admin)).json()
    assert [e["type"].rsplit(".", 1)[1] for e in history["conversation"]] == [
        "Opened",
        "Replied",
        "OptedOut",
        "OptOutLifted",
    ]


async def test_connection_update_pauses_and_resumes_the_tenants_queues(api: Api) -> None:
    headers = await secret(api)
    batch = await send(api, [contact(1)])
    queue_id = UUID(batch["queue_id"])
    close = {
        "event": "connection.update",
        "data": {"instance": "demo", "state": "close", "statusReason": 428},
    }
    assert (await hook(api, close, headers)).json()["queues_changed"] == 1
    queue = api.container.store.repository.get(queue_id)
    assert isinstance(queue, Queue) and queue.paused_reason == "gateway_disconnected"
    opened = {**close, "data": {"instance": "demo", "state": "open", "statusReason": 200}}
    assert (await hook(api, opened, headers)).json()["queues_changed"] == 1
    assert api.container.store.repository.get(queue_id).paused_reason is None


async def test_manual_pause_and_resume_with_the_api_key_or_an_admin_token(api: Api) -> None:
    batch = await send(api, [contact(1)])
    paused = await api.client.post(f"{BASE}/queue/{batch['queue_id']}/pause", headers=api.public)
    assert paused.json() == {"queue_id": batch["queue_id"], "paused_reason": "paused_by_admin"}
    api.project()
    status = (await api.client.get(f"{BASE}/queue/{batch['queue_id']}/status", headers=api.public)).json()
    assert (status["status"], status["paused_reason"], status["resume_at"]) == (
        "paused",
        "paused_by_admin",
        None,
    )
    resumed = await api.client.post(f"{BASE}/queue/{batch['queue_id']}/resume", headers=api.admin)
    assert resumed.json()["paused_reason"] is None
    _, other_admin, _ = api.other_tenant()
    foreign = await api.client.post(f"{BASE}/queue/{batch['queue_id']}/pause", headers=other_admin)
    assert foreign.status_code == 404
    assert (await api.client.post(f"{BASE}/queue/{batch['queue_id']}/pause")).status_code == 401


async def test_a_paused_queue_is_re_evaluated_when_the_hours_change(api: Api) -> None:
    # Tuesday 22:30 in São Paulo: the worker paused the queue until Wednesday 08:00
    batch = await send(api, [contact(1)])
    queue = api.container.store.repository.get(UUID(batch["queue_id"]))
    opening = api.container.clock.now() + timedelta(hours=9, minutes=30)
    queue.pause(reason="outside_business_hours", resume_at=opening, at=api.container.clock.now())
    api.container.store.save(queue)
    # the admin opens until 23:00 every day: resumed now, not at 08:00
    windows = {"windows": {"mon-sun": [["08:00", "23:00"]]}}
    response = await api.client.patch(f"{BASE}/config/", json={"policy": windows}, headers=api.admin)
    assert response.status_code == 200, response.text
    assert api.container.store.repository.get(queue.id).paused_reason is None


async def test_erp_endpoint_urls_are_guarded_and_secrets_shown_once(api: Api) -> None:
    for url in ("http://169.254.169.254/latest", "http://127.0.0.1:9/hooks", "http://10.0.0.5/hooks"):
        refused = await api.client.post(f"{BASE}/webhooks/", json={"url": url}, headers=api.admin)
        assert (refused.status_code, refused.json()["code"], refused.json()["field"]) == (
            422,
            "unsafe_url",
            "url",
        )
    bad_type = await api.client.post(
        f"{BASE}/webhooks/",
        json={"url": "https://93.184.216.34/x", "events": ["contact.nope"]},
        headers=api.admin,
    )
    assert (bad_type.status_code, bad_type.json()["field"]) == (422, "events")
    bad_cap = await api.client.patch(f"{BASE}/engagement/", json={"daily_cap": 0}, headers=api.admin)
    assert (bad_cap.status_code, bad_cap.json()["field"]) == (422, "daily_cap")


async def test_the_admin_sets_the_gateways_webhook_up_with_the_secret_header(api: Api) -> None:
    import httpx

    from billing.gateway.simulator import EvolutionSimulator

    sim = EvolutionSimulator(time_scale=0.0)
    sim.add_instance("demo", api_key="gw-secret-key")
    api.container.gateway_transport = httpx.ASGITransport(app=sim.asgi_app)
    response = await api.client.post(
        f"{BASE}/gateway-webhook/", json={"public_url": "https://billing.example"}, headers=api.admin
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["gateway_status"], body["error"]) == (201, None)
    assert body["url"] == f"https://billing.example{BASE}/gateway/events/{api.tenant_id}"
    hook = sim.webhook("demo")
    assert hook is not None and hook["url"] == body["url"]
    assert hook["headers"] == {"X-Billing-Webhook-Secret": body["secret"]}
    assert hook["events"] == ["MESSAGES_UPDATE", "MESSAGES_UPSERT", "CONNECTION_UPDATE"]
    ok = await hook_post(api, hook["headers"])
    assert ok.status_code == 200
    no_url = await api.client.post(f"{BASE}/gateway-webhook/", json={}, headers=api.admin)
    assert (no_url.status_code, no_url.json()["field"]) == (422, "public_url")


async def hook_post(api: Api, headers: dict[str, str]) -> Any:
    return await hook(api, v2_update("X", "READ"), headers)


async def test_the_optional_confirmation_is_sent_once_and_recorded(api: Api) -> None:
    headers = await secret(api)
    await api.client.patch(
        f"{BASE}/engagement/",
        json={"confirmation_text": "Pronto, não enviaremos mais lembretes."},
        headers=api.admin,
    )
    sent: list[tuple[UUID, str, str]] = []

    async def send_confirmation(tenant_id: UUID, phone: str, text: str) -> str:
        sent.append((tenant_id, phone, text))
        return "CONF-1"

    inbox = InboxApplier(
        api.container.store, api.container.pool, api.container.clock, send_confirmation=send_confirmation
    )
    key = {"remoteJid": "557588251234" + JID, "fromMe": False, "id": "IN-7"}  # an old 8-digit account
    reply = {"event": "messages.upsert", "data": {"key": key, "message": {"conversation": "sair"}}}
    await hook(api, reply, headers)
    assert await inbox.apply_pending() == 1
    await hook(
        api, {**reply, "data": {**reply["data"], "key": {**key, "id": "IN-8"}}}, headers
    )  # "sair" again
    assert await inbox.apply_pending() == 1
    assert sent == [(api.tenant_id, "+5575988251234", "Pronto, não enviaremos mais lembretes.")]
    history = (await api.client.get(f"{BASE}/history/phone/+5575988251234", headers=api.admin)).json()
    assert [e["type"].rsplit(".", 1)[1] for e in history["conversation"]] == [
        "Opened", "Replied", "OptedOut", "ConfirmationSent", "Replied",
    ]  # fmt: skip


ERP_HOST = "erp.resolve-once.test"


class _ErpReceiver(http.server.BaseHTTPRequestHandler):
    posts: list[str] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        type(self).posts.append(self.headers["Billing-Event-Id"])
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


async def test_an_erp_delivery_resolves_the_endpoints_host_once(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dispatcher checks the URL's shape; the guarded client resolves the host when it connects and
    judges every address (a refused one is recorded as ``unsafe_url``), so each delivery asks the resolver
    once, not once for a check and again for the connection."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ErpReceiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    resolved: list[str] = []  # the names asked of the resolver, by either path (thread or event loop)
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != ERP_HOST:
            return real(host, port, *args, **kwargs)
        resolved.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    async def getaddrinfo_async(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        return getaddrinfo(host, port)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(netguard.anyio, "getaddrinfo", getaddrinfo_async)
    engagement = api.client.app.state.services.engagement
    monkeypatch.setattr(engagement, "allow_private", True)
    url = f"http://{ERP_HOST}:{server.server_address[1]}/hooks"
    endpoint = await asyncio.to_thread(engagement.add_endpoint, api.tenant_id, url, ["contact.sent"])
    resolved.clear()  # the save-time check resolved it (once)
    container = api.container
    now = container.clock.now()

    def queue_delivery() -> UUID:
        event_id = uuid4()
        with container.pool.connection() as conn:
            conn.execute(
                "INSERT INTO erp_deliveries (event_id, endpoint_id, tenant_id, event_type, payload,"
                " created_at, next_attempt_at) VALUES (%s, %s, %s, 'contact.sent', '{}', %s, %s)",
                (event_id, endpoint["endpoint_id"], api.tenant_id, now, now),
            )
        return event_id

    def outcome(event_id: UUID) -> tuple[Any, ...]:
        with container.pool.connection() as conn:
            row = conn.execute(
                "SELECT state, attempts, last_error FROM erp_deliveries WHERE event_id = %s", (event_id,)
            ).fetchone()
        assert row is not None
        return row["state"], row["attempts"], row["last_error"]

    try:
        for allow_private, state, error, posts in (
            (True, "delivered", None, 1),
            (False, "pending", "unsafe_url", 1),
        ):
            event_id = await asyncio.to_thread(queue_delivery)
            async with guarded_client(allow_private=allow_private) as http_client:
                dispatcher = ErpDispatcher(container.store, container.pool, container.clock, http_client)
                assert await dispatcher.dispatch_due() == 1
            assert await asyncio.to_thread(outcome, event_id) == (state, 1, error)
            assert (resolved, len(_ErpReceiver.posts)) == ([ERP_HOST], posts)
            resolved.clear()
    finally:
        server.shutdown()
        server.server_close()
