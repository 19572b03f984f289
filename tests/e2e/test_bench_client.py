"""The benchmark's minimal client (bench/lean_client.py) reads every framing an MCP server answers with and
checks every answer: issue 10's figures are measured with it, so a client that miscounted would skew them.
Real servers on loopback: the SDK fixture upstream, a real gateway, and a raw HTTP/1.1 server that answers
in chunked SSE and drops idle connections without saying so."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from bench.lean_client import LeanClient
from tests.procs import add_stdio_fixture, allow_all, run_gateway, run_http_upstream, setup_tenant


def test_calls_the_sdk_upstream_and_a_gateway(aegress_home: Path) -> None:
    token = setup_tenant(aegress_home, "acme", "alice")
    allow_all(aegress_home, "acme")
    add_stdio_fixture(aegress_home, "acme", "fx")

    async def go(up_url: str, gw_url: str) -> None:
        for url, headers, tool in ((up_url, {}, "echo"), (gw_url, {"Authorization": f"Bearer {token}"}, "fx__echo")):
            client = LeanClient(url, headers, 4)
            await client.start()
            times = await asyncio.gather(*(client.call(tool) for _ in range(20)))
            assert all(0 < t < 10 for t in times)
            with pytest.raises(RuntimeError, match="bad answer"):
                await client.call("no_such_tool")  # an answer that is not the echo is never counted
            await client.close()
        bad = LeanClient(gw_url, {"Authorization": "Bearer aeg_wrong"}, 1)
        with pytest.raises(RuntimeError, match="HTTP 401"):
            await bad.start()
        await bad.close()

    with run_http_upstream("fx-http") as (up_url, _), run_gateway(aegress_home) as gw:
        asyncio.run(go(up_url, gw.url))


class _RawServer:
    """HTTP/1.1 on a loopback port: initialize in JSON with a session id, notifications 204, calls in chunked
    SSE (a priming event first). With `drop_idle` a connection serves one request; the next one on it finds it
    closed, unanswered, as when a server drops an idle keep-alive connection just as a request is sent."""

    def __init__(self, drop_idle: bool) -> None:
        self.drop_idle = drop_idle
        self.connections = 0
        self.requests: list[tuple[bytes, dict]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
                body = json.loads(await reader.readexactly(length))
                if self.drop_idle and served:
                    break
                served += 1
                self.requests.append((head, body))
                if body.get("method") == "initialize":
                    payload = json.dumps({"jsonrpc": "2.0", "id": body["id"], "result": {}}).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nMcp-Session-Id: s-1\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
                elif "id" not in body:  # a notification: no body, and no header saying so
                    writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                else:
                    text = body["params"]["arguments"]["text"]
                    answer = json.dumps({"jsonrpc": "2.0", "id": body["id"],
                                         "result": {"content": [{"type": "text", "text": text}]}})
                    events = [b"id: 0\r\ndata: \r\n\r\n", b"event: message\r\ndata: " + answer.encode() + b"\r\n\r\n"]
                    chunks = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events)
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()


@pytest.mark.parametrize("drop_idle", [False, True])
def test_chunked_sse_answers_and_connections_the_server_dropped(drop_idle: bool) -> None:
    raw = _RawServer(drop_idle)

    async def go() -> None:
        server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            client = LeanClient(f"http://127.0.0.1:{port}/mcp", {"X-Test": "1"}, 1)
            await client.start()
            for _ in range(5):
                await client.call("echo")
            await client.close()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(asyncio.wait_for(go(), 30))
    calls = [(head, body) for head, body in raw.requests if body.get("method") == "tools/call"]
    assert len(calls) == 5 and all(b"mcp-session-id: s-1" in head.lower() and b"x-test: 1" in head.lower()
                                   for head, _ in calls)
    # kept alive: one connection for all seven requests; dropped: each request after the first found its
    # connection closed and was sent again, once, on a new one
    assert len(raw.requests) == 7 and raw.connections == (7 if drop_idle else 1)
