"""Benchmark: the CPU one ``sendText`` call costs the worker, through :class:`EvolutionClient` (which calls
the shared transport directly) against the same client sending through an ``httpx.AsyncClient`` on the
same transport (:class:`ThroughAsyncClient`, the path before), in the same run.

The server is a minimal HTTP/1.1 responder in a child process answering every request with the body of a
real Evolution API 201, so what is measured is the client side only (``time.process_time`` of this
process). Both paths use the SSRF-guarded transport the worker uses, at the worker's concurrency.

Run: ``.venv/bin/python bench/gateway_call.py [--calls 5000] [--concurrency 10] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import time
from typing import Any

import httpx
import msgspec
from common import free_port

from billing.gateway.client import EvolutionClient
from billing.netguard import GuardedTransport

ANSWER = (
    b'{"key":{"remoteJid":"5511987654321@s.whatsapp.net","fromMe":true,"id":"3EB0C431C26A1916E07E"},'
    b'"pushName":"","status":"PENDING","message":{"conversation":"x"},"messageTimestamp":1733000000}'
)
TEXT = "Olá, Cliente da Silva! Sua fatura de janeiro está disponível no portal. Responda esta mensagem."


def serve(port: int) -> None:
    """Child process: answers every request on ``127.0.0.1:port`` with a 201 and :data:`ANSWER`."""
    response = b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(ANSWER),
        ANSWER,
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                writer.write(response)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


class ThroughAsyncClient(EvolutionClient):
    """The baseline: :class:`EvolutionClient` with each request made through ``httpx.AsyncClient.request``
    (cookies, auth and redirect handling, URL merging), as it was before it called the transport."""

    def __init__(self, http: httpx.AsyncClient, transport: httpx.AsyncBaseTransport, **kwargs: Any) -> None:
        super().__init__(transport, **kwargs)
        self._http = http

    async def _request(
        self, method: str, url: str, *, json_body: object | None, timeout_s: float
    ) -> tuple[int, object]:
        headers, content, timeout = self.request_parts(json_body, timeout_s)
        async with asyncio.timeout(timeout_s):
            response = await self._http.request(
                method, url, content=content, headers=headers, timeout=timeout
            )
        return response.status_code, msgspec.json.decode(response.content) if response.content else None


async def measure(path: str, port: int, calls: int, concurrency: int) -> float:
    """µs of this process's CPU per call over ``calls`` calls (after 300 warm-up calls)."""
    transport = GuardedTransport(allow_private=True)
    http = httpx.AsyncClient(transport=transport, trust_env=False, follow_redirects=False)
    config: dict[str, Any] = {
        "base_url": f"http://127.0.0.1:{port}", "api_key": "k", "instance": "bench", "api_version": "v2"
    }  # fmt: skip
    client = (
        EvolutionClient(transport, **config)
        if path == "transport"
        else ThroughAsyncClient(http, transport, **config)
    )
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            outcome = await client.send_text("5511987654321", TEXT)
            assert outcome.code == "sent", outcome

    await asyncio.gather(*(one() for _ in range(300)))
    started = time.process_time()
    await asyncio.gather(*(one() for _ in range(calls)))
    used = time.process_time() - started
    await http.aclose()
    return used / calls * 1e6


async def run(args: argparse.Namespace, port: int) -> None:
    figures: dict[str, list[float]] = {"client": [], "transport": []}
    for _ in range(args.rounds):  # interleaved: both paths see the same machine
        for path in figures:
            figures[path].append(await measure(path, port, args.calls, args.concurrency))
    client, direct = statistics.median(figures["client"]), statistics.median(figures["transport"])
    print(f"{args.calls} calls × {args.rounds} rounds at concurrency {args.concurrency} (median of rounds):")
    print(f"  EvolutionClient.send_text on the transport   {direct:7.0f} µs CPU per call")
    print(f"  baseline: the same through httpx.AsyncClient {client:7.0f} µs CPU per call")
    print(f"  ratio: {direct / client:.0%} of the baseline's CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(port,), daemon=True)
    server.start()
    try:
        time.sleep(1.0)
        asyncio.run(run(args, port))
    finally:
        server.terminate()
        server.join()


if __name__ == "__main__":
    main()
