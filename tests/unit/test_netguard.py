"""The SSRF guard (billing.netguard): address classes, the save-time URL check, and the call-time check on
the resolved address (DNS rebinding), against a real local HTTP server and a scripted resolver."""

from __future__ import annotations

import http.server
import ipaddress
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import billing.netguard as netguard
from billing.domain.delivery import OutcomeKind
from billing.domain.errors import InvalidValue
from billing.gateway.client import EvolutionClient
from billing.netguard import (
    GuardedTransport,
    UnsafeAddressError,
    address_class,
    check_url,
    guarded_client,
    refused_by_guard,
)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("169.254.169.254", "forbidden"),
        ("169.254.10.1", "forbidden"),
        ("169.254.170.2", "forbidden"),
        ("100.100.100.200", "forbidden"),
        ("fd00:ec2::254", "forbidden"),
        ("fe80::1", "forbidden"),
        ("::ffff:169.254.169.254", "forbidden"),
        ("0.0.0.0", "forbidden"),
        ("0.1.2.3", "forbidden"),
        ("::", "forbidden"),
        ("224.0.0.1", "forbidden"),
        ("255.255.255.255", "forbidden"),
        ("240.0.0.1", "forbidden"),
        ("127.0.0.1", "private"),
        ("127.8.9.10", "private"),
        ("::1", "private"),
        ("::ffff:127.0.0.1", "private"),
        ("10.0.0.5", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "private"),
        ("fd12:3456::1", "private"),
        ("8.8.8.8", "public"),
        ("2001:4860:4860::8888", "public"),
    ],
)
def test_address_class(address: str, expected: str) -> None:
    assert address_class(ipaddress.ip_address(address)) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://[fe80::1]:8080/",
        "http://0.0.0.0:8080/",
        "ftp://evo.example.com/",
        "file:///etc/passwd",
        "http:///nohost",
    ],
)
def test_always_refused_urls(url: str) -> None:
    for allow_private in (False, True):
        with pytest.raises(UnsafeAddressError):
            check_url(url, allow_private=allow_private)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080", "http://10.1.2.3/", "http://[::1]:9000/", "http://localhost:1/"]
)
def test_private_urls_only_when_the_operator_allows_them(url: str) -> None:
    with pytest.raises(UnsafeAddressError, match="BILLING_GATEWAY_ALLOW_PRIVATE"):
        check_url(url, allow_private=False)
    check_url(url, allow_private=True)


def test_public_and_unresolvable_names_pass_the_save_time_check() -> None:
    check_url("https://8.8.8.8/", allow_private=False)
    check_url("https://evo.does-not-resolve.invalid/", allow_private=False)  # the call-time check remains


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"instance": {"instanceName": "x", "state": "open"}}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def local_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A scripted resolver for the guard: ``dns[name] = address``."""
    answers: dict[str, str] = {}

    async def getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], port))]

    monkeypatch.setattr(netguard.anyio, "getaddrinfo", getaddrinfo)
    return answers


async def test_call_time_check_follows_the_name_to_its_current_address(
    local_server: int, dns: dict[str, str]
) -> None:
    """DNS rebinding: the name passed the save-time check, then re-points at the metadata address."""
    dns["evo.rebind.test"] = "127.0.0.1"
    async with guarded_client(allow_private=True) as http:
        ok = await http.get(f"http://evo.rebind.test:{local_server}/instance/connectionState/x")
        assert ok.status_code == 200
    dns["evo.rebind.test"] = "169.254.169.254"
    async with guarded_client(allow_private=True) as http:
        with pytest.raises(httpx.ConnectError) as refused:
            await http.get(f"http://evo.rebind.test:{local_server}/")
    cause = refused_by_guard(refused.value)
    assert cause is not None and cause.address == "169.254.169.254"


async def test_loopback_is_refused_at_call_time_unless_allowed(
    local_server: int, dns: dict[str, str]
) -> None:
    dns["evo.internal.test"] = "127.0.0.1"
    async with guarded_client(allow_private=False) as http:
        for url in (f"http://evo.internal.test:{local_server}/", f"http://127.0.0.1:{local_server}/"):
            with pytest.raises(httpx.ConnectError) as refused:
                await http.get(url)
            assert refused_by_guard(refused.value) is not None


async def test_a_send_to_a_refused_address_is_a_misconfiguration_never_sent(dns: dict[str, str]) -> None:
    dns["evo.metadata.test"] = "169.254.169.254"
    async with GuardedTransport(allow_private=True) as transport:
        client = EvolutionClient(
            transport,
            base_url="http://evo.metadata.test",
            api_key="k",
            instance="x",
            api_version="v2",
            timeout_s=5,
        )
        outcome = await client.send_text("5511987654321", "oi")
    assert (outcome.kind, outcome.code, outcome.outcome_unknown) == (
        OutcomeKind.MISCONFIGURED,
        "gateway_address_refused",
        False,
    )


async def test_the_health_probe_reports_a_refused_address_as_a_misconfiguration(dns: dict[str, str]) -> None:
    from billing.worker.health import probe_connection_state

    dns["evo.metadata.test"] = "169.254.169.254"
    gateway = {"base_url": "http://evo.metadata.test", "instance": "x", "api_key": "k"}
    async with GuardedTransport(allow_private=True) as transport:
        probe = await probe_connection_state(transport, gateway, timeout_s=5)
    assert (probe.state, probe.misconfigured) == (None, "gateway_address_refused")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://[::1", "not a valid URL: Invalid IPv6 URL"),
        ("http://evo.example.com:99999/", "not a valid URL: Port out of range 0-65535"),
        ("ftp://evo.example.com/", "must be an http:// or https:// URL with a host"),
        ("http://169.254.169.254/", "169.254.169.254 is a link-local, metadata or reserved address"),
        ("http://10.0.0.1:8080/", "10.0.0.1 is a loopback or private address"),
    ],
)
def test_the_save_time_refusals_say_why(url: str, message: str) -> None:
    with pytest.raises(UnsafeAddressError) as refused:
        check_url(url, allow_private=False)
    assert str(refused.value).startswith(message)


@pytest.mark.parametrize(
    ("url", "answer", "message"),
    [
        ("http://[::1", ["8.8.8.8"], "url is not a valid URL"),
        ("ftp://erp.example/", ["8.8.8.8"], "url must be an http(s) URL with a host"),
        ("https://u:p@erp.example/", ["8.8.8.8"], "url must not carry credentials"),
        ("https://erp.example/", [], "url's host does not resolve"),
        ("https://erp.example/", OSError("no such name"), "url's host does not resolve"),
        (
            "https://erp.example/",
            ["8.8.8.8", "fe80::1%eth0"],
            "url points to a link-local, metadata, reserved or (not allowed by the operator: "
            "BILLING_WEBHOOKS_ALLOW_PRIVATE) private address",
        ),
        ("https://8.8.8.8/", ["10.0.0.1"], "url points to a link-local"),  # a literal is resolved too
    ],
)
def test_the_webhook_refusals_say_why(url: str, answer: list[str] | OSError, message: str) -> None:
    asked: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> list[str]:
        asked.append((host, port))
        if isinstance(answer, OSError):
            raise answer
        return answer

    with pytest.raises(InvalidValue) as refused:
        netguard.check_webhook_url(url, allow_private=False, resolver=resolver)
    assert (refused.value.code, refused.value.field) == ("unsafe_url", "url")
    assert str(refused.value).startswith(message)
    assert asked in ([], [(url.split("/")[2].split("@")[-1], 443)])
