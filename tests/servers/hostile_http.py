"""A hostile Streamable HTTP upstream: a real MCP server (raw asyncio HTTP/1.1) whose tools misbehave.

Run: python -m tests.servers.hostile_http [--port N]; prints `LISTENING http://127.0.0.1:PORT/mcp`.
It initializes and lists tools properly, then each tool answers `tools/call` badly on purpose:

- `echo` {text}: a proper SSE answer (the control).
- `slow_echo` {text, seconds}: a proper answer after a pause (a call running beside a bad one).
- `huge_json` {mb, chunked}: a JSON body of that many MiB (Content-Length declared, or chunked).
- `huge_event` {mb}: one SSE event of that many MiB, chunked, never finished quickly.
- `many_events` {mb}: small SSE notifications adding up to that many MiB, and never the response.
- `stall` {seconds}: one progress notification, then silence mid-stream.
- `foreign_id`: an SSE answer carrying a response to another id.
- `no_answer`: an SSE stream that ends without the response (and without event ids to resume).
- `accepted`: 202 Accepted for the request, no answer at all.
- `answered_404`: HTTP 404 (as a proxy or framework might) whose body is the JSON-RPC result for the
  request: `run N`, N counting how often this tool ran.
- `slow_lists` {seconds}: from now on every `tools/list` is answered only after that pause.
- `requests`: how many HTTP requests of each method it has seen (JSON object).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from typing import Any

TOOLS = ["echo", "slow_echo", "huge_json", "huge_event", "many_events", "stall", "foreign_id", "no_answer",
         "accepted", "requests", "answered_404", "slow_lists"]
SESSION = "hostile-session"
SEEN: dict[str, int] = {}
STATE = {"runs_404": 0, "list_delay": 0.0}
MIB = 1 << 20


def tool_list() -> list[dict[str, Any]]:
    return [{"name": n, "description": f"hostile {n}", "inputSchema": {"type": "object"}} for n in TOOLS]


def result(msg_id: Any, res: dict[str, Any]) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": msg_id, "result": res}).encode()


def text(msg_id: Any, value: str) -> bytes:
    return result(msg_id, {"content": [{"type": "text", "text": value}], "isError": False})


class Conn:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.w = writer

    async def head(self, status: str, headers: dict[str, str]) -> None:
        lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers.items())]
        self.w.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self.w.drain()

    async def json(self, body: bytes, extra: dict[str, str] | None = None) -> None:
        await self.head("200 OK", {"content-type": "application/json", "content-length": str(len(body)),
                                   **(extra or {})})
        self.w.write(body)
        await self.w.drain()

    async def sse_start(self) -> None:
        await self.head("200 OK", {"content-type": "text/event-stream", "transfer-encoding": "chunked"})

    async def chunk(self, data: bytes) -> None:
        self.w.write(b"%x\r\n%s\r\n" % (len(data), data))
        await self.w.drain()

    async def sse_end(self) -> None:
        self.w.write(b"0\r\n\r\n")
        await self.w.drain()

    async def sse_answer(self, body: bytes) -> None:
        await self.sse_start()
        await self.chunk(b"data: " + body + b"\n\n")
        await self.sse_end()


async def call(conn: Conn, msg_id: Any, name: str, args: dict[str, Any]) -> None:
    if name == "echo":
        await conn.sse_answer(text(msg_id, str(args.get("text", ""))))
    elif name == "slow_echo":
        await conn.sse_start()
        await asyncio.sleep(float(args.get("seconds", 1)))
        await conn.chunk(b"data: " + text(msg_id, str(args.get("text", ""))) + b"\n\n")
        await conn.sse_end()
    elif name == "huge_json":
        size = int(float(args.get("mb", 1)) * MIB)
        prefix = b'{"jsonrpc":"2.0","id":%s,"result":{"content":[{"type":"text","text":"' % json.dumps(msg_id).encode()
        suffix = b'"}]}}'
        if args.get("chunked"):  # no length declared: only reading tells how large it is
            await conn.head("200 OK", {"content-type": "application/json", "transfer-encoding": "chunked"})
            await conn.chunk(prefix)
            for _ in range(size // MIB):
                await conn.chunk(b"j" * MIB)
            await conn.chunk(suffix)
            await conn.sse_end()
            return
        await conn.head("200 OK", {"content-type": "application/json",
                                   "content-length": str(len(prefix) + size + len(suffix))})
        conn.w.write(prefix)
        for _ in range(size // MIB):
            conn.w.write(b"j" * MIB)
            await conn.w.drain()
        conn.w.write(b"j" * (size % MIB) + suffix)
        await conn.w.drain()
    elif name == "huge_event":
        size = int(float(args.get("mb", 1)) * MIB)
        await conn.sse_start()
        await conn.chunk(b'data: {"jsonrpc":"2.0","id":%s,"result":{"content":[{"type":"text","text":"'
                         % json.dumps(msg_id).encode())
        for _ in range(size // MIB):
            await conn.chunk(b"e" * MIB)
        await conn.chunk(b'"}]}}\n\n')
        await conn.sse_end()
    elif name == "many_events":
        size = int(float(args.get("mb", 1)) * MIB)
        note = b'data: {"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"' \
               + b"n" * 4000 + b'"}}\n\n'
        await conn.sse_start()
        for _ in range(size // (16 * len(note)) + 1):
            await conn.chunk(note * 16)
        await conn.sse_end()
    elif name == "stall":
        await conn.sse_start()
        await conn.chunk(b'data: {"jsonrpc":"2.0","method":"notifications/message",'
                         b'"params":{"level":"info","data":"about to stall"}}\n\n')
        await asyncio.sleep(float(args.get("seconds", 30)))
        await conn.chunk(b"data: " + text(msg_id, "late") + b"\n\n")
        await conn.sse_end()
    elif name == "foreign_id":
        other = msg_id + 1000 if isinstance(msg_id, int) else "other"
        await conn.sse_start()
        await conn.chunk(b"data: " + text(other, "for someone else") + b"\n\n")
        await asyncio.sleep(30)  # the right answer never comes
        await conn.sse_end()
    elif name == "no_answer":
        await conn.sse_start()
        await conn.chunk(b'data: {"jsonrpc":"2.0","method":"notifications/message",'
                         b'"params":{"level":"info","data":"no answer follows"}}\n\n')
        await conn.sse_end()
    elif name == "accepted":
        await conn.head("202 Accepted", {"content-length": "0"})
    elif name == "answered_404":
        STATE["runs_404"] += 1
        body = text(msg_id, f"run {STATE['runs_404']}")
        await conn.head("404 Not Found", {"content-type": "application/json", "content-length": str(len(body))})
        conn.w.write(body)
        await conn.w.drain()
    elif name == "slow_lists":
        STATE["list_delay"] = float(args.get("seconds", 0))
        await conn.json(text(msg_id, "lists are slow now"))
    elif name == "requests":
        await conn.json(text(msg_id, json.dumps(SEEN)))
    else:
        body = json.dumps({"jsonrpc": "2.0", "id": msg_id, "error": {"code": -32602, "message": "no such tool"}})
        await conn.json(body.encode())


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    conn = Conn(writer)
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            method = head.split(b" ", 1)[0].decode()
            SEEN[method] = SEEN.get(method, 0) + 1
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length) if length else b""
            if method == "GET":
                await conn.head("405 Method Not Allowed", {"content-length": "0", "allow": "POST, DELETE"})
                continue
            if method == "DELETE":
                await conn.head("200 OK", {"content-length": "0"})
                continue
            msg = json.loads(body)
            if "id" not in msg or "method" not in msg:
                await conn.head("202 Accepted", {"content-length": "0"})
                continue
            if msg["method"] == "initialize":
                version = msg.get("params", {}).get("protocolVersion", "2025-06-18")
                await conn.json(result(msg["id"], {"protocolVersion": version, "capabilities": {"tools": {}},
                                                   "serverInfo": {"name": "hostile", "version": "1"}}),
                                {"mcp-session-id": SESSION})
            elif msg["method"] == "tools/list":
                await asyncio.sleep(STATE["list_delay"])
                await conn.json(result(msg["id"], {"tools": tool_list()}))
            elif msg["method"] == "tools/call":
                params = msg.get("params") or {}
                await call(conn, msg["id"], params.get("name", ""), params.get("arguments") or {})
            else:
                await conn.json(result(msg["id"], {}))
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
        pass
    finally:
        writer.close()


async def serve(port: int) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    server = await asyncio.start_server(handle, sock=sock)
    print(f"LISTENING http://127.0.0.1:{sock.getsockname()[1]}/mcp", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
