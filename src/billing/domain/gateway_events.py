"""What the tenant's Evolution API tells us by webhook: delivery receipts, incoming messages, connection.

Pure parsing and decisions (no I/O). Envelope of both major versions (``docs/evolution-api.md``,
"Status webhooks"): ``{"event": "messages.update", "instance": "x", "data": {...}, ...}``; v1 may
spell the event ``MESSAGES_UPDATE`` and send ``data`` as a list. Receipt data:

- v2: ``{"keyId": "<key.id of the sent message>", "remoteJid", "fromMe": true, "status": "DELIVERY_ACK",
  "messageId": "<gateway db id: NOT key.id>"}``;
- v1: ``{"id": "<key.id>", "remoteJid", "fromMe": true, "status": "READ", "datetime": <ms>}``.

Status order ``PENDING → SERVER_ACK → DELIVERY_ACK → READ → PLAYED`` (Baileys also numbers them
``1..5``); any step may be missing, repeated or arrive before the send's own HTTP answer, so the
decision (:func:`receipt_steps`) is monotone and idempotent: a later state implies the earlier ones
(READ before DELIVERY_ACK means delivered too) and a repeated or older one records nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "ConnectionChange",
    "IncomingMessage",
    "Receipt",
    "ReceiptStep",
    "WebhookBatch",
    "parse_webhook",
    "receipt_steps",
]

ReceiptStep = str
"""One of ``"delivered"``, ``"read"``, ``"played"``."""
STEPS: tuple[ReceiptStep, ...] = ("delivered", "read", "played")

# gateway status → how far it got (index into STEPS + 1; 0 = not yet delivered)
_LEVEL = {
    "ERROR": -1,
    "PENDING": 0,
    "SERVER_ACK": 0,
    "DELIVERY_ACK": 1,
    "READ": 2,
    "PLAYED": 3,
    "DELETED": -1,
}
_NUMERIC = {0: "ERROR", 1: "PENDING", 2: "SERVER_ACK", 3: "DELIVERY_ACK", 4: "READ", 5: "PLAYED"}


@dataclass(frozen=True)
class Receipt:
    """A status change of a message we sent: ``message_id`` is WhatsApp's ``key.id``; ``status`` the
    gateway's upper-case name; ``at`` the gateway's instant (UTC) or None when it gave none."""

    message_id: str
    status: str
    remote_jid: str | None
    at: datetime | None


@dataclass(frozen=True)
class IncomingMessage:
    """A message the debtor sent us (``messages.upsert`` with ``fromMe`` false): ``text`` is the text of a
    conversation / extended text message ("" for media); ``at`` the gateway's instant (UTC) or None."""

    message_id: str
    remote_jid: str
    text: str
    at: datetime | None


@dataclass(frozen=True)
class ConnectionChange:
    """``connection.update``: ``state`` is ``open``, ``connecting``, ``close`` or ``refused``."""

    instance: str | None
    state: str


@dataclass(frozen=True)
class WebhookBatch:
    """Everything one webhook request carried; ``ignored`` counts items of other events or shapes."""

    event: str
    instance: str | None
    receipts: tuple[Receipt, ...] = ()
    messages: tuple[IncomingMessage, ...] = ()
    connection: ConnectionChange | None = None
    ignored: int = 0


def _event_name(raw: object) -> str:
    """``MESSAGES_UPDATE`` / ``messages-update`` / ``messages.update`` → ``messages.update``."""
    return str(raw or "").strip().lower().replace("_", ".").replace("-", ".")


def _instant(value: object) -> datetime | None:
    """Seconds or milliseconds since the epoch (int or digit string) → aware UTC; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int | float) or value <= 0:
        return None
    seconds = value / 1000 if value > 10_000_000_000 else value
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _status_name(raw: object) -> str | None:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return _NUMERIC.get(raw)
    if isinstance(raw, str) and raw.strip():
        name = raw.strip().upper()
        return name if name in _LEVEL else None
    return None


def _items(data: object) -> list[dict[str, Any]]:
    if isinstance(data, dict):
        return [data]
    if isinstance(data, list):
        return [item for item in data if isinstance(item, dict)]
    return []


def _receipt(item: dict[str, Any]) -> Receipt | None:
    raw_key, raw_update = item.get("key"), item.get("update")
    key: dict[str, Any] = raw_key if isinstance(raw_key, dict) else {}
    update: dict[str, Any] = raw_update if isinstance(raw_update, dict) else {}
    message_id = item.get("keyId") or item.get("id") or key.get("id")
    status = _status_name(item.get("status", update.get("status")))
    from_me = item.get("fromMe", key.get("fromMe", True))
    if not isinstance(message_id, str) or not message_id or status is None or from_me is False:
        return None
    jid = item.get("remoteJid") or key.get("remoteJid")
    at = _instant(item.get("datetime")) or _instant(item.get("messageTimestamp"))
    return Receipt(
        message_id=message_id, status=status, remote_jid=jid if isinstance(jid, str) else None, at=at
    )


def _text(message: object) -> str:
    if not isinstance(message, dict):
        return ""
    if isinstance(message.get("conversation"), str):
        return str(message["conversation"])
    extended = message.get("extendedTextMessage")
    if isinstance(extended, dict) and isinstance(extended.get("text"), str):
        return str(extended["text"])
    return ""


def _incoming(item: dict[str, Any]) -> IncomingMessage | None:
    key = item.get("key")
    if not isinstance(key, dict) or key.get("fromMe") is not False:
        return None
    message_id, jid = key.get("id"), key.get("remoteJid")
    if not isinstance(message_id, str) or not message_id or not isinstance(jid, str) or "@g.us" in jid:
        return None  # groups are not debtors
    return IncomingMessage(
        message_id=message_id,
        remote_jid=jid,
        text=_text(item.get("message")),
        at=_instant(item.get("messageTimestamp")),
    )


def parse_webhook(body: object, *, event_hint: str | None = None) -> WebhookBatch:
    """Read one webhook body (already JSON-decoded) of either gateway version.

    Args:
        body: the envelope ``{"event", "instance", "data", ...}``.
        event_hint: the event named by the URL (gateways configured ``webhook_by_events`` post to
            ``<url>/<event-name>``), used when the body names none.

    Returns:
        The receipts (``messages.update``, ``fromMe`` true), incoming messages (``messages.upsert``,
        ``fromMe`` false) or connection change it carried; anything else is counted in ``ignored``.

    Raises:
        ValueError: the body is not an object (a 400 for the gateway, which will not retry it).
    """
    if not isinstance(body, dict):
        raise ValueError("webhook body must be a JSON object")
    event = _event_name(body.get("event") or event_hint)
    instance = body.get("instance") if isinstance(body.get("instance"), str) else None
    items = _items(body.get("data"))
    if event == "messages.update":
        receipts = [r for r in map(_receipt, items) if r is not None]
        return WebhookBatch(event, instance, receipts=tuple(receipts), ignored=len(items) - len(receipts))
    if event == "messages.upsert":
        messages = [m for m in map(_incoming, items) if m is not None]
        return WebhookBatch(event, instance, messages=tuple(messages), ignored=len(items) - len(messages))
    if event == "connection.update" and items:
        state = items[0].get("state")
        if isinstance(state, str) and state:
            name = items[0].get("instance")
            change = ConnectionChange(
                instance=name if isinstance(name, str) else instance, state=state.lower()
            )
            return WebhookBatch(event, instance, connection=change)
    return WebhookBatch(event, instance, ignored=max(1, len(items)))


def receipt_steps(status: str, *, delivered: bool, read: bool, played: bool) -> tuple[ReceiptStep, ...]:
    """The receipt events to record for gateway ``status`` given what is already recorded.

    Monotone: ``READ`` on a message not yet delivered gives ``("delivered", "read")``; ``PLAYED`` gives
    every missing step; a status at or below what is recorded (a duplicate, an older one arriving late,
    ``SERVER_ACK``, ``ERROR``) gives ``()``.

    Args:
        status: the gateway's status name (``DELIVERY_ACK``...); unknown names give ``()``.
        delivered / read / played: what the contact already records.
    """
    level = _LEVEL.get(status.upper(), -1)
    have = (delivered, read, played)
    return tuple(step for i, step in enumerate(STEPS) if i < level and not have[i])
