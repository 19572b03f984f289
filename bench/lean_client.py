"""A minimal keep-alive JSON-RPC client for the benchmarks: HTTP/1.1 on asyncio streams, nothing else.

Issue 10 sets its ratios against "a minimal keep-alive client". On a 2-core machine the client shares the
CPU with the upstream and the gateway, so a costly client taxes the three-process path through a gateway
more than the two-process direct one: the httpx2 client (`gateway_bench.RawClient`) spent about 1.3 ms of
CPU per call, as much as the SDK upstream itself. This one writes each request as one buffer (its headers
built once per session) and reads exactly what the answer's framing says (Content-Length, chunked, or until
close), answers in JSON or SSE alike.

A connection idle for `KEEPALIVE_EXPIRY_S` is not reused (below uvicorn's 5 s keep-alive, as the httpx2 client
is set up), and a request whose reused connection turns out closed is sent again once on a new one: a
benchmark's `echo` is harmless to repeat. Only loopback URLs are ever given to it.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import urlsplit

KEEPALIVE_EXPIRY_S = 2.0
_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class LeanClient:
    """The same interface as `gateway_bench.RawClient`: `start()`, `call(tool)` (seconds), `close()`."""

    def __init__(self, url: str, headers: dict[str, str], concurrency: int) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"LeanClient speaks plain HTTP to a host: {url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        self._request_line = f"POST {target} HTTP/1.1\r\n".encode()
        self.headers = {"Host": parts.netloc, "Accept": "application/json, text/event-stream",
                        "Content-Type": "application/json", **headers}
        self._head = b""
        self._build_head()
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self._max_idle = concurrency + 4
        self.ids = 0

    def _build_head(self) -> None:
        self._head = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items()).encode()

    async def start(self) -> None:
        """initialize and notifications/initialized, as RawClient does; the session's headers are kept."""
        _, headers, _ = await self._post(json.dumps({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "bench", "version": "0"}},
        }).encode())
        if headers.get("mcp-session-id"):
            self.headers["mcp-session-id"] = headers["mcp-session-id"]
        self.headers["mcp-protocol-version"] = "2025-11-25"
        self._build_head()
        await self._post(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode())

    async def call(self, tool: str) -> float:
        self.ids += 1
        request_id = self.ids
        body = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                           "params": {"name": tool, "arguments": {"text": "hello"}}}).encode()
        t = time.perf_counter()
        _, headers, data = await self._post(body)
        dt = time.perf_counter() - t
        msg = _message(headers, data, request_id)
        if msg.get("result", {}).get("content", [{}])[0].get("text") != "hello":
            raise RuntimeError(f"bad answer: {msg}")
        return dt

    async def close(self) -> None:
        for _, writer, _ in self._idle:
            writer.close()
        self._idle.clear()

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        """An idle connection young enough to reuse (True), else a new one (False)."""
        now = time.monotonic()
        while self._idle:
            reader, writer, since = self._idle.pop()
            if now - since < KEEPALIVE_EXPIRY_S and not reader.at_eof():
                return reader, writer, True
            writer.close()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return reader, writer, False

    async def _post(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        reader, writer, reused = await self._connection()
        try:
            return await self._exchange(reader, writer, body)
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.close()
            if not reused:
                raise
        reader, writer, _ = await self._connection()  # the server closed it while it was idle: once more
        return await self._exchange(reader, writer, body)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        body: bytes) -> tuple[int, dict[str, str], bytes]:
        writer.write(b"%s%sContent-Length: %d\r\n\r\n%s" % (self._request_line, self._head, len(body), body))
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in head[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        keep = headers.get("connection", "").lower() != "close"
        if status in (204, 304) or status < 200:  # no body, whatever the headers say
            data = b""
        elif "content-length" in headers:
            data = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            data = await _chunked(reader)
        else:  # delimited by the server closing the connection
            data, keep = await reader.read(), False
        if keep and len(self._idle) < self._max_idle:
            self._idle.append((reader, writer, time.monotonic()))
        else:
            writer.close()
        if status >= 400:
            raise RuntimeError(f"HTTP {status}: {data[:200]!r}")
        return status, headers, data


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, if any, then the blank line
                pass
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)


def _message(headers: dict[str, str], data: bytes, request_id: int) -> Any:
    """The JSON-RPC answer to `request_id`, from a JSON body or an SSE stream (priming events skipped)."""
    if headers.get("content-type", "").startswith("text/event-stream"):
        for line in data.decode().splitlines():
            if line.startswith("data:") and line[5:].strip():
                msg = json.loads(line[5:])
                if isinstance(msg, dict) and msg.get("id") == request_id:
                    return msg
        raise RuntimeError("no response in the event stream")
    return json.loads(data) if data else {}
