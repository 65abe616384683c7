"""Where may we send a tenant's ERP webhooks? (server-side request forgery guard).

Refused always: link-local addresses (``169.254.0.0/16``, ``fe80::/10``, which hold the cloud metadata
services), the unspecified and multicast/reserved ranges. Refused unless the operator allows private
targets (``allow_private``): loopback and private ranges (RFC 1918, ``fc00::/7``, carrier-grade NAT).
The host is resolved and *every* address checked, at save time and again before each call (DNS
rebinding). The gateway URL's guard (``billing.netguard``) follows the same rules; this module keeps the
ERP side standing alone until both share it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from billing.domain.errors import InvalidValue

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
        InvalidValue: code ``unsafe_url`` (field ``url``), naming the reason, never the address.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _refuse("url must be an http(s) URL with a host")
    if parts.username or parts.password:
        raise _refuse("url must not carry credentials")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = list(resolver(parts.hostname, port))
    except OSError:
        raise _refuse("url's host does not resolve") from None
    if not addresses:
        raise _refuse("url's host does not resolve")
    for text in addresses:
        address = ipaddress.ip_address(text.split("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.is_link_local or address.is_unspecified or address.is_multicast or address.is_reserved:
            raise _refuse("url points to a link-local, metadata or reserved address")
        if not allow_private and (address.is_loopback or address.is_private or not address.is_global):
            raise _refuse("url points to a private or loopback address (not allowed by the operator)")
