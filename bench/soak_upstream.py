"""A recording, optionally hostile, Streamable HTTP MCP upstream for the fault soak (stdlib only).

Why raw asyncio and not the SDK: the soak needs an upstream that can misbehave on purpose (answer
200 MB, never answer, forget its sessions when restarted), and one whose every executed call is
written down before it answers, so the soak can tell "executed upstream" from "recorded by the
gateway". Each `tools/call` appends its `mark` argument (a nonce; not called `nonce`, a name evidence
previews redact) to `--log` (fsynced) before anything else.

Tools: `record(mark)` answers at once; `slow_record(mark, seconds)` answers after at most 30 s;
`big(mark, mb, sse)` answers `mb` MiB of text as JSON or as one SSE event. A `record` or `slow_record`
call that asks for progress (`_meta.progressToken`) gets one progress notification whose message names
its nonce before the answer, both as one SSE response (the soak checks no other tenant ever sees it).
With `--hang`, every `tools/call` is logged and then never answered (a black hole that still handshakes).

    python bench/soak_upstream.py --log calls.log [--port 0] [--hang]

Prints `LISTENING http://127.0.0.1:PORT/mcp` once bound (loopback only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
from typing import Any

_KNOWN_REVISIONS = ("2025-06-18", "2025-11-25")
_MAX_BODY = 4 * 1024 * 1024
_MAX_BIG_MB = 512
_HANG_S = 600.0
_IDLE_S = 120.0

TOOLS = [
    {"name": "record", "description": "Log the nonce, then answer.",
     "inputSchema": {"type": "object", "properties": {"mark": {"type": "string"}}, "required": ["mark"]}},
    {"name": "slow_record", "description": "Log the nonce, wait, then answer.",
     "inputSchema": {"type": "object", "properties": {"mark": {"type": "string"}, "seconds": {"type": "number"}},
                     "required": ["mark"]}},
    {"name": "big", "description": "Log the nonce, then answer mb MiB of text.",
     "inputSchema": {"type": "object", "properties": {"mark": {"type": "string"}, "mb": {"type": "integer"},
                                                      "sse": {"type": "boolean"}}, "required": ["mark"]}},
]


class Upstream:
    def __init__(self, log_path: str, hang: bool) -> None:
        self.log_path = log_path
        self.hang = hang
        self.sessions: set[str] = set()

    def record(self, nonce: str) -> None:
        with open(self.log_path, "a") as handle:
            handle.write(nonce + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(100_000):
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _IDLE_S)
                lines = head.decode("latin-1").split("\r\n")
                method = lines[0].split(" ", 1)[0]
                headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
                length = min(int(headers.get("content-length", "0") or 0), _MAX_BODY)
                body = await reader.readexactly(length) if length else b""
                if not await self.answer(method, headers, body, writer):
                    return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, TimeoutError, ValueError):
            return
        finally:
            writer.close()

    async def answer(self, method: str, headers: dict[str, str], body: bytes, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection should end."""
        if method == "GET":
            return await _send(writer, 405, b"", extra={"allow": "POST, DELETE"})
        session = headers.get("mcp-session-id")
        if method == "DELETE":
            self.sessions.discard(session or "")
            return await _send(writer, 200, b"")
        if method != "POST":
            return await _send(writer, 405, b"")
        try:
            msg = json.loads(body)
        except ValueError:
            return await _send(writer, 400, b"")
        rpc = msg.get("method")
        if rpc == "initialize":
            sid = secrets.token_hex(8)
            self.sessions.add(sid)
            wanted = (msg.get("params") or {}).get("protocolVersion")
            result = {"protocolVersion": wanted if wanted in _KNOWN_REVISIONS else _KNOWN_REVISIONS[-1],
                      "capabilities": {"tools": {}}, "serverInfo": {"name": "soak-upstream", "version": "1"}}
            return await _json(writer, {"jsonrpc": "2.0", "id": msg.get("id"), "result": result},
                               extra={"mcp-session-id": sid})
        if session is not None and session not in self.sessions:
            return await _send(writer, 404, b"")  # a restarted upstream forgets its sessions, as real ones do
        if "id" not in msg:
            return await _send(writer, 202, b"")
        if rpc == "tools/list":
            return await _json(writer, {"jsonrpc": "2.0", "id": msg["id"], "result": {"tools": TOOLS}})
        if rpc == "tools/call":
            return await self.call(msg, writer)
        if rpc == "ping":
            return await _json(writer, {"jsonrpc": "2.0", "id": msg["id"], "result": {}})
        error = {"code": -32601, "message": f"method not found: {rpc}"}
        return await _json(writer, {"jsonrpc": "2.0", "id": msg["id"], "error": error})

    async def call(self, msg: dict[str, Any], writer: asyncio.StreamWriter) -> bool:
        params = msg.get("params") or {}
        args = params.get("arguments") or {}
        nonce = str(args.get("mark", ""))
        self.record(nonce)
        if self.hang:
            await asyncio.sleep(_HANG_S)
            return False
        name = params.get("name")
        if name == "slow_record":
            await asyncio.sleep(min(float(args.get("seconds", 1.0)), 30.0))
        if name == "big":
            return await _big(writer, msg["id"], nonce, min(int(args.get("mb", 200)), _MAX_BIG_MB),
                              bool(args.get("sse", False)))
        result = {"content": [{"type": "text", "text": "ok " + nonce}], "isError": False}
        answer = {"jsonrpc": "2.0", "id": msg["id"], "result": result}
        token = (params.get("_meta") or {}).get("progressToken")
        if token is None:
            return await _json(writer, answer)
        # asked for progress: one notification naming the nonce, then the answer, as one SSE response
        progress = {"jsonrpc": "2.0", "method": "notifications/progress",
                    "params": {"progressToken": token, "progress": 1, "total": 2, "message": "progress " + nonce}}
        events = b"".join(b"event: message\ndata: " + json.dumps(m).encode() + b"\n\n" for m in (progress, answer))
        return await _send(writer, 200, events, ctype="text/event-stream")


async def _send(writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str = "application/json",
                extra: dict[str, str] | None = None) -> bool:
    head = [f"HTTP/1.1 {status} X", f"content-length: {len(body)}"]
    if body:
        head.append(f"content-type: {ctype}")
    head += [f"{k}: {v}" for k, v in (extra or {}).items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    await writer.drain()
    return True


async def _json(writer: asyncio.StreamWriter, message: dict[str, Any], extra: dict[str, str] | None = None) -> bool:
    return await _send(writer, 200, json.dumps(message).encode(), extra=extra)


async def _big(writer: asyncio.StreamWriter, request_id: Any, nonce: str, mb: int, sse: bool) -> bool:
    """Stream an answer of `mb` MiB without holding it in memory here."""
    prefix = json.dumps({"jsonrpc": "2.0", "id": request_id}).encode()[:-1]
    prefix += b', "result": {"isError": false, "content": [{"type": "text", "text": "ok ' + nonce.encode() + b" "
    suffix = b'"}]}}'
    if sse:
        prefix, suffix = b"event: message\ndata: " + prefix, suffix + b"\n\n"
    chunk = b"a" * (1 << 20)
    length = len(prefix) + mb * len(chunk) + len(suffix)
    ctype = "text/event-stream" if sse else "application/json"
    writer.write(f"HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\ncontent-length: {length}\r\n\r\n".encode() + prefix)
    for _ in range(mb):
        writer.write(chunk)
        await writer.drain()
    writer.write(suffix)
    await writer.drain()
    return True


async def main_async(port: int, log_path: str, hang: bool) -> None:
    upstream = Upstream(log_path, hang)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    server = await asyncio.start_server(upstream.serve, sock=sock, backlog=512)
    print(f"LISTENING http://127.0.0.1:{sock.getsockname()[1]}/mcp", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log", required=True, help="file each executed call's nonce is appended to")
    parser.add_argument("--hang", action="store_true", help="never answer tools/call (black hole)")
    args = parser.parse_args()
    asyncio.run(main_async(args.port, args.log, args.hang))


if __name__ == "__main__":
    main()
