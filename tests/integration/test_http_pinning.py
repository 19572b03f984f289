"""Every request of an HTTP upstream goes to the addresses checked when it connected (no DNS rebinding).

The upstream is registered by a name (`upstream.test`) that resolves to 127.0.0.1 while the gateway
connects and to 127.0.0.2 right after (the test's resolver: `socket.getaddrinfo` is stdlib, patched
in this process only; nothing of ours is replaced). A real HttpConnection then sends POSTs, opens the
GET stream, resumes an answer with Last-Event-ID and ends the session with DELETE: all of them must
reach the server on 127.0.0.1, none the one listening on 127.0.0.2 on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from typing import Any

import pytest

from gateway.types import UpstreamSpec
from gateway.upstreams.http import HttpConnection

NAME = "upstream.test"


class Upstream:
    """A minimal Streamable HTTP upstream on one address, recording what reached it."""

    def __init__(self, on_initialize: Any = None) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []  # (method, JSON-RPC method or "", headers)
        self.on_initialize = on_initialize
        self.writers: list[asyncio.StreamWriter] = []

    def close(self) -> None:
        for writer in self.writers:
            writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                method = lines[0].split(" ")[0]
                headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
                length = int(headers.get("content-length", "0"))
                msg = json.loads(await reader.readexactly(length)) if length else {}
                self.seen.append((method, msg.get("method", ""), headers))
                await self.answer(writer, method, msg, headers)

    async def answer(self, w: asyncio.StreamWriter, method: str, msg: dict[str, Any], headers: dict[str, str]) -> None:
        def send(status: str, body: bytes = b"", ctype: str = "application/json", extra: str = "") -> None:
            w.write(f"HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
                    .encode() + body)

        if method == "GET" and "last-event-id" in headers:
            answer = {"jsonrpc": "2.0", "id": 2, "result": {"content": [], "resumed": headers["last-event-id"]}}
            send("200 OK", b"data: " + json.dumps(answer).encode() + b"\n\n", "text/event-stream")
        elif method == "GET":  # the standalone stream: open, silent
            w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        elif method == "DELETE":
            send("200 OK")
        elif msg.get("method") == "initialize":
            if self.on_initialize is not None:
                self.on_initialize()
            res = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": {"name": "p"}}
            send("200 OK", json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": res}).encode(),
                 extra="mcp-session-id: s-1\r\n")
        elif "id" not in msg:
            send("202 Accepted")
        else:  # a call: a priming event with an id, then the stream ends (SSE polling): resume to get it
            send("200 OK", b"id: ev-1\nretry: 10\ndata:\n\n", "text/event-stream")
        await w.drain()


def test_get_resume_and_delete_go_to_the_address_checked_at_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo
    target = ["127.0.0.1"]

    def resolver(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == NAME:
            return real(target[0], port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)

    async def main() -> None:
        def rebind() -> None:
            target[0] = "127.0.0.2"

        good, evil = Upstream(on_initialize=rebind), Upstream()
        server = await asyncio.start_server(good.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        other = await asyncio.start_server(evil.handle, "127.0.0.2", port)
        spec = UpstreamSpec(tenant_id="acme", name="pinned", transport="http", url=f"http://{NAME}:{port}/mcp",
                            allow_private=True)
        conn = HttpConnection(spec, protocol_version="2025-11-25", capabilities={}, timeout=10)
        try:
            await conn.start()
            assert target == ["127.0.0.2"], "the name now resolves elsewhere"
            response = await conn.request("tools/call", {"name": "x", "arguments": {}})
            assert response["result"]["resumed"] == "ev-1"
            for _ in range(100):  # bounded: the GET stream opens in the background
                if any(m == "GET" and "last-event-id" not in h for m, _, h in good.seen):
                    break
                await asyncio.sleep(0.02)
        finally:
            await conn.close()
            server.close()
            other.close()
            good.close()
            evil.close()
            await asyncio.sleep(0.05)
            await server.wait_closed()
            await other.wait_closed()
        kinds = [(m, rpc or ("resume" if "last-event-id" in h else "")) for m, rpc, h in good.seen]
        assert ("POST", "initialize") in kinds and ("POST", "tools/call") in kinds
        assert ("GET", "") in kinds and ("GET", "resume") in kinds and ("DELETE", "") in kinds
        assert all(h["host"] == f"{NAME}:{port}" for _, _, h in good.seen)
        assert evil.seen == []

    asyncio.run(asyncio.wait_for(main(), 20))
