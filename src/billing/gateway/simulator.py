"""An in-process fake Evolution API, for tests, demos and ``billing dev``.

It follows ``docs/evolution-api.md`` (gateway 2.3.6 / 1.8.2): same routes, auth, error bodies and
success bodies per API version. It is a plain ASGI app (:attr:`EvolutionSimulator.asgi_app`), usable in
process with ``httpx.ASGITransport`` or served over HTTP by uvicorn (:meth:`EvolutionSimulator.serve`,
:func:`run_simulator`).

Routes:
    ``GET /`` → 200 ``{status, message, version, ...}``
    ``POST /message/sendText/{instance}`` → 201 (body per the instance's version) or an error body
    ``GET /instance/connectionState/{instance}`` → 200 ``{"instance": {"instanceName", "state"?}}``
    ``POST /chat/whatsappNumbers/{instance}`` → 200 ``[{"jid", "exists", "number"}]`` (shuffled)
    ``POST /webhook/set/{instance}`` → 201: the instance then calls that URL back like Evolution does

Accounts: with none registered (:meth:`EvolutionSimulator.add_account`) every number "exists" (except
those marked not on WhatsApp) and a bare Brazilian number loses its ninth digit in ``remoteJid``, as
Evolution API has done. With accounts registered, the lookup answers the account that exists — with or
without the ninth digit — and a send reaches someone only when its number or JID is an account: a bare
number is still resolved the gateway's way (ninth digit dropped for DDD ≥ 31), so sending to the JID the
lookup gave is what makes it arrive. Messages that reach an account get status webhooks
(``SERVER_ACK``, ``DELIVERY_ACK``, ``READ``; some duplicated, out of order, one sometimes before the
send's own 201) when a webhook is set; :meth:`EvolutionSimulator.reply` posts a ``messages.upsert`` from
the debtor, :meth:`EvolutionSimulator.change_state` a ``connection.update``.

Order of checks, as in the gateway: unknown instance (404) before the key (401), then the body schema (400),
then scripted failures, then the number (400 not on WhatsApp), then the ``delay``, then success.
One simulator may hold v1 and v2 instances side by side (a real gateway has one version); the version of
the instance decides the body schema and the answer shapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import secrets
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import unquote

import msgspec

__all__ = [
    "FAILURE_KINDS",
    "EvolutionSimulator",
    "FailureKind",
    "ReceivedMessage",
    "SimInstance",
    "generate_message_id",
    "remote_jid_for",
    "run_simulator",
]

ApiVersion = Literal["v1", "v2"]
FailureKind = Literal[
    "connection_closed_500", "connection_closed_400", "timed_out", "instance_not_loaded", "http_503", "hang"
]
FAILURE_KINDS: frozenset[str] = frozenset(
    {"connection_closed_500", "connection_closed_400", "timed_out", "instance_not_loaded", "http_503", "hang"}
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JID_SUFFIX = "@s.whatsapp.net"
_STRIP = re.compile(r"[\s+()\-]")
_BR_NINTH = re.compile(r"^55(\d{2})9([7-9]\d{7})$")
_TYPE_NAMES: dict[type, str] = {str: "string", dict: "object", list: "array"}
_GATEWAY_VERSION = {"v1": "1.8.2", "v2": "2.3.6"}


def generate_message_id() -> str:
    """A WhatsApp-web style message id: ``3EB0`` + 18 uppercase hex digits (22 characters)."""
    return "3EB0" + secrets.token_hex(9).upper()


def _digits(number: str) -> str:
    """The gateway's number clean-up: ``+``, spaces, brackets and dashes stripped; a jid loses its suffix."""
    if number.endswith(_JID_SUFFIX):
        return number[: -len(_JID_SUFFIX)]
    return _STRIP.sub("", number).split(":")[0].split("@")[0]


def _other_forms(digits: str) -> tuple[str, ...]:
    """The other way of writing a Brazilian mobile: ninth digit removed (13 digits) or added (12)."""
    if digits.startswith("55") and len(digits) == 13 and digits[4] == "9":
        return (digits[:4] + digits[5:],)
    if digits.startswith("55") and len(digits) == 12 and digits[4] in "6789":
        return (digits[:4] + "9" + digits[4:],)
    return ()


def remote_jid_for(number: str) -> str:
    """The ``remoteJid`` the gateway answers for ``number``.

    A jid (``…@s.whatsapp.net``) is kept as is. Otherwise the number is cleaned and the Brazilian ninth
    digit is dropped for DDD ≥ 31 when the local number is 9 followed by 7–9:
    ``5531998296801`` → ``553198296801@s.whatsapp.net``; ``5511987654321`` is kept.
    """
    if number.endswith(_JID_SUFFIX):
        return number
    digits = _digits(number)
    match = _BR_NINTH.match(digits)
    if match and int(match.group(1)) >= 31:
        digits = f"55{match.group(1)}{match.group(2)}"
    return digits + _JID_SUFFIX


@dataclass(slots=True)
class SimInstance:
    name: str
    api_key: str
    api_version: ApiVersion = "v2"
    state: str | None = "open"
    instance_id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One message the simulator accepted (answered 201).

    ``received_at`` (UTC) and ``received_monotonic`` (``time.monotonic()``) are taken when the request
    arrived, before the ``delay``; the entry is appended once the delay is over and the answer is ready.
    """

    instance: str
    number: str
    text: str
    received_at: datetime
    received_monotonic: float
    message_id: str
    api_version: ApiVersion
    remote_jid: str
    delay_ms: int | None
    link_preview: bool | None

    @property
    def digits(self) -> str:
        """The number asked for, as the gateway reads it: digits only, a JID's suffix dropped."""
        return _digits(self.number)


@dataclass(slots=True)
class _ScriptedFailure:
    kind: str
    number: str | None
    remaining: int


class _Reply(Exception):
    """Raised inside a handler to answer at once."""

    def __init__(self, status: int, body: object) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _error(status: int, error: str, message: object) -> _Reply:
    return _Reply(status, {"status": status, "error": error, "response": {"message": message}})


class EvolutionSimulator:
    """A fake Evolution API holding its state in memory (thread-safe: it may be served from another thread).

    Args:
        global_api_key: a key accepted for every instance (the gateway's ``AUTHENTICATION_API_KEY``), or None.
        time_scale: factor applied to the ``delay`` milliseconds before sleeping; 0 in tests.
        hang_s: how long a scripted ``"hang"`` sleeps before answering 201 (seconds, not scaled); make it
            longer than the client timeout.
        seed: seed of the shuffle of ``whatsappNumbers`` answers.
    """

    def __init__(
        self,
        *,
        global_api_key: str | None = None,
        time_scale: float = 1.0,
        hang_s: float = 60.0,
        seed: int | None = None,
    ) -> None:
        self.global_api_key = global_api_key
        self.time_scale = time_scale
        self.hang_s = hang_s
        self._lock = threading.Lock()
        self._instances: dict[str, SimInstance] = {}
        self._not_on_whatsapp: set[str] = set()
        self._failures: list[_ScriptedFailure] = []
        self._sent: list[ReceivedMessage] = []
        self._requests: list[tuple[str, str, int]] = []
        self._number_checks: list[list[str]] = []
        self._random = random.Random(seed)
        self._server: Any = None
        self._accounts: set[str] = set()
        self._webhooks: dict[str, dict[str, Any]] = {}
        self._webhook_tasks: set[asyncio.Task[None]] = set()
        self.webhook_http: Any = None
        """The ``httpx.AsyncClient`` webhooks are posted with (default: a new one, made on first use)."""
        self.webhook_calls: list[tuple[str, str, int | None]] = []
        """``(event, status or state or "", HTTP answer)`` of every webhook posted."""
        self.receipt_duplicates = True
        """Post one receipt of each message twice (gateways duplicate)."""

    # ---- configuration -------------------------------------------------------------------------------

    def add_instance(
        self, name: str, *, api_key: str, api_version: ApiVersion = "v2", state: str | None = "open"
    ) -> SimInstance:
        """Create (or replace) an instance. ``state`` None means "not loaded": connectionState omits it."""
        if api_version not in ("v1", "v2"):
            raise ValueError(f"api_version must be 'v1' or 'v2', not {api_version!r}")
        instance = SimInstance(name=name, api_key=api_key, api_version=api_version, state=state)
        with self._lock:
            self._instances[name] = instance
        return instance

    def set_state(self, instance: str, state: str | None) -> None:
        """Set what connectionState reports (``open``, ``connecting``, ``close``, or None = missing)."""
        with self._lock:
            self._instances[instance].state = state

    def mark_not_on_whatsapp(self, number: str) -> None:
        """Sends to ``number`` answer 400 not-on-WhatsApp; whatsappNumbers answers ``exists: false``."""
        with self._lock:
            self._not_on_whatsapp.add(remote_jid_for(number))

    def add_account(self, number: str) -> None:
        """Register a WhatsApp account by its id's digits, e.g. ``"557588251234"`` (an old account without
        the ninth digit) or ``"5547988123456"`` (with it)."""
        with self._lock:
            self._accounts.add(_digits(number))

    def _account(self, number: str) -> str | None:
        """The account ``number`` (digits or a JID) reaches by lookup: itself, or its other Brazilian form
        (ninth digit added or removed); None when no account matches."""
        digits = _digits(number)
        with self._lock:
            accounts = set(self._accounts)
        for candidate in (digits, *_other_forms(digits)):
            if candidate in accounts:
                return candidate
        return None

    def _reaches(self, jid: str) -> bool:
        with self._lock:
            if jid in self._not_on_whatsapp:
                return False
            return not self._accounts or _digits(jid) in self._accounts

    def script_failure(self, kind: str, *, number: str | None = None, times: int = 1) -> None:
        """Make the next ``times`` sends (to ``number``, or to any number) fail with ``kind``.

        Kinds: ``connection_closed_500`` (500 ``"Connection Closed"``), ``connection_closed_400`` (400
        ``["Error: Connection Closed"]``), ``timed_out`` (400 ``["Error: Timed Out"]``),
        ``instance_not_loaded`` (500 ``"Cannot read properties of undefined (reading 'textMessage')"``),
        ``http_503`` (a proxy's 503, plain text), ``hang`` (sleep :attr:`hang_s`, then answer 201 — the
        message *is* sent, as when the client gave up too early). Scripts apply to sendText only, after the
        404/401/400-schema checks, first scripted first.
        """
        if kind not in FAILURE_KINDS:
            raise ValueError(f"unknown failure kind {kind!r}; expected one of {sorted(FAILURE_KINDS)}")
        if times < 1:
            raise ValueError("times must be >= 1")
        with self._lock:
            self._failures.append(
                _ScriptedFailure(kind, None if number is None else remote_jid_for(number), times)
            )

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    # ---- observation ---------------------------------------------------------------------------------

    @property
    def sent(self) -> list[ReceivedMessage]:
        """A snapshot of the messages accepted so far, in the order they were answered."""
        with self._lock:
            return list(self._sent)

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        """A snapshot of every request answered: ``(method, path, status)``."""
        with self._lock:
            return list(self._requests)

    @property
    def number_checks(self) -> list[list[str]]:
        """A snapshot of the ``numbers`` of every successful whatsappNumbers call."""
        with self._lock:
            return [list(batch) for batch in self._number_checks]

    def instance(self, name: str) -> SimInstance:
        with self._lock:
            return self._instances[name]

    # ---- ASGI ----------------------------------------------------------------------------------------

    @property
    def asgi_app(self) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        """The ASGI application (HTTP and lifespan)."""
        return self._asgi

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            event = await receive()
            if event["type"] == "http.disconnect":
                return
            body += event.get("body", b"")
            if not event.get("more_body", False):
                break
        method = scope["method"]
        raw_path = scope.get("raw_path") or scope["path"].encode()
        path = raw_path.decode("latin-1").split("?", 1)[0]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            status, answer = await self._route(method, path, headers, body)
        except _Reply as reply:
            status, answer = reply.status, reply.body
        with self._lock:
            self._requests.append((method, path, status))
        if isinstance(answer, bytes):
            payload, content_type = answer, b"text/plain; charset=utf-8"
        else:
            payload, content_type = msgspec.json.encode(answer), b"application/json; charset=utf-8"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    async def _route(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, object]:
        parts = [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
        if method == "GET" and not parts:
            return 200, self._welcome()
        if len(parts) == 3:
            route = (method, parts[0], parts[1])
            if route == ("POST", "message", "sendText"):
                return await self._send_text(parts[2], headers, body)
            if route == ("GET", "instance", "connectionState"):
                instance = self._authorise(parts[2], headers)
                state: dict[str, object] = {"instanceName": instance.name}
                if instance.state is not None:
                    state["state"] = instance.state
                return 200, {"instance": state}
            if route == ("POST", "chat", "whatsappNumbers"):
                return self._whatsapp_numbers(parts[2], headers, body)
            if route == ("POST", "webhook", "set"):
                return self._set_webhook(parts[2], headers, body)
        raise _error(404, "Not Found", [f"Cannot {method} {path}"])

    def _welcome(self) -> dict[str, object]:
        with self._lock:
            versions = {i.api_version for i in self._instances.values()}
        version = _GATEWAY_VERSION["v1" if versions == {"v1"} else "v2"]
        return {
            "status": 200,
            "message": "Welcome to the Evolution API, it is working!",
            "version": version,
            "clientName": "billing_simulator",
            "documentation": "https://doc.evolution-api.com",
        }

    def _authorise(self, name: str, headers: dict[str, str]) -> SimInstance:
        with self._lock:
            instance = self._instances.get(name)
        if instance is None:
            raise _error(404, "Not Found", [f'The "{name}" instance does not exist'])
        key = headers.get("apikey")
        if not key or key not in (instance.api_key, self.global_api_key):
            raise _error(401, "Unauthorized", "Unauthorized")
        return instance

    @staticmethod
    def _json(body: bytes) -> object:
        try:
            return msgspec.json.decode(body) if body else None
        except msgspec.DecodeError as exc:
            raise _error(400, "Bad Request", [str(exc)]) from None

    @staticmethod
    def _require(data: object, schema: dict[str, type], where: str = "instance") -> dict[str, Any]:
        """jsonschema-like check; errors in the gateway's nested-array shape."""
        if not isinstance(data, dict):
            raise _error(400, "Bad Request", [[f"{where} is not of a type(s) object"]])
        problems = [f'{where} requires property "{name}"' for name in schema if name not in data]
        problems += [
            f"{where}.{name} is not of a type(s) {_TYPE_NAMES[kind]}"
            for name, kind in schema.items()
            if name in data and not isinstance(data[name], kind)
        ]
        if problems:
            raise _error(400, "Bad Request", [problems])
        return data

    def _take_failure(self, jid: str) -> str | None:
        with self._lock:
            for failure in self._failures:
                if failure.number is None or failure.number == jid:
                    failure.remaining -= 1
                    if failure.remaining <= 0:
                        self._failures.remove(failure)
                    return failure.kind
        return None

    async def _send_text(self, name: str, headers: dict[str, str], body: bytes) -> tuple[int, object]:
        arrived_mono, arrived_at = time.monotonic(), datetime.now(UTC)
        instance = self._authorise(name, headers)
        data = self._json(body)
        if instance.api_version == "v2":
            fields = self._require(data, {"number": str, "text": str})
            text, delay, preview = fields["text"], fields.get("delay"), fields.get("linkPreview")
        else:
            fields = self._require(data, {"number": str, "textMessage": dict})
            text_message = self._require(fields["textMessage"], {"text": str}, "instance.textMessage")
            options = fields.get("options")
            options = options if isinstance(options, dict) else {}
            text, delay, preview = text_message["text"], options.get("delay"), options.get("linkPreview")
        if not text:
            raise _error(400, "Bad Request", ["Text is required"])
        number: str = fields["number"]
        jid = remote_jid_for(number)

        failure = self._take_failure(jid)
        if failure == "connection_closed_500":
            raise _error(500, "Internal Server Error", "Connection Closed")
        if failure == "connection_closed_400":
            raise _error(400, "Bad Request", ["Error: Connection Closed"])
        if failure == "timed_out":
            raise _error(400, "Bad Request", ["Error: Timed Out"])
        if failure == "instance_not_loaded":
            raise _error(
                500, "Internal Server Error", "Cannot read properties of undefined (reading 'textMessage')"
            )
        if failure == "http_503":
            raise _Reply(503, b"503 Service Unavailable")
        if failure == "hang":
            await asyncio.sleep(self.hang_s)

        digits = _digits(number)
        with self._lock:
            absent = jid in self._not_on_whatsapp
            strict = bool(self._accounts)
        if strict and number.endswith(_JID_SUFFIX) and not self._reaches(jid):
            absent = True
        if absent or not digits.isdigit():
            raise _error(400, "Bad Request", [{"jid": jid, "exists": False, "number": number}])

        delay_ms = delay if isinstance(delay, int) and not isinstance(delay, bool) and delay > 0 else None
        if delay_ms and self.time_scale > 0:
            await asyncio.sleep(delay_ms / 1000 * self.time_scale)

        message_id = generate_message_id()
        timestamp = int(time.time())
        key = {"remoteJid": jid, "fromMe": True, "id": message_id}
        answer: dict[str, object]
        if instance.api_version == "v2":
            answer = {
                "key": key,
                "pushName": "",
                "status": "PENDING",
                "message": {"conversation": text},
                "messageType": "conversation",
                "messageTimestamp": timestamp,
                "instanceId": instance.instance_id,
                "source": "web",
            }
        else:
            answer = {
                "key": key,
                "message": {"extendedTextMessage": {"text": text}},
                "messageTimestamp": str(timestamp),
                "status": "PENDING",
            }
        record = ReceivedMessage(
            instance=name,
            number=number,
            text=text,
            received_at=arrived_at,
            received_monotonic=arrived_mono,
            message_id=message_id,
            api_version=instance.api_version,
            remote_jid=jid,
            delay_ms=delay_ms,
            link_preview=preview if isinstance(preview, bool) else None,
        )
        with self._lock:
            self._sent.append(record)
        if self._reaches(jid):
            await self._receipts(instance, message_id, jid)
        return 201, answer

    def _whatsapp_numbers(self, name: str, headers: dict[str, str], body: bytes) -> tuple[int, object]:
        self._authorise(name, headers)
        fields = self._require(self._json(body), {"numbers": list})
        numbers = fields["numbers"]
        if not all(isinstance(n, str) for n in numbers):
            raise _error(400, "Bad Request", [["instance.numbers[0] is not of a type(s) string"]])
        with self._lock:
            absent = set(self._not_on_whatsapp)
            self._number_checks.append(list(numbers))
        answers = []
        for number in numbers:
            with self._lock:
                strict = bool(self._accounts)
            if strict:
                account = self._account(number)
                found = account is not None and account + _JID_SUFFIX not in absent
                jid = (account if found and account else _digits(number)) + _JID_SUFFIX
                answers.append({"jid": jid, "exists": found, "number": number})
                continue
            jid = _digits(number) + _JID_SUFFIX  # the lookup answers the account as asked (both forms exist)
            forms = (_digits(number), *_other_forms(_digits(number)))  # one person, either way written
            gone = any(remote_jid_for(form) in absent for form in forms)
            answers.append({"jid": jid, "exists": not gone and _digits(number).isdigit(), "number": number})
        shuffled = list(answers)
        with self._lock:
            self._random.shuffle(shuffled)
        if len(shuffled) > 1 and shuffled == answers:  # never in input order, as the doc warns
            shuffled = shuffled[1:] + shuffled[:1]
        return 200, shuffled

    # ---- webhooks ------------------------------------------------------------------------------------

    def _set_webhook(self, name: str, headers: dict[str, str], body: bytes) -> tuple[int, object]:
        instance = self._authorise(name, headers)
        data = self._json(body)
        config = data.get("webhook", data) if isinstance(data, dict) else None
        if not isinstance(config, dict) or not isinstance(config.get("url"), str):
            raise _error(400, "Bad Request", [['instance requires property "url"']])
        hook = {
            "url": config["url"],
            "enabled": config.get("enabled", True) is not False,
            "headers": dict(config.get("headers") or {}),
            "events": [str(e).upper() for e in config.get("events") or []],
        }
        with self._lock:
            self._webhooks[instance.name] = hook
        return 201, {"webhook": {"instanceName": instance.name, **hook}}

    def set_webhook(
        self,
        instance: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        events: list[str] | None = None,
    ) -> None:
        """Configure ``instance``'s webhook directly (as ``POST /webhook/set`` does)."""
        hook = {"url": url, "enabled": True, "headers": dict(headers or {}), "events": list(events or [])}
        with self._lock:
            self._webhooks[instance] = hook

    def webhook(self, instance: str) -> dict[str, Any] | None:
        """The webhook set for ``instance`` (``{url, enabled, headers, events}``), or None."""
        with self._lock:
            hook = self._webhooks.get(instance)
        return dict(hook) if hook else None

    def _envelope(self, instance: SimInstance, event: str, data: dict[str, Any], url: str) -> dict[str, Any]:
        return {
            "event": event if instance.api_version == "v2" else event.upper().replace(".", "_"),
            "instance": instance.name,
            "data": data,
            "destination": url,
            "date_time": datetime.now(UTC).isoformat(),
            "sender": "5511900000000@s.whatsapp.net",
            "server_url": "http://simulator",
            "apikey": None,
        }

    async def _post(self, instance: SimInstance, event: str, data: dict[str, Any], label: str) -> None:
        hook = self.webhook(instance.name)
        wanted = event.upper().replace(".", "_")
        if hook is None or not hook["enabled"] or (hook["events"] and wanted not in hook["events"]):
            return
        if self.webhook_http is None:
            import httpx

            self.webhook_http = httpx.AsyncClient()
        status: int | None = None
        try:
            response = await self.webhook_http.post(
                hook["url"], json=self._envelope(instance, event, data, hook["url"]), headers=hook["headers"]
            )
            status = response.status_code
        except Exception:  # the receiver is down: Evolution logs and moves on
            status = None
        with self._lock:
            self.webhook_calls.append((event, label, status))

    def _receipt_data(self, instance: SimInstance, message_id: str, jid: str, status: str) -> dict[str, Any]:
        if instance.api_version == "v2":
            return {
                "keyId": message_id,
                "remoteJid": jid,
                "fromMe": True,
                "status": status,
                "instanceId": instance.instance_id,
                "messageId": "cm" + secrets.token_hex(8),
            }
        return {
            "id": message_id,
            "remoteJid": jid,
            "fromMe": True,
            "status": status,
            "datetime": int(time.time() * 1000),
            "owner": instance.name,
        }

    async def _receipts(self, instance: SimInstance, message_id: str, jid: str) -> None:
        """Post SERVER_ACK, DELIVERY_ACK and READ in a shuffled order (one duplicated); one of them is
        awaited before the send answers (a receipt before the send's own answer)."""
        if self.webhook(instance.name) is None:
            return
        statuses = ["SERVER_ACK", "DELIVERY_ACK", "READ"]
        with self._lock:
            self._random.shuffle(statuses)
            if self.receipt_duplicates:
                statuses.append(self._random.choice(statuses))
        first, rest = statuses[0], statuses[1:]
        await self._post(
            instance, "messages.update", self._receipt_data(instance, message_id, jid, first), first
        )

        async def later() -> None:
            for status in rest:
                await asyncio.sleep(0.01)
                await self._post(
                    instance, "messages.update", self._receipt_data(instance, message_id, jid, status), status
                )

        task = asyncio.ensure_future(later())
        self._webhook_tasks.add(task)
        task.add_done_callback(self._webhook_tasks.discard)

    async def reply(self, instance: str, jid: str, text: str) -> str:
        """The debtor at ``jid`` writes ``text``: posts ``messages.upsert`` (``fromMe`` false); returns
        its message id."""
        sim = self.instance(instance)
        message_id = generate_message_id()
        ts = int(time.time())
        data = {
            "key": {"remoteJid": jid, "fromMe": False, "id": message_id},
            "pushName": "Cliente",
            "message": {"conversation": text},
            "messageType": "conversation",
            "messageTimestamp": ts if sim.api_version == "v2" else str(ts),
        }
        await self._post(sim, "messages.upsert", data, "reply")
        return message_id

    async def change_state(self, instance: str, state: str) -> None:
        """Set the connection state and post ``connection.update``."""
        self.set_state(instance, state)
        sim = self.instance(instance)
        await self._post(
            sim, "connection.update", {"instance": instance, "state": state, "statusReason": 200}, state
        )

    async def drain_webhooks(self) -> None:
        """Wait until every scheduled webhook was posted."""
        while self._webhook_tasks:
            await asyncio.gather(*list(self._webhook_tasks), return_exceptions=True)

    # ---- HTTP server ---------------------------------------------------------------------------------

    async def serve(self, host: str, port: int) -> None:
        """Serve over HTTP with uvicorn until :meth:`shutdown` is called (or the task is cancelled)."""
        import uvicorn

        config = uvicorn.Config(
            self.asgi_app,
            host=host,
            port=port,
            interface="asgi3",
            lifespan="on",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        self._server = server
        try:
            await server.serve()
        finally:
            self._server = None

    @property
    def started(self) -> bool:
        """True once :meth:`serve` listens."""
        server = self._server
        return bool(server is not None and server.started)

    def shutdown(self) -> None:
        """Ask a running :meth:`serve` to stop (safe to call from any thread)."""
        server = self._server
        if server is not None:
            server.should_exit = True


def run_simulator(
    host: str,
    port: int,
    *,
    instances: list[tuple[str, str, ApiVersion]],
    global_api_key: str | None = None,
    time_scale: float = 1.0,
) -> None:
    """Blocking entry point (``billing gateway-simulator``): serve the given ``(name, api_key, version)``
    instances on ``host:port`` until interrupted."""
    simulator = EvolutionSimulator(global_api_key=global_api_key, time_scale=time_scale)
    for name, api_key, version in instances:
        simulator.add_instance(name, api_key=api_key, api_version=version)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(simulator.serve(host, port))
