"""Signatures of the webhooks we send to the ERP (Stripe's scheme: HMAC-SHA256 over ``"<t>.<body>"``).

Header ``Billing-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}.{body}")>``. The
timestamp is inside the signed text, so a receiver refuses a replay older than its tolerance (Stripe's
default: 300 s) without keeping state; ``Billing-Event-Id`` lets it de-duplicate the at-least-once
deliveries. Several ``v1=`` entries may appear (during a secret rotation); one matching is enough.
Pure: the instant is passed in.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["DEFAULT_TOLERANCE_S", "SIGNATURE_HEADER", "sign", "signature_header", "verify"]

SIGNATURE_HEADER = "Billing-Signature"
EVENT_ID_HEADER = "Billing-Event-Id"
DEFAULT_TOLERANCE_S = 300


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``b"<timestamp>." + body`` under ``secret`` (UTF-8)."""
    message = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    """The header value ``t=<timestamp>,v1=<signature>`` for ``body`` sent at ``timestamp`` (unix s)."""
    return f"t={timestamp},v1={sign(secret, timestamp, body)}"


def verify(
    header: str | None, body: bytes, secret: str, *, now: int, tolerance_s: int = DEFAULT_TOLERANCE_S
) -> bool:
    """True when ``header`` carries a ``v1`` signature of ``body`` under ``secret`` and its ``t`` is
    within ``tolerance_s`` seconds of ``now`` (unix seconds). Constant-time comparison."""
    if not header:
        return False
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1":
            signatures.append(value)
    if timestamp is None or not signatures or abs(now - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body)
    return any(hmac.compare_digest(expected, s) for s in signatures)
