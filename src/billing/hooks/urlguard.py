"""May we send a tenant's ERP webhooks to this URL? (the save-time side of the SSRF guard).

The rules are :mod:`billing.netguard`'s — link-local and metadata addresses always refused, loopback
and private ranges only when the operator allows them (here ``BILLING_WEBHOOKS_ALLOW_PRIVATE``) — applied
to every address the host resolves to now; at call time the dispatcher's client is
:func:`billing.netguard.guarded_client`, which checks each connection's address again (DNS rebinding).
This module adds the ERP's own URL rules (no credentials in the URL, the host must resolve) and answers
with a domain error the API maps to 422.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from billing.domain.errors import InvalidValue
from billing.netguard import UnsafeAddressError, check_address

__all__ = ["Resolver", "check_url", "system_resolver"]

Resolver = Callable[[str, int], Iterable[str]]
"""``resolver(host, port)`` → the IP addresses the host resolves to."""


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses of ``host`` per the system resolver (``getaddrinfo``)."""
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


def _refuse(message: str) -> InvalidValue:
    return InvalidValue(message, code="unsafe_url", field="url")


def check_url(url: str, *, allow_private: bool, resolver: Resolver = system_resolver) -> None:
    """Raise unless ``url`` is http(s) with a host whose every address is allowed (module docstring).

    Raises:
        InvalidValue: code ``unsafe_url`` (field ``url``), naming the reason.
    """
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise _refuse("url is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _refuse("url must be an http(s) URL with a host")
    if parts.username or parts.password:
        raise _refuse("url must not carry credentials")
    try:
        addresses = list(resolver(parts.hostname, port))
    except (OSError, UnicodeError):
        raise _refuse("url's host does not resolve") from None
    if not addresses:
        raise _refuse("url's host does not resolve")
    for text in addresses:
        try:
            check_address(text.split("%")[0], allow_private=allow_private)
        except UnsafeAddressError:
            raise _refuse(
                "url points to a link-local, metadata, reserved or (not allowed by the operator: "
                "BILLING_WEBHOOKS_ALLOW_PRIVATE) private address"
            ) from None
