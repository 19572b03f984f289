"""Speak MCP Streamable HTTP as a *client*, with httpx2 only (no MCP SDK): the stdio bridge behind
`aegress bridge` (for clients such as Claude Desktop that start stdio servers only) and the probe
behind `aegress client doctor`.

    stdin (one JSON-RPC message per line)          gateway /mcp
      request       --- POST ------------------->  JSON answer, or an SSE stream of related
                    <-- response + related msgs --  messages (progress, logs, sampling and
                                                    elicitation requests) ending in the answer
      notification / response --- POST -------->  202
      (after initialized)  --- GET (optional) -->  SSE stream of unrelated server messages
    stdout                  <-- every server message, one per line

The bridge is a relay, not a typed proxy: message bodies pass through untouched, so fields a
typed model does not know survive. It owns only the transport: the `Mcp-Session-Id` (and a fresh
session when the gateway forgets it, e.g. after a restart), the `MCP-Protocol-Version` header, and
turning HTTP failures into JSON-RPC errors for the request that caused them. Logs go to the
`aegress.bridge` logger (the CLI sends it to stderr); stdout carries protocol messages only.

Errors raised here (all `UpstreamError`, mapped by the CLI like every other library error):

    UpstreamError
    ├── GatewayUnreachable     nothing answers at the URL (connection refused, DNS, timeout)
    ├── GatewayRejected        the gateway answered with an HTTP error (status, code, message)
    └── GatewayProtocolError   the answer was not the MCP it should be
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import httpx2

from gateway.errors import UpstreamError

log = logging.getLogger("aegress.bridge")

JSON = dict[str, Any]
CLIENT_PROTOCOL_VERSION = "2025-11-25"
MAX_LINE_BYTES = 16 * 1024 * 1024
_ACCEPT = "application/json, text/event-stream"
_REINIT_ID = "aegress-bridge-reinitialize"


# ---- errors ----------------------------------------------------------------------------------------


class GatewayUnreachable(UpstreamError):
    code = "gateway-unreachable"

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"Nothing answers at {url} ({reason}).",
            hint="Start the gateway with `aegress serve`, or check the URL.",
        )
        self.url = url
        self.reason = reason


class GatewayRejected(UpstreamError):
    """An HTTP error status from the gateway, with its own error code (`invalid-token`, `binding`, ...)."""

    code = "gateway-rejected"

    def __init__(self, status: int, error_code: str | None, message: str, www_authenticate: str | None) -> None:
        super().__init__(f"The gateway answered HTTP {status}: {message}")
        self.status = status
        self.error_code = error_code
        self.gateway_message = message
        self.www_authenticate = www_authenticate
        self.body_error: JSON | None = None  # the JSON-RPC error object, when the body had one


class GatewayProtocolError(UpstreamError):
    code = "gateway-protocol"


# ---- the HTTP side ---------------------------------------------------------------------------------


@dataclass
class Connection:
    """One MCP session with the gateway over Streamable HTTP. `headers` carry the credentials and
    are never logged or shown in `repr`."""

    url: str
    headers: Mapping[str, str] = field(repr=False)
    http: httpx2.AsyncClient = field(repr=False)
    request_timeout: float = 600.0
    session_id: str | None = None
    protocol_version: str | None = None

    def _headers(self, *, accept: str = _ACCEPT, body: bool = True) -> dict[str, str]:
        hdrs = dict(self.headers)
        hdrs["Accept"] = accept
        if body:
            hdrs["Content-Type"] = "application/json"
        if self.session_id:
            hdrs["Mcp-Session-Id"] = self.session_id
        if self.protocol_version:
            hdrs["MCP-Protocol-Version"] = self.protocol_version
        return hdrs

    async def post(self, message: JSON) -> AsyncIterator[JSON]:
        """POST one message; yield every message the gateway sends back for it (none for a
        notification or response). Captures the session id and protocol version of `initialize`."""
        timeout = httpx2.Timeout(10.0, read=self.request_timeout)
        try:
            async with self.http.stream(
                "POST", self.url, content=json.dumps(message).encode(), headers=self._headers(), timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    raise await _rejected(response)
                if message.get("method") == "initialize" and "id" in message:
                    sid = response.headers.get("mcp-session-id")
                    if sid:
                        self.session_id = sid
                ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
                if response.status_code == 202 or ctype not in ("application/json", "text/event-stream"):
                    await response.aread()
                    return
                if ctype == "application/json":
                    body = await response.aread()
                    if not body.strip():
                        return
                    for item in _messages(body):
                        self._note(message, item)
                        yield item
                    return
                async for item in _sse_messages(response):
                    self._note(message, item)
                    yield item
        except httpx2.TransportError as exc:
            if isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout):
                raise GatewayUnreachable(self.url, _reason(exc)) from exc
            raise GatewayProtocolError(f"The connection to the gateway failed: {_reason(exc)}") from exc

    async def listen(self) -> AsyncIterator[JSON]:
        """The optional GET stream of messages no request caused (list changes, unrelated logs)."""
        timeout = httpx2.Timeout(10.0, read=90.0)  # the gateway sends a keepalive every 15 s
        try:
            async with self.http.stream(
                "GET", self.url, headers=self._headers(accept="text/event-stream", body=False), timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    raise await _rejected(response)
                async for item in _sse_messages(response):
                    yield item
        except httpx2.TransportError as exc:
            if isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout):
                raise GatewayUnreachable(self.url, _reason(exc)) from exc
            raise GatewayProtocolError(f"The event stream from the gateway failed: {_reason(exc)}") from exc

    async def close(self) -> None:
        """End the session (best effort: the gateway reaps idle sessions anyway)."""
        if not self.session_id:
            return
        with contextlib.suppress(httpx2.HTTPError):
            await self.http.delete(self.url, headers=self._headers(body=False), timeout=5.0)
        self.session_id = None

    def _note(self, sent: JSON, got: JSON) -> None:
        if sent.get("method") == "initialize" and got.get("id") == sent.get("id"):
            version = (got.get("result") or {}).get("protocolVersion")
            if isinstance(version, str):
                self.protocol_version = version


async def _rejected(response: httpx2.Response) -> GatewayRejected:
    body = (await response.aread())[:65536]
    error_code: str | None = None
    message = response.reason_phrase or "error"
    body_error: JSON | None = None
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        parsed = json.loads(body)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            body_error = parsed["error"]
            message = str(body_error.get("message") or message)
            data = body_error.get("data")
            if isinstance(data, dict) and isinstance(data.get("code"), str):
                error_code = data["code"]
    err = GatewayRejected(response.status_code, error_code, message, response.headers.get("www-authenticate"))
    err.body_error = body_error
    return err


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _messages(body: bytes | str) -> list[JSON]:
    try:
        parsed = json.loads(body)
    except ValueError as exc:
        raise GatewayProtocolError("The gateway sent a body that is not JSON.") from exc
    items = parsed if isinstance(parsed, list) else [parsed]
    if not all(isinstance(item, dict) for item in items):
        raise GatewayProtocolError("The gateway sent JSON that is not a JSON-RPC message.")
    return items


async def _sse_messages(response: httpx2.Response) -> AsyncIterator[JSON]:
    """JSON-RPC messages from an SSE stream: `data:` lines joined per event; comments, `id:`,
    `retry:`, events without data (priming events) and events other than `message` are skipped."""
    event, data = "message", []
    async for line in response.aiter_lines():
        if line == "":
            if event == "message" and "".join(data):  # an event without data primes resumption
                for item in _messages("\n".join(data)):
                    yield item
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value or "message"
    if event == "message" and "".join(data):
        for item in _messages("\n".join(data)):
            yield item


# ---- the probe (client doctor) ---------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeResult:
    server_info: JSON
    protocol_version: str | None
    tools: list[JSON]


async def probe(url: str, headers: Mapping[str, str], *, timeout: float = 15.0,
                client_name: str = "aegress-doctor") -> ProbeResult:
    """initialize, notifications/initialized, tools/list (every page), then end the session."""
    async with httpx2.AsyncClient(timeout=timeout) as http:
        conn = Connection(url, headers, http, request_timeout=timeout)
        try:
            init = await _request(conn, {
                "jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": CLIENT_PROTOCOL_VERSION, "capabilities": {},
                           "clientInfo": {"name": client_name, "version": "0"}},
            })
            async for _ in conn.post({"jsonrpc": "2.0", "method": "notifications/initialized"}):
                pass
            tools: list[JSON] = []
            cursor: str | None = None
            for page in range(100):  # bounded: a gateway that never stops paging is broken
                params = {"cursor": cursor} if cursor else {}
                listed = await _request(conn, {"jsonrpc": "2.0", "id": 2 + page, "method": "tools/list",
                                               "params": params})
                tools.extend(t for t in listed.get("tools", []) if isinstance(t, dict))
                cursor = listed.get("nextCursor")
                if not cursor:
                    break
            return ProbeResult(init.get("serverInfo") or {}, conn.protocol_version, tools)
        finally:
            await conn.close()


async def _request(conn: Connection, message: JSON) -> JSON:
    async for item in conn.post(message):
        if item.get("id") != message["id"] or "method" in item:
            continue  # progress, logs: not what a probe waits for
        if "error" in item:
            error = item["error"] if isinstance(item["error"], dict) else {}
            raise GatewayProtocolError(f"{message['method']} failed: {error.get('message', 'unknown error')}")
        result = item.get("result")
        if not isinstance(result, dict):
            raise GatewayProtocolError(f"{message['method']} returned no result object.")
        return result
    raise GatewayProtocolError(f"The gateway sent no answer to {message['method']}.")


# ---- the bridge ------------------------------------------------------------------------------------

Write = Callable[[JSON], Awaitable[None]]


class Bridge:
    """Relays newline-delimited JSON-RPC from a stdio client to the gateway and back.

    Requests run concurrently (a slow tool call does not hold up a ping); `initialize` and every
    notification or response are forwarded in order before the next line is read, so the gateway
    sees `initialize` -> `notifications/initialized` -> requests as the client sent them.
    """

    def __init__(self, conn: Connection, write: Write, *, listen: bool = True) -> None:
        self.conn = conn
        self.write = write
        self.listen_enabled = listen
        self._tasks: set[asyncio.Task[None]] = set()
        self._initialize: JSON | None = None  # replayed when the gateway forgets the session
        self._reinit_lock = asyncio.Lock()
        self._listener: asyncio.Task[None] | None = None

    async def handle_line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            message = json.loads(line)
        except ValueError:
            log.warning("ignoring a line on stdin that is not JSON")
            await self.write(_error(None, -32700, "Parse error: the bridge reads one JSON-RPC message per line."))
            return
        if not isinstance(message, dict):
            await self.write(_error(None, -32600, "Invalid request: batches are not supported."))
            return
        is_request = "method" in message and "id" in message
        if is_request and message["method"] == "initialize":
            self._initialize = message
            await self._forward(message)
        elif is_request:
            task = asyncio.ensure_future(self._forward(message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            await self._forward(message)
            if message.get("method") == "notifications/initialized":
                self._start_listener()

    async def _forward(self, message: JSON, *, retried: bool = False) -> None:
        is_request = "method" in message and "id" in message
        answered = False
        session = self.conn.session_id
        try:
            async for item in self.conn.post(message):
                if is_request and item.get("id") == message["id"] and "method" not in item:
                    answered = True
                await self.write(item)
        except GatewayRejected as exc:
            stale = exc.status == 404 and session and not retried and message.get("method") != "initialize"
            if stale and await self._reinitialize(session):  # type: ignore[arg-type]
                await self._forward(message, retried=True)
                return
            log.warning("%s: %s", _what(message), exc.message)
            if is_request and not answered:
                await self.write(_rejected_error(message["id"], exc))
            return
        except (GatewayUnreachable, GatewayProtocolError) as exc:
            log.warning("%s: %s", _what(message), exc.message)
            if is_request and not answered:
                await self.write(_error(message["id"], -32603, exc.message, {"code": exc.code}))
            return
        if is_request and not answered:
            await self.write(_error(message["id"], -32603, "The gateway closed the stream before answering.",
                                    {"code": "gateway-protocol"}))

    async def _reinitialize(self, stale: str) -> bool:
        """The gateway lost our session (restart, idle reaping): start a new one with the client's
        own initialize, hidden from the client, then retry. False if that fails."""
        async with self._reinit_lock:
            if self.conn.session_id != stale:
                return True  # another request already did it
            if self._initialize is None:
                return False
            log.info("the gateway forgot the session; starting a new one")
            self.conn.session_id = None
            self.conn.protocol_version = None
            replay = dict(self._initialize, id=_REINIT_ID)
            try:
                async for _ in self.conn.post(replay):
                    pass
                async for _ in self.conn.post({"jsonrpc": "2.0", "method": "notifications/initialized"}):
                    pass
            except UpstreamError as exc:
                log.warning("could not start a new session: %s", exc.message)
                return False
            return self.conn.session_id is not None

    def _start_listener(self) -> None:
        if self.listen_enabled and self._listener is None:
            self._listener = asyncio.ensure_future(self._listen())

    async def _listen(self) -> None:
        delay = 1.0
        while True:
            try:
                async for item in self.conn.listen():
                    delay = 1.0
                    await self.write(item)
            except GatewayRejected as exc:
                if exc.status == 404 and self.conn.session_id:
                    await asyncio.sleep(delay)  # a request will notice and start a new session
                    delay = min(delay * 2, 30.0)
                    continue
                if exc.status not in (405, 409):
                    log.info("no event stream from the gateway: %s", exc.message)
                return
            except (GatewayUnreachable, GatewayProtocolError) as exc:
                log.info("event stream interrupted: %s", exc.message)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def aclose(self, grace: float = 2.0) -> None:
        """stdin ended: give in-flight requests a moment, then stop everything and end the session."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
        pending = [*self._tasks, *([self._listener] if self._listener else [])]
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.conn.close()


def _what(message: JSON) -> str:
    if "method" in message:
        return str(message["method"])
    return "response to the gateway"


def _error(msg_id: Any, code: int, message: str, data: JSON | None = None) -> JSON:
    error: JSON = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": msg_id, "error": error}


def _rejected_error(msg_id: Any, exc: GatewayRejected) -> JSON:
    """The gateway's own JSON-RPC error (it answers HTTP errors with `id: null`), given the id of
    the request that caused it so the client can match it."""
    if exc.body_error is not None and isinstance(exc.body_error.get("code"), int):
        return {"jsonrpc": "2.0", "id": msg_id, "error": exc.body_error}
    return _error(msg_id, -32603, exc.message, {"code": exc.error_code or exc.code, "status": exc.status})


async def run_stdio(url: str, headers: Mapping[str, str], *, stdin: BinaryIO, stdout: BinaryIO,
                    listen: bool = True, request_timeout: float = 600.0) -> None:
    """Run the bridge until stdin ends. `headers` hold the credentials (never logged)."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[bytes | None] = asyncio.Queue()

    def read() -> None:  # a thread: works for pipes, files and terminals alike
        try:
            while True:
                line = stdin.readline(MAX_LINE_BYTES + 1)
                if not line:
                    break
                if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                    while (rest := stdin.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                        pass
                    line = b"{oversized}\n"  # answered with a parse error, like any other bad line
                loop.call_soon_threadsafe(lines.put_nowait, line)
        except (OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(lines.put_nowait, None)

    write_lock = asyncio.Lock()

    async def write(message: JSON) -> None:
        data = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        async with write_lock:
            try:
                stdout.write(data)
                stdout.flush()
            except (BrokenPipeError, ValueError):
                log.debug("stdout is closed; dropping a message")  # the client is gone; stdin ends next

    threading.Thread(target=read, name="aegress-bridge-stdin", daemon=True).start()
    limits = httpx2.Limits(max_connections=64, max_keepalive_connections=8)
    async with httpx2.AsyncClient(limits=limits, timeout=httpx2.Timeout(30.0)) as http:
        bridge = Bridge(Connection(url, headers, http, request_timeout=request_timeout), write, listen=listen)
        try:
            while (line := await lines.get()) is not None:
                await bridge.handle_line(line)
        finally:
            await bridge.aclose()
