"""Classification of an Evolution API answer to a send.

Pure: no I/O, no clock. The gateway client (:mod:`billing.gateway.client`) turns every HTTP answer and every
transport failure into a :class:`SendOutcome`; the worker and the retry policy decide on ``kind`` and
``code`` only, never on raw HTTP.

Source of the shapes: ``docs/evolution-api.md`` (read from the gateway's sources 2.3.6 and 1.8.2).

Every error body of the gateway is ``{"status": int, "error": "<reason>", "response": {"message": ...}}``
where ``message`` is an array (400, 404), a nested array (schema errors) or a plain string (401, 500).

| answer                                                        | kind            | code                  |
| ------------------------------------------------------------- | --------------- | --------------------- |
| 2xx with ``key.id``                                           | SENT            | ``sent``              |
| 2xx without ``key.id``                                        | PERMANENT       | ``unexpected_response``|
| 400 ``[{"exists": false, "jid", "number"}]``                  | NOT_ON_WHATSAPP | ``not_on_whatsapp``   |
| 400 ``[["instance requires property \"text\""]]`` (nested)     | PERMANENT       | ``schema_error``      |
| 400 ``["Text is required"]``                                  | PERMANENT       | ``empty_text``        |
| 500 ``"Connection Closed"`` / 400 ``["Error: Connection Closed"]`` | RETRYABLE  | ``connection_closed`` |
| 400 ``["Error: Timed Out"]``                                  | RETRYABLE       | ``timed_out``         |
| 500 ``"Cannot read properties of undefined (reading ...)"``   | RETRYABLE       | ``instance_not_loaded``|
| 502 / 503 / 504                                               | RETRYABLE       | ``gateway_unavailable``|
| other 5xx                                                     | RETRYABLE       | ``gateway_error``     |
| 408                                                           | RETRYABLE       | ``request_timeout``   |
| 429 (a proxy's rate limit; the gateway has none)              | RETRYABLE       | ``rate_limited``      |
| 401                                                           | MISCONFIGURED   | ``unauthorized``      |
| 403                                                           | MISCONFIGURED   | ``forbidden``         |
| 404 ``["The \"x\" instance does not exist"]``                 | MISCONFIGURED   | ``instance_not_found``|
| 404 with any other body (wrong base URL or route)             | MISCONFIGURED   | ``endpoint_not_found``|
| 3xx (base URL redirects, e.g. http → https)                   | MISCONFIGURED   | ``redirected``        |
| other 400                                                     | PERMANENT       | ``bad_request``       |
| other 4xx                                                     | PERMANENT       | ``client_error``      |
| anything else (1xx, unknown)                                  | PERMANENT       | ``unexpected_response``|
| transport timeout (no answer)                                 | RETRYABLE       | ``gateway_timeout``   |
| transport error (connect, reset, protocol)                    | RETRYABLE       | ``transport_error``   |

Unknown outcomes: when the request may have reached WhatsApp but no answer confirms it (a timeout after the
request was written, 502/503/504, an unrecognised 5xx, the gateway's own "Timed Out"),
``outcome_unknown`` is True. The message may have been delivered, so the caller **must durably record the
attempt before any retry** (promise 3: nothing sent twice) and may show it as "possibly sent". A 2xx
without ``key.id`` is not retried at all: the gateway accepted something, and repeating it risks a
duplicate; it needs a human.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "TRANSPORT_CONNECT_ERROR",
    "TRANSPORT_CONNECT_TIMEOUT",
    "TRANSPORT_DEADLINE",
    "TRANSPORT_POOL_TIMEOUT",
    "TRANSPORT_PROTOCOL_ERROR",
    "TRANSPORT_READ_ERROR",
    "TRANSPORT_READ_TIMEOUT",
    "TRANSPORT_WRITE_ERROR",
    "TRANSPORT_WRITE_TIMEOUT",
    "OutcomeKind",
    "SendOutcome",
    "classify_send_response",
    "classify_transport_error",
]


class OutcomeKind(StrEnum):
    """What the worker does with a contact after a send attempt."""

    SENT = "sent"
    """The gateway accepted the message (201 with ``key.id``)."""
    NOT_ON_WHATSAPP = "not_on_whatsapp"
    """The number has no WhatsApp account: the contact is skipped, never retried."""
    RETRYABLE = "retryable"
    """Transient: retry after backoff (connection closed, timed out, instance not loaded, 5xx, transport)."""
    PERMANENT = "permanent"
    """A bug or a bad template (schema error, empty text, other 4xx): the contact fails, no retry."""
    MISCONFIGURED = "misconfigured"
    """Bad API key or unknown instance: pause the queue and tell the tenant admin."""


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """The classified result of one send attempt.

    Attributes:
        kind: what to do next, see :class:`OutcomeKind`.
        code: stable snake_case code (see the module table), for contact errors and metrics.
        message: short human message in English. Runs of 8+ digits (phone numbers) are redacted.
        retryable: ``kind is OutcomeKind.RETRYABLE``.
        message_id: ``key.id`` of the sent message (WhatsApp id, used by status webhooks), else None.
        remote_jid: ``key.remoteJid`` as resolved by the gateway (may differ from the number sent, e.g. the
            Brazilian ninth digit dropped), or the ``jid`` of a not-on-WhatsApp answer; else None.
        http_status: the HTTP status, or None when no answer came (transport failure).
        connection_problem: the gateway's WhatsApp connection is unhealthy (connection closed, instance not
            loaded). The caller counts these as gateway-health signals: ``connectionState`` has been seen
            reporting ``open`` while sends fail.
        outcome_unknown: the message may have reached WhatsApp without confirmation; record the attempt
            durably before retrying (see the module docstring).
        message_timestamp: ``messageTimestamp`` of a success, in seconds since the epoch (v1 sends it as a
            string, v2 as an integer), else None.
    """

    kind: OutcomeKind
    code: str
    message: str
    retryable: bool
    message_id: str | None = None
    remote_jid: str | None = None
    http_status: int | None = None
    connection_problem: bool = False
    outcome_unknown: bool = False
    message_timestamp: int | None = None

    @property
    def sent(self) -> bool:
        return self.kind is OutcomeKind.SENT


# Transport failure kinds for classify_transport_error (the client maps httpx exceptions onto these).
TRANSPORT_CONNECT_TIMEOUT = "connect_timeout"
TRANSPORT_CONNECT_ERROR = "connect_error"
TRANSPORT_POOL_TIMEOUT = "pool_timeout"
TRANSPORT_READ_TIMEOUT = "read_timeout"
TRANSPORT_WRITE_TIMEOUT = "write_timeout"
TRANSPORT_DEADLINE = "deadline_exceeded"
TRANSPORT_READ_ERROR = "read_error"
TRANSPORT_WRITE_ERROR = "write_error"
TRANSPORT_PROTOCOL_ERROR = "protocol_error"

# Failures where the request certainly never reached the gateway: the outcome is known (not sent).
_NEVER_SENT_TRANSPORT = frozenset(
    {TRANSPORT_CONNECT_TIMEOUT, TRANSPORT_CONNECT_ERROR, TRANSPORT_POOL_TIMEOUT}
)

# Baileys/Boom errors meaning the instance's WhatsApp socket is gone ("Connection Closed" is the one seen).
_CONNECTION_MARKERS = (
    "connection closed",
    "connection failure",
    "connection terminated",
    "connection lost",
    "stream errored",
)
_TIMED_OUT_MARKER = "timed out"
_NOT_LOADED_MARKER = "cannot read properties of undefined"
_EMPTY_TEXT_MARKER = "text is required"
_MAX_MESSAGE = 300
_DIGITS = re.compile(r"\d{8,}")


def _outcome(
    kind: OutcomeKind,
    code: str,
    message: str,
    *,
    http_status: int | None,
    message_id: str | None = None,
    remote_jid: str | None = None,
    connection_problem: bool = False,
    outcome_unknown: bool = False,
    message_timestamp: int | None = None,
) -> SendOutcome:
    return SendOutcome(
        kind=kind,
        code=code,
        message=_clean(message),
        retryable=kind is OutcomeKind.RETRYABLE,
        message_id=message_id,
        remote_jid=remote_jid,
        http_status=http_status,
        connection_problem=connection_problem,
        outcome_unknown=outcome_unknown,
        message_timestamp=message_timestamp,
    )


def _clean(message: str) -> str:
    text = _DIGITS.sub("<redacted>", " ".join(message.split()))
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def _error_message(body: object) -> object:
    """``response.message`` of an error body (or a top-level ``message``), else None."""
    if not isinstance(body, Mapping):
        return None
    response = body.get("response")
    if isinstance(response, Mapping) and "message" in response:
        return response["message"]
    return body.get("message")


def _strings(message: object) -> list[str]:
    """Every string in a message that is a string or a (nested) list of strings."""
    if isinstance(message, str):
        return [message]
    if isinstance(message, list):
        return [s for item in message for s in _strings(item)]
    return []


def _summary(message: object, fallback: str) -> str:
    texts = _strings(message)
    return "; ".join(texts) if texts else fallback


def _not_on_whatsapp(message: object) -> Mapping[str, object] | None:
    if isinstance(message, list):
        for item in message:
            if isinstance(item, Mapping) and item.get("exists") is False:
                return item
    return None


def _is_nested(message: object) -> bool:
    return isinstance(message, list) and any(isinstance(item, list) for item in message)


def _timestamp(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, Mapping):  # protobuf Long serialised as {"low", "high", "unsigned"}
        low, high = value.get("low"), value.get("high")
        if isinstance(low, int) and isinstance(high, int):
            return (high << 32) | (low & 0xFFFFFFFF)
    return None


def _known_failure(status: int, message: object) -> SendOutcome | None:
    """The gateway-side transient failures, recognised by their message whatever the status (400 or 500)."""
    lowered = [s.lower() for s in _strings(message)]
    summary = _summary(message, "")
    if any(marker in s for s in lowered for marker in _CONNECTION_MARKERS):
        return _outcome(
            OutcomeKind.RETRYABLE,
            "connection_closed",
            f"gateway's WhatsApp connection is closed: {summary}",
            http_status=status,
            connection_problem=True,
        )
    if any(_NOT_LOADED_MARKER in s for s in lowered):
        return _outcome(
            OutcomeKind.RETRYABLE,
            "instance_not_loaded",
            f"gateway instance is not loaded: {summary}",
            http_status=status,
            connection_problem=True,
        )
    if any(_TIMED_OUT_MARKER in s for s in lowered):
        return _outcome(
            OutcomeKind.RETRYABLE,
            "timed_out",
            f"gateway timed out talking to WhatsApp: {summary}",
            http_status=status,
            outcome_unknown=True,
        )
    return None


def _success(status: int, body: object) -> SendOutcome:
    key = body.get("key") if isinstance(body, Mapping) else None
    message_id = key.get("id") if isinstance(key, Mapping) else None
    if not isinstance(key, Mapping) or not isinstance(message_id, str) or not message_id:
        return _outcome(
            OutcomeKind.PERMANENT,
            "unexpected_response",
            f"gateway answered {status} without key.id; the message may have been sent, not retrying",
            http_status=status,
            outcome_unknown=True,
        )
    remote_jid = key.get("remoteJid")
    timestamp = body.get("messageTimestamp") if isinstance(body, Mapping) else None
    return _outcome(
        OutcomeKind.SENT,
        "sent",
        "accepted by the gateway",
        http_status=status,
        message_id=message_id,
        remote_jid=remote_jid if isinstance(remote_jid, str) and remote_jid else None,
        message_timestamp=_timestamp(timestamp),
    )


def _bad_request(message: object) -> SendOutcome:
    entry = _not_on_whatsapp(message)
    if entry is not None:
        jid = entry.get("jid")
        return _outcome(
            OutcomeKind.NOT_ON_WHATSAPP,
            "not_on_whatsapp",
            "number is not on WhatsApp",
            http_status=400,
            remote_jid=jid if isinstance(jid, str) and jid else None,
        )
    known = _known_failure(400, message)
    if known is not None:
        return known
    if _is_nested(message):
        return _outcome(
            OutcomeKind.PERMANENT,
            "schema_error",
            f"gateway rejected the request body: {_summary(message, 'schema error')}",
            http_status=400,
        )
    if any(_EMPTY_TEXT_MARKER in s.lower() for s in _strings(message)):
        return _outcome(OutcomeKind.PERMANENT, "empty_text", "message text is empty", http_status=400)
    return _outcome(
        OutcomeKind.PERMANENT,
        "bad_request",
        f"gateway refused the request: {_summary(message, 'bad request')}",
        http_status=400,
    )


def classify_send_response(status: int, body: object) -> SendOutcome:
    """Classify the answer of ``POST /message/sendText/{instance}``.

    Args:
        status: the HTTP status code.
        body: the decoded JSON body, or None when it was empty or not JSON.
    """
    if 200 <= status < 300:
        return _success(status, body)
    message = _error_message(body)
    if status == 400:
        return _bad_request(message)
    if status == 401:
        return _outcome(
            OutcomeKind.MISCONFIGURED,
            "unauthorized",
            "gateway refused the API key (401)",
            http_status=status,
        )
    if status == 403:
        return _outcome(
            OutcomeKind.MISCONFIGURED, "forbidden", "gateway forbids this API key (403)", http_status=status
        )
    if status == 404:
        texts = [s.lower() for s in _strings(message)]
        if any("instance" in s and "does not exist" in s for s in texts):
            return _outcome(
                OutcomeKind.MISCONFIGURED,
                "instance_not_found",
                f"gateway does not know the instance: {_summary(message, 'not found')}",
                http_status=status,
            )
        return _outcome(
            OutcomeKind.MISCONFIGURED,
            "endpoint_not_found",
            "gateway answered 404 for the send route; check the base URL and API version",
            http_status=status,
        )
    if status == 408:
        return _outcome(
            OutcomeKind.RETRYABLE,
            "request_timeout",
            "gateway answered 408 request timeout",
            http_status=status,
        )
    if status == 429:
        return _outcome(OutcomeKind.RETRYABLE, "rate_limited", "gateway answered 429", http_status=status)
    if status in (502, 503, 504):
        return _outcome(
            OutcomeKind.RETRYABLE,
            "gateway_unavailable",
            f"gateway unavailable ({status})",
            http_status=status,
            outcome_unknown=True,
        )
    if 500 <= status < 600:
        known = _known_failure(status, message)
        if known is not None:
            return known
        return _outcome(
            OutcomeKind.RETRYABLE,
            "gateway_error",
            f"gateway failed ({status}): {_summary(message, 'no message')}",
            http_status=status,
            outcome_unknown=True,
        )
    if 300 <= status < 400:
        return _outcome(
            OutcomeKind.MISCONFIGURED,
            "redirected",
            f"gateway answered a redirect ({status}); check the base URL",
            http_status=status,
        )
    if 400 <= status < 500:
        return _outcome(
            OutcomeKind.PERMANENT,
            "client_error",
            f"gateway refused the request ({status}): {_summary(message, 'no message')}",
            http_status=status,
        )
    return _outcome(
        OutcomeKind.PERMANENT, "unexpected_response", f"unexpected HTTP status {status}", http_status=status
    )


def address_refused(reason: str) -> SendOutcome:
    """A call the SSRF guard refused before connecting (the gateway URL is, or resolves to, a forbidden
    address; :mod:`billing.netguard`): MISCONFIGURED ``gateway_address_refused``, never sent."""
    return _outcome(
        OutcomeKind.MISCONFIGURED,
        "gateway_address_refused",
        f"the gateway URL points at an address that is not called: {reason}",
        http_status=None,
    )


def classify_transport_error(kind: str, message: str) -> SendOutcome:
    """Classify a send that got no HTTP answer.

    Args:
        kind: one of the ``TRANSPORT_*`` constants (``"connect_timeout"``, ``"read_timeout"``,
            ``"deadline_exceeded"``, ``"connect_error"``...); any other value counts as a transport error
            whose outcome is unknown.
        message: the exception's text (never containing secrets: the API key travels in a header).

    Always RETRYABLE: ``gateway_timeout`` for timeouts, ``transport_error`` otherwise. Unless the failure
    happened before the request left (connect error/timeout, pool timeout), the gateway may have sent the
    message: ``outcome_unknown`` is True, and the attempt must be recorded before any retry.
    """
    code = "gateway_timeout" if "timeout" in kind or kind == TRANSPORT_DEADLINE else "transport_error"
    detail = message.strip() or kind
    what = (
        "no answer from the gateway in time" if code == "gateway_timeout" else "could not talk to the gateway"
    )
    return _outcome(
        OutcomeKind.RETRYABLE,
        code,
        f"{what} ({kind}): {detail}",
        http_status=None,
        outcome_unknown=kind not in _NEVER_SENT_TRANSPORT,
    )
