"""HTTP client of one tenant's Evolution API instance.

Contract: ``docs/evolution-api.md`` (read from the gateway's sources 2.3.6 for ``v2`` and 1.8.2 for
``v1``). The client never raises for HTTP or transport failures of a send: it classifies every answer into
a :class:`~billing.domain.delivery.SendOutcome` and the worker decides. The API key travels in the
``apikey`` header only and is never logged; phone numbers and texts are not logged either.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol
from urllib.parse import quote

import httpx
import msgspec

from billing.domain.delivery import (
    TRANSPORT_CONNECT_ERROR,
    TRANSPORT_CONNECT_TIMEOUT,
    TRANSPORT_DEADLINE,
    TRANSPORT_POOL_TIMEOUT,
    TRANSPORT_PROTOCOL_ERROR,
    TRANSPORT_READ_ERROR,
    TRANSPORT_READ_TIMEOUT,
    TRANSPORT_WRITE_ERROR,
    TRANSPORT_WRITE_TIMEOUT,
    OutcomeKind,
    SendOutcome,
    address_refused,
    classify_send_response,
    classify_transport_error,
)
from billing.netguard import refused_by_guard

__all__ = ["WHATSAPP_NUMBERS_BATCH", "ApiVersion", "EvolutionClient", "GatewayError", "GatewayFactory"]

log = logging.getLogger(__name__)

ApiVersion = Literal["v1", "v2"]

WHATSAPP_NUMBERS_BATCH = 50
"""Most numbers per ``whatsappNumbers`` call: bulk checks are known to get WhatsApp accounts flagged."""

_NON_DIGITS = re.compile(r"\D")

# Most specific first: the timeouts are TransportError subclasses too.
_TRANSPORT_KINDS: tuple[tuple[type[Exception], str], ...] = (
    (httpx.ConnectTimeout, TRANSPORT_CONNECT_TIMEOUT),
    (httpx.ReadTimeout, TRANSPORT_READ_TIMEOUT),
    (httpx.WriteTimeout, TRANSPORT_WRITE_TIMEOUT),
    (httpx.PoolTimeout, TRANSPORT_POOL_TIMEOUT),
    (httpx.ConnectError, TRANSPORT_CONNECT_ERROR),
    (httpx.ReadError, TRANSPORT_READ_ERROR),
    (httpx.WriteError, TRANSPORT_WRITE_ERROR),
    (httpx.ProtocolError, TRANSPORT_PROTOCOL_ERROR),
    (TimeoutError, TRANSPORT_DEADLINE),
)


def _transport_kind(exc: Exception) -> str:
    for cls, kind in _TRANSPORT_KINDS:
        if isinstance(exc, cls):
            return kind
    return "transport_error"


def _decode(content: bytes) -> object:
    """The JSON body, or None when empty or not JSON (a proxy's HTML page, a plain-text 503)."""
    if not content:
        return None
    try:
        return msgspec.json.decode(content)
    except msgspec.DecodeError:
        return None


class GatewayError(Exception):
    """A non-send call (``whatsappNumbers``) failed. ``outcome`` classifies it like a send would be;
    ``partial`` holds the answers of the batches that succeeded before the failure."""

    def __init__(self, outcome: SendOutcome, partial: Mapping[str, bool] | None = None) -> None:
        super().__init__(f"{outcome.code}: {outcome.message}")
        self.outcome = outcome
        self.partial: dict[str, bool] = dict(partial or {})


class EvolutionClient:
    """Talks to one Evolution API instance.

    Args:
        transport: the shared HTTP transport (owned by the caller): production passes the SSRF-guarded
            :class:`billing.netguard.GuardedTransport` whose pool every tenant's client shares; tests pass
            ``httpx.ASGITransport(app=simulator.asgi_app)``. Calls go to the transport directly
            (``handle_async_request``, httpx's transport interface), not through an ``httpx.AsyncClient``:
            no cookies, auth, redirects or event hooks are wanted, and that layer was about a seventh of
            each call's CPU (``bench/gateway_call.py``: 1,491 vs 1,743 µs per call here).
        base_url: the gateway's root URL, e.g. ``"https://evo.example.com"`` (a trailing ``/`` is ignored).
        api_key: the global key or the instance token, sent as header ``apikey``. Never logged.
        instance: the instance name (URL-quoted in paths).
        api_version: ``"v2"`` (2.x) or ``"v1"`` (1.8.x): decides the sendText body shape.
        timeout_s: seconds allowed for one call **on top of** any typing ``delay`` of a send (the gateway
            holds the HTTP call for the whole delay).
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        base_url: str,
        api_key: str,
        instance: str,
        api_version: ApiVersion,
        timeout_s: float = 30.0,
    ) -> None:
        if api_version not in ("v1", "v2"):
            raise ValueError(f"api_version must be 'v1' or 'v2', not {api_version!r}")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self._transport = transport
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.instance = instance
        self.api_version: ApiVersion = api_version
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return (
            f"EvolutionClient(base_url={self._base_url!r}, instance={self.instance!r}, "
            f"api_version={self.api_version!r}, api_key='***')"
        )

    def _url(self, controller: str, action: str) -> str:
        return f"{self._base_url}/{controller}/{action}/{quote(self.instance, safe='')}"

    async def _request(
        self, method: str, url: str, *, json_body: object | None, timeout_s: float
    ) -> tuple[int, object]:
        """One HTTP call bounded by ``timeout_s`` overall (also with transports that ignore httpx timeouts,
        such as ``ASGITransport``). Raises httpx.HTTPError or TimeoutError."""
        headers, content, timeout = self.request_parts(json_body, timeout_s)
        request = httpx.Request(
            method, url, content=content, headers=headers, extensions={"timeout": timeout.as_dict()}
        )
        async with asyncio.timeout(timeout_s):
            response = await self._transport.handle_async_request(request)
            try:
                body = await response.aread()
            finally:
                await response.aclose()
        return response.status_code, _decode(body)

    def request_parts(
        self, json_body: object | None, timeout_s: float
    ) -> tuple[dict[str, str], bytes | None, httpx.Timeout]:
        """The headers (``apikey``, ``accept`` and, with a body, ``content-type``), the JSON body's bytes
        (None without one) and the httpx timeout (``timeout_s`` seconds overall, connecting within this
        client's ``timeout_s``) of one call."""
        headers = {"apikey": self._api_key, "accept": "application/json"}
        content = None
        if json_body is not None:
            content = msgspec.json.encode(json_body)
            headers["content-type"] = "application/json"
        return headers, content, httpx.Timeout(timeout_s, connect=min(timeout_s, self.timeout_s))

    def send_body(
        self, number: str, text: str, *, delay_ms: int | None, link_preview: bool
    ) -> dict[str, Any]:
        """The sendText body for this client's API version.

        v2: ``{"number", "text", "delay"?, "linkPreview"}``;
        v1: ``{"number", "textMessage": {"text"},
        "options": {"delay"?, "presence": "composing", "linkPreview"}}``.
        """
        if self.api_version == "v2":
            body: dict[str, Any] = {"number": number, "text": text}
            if delay_ms is not None:
                body["delay"] = delay_ms
            body["linkPreview"] = link_preview
            return body
        options: dict[str, Any] = {}
        if delay_ms is not None:
            options["delay"] = delay_ms
        options["presence"] = "composing"
        options["linkPreview"] = link_preview
        return {"number": number, "textMessage": {"text": text}, "options": options}

    async def send_text(
        self, number: str, text: str, *, delay_ms: int | None = None, link_preview: bool = False
    ) -> SendOutcome:
        """``POST /message/sendText/{instance}``: send one text message.

        Args:
            number: digits with country code (``"5511987654321"``; ``+``, spaces, brackets and dashes are
                stripped by the gateway) or a jid ``"…@s.whatsapp.net"``.
            text: the message, sent as is.
            delay_ms: milliseconds of "typing…" the gateway shows before sending; the call blocks that long,
                so the call's deadline is ``delay_ms / 1000 + timeout_s`` seconds.
            link_preview: ask the gateway for a link preview.

        Returns:
            The classified outcome; ``SENT`` carries ``message_id`` (``key.id``) and ``remote_jid``
            (``key.remoteJid``, possibly rewritten by the gateway). Never raises for HTTP or transport
            failures. An outcome with ``outcome_unknown`` may have been delivered: record it before retrying.
        """
        if delay_ms is not None and delay_ms < 0:
            raise ValueError("delay_ms must be >= 0")
        deadline_s = self.timeout_s + (delay_ms or 0) / 1000
        body = self.send_body(number, text, delay_ms=delay_ms, link_preview=link_preview)
        started = time.monotonic()
        try:
            status, answer = await self._request(
                "POST", self._url("message", "sendText"), json_body=body, timeout_s=deadline_s
            )
        except (httpx.HTTPError, TimeoutError) as exc:
            refused = refused_by_guard(exc)
            if refused is not None:
                outcome = address_refused(str(refused))
            else:
                outcome = classify_transport_error(_transport_kind(exc), str(exc) or type(exc).__name__)
        else:
            outcome = classify_send_response(status, answer)
        log.info(
            "evolution sendText %s",
            outcome.code,
            extra={
                "instance": self.instance,
                "outcome": outcome.kind.value,
                "code": outcome.code,
                "http_status": outcome.http_status,
                "elapsed_ms": round((time.monotonic() - started) * 1000),
            },
        )
        return outcome

    async def connection_state(self) -> str | None:
        """``GET /instance/connectionState/{instance}`` → ``"open"``, ``"connecting"`` or ``"close"``.

        The answer is ``{"instance": {"instanceName": "x", "state": "open"}}``; None when ``state`` is
        missing (instance not loaded) or on any failure (HTTP error, transport error, odd body). Advisory
        only: the gateway has reported ``open`` while sends failed with "Connection Closed".
        """
        try:
            status, body = await self._request(
                "GET", self._url("instance", "connectionState"), json_body=None, timeout_s=self.timeout_s
            )
        except (httpx.HTTPError, TimeoutError) as exc:
            log.warning(
                "evolution connectionState failed",
                extra={"instance": self.instance, "error": _transport_kind(exc)},
            )
            return None
        if status != 200 or not isinstance(body, dict):
            log.warning("evolution connectionState answered %s", status, extra={"instance": self.instance})
            return None
        instance = body.get("instance")
        state = instance.get("state") if isinstance(instance, dict) else None
        return state if isinstance(state, str) and state else None

    async def whatsapp_numbers(self, numbers: Sequence[str]) -> dict[str, bool]:
        """``POST /chat/whatsappNumbers/{instance}``: which numbers have a WhatsApp account.

        Sends ``{"numbers": [...]}`` in batches of at most :data:`WHATSAPP_NUMBERS_BATCH` (50) unique
        numbers. The gateway answers ``[{"jid", "exists", "number": <input as sent>, "name"?}]`` **not in
        input order**, so answers are matched on ``number`` (falling back to its digits).

        Returns:
            ``{input number: exists}`` for every input the gateway answered for; a number missing from the
            answers is missing from the result (unknown).

        Raises:
            GatewayError: a batch failed (its ``outcome`` is classified as for a send; ``partial`` keeps
                the answers of the earlier batches).
        """
        unique = list(dict.fromkeys(numbers))
        result: dict[str, bool] = {}
        url = self._url("chat", "whatsappNumbers")
        for start in range(0, len(unique), WHATSAPP_NUMBERS_BATCH):
            batch = unique[start : start + WHATSAPP_NUMBERS_BATCH]
            try:
                status, body = await self._request(
                    "POST", url, json_body={"numbers": batch}, timeout_s=self.timeout_s
                )
            except (httpx.HTTPError, TimeoutError) as exc:
                raise GatewayError(
                    classify_transport_error(_transport_kind(exc), str(exc) or type(exc).__name__), result
                ) from exc
            if not 200 <= status < 300:
                raise GatewayError(classify_send_response(status, body), result)
            if not isinstance(body, list):
                raise GatewayError(
                    SendOutcome(
                        kind=OutcomeKind.PERMANENT,
                        code="unexpected_response",
                        message=f"whatsappNumbers answered {status} without a list",
                        retryable=False,
                        http_status=status,
                    ),
                    result,
                )
            result.update(_match_numbers(batch, body))
        return result

    async def lookup_accounts(self, numbers: Sequence[str]) -> dict[str, str | None]:
        """``POST /chat/whatsappNumbers`` for ``numbers`` (batches of ≤ 50): ``{number asked: jid that
        exists, or None}``, matched on the answers' ``number`` (they come in any order). A number the gateway
        did not answer for is missing from the result.

        Raises:
            GatewayError: a batch failed (as :meth:`EvolutionClient.whatsapp_numbers`).
        """
        unique = list(dict.fromkeys(numbers))
        result: dict[str, str | None] = {}
        url = self._url("chat", "whatsappNumbers")
        for start in range(0, len(unique), WHATSAPP_NUMBERS_BATCH):
            batch = unique[start : start + WHATSAPP_NUMBERS_BATCH]
            try:
                status, body = await self._request(
                    "POST", url, json_body={"numbers": batch}, timeout_s=self.timeout_s
                )
            except (httpx.HTTPError, TimeoutError) as exc:
                raise GatewayError(
                    classify_transport_error(_transport_kind(exc), str(exc) or type(exc).__name__)
                ) from exc
            if not 200 <= status < 300 or not isinstance(body, list):
                raise GatewayError(classify_send_response(status, body))
            by_digits = {_NON_DIGITS.sub("", n.split("@")[0]): n for n in batch}
            for answer in body:
                if not isinstance(answer, dict) or not isinstance(answer.get("number"), str):
                    continue
                original = by_digits.get(_NON_DIGITS.sub("", str(answer["number"]).split("@")[0]))
                if original is None:
                    continue
                jid = answer.get("jid")
                exists = answer.get("exists") is True and isinstance(jid, str) and bool(jid)
                result[original] = str(jid) if exists else None
        return result


class GatewayFactory(Protocol):
    """``gateways(config)`` → the :class:`EvolutionClient` of a tenant's gateway config
    (``{base_url, instance, api_key, api_version}``, see :mod:`billing.domain.tenant`), on ``transport``:
    the process's one shared HTTP transport, which the health probe
    (:func:`billing.worker.health.probe_connection_state`) calls too. Production's is
    :class:`billing.bootstrap.GatewayClients`."""

    transport: httpx.AsyncBaseTransport

    def __call__(self, config: Mapping[str, str]) -> EvolutionClient: ...


def _match_numbers(batch: Sequence[str], answers: list[object]) -> dict[str, bool]:
    by_input = {number: number for number in batch}
    by_digits: dict[str, str] = {}
    for number in batch:
        by_digits.setdefault(_NON_DIGITS.sub("", number.split("@")[0]), number)
    matched: dict[str, bool] = {}
    for answer in answers:
        if not isinstance(answer, dict):
            continue
        exists, answered = answer.get("exists"), answer.get("number")
        if not isinstance(exists, bool) or not isinstance(answered, str):
            continue
        original = by_input.get(answered) or by_digits.get(_NON_DIGITS.sub("", answered.split("@")[0]))
        if original is not None:
            matched[original] = exists
    return matched


async def set_webhook(
    client: EvolutionClient, url: str, *, headers: Mapping[str, str], events: Sequence[str]
) -> int:
    """``POST /webhook/set/{instance}`` (v2 body ``{"webhook": {enabled, url, headers, byEvents, events}}``;
    v1 takes the same fields flat). Returns the HTTP status (2xx: configured).

    Raises:
        httpx.HTTPError / TimeoutError: the gateway could not be reached.
    """
    config = {
        "enabled": True,
        "url": url,
        "headers": dict(headers),
        "byEvents": False,
        "events": list(events),
    }
    body: dict[str, Any] = {"webhook": config} if client.api_version == "v2" else {
        "enabled": True, "url": url, "webhook_by_events": False, "events": list(events),
        "headers": dict(headers),
    }  # fmt: skip
    status, _ = await client._request(
        "POST", client._url("webhook", "set"), json_body=body, timeout_s=client.timeout_s
    )
    return status
