"""A test ERP: receives our webhooks over real HTTP, verifies every signature, answers 500 to the first
``fail_first`` requests, and de-duplicates on ``Billing-Event-Id`` as an ERP should."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgspec
import uvicorn

from billing.domain.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, verify


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ErpReceiver:
    """ASGI app; ``secret`` is set once the endpoint is registered; ``now`` gives unix seconds."""

    def __init__(self, *, fail_first: int, now: Callable[[], int]) -> None:
        self.fail_first = fail_first
        self.now = now
        self.secret = ""
        self.requests = 0
        self.bad_signatures = 0
        self.events: dict[str, dict[str, Any]] = {}
        self.deliveries: Counter[str] = Counter()
        self.port = free_port()
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/erp/hooks"

    def types(self) -> Counter[str]:
        """How many distinct events of each type arrived."""
        return Counter(event["type"] for event in self.events.values())

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.requests += 1
        status = 200
        if not verify(headers.get(SIGNATURE_HEADER.lower()), body, self.secret, now=self.now()):
            self.bad_signatures += 1
            status = 400
        elif self.requests <= self.fail_first:
            status = 500
        else:
            event = msgspec.json.decode(body)
            event_id = headers[EVENT_ID_HEADER.lower()]
            assert event["id"] == event_id
            self.deliveries[event_id] += 1
            self.events.setdefault(event_id, event)
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    async def start(self) -> None:
        config = uvicorn.Config(self, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:  # noqa: ASYNC110 (uvicorn exposes a flag, not an event)
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        assert self._server is not None and self._task is not None
        self._server.should_exit = True
        await self._task
