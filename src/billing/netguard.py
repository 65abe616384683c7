"""Server-side request forgery guard for URLs that tenants give us (gateway base URL; ERP webhooks).

Three classes of address (:func:`address_class`):

- **forbidden**, always refused: link-local (``169.254.0.0/16``, ``fe80::/10``: cloud metadata services live
  there), the metadata addresses outside it (``100.100.100.200``, ``fd00:ec2::254``), "this host"
  (``0.0.0.0/8``, ``::``), multicast, broadcast and reserved ranges.
- **private**, refused unless the operator allows them (``BILLING_GATEWAY_ALLOW_PRIVATE``, on in ``billing
  dev``): loopback, RFC 1918, carrier-grade NAT, unique-local IPv6 and every other non-global range.
- **public**: anything else.

IPv4-mapped IPv6 addresses (``::ffff:169.254.169.254``) are judged as the IPv4 address they carry.

Two checks, both needed: one when a URL is saved — :func:`check_url` for a gateway URL (a literal address,
or what the name resolves to now; a name that does not resolve yet is accepted), :func:`check_webhook_url`
for an ERP webhook endpoint (stricter: no credentials, the host must resolve; refusals are the domain's
``InvalidValue``, which the API maps to 422) — and :func:`guarded_transport` at call time: its
connections resolve the name, check **every** address it resolves to, and connect to a checked address —
never resolve again — so a name that later re-points to a forbidden address (DNS rebinding) is refused.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import ssl
from collections.abc import Callable, Iterable
from typing import Literal
from urllib.parse import SplitResult, urlsplit

import anyio
import httpcore
import httpx

from billing.domain.errors import InvalidValue

AddressClass = Literal["forbidden", "private", "public"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean...
        "169.254.170.2",  # AWS ECS task metadata
        "100.100.100.200",  # Alibaba Cloud
        "fd00:ec2::254",  # AWS IPv6
    )
)
THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")

Resolver = Callable[[str, int], Iterable[str]]
"""``resolver(host, port)`` → the IP addresses the host resolves to (:func:`check_webhook_url`)."""


class UnsafeAddressError(httpcore.ConnectError):
    """A URL's host is, or resolves to, an address this process must not call.

    A ``ValueError``-like refusal at save time (:func:`check_url`); at call time it is raised inside
    httpcore, and httpx re-raises it as :class:`httpx.ConnectError` whose ``__cause__`` is this error.
    """

    def __init__(self, message: str, *, address: str | None = None) -> None:
        super().__init__(message)
        self.address = address


def address_class(address: IPAddress) -> AddressClass:
    """Classify one address (see the module docstring)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:  # before is_reserved: ::1 lies in the reserved ::/8
        return "private"
    if (
        address in METADATA_ADDRESSES
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
        or address.is_reserved
        or (isinstance(address, ipaddress.IPv4Address) and address in THIS_NETWORK)
    ):
        return "forbidden"
    if address.is_loopback or address.is_private or not address.is_global:
        return "private"
    return "public"


def check_address(address: str | IPAddress, *, allow_private: bool) -> None:
    """Refuse ``address`` unless it may be called. Raises :class:`UnsafeAddressError` saying why."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    kind = address_class(ip)
    if kind == "forbidden":
        raise UnsafeAddressError(
            f"{ip} is a link-local, metadata or reserved address and is never called", address=str(ip)
        )
    if kind == "private" and not allow_private:
        raise UnsafeAddressError(
            f"{ip} is a loopback or private address; the operator allows those with "
            "BILLING_GATEWAY_ALLOW_PRIVATE=1",
            address=str(ip),
        )


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _http_target(url: str) -> tuple[SplitResult, str, int] | None:
    """``(parts, host, port)`` of ``url`` when it is an http(s) URL with a host (``port``: the URL's, else
    443 for https and 80 for http), None when it is not.

    Raises:
        ValueError: not a valid URL (``urlsplit``'s refusals: a port out of range, a bad IPv6 literal).
    """
    parts = urlsplit(url)
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if parts.scheme not in ("http", "https") or not host:
        return None
    return parts, host, port


def _check_resolved(host: str, port: int, resolver: Resolver, *, allow_private: bool) -> bool:
    """Check every address ``resolver`` gives for ``host:port`` (:func:`check_address`, in its order);
    False when it gives none.

    Raises:
        UnsafeAddressError: an address is refused.
        OSError, UnicodeError: as ``resolver`` raises them (the host does not resolve).
    """
    addresses = _addresses(resolver(host, port))
    for address in addresses:
        check_address(address, allow_private=allow_private)
    return bool(addresses)


def check_url(url: str, *, allow_private: bool, resolve: bool = True) -> None:
    """The save-time check of a tenant-given URL.

    Args:
        url: ``http://`` or ``https://`` URL with a host.
        allow_private: loopback and private addresses are acceptable.
        resolve: also resolve a host name now (blocking ``getaddrinfo``) and check every address; a name
            that does not resolve is accepted (the call-time check still applies).

    Raises:
        UnsafeAddressError: not http(s), no host, or an address refused by :func:`check_address`.
    """
    try:
        target = _http_target(url)
    except ValueError as exc:
        raise UnsafeAddressError(f"not a valid URL: {exc}") from None
    if target is None:
        raise UnsafeAddressError("must be an http:// or https:// URL with a host")
    _, host, port = target
    literal = _literal(host)
    if literal is not None:
        check_address(literal, allow_private=allow_private)
        return
    if not resolve:
        return
    try:
        _check_resolved(host, port, system_resolver, allow_private=allow_private)
    except (socket.gaierror, UnicodeError):
        return


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses of ``host`` per the system resolver (``getaddrinfo``), each once, in its order.

    Raises:
        socket.gaierror: the name does not resolve.
    """
    return list(
        dict.fromkeys(str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
    )


def _refuse_webhook(message: str) -> InvalidValue:
    return InvalidValue(message, code="unsafe_url", field="url")


def check_webhook_shape(url: str) -> tuple[str, int]:
    """The part of :func:`check_webhook_url` that needs no I/O: ``url`` must be http(s) with a host and no
    credentials. Returns ``(host, port)`` (port: the URL's, else 443 for https and 80 for http).

    Raises:
        InvalidValue: code ``unsafe_url`` (field ``url``), naming the reason.
    """
    try:
        target = _http_target(url)
    except ValueError:
        raise _refuse_webhook("url is not a valid URL") from None
    if target is None:
        raise _refuse_webhook("url must be an http(s) URL with a host")
    parts, host, port = target
    if parts.username or parts.password:
        raise _refuse_webhook("url must not carry credentials")
    return host, port


def check_webhook_url(url: str, *, allow_private: bool, resolver: Resolver = system_resolver) -> None:
    """The save-time check of an ERP webhook endpoint: :func:`check_url`'s, stricter — ``url`` must pass
    :func:`check_webhook_shape` and have a host (even a literal address goes through ``resolver``,
    blocking) whose every address :func:`check_address` allows; ``allow_private`` is the operator's
    ``BILLING_WEBHOOKS_ALLOW_PRIVATE``. At call time the dispatcher checks the shape only and its client,
    :func:`guarded_client`, resolves the host once when it connects and checks every address then (DNS
    rebinding).

    Raises:
        InvalidValue: code ``unsafe_url`` (field ``url``), naming the reason.
    """
    host, port = check_webhook_shape(url)
    try:
        resolved = _check_resolved(host, port, resolver, allow_private=allow_private)
    except (OSError, UnicodeError):
        raise _refuse_webhook("url's host does not resolve") from None
    except UnsafeAddressError:
        raise _refuse_webhook(
            "url points to a link-local, metadata, reserved or (not allowed by the operator: "
            "BILLING_WEBHOOKS_ALLOW_PRIVATE) private address"
        ) from None
    if not resolved:
        raise _refuse_webhook("url's host does not resolve")


def _addresses(raw: Iterable[str | int]) -> list[IPAddress]:
    seen: list[IPAddress] = []
    for text in raw:
        ip = ipaddress.ip_address(str(text).split("%", 1)[0])  # drop an IPv6 zone id
        if ip not in seen:
            seen.append(ip)
    return seen


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend that resolves, checks every address, then connects to a checked one."""

    def __init__(self, *, allow_private: bool, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.allow_private = allow_private
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Connect to ``host:port`` through a checked address. Raises UnsafeAddressError, ConnectError."""
        literal = _literal(host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                with anyio.fail_after(timeout):
                    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except TimeoutError:
                raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
            except OSError as exc:
                raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
            addresses = _addresses(info[4][0] for info in infos)
        for address in addresses:
            check_address(address, allow_private=self.allow_private)
        error: Exception = httpcore.ConnectError(f"{host} resolved to no address")
        for address in addresses:
            try:
                stream = await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
            else:
                return _CheapReadableStream(stream)
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Refused: tenant URLs never reach a Unix socket."""
        raise UnsafeAddressError("Unix sockets are never called")

    async def sleep(self, seconds: float) -> None:
        """Delegate to the inner backend."""
        await self._inner.sleep(seconds)


class _CheapReadableStream(httpcore.AsyncNetworkStream):
    """A connected stream whose ``get_extra_info("is_readable")`` polls the socket it keeps, instead of
    anyio's path (a dict of every socket attribute and a ``getpeername`` call per question).

    httpcore asks every idle pooled connection that question each time a request enters or leaves the
    pool, so with a few dozen keep-alive connections it was the largest cost of a gateway call. Same
    answer as httpcore's own check: readable when the socket has data (or is gone)."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._socket: socket.socket | None = inner.get_extra_info("socket")
        self._poller: select.poll | None = None
        fd = -1 if self._socket is None else self._socket.fileno()
        if fd >= 0:  # registered once: each question is then one poll(0)
            self._poller = select.poll()
            self._poller.register(fd, select.POLLIN)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        return _CheapReadableStream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> object:
        if info == "is_readable":
            # a closed socket (fileno -1) counts as readable: its next read is the end. While it is open
            # the registered descriptor is still this socket's, never a reused number.
            if self._poller is None or self._socket is None or self._socket.fileno() < 0:
                return True
            return bool(self._poller.poll(0))
        return self._inner.get_extra_info(info)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport`` whose connections go through :class:`GuardedNetworkBackend` (no proxy:
    through a proxy the guard would judge the proxy's address, not the target's)."""

    def __init__(
        self, *, allow_private: bool, verify: ssl.SSLContext | bool = True, limits: httpx.Limits | None = None
    ) -> None:
        limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        super().__init__(verify=verify, limits=limits, trust_env=False)
        # httpx offers no parameter for httpcore's network backend: rebuild its pool with ours
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedNetworkBackend(allow_private=allow_private),
        )


def guarded_client(*, allow_private: bool, **kwargs: object) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for tenant-given URLs: :class:`GuardedTransport`, no proxies from the
    environment, no redirects followed (a redirect to a forbidden host is then not even attempted)."""
    return httpx.AsyncClient(
        transport=GuardedTransport(allow_private=allow_private),
        trust_env=False,
        follow_redirects=False,
        **kwargs,  # type: ignore[arg-type]
    )


def refused_by_guard(exc: BaseException) -> UnsafeAddressError | None:
    """The :class:`UnsafeAddressError` behind an httpx error (its cause chain), or None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, UnsafeAddressError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
