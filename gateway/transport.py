"""The HTTP edge: MCP Streamable HTTP at /mcp, written against raw ASGI.

Order of checks for every request (cheapest and least trusting first):
  1. header size, Host and Origin (DNS-rebinding protection)   -> 431 / 421 / 403
  2. HTTP method (POST, GET, DELETE)                             -> 405
  3. authenticate (bearer token)                                 -> 401 + WWW-Authenticate
  4. bind (tenant/actor claims in headers and query)             -> 403
  5. POST: Content-Type, Accept, body size, JSON, envelope        -> 415 / 406 / 413 / 400
  6. protocol revision and session                               -> 400 / 404
  7. dispatch: decide -> forward -> record (gateway.pipeline)

A request's answer is JSON when the upstream answers before sending anything else, and an SSE
stream when something related (progress, a log, a sampling or elicitation request) comes first:
the fast path pays nothing for streaming it does not use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import Headers, QueryParams

from gateway import binding
from gateway.config import Limits
from gateway.errors import AegressError, AuthError, ProtocolError
from gateway.jsonrpc import (
    JSON,
    LEGACY_VERSIONS,
    MODERN_VERSION,
    SUPPORTED_VERSIONS,
    dumps,
    error_from,
    is_notification,
    is_request,
    loads,
    result,
    validate_message,
)
from gateway.pipeline import Pipeline
from gateway.proxy import ClientSession, Runtime
from gateway.types import Identity

log = logging.getLogger("aegress.transport")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
ASGISend = Callable[[dict[str, Any]], Awaitable[None]]

_KEEPALIVE_S = 15.0


def host_allowed(host: str | None, allowed: tuple[str, ...]) -> bool:
    """Pure: exact `host:port` or a `host:*` pattern."""
    if not host:
        return False
    for pattern in allowed:
        if host == pattern:
            return True
        if pattern.endswith(":*") and host.startswith(pattern[:-1]) and host[len(pattern) - 1 :].isdigit():
            return True
    return False


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    if origin is None:
        return True  # non-browser clients send no Origin
    return host_allowed(origin, allowed)


def default_allowed(host: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Hosts and Origins accepted by default for a bind address."""
    names = ["127.0.0.1", "localhost", "[::1]"] if host in ("127.0.0.1", "localhost", "::1") else [host]
    hosts = tuple(f"{n}:*" for n in names) + tuple(names)
    origins = tuple(f"http://{n}:*" for n in names) + tuple(f"http://{n}" for n in names)
    return hosts, origins


class HttpError(ProtocolError):
    pass


class McpEndpoint:
    def __init__(
        self,
        pipeline: Pipeline,
        runtime: Runtime,
        limits: Limits,
        allowed_hosts: tuple[str, ...],
        allowed_origins: tuple[str, ...],
    ) -> None:
        self.pipeline = pipeline
        self.runtime = runtime
        self.limits = limits
        self.allowed_hosts = allowed_hosts
        self.allowed_origins = allowed_origins
        self.sessions: dict[str, ClientSession] = {}

    # -- the ASGI entry point ----------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: ASGISend) -> None:
        headers = Headers(scope=scope)
        try:
            self._check_edge(scope, headers)
            method = scope["method"]
            if method not in ("POST", "GET", "DELETE"):
                raise HttpError(f"Method {method} is not allowed.", http_status=405, code="method-not-allowed")
            identity = self.pipeline.authenticate(headers.get("authorization"))
            query = QueryParams(scope.get("query_string", b"").decode("latin-1"))
            identity = self.pipeline.bind(
                identity,
                binding.Claims(
                    headers.getlist(binding.TENANT_HEADER),
                    headers.getlist(binding.ACTOR_HEADER),
                    query.getlist(binding.TENANT_PARAM),
                    query.getlist(binding.ACTOR_PARAM),
                ),
            )
            if method == "POST":
                await self._post(scope, receive, send, headers, identity)
            elif method == "GET":
                await self._get(receive, send, headers, identity)
            else:
                await self._delete(send, headers, identity)
        except AegressError as exc:
            await self._send_error(send, exc)

    def _check_edge(self, scope: Scope, headers: Headers) -> None:
        size = sum(len(k) + len(v) for k, v in scope["headers"])
        if size > self.limits.max_header_bytes:
            raise HttpError("Request headers are too large.", http_status=431, code="headers-too-large")
        if not host_allowed(headers.get("host"), self.allowed_hosts):
            raise HttpError(
                "Invalid Host header.",
                hint="Connect with the gateway's own address, or add it with --allowed-host.",
                http_status=421,
                code="invalid-host",
            )
        if not origin_allowed(headers.get("origin"), self.allowed_origins):
            raise HttpError(
                "Invalid Origin header.",
                hint="This origin is not allowed to call the gateway.",
                http_status=403,
                code="invalid-origin",
            )

    # -- POST ----------------------------------------------------------------------------------------
    async def _post(self, scope: Scope, receive: Receive, send: ASGISend, headers: Headers, who: Identity) -> None:
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise HttpError(
                "Content-Type must be application/json.", http_status=415, code="unsupported-media-type"
            )
        accept = headers.get("accept", "").lower()
        wildcard = "*/*" in accept
        if not ((wildcard or "application/json" in accept) and (wildcard or "text/event-stream" in accept)):
            raise HttpError(
                "Accept must include application/json and text/event-stream.", http_status=406, code="not-acceptable"
            )
        body = await self._read_body(receive)
        msg = validate_message(loads(body))
        version = headers.get("mcp-protocol-version")
        if version is not None and version not in SUPPORTED_VERSIONS:
            raise HttpError(
                f"Unsupported MCP-Protocol-Version: {version[:40]}.",
                hint=f"Supported: {', '.join(SUPPORTED_VERSIONS)}.",
                code="unsupported-protocol-version",
            )
        if is_request(msg) and msg["method"] == "initialize":
            await self._initialize(send, who, msg)
            return
        if version == MODERN_VERSION:
            raise HttpError(
                "Protocol revision 2026-07-28 is not served yet.",
                hint="Use 2025-11-25 or 2025-06-18 with initialize.",
                code="unsupported-protocol-version",
            )
        session = self._session(headers, who)
        if version is not None and version != session.version and version in LEGACY_VERSIONS:
            raise HttpError("MCP-Protocol-Version does not match the session's negotiated version.")
        session.last_seen = time.monotonic()
        if is_request(msg):
            await self._stream_request(receive, send, session, msg)
        elif is_notification(msg):
            await self._respond(send, 202, b"")
            await self.pipeline.client_notification(session, msg)
        else:
            await self.pipeline.client_response(session, msg)
            await self._respond(send, 202, b"")

    async def _read_body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HttpError("Client disconnected.", http_status=400)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limits.max_body_bytes:
                raise HttpError(
                    f"Request body exceeds {self.limits.max_body_bytes} bytes.", http_status=413, code="body-too-large"
                )
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _initialize(self, send: ASGISend, who: Identity, msg: JSON) -> None:
        params = msg.get("params") or {}
        caps = params.get("capabilities") if isinstance(params.get("capabilities"), dict) else {}
        info = params.get("clientInfo") if isinstance(params.get("clientInfo"), dict) else {}
        if len(self.sessions) >= self.limits.max_sessions:
            self._reap(force=True)
            if len(self.sessions) >= self.limits.max_sessions:
                raise HttpError("Too many sessions.", http_status=503, code="too-many-sessions")
        version = self.pipeline.negotiate(params.get("protocolVersion"))
        session = ClientSession(secrets.token_urlsafe(24), who, version, caps, info, self.runtime)
        body = result(msg["id"], await self.pipeline.initialize_result(session))
        self.sessions[session.id] = session
        await self._respond(send, 200, dumps(body), extra=[(b"mcp-session-id", session.id.encode())])

    def _session(self, headers: Headers, who: Identity) -> ClientSession:
        sid = headers.get("mcp-session-id")
        if not sid:
            raise HttpError("Missing Mcp-Session-Id header.", hint="Send initialize first.", code="missing-session")
        session = self.sessions.get(sid)
        if session is None or session.identity.tenant_id != who.tenant_id or session.identity.actor_id != who.actor_id:
            raise HttpError(
                "Session not found.", hint="Start a new session with initialize.", http_status=404,
                code="unknown-session", jsonrpc_code=-32001,
            )
        if session.identity != who:
            session.identity = who  # same tenant and actor, rotated token: keep the session
        return session

    async def _stream_request(self, receive: Receive, send: ASGISend, session: ClientSession, msg: JSON) -> None:
        queue: asyncio.Queue[JSON] = asyncio.Queue()

        async def related(m: JSON) -> None:
            queue.put_nowait(m)

        task = asyncio.ensure_future(self.pipeline.dispatch(session, msg, related))
        gone = asyncio.ensure_future(_wait_disconnect(receive))
        deadline = time.monotonic() + self.limits.request_deadline_s
        streaming = False
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait(
                    {task, getter, gone}, timeout=max(0.0, deadline - time.monotonic()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if getter in done:
                    if not streaming:
                        await self._start_sse(send)
                        streaming = True
                    await _sse(send, getter.result())
                    continue
                getter.cancel()
                if task in done:
                    response = task.result()
                    if not streaming:
                        await self._respond(send, 200, dumps(response))
                        return
                    while not queue.empty():
                        await _sse(send, queue.get_nowait())
                    await _sse(send, response)
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                if gone in done:
                    return  # the dispatch task is cancelled below: upstream gets notifications/cancelled
                exc = ProtocolError("The request took longer than the gateway allows.", code="deadline-exceeded",
                                    http_status=504, jsonrpc_code=-32603)
                if streaming:
                    await _sse(send, error_from(msg["id"], exc))
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                else:
                    await self._respond(send, 504, dumps(error_from(msg["id"], exc)))
                return
        finally:
            for t in (task, gone):
                if not t.done():
                    t.cancel()

    async def _start_sse(self, send: ASGISend) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache, no-transform"),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )

    # -- GET: the standalone stream for messages no request caused ---------------------------------
    async def _get(self, receive: Receive, send: ASGISend, headers: Headers, who: Identity) -> None:
        if "text/event-stream" not in headers.get("accept", "").lower():
            raise HttpError("Accept must include text/event-stream.", http_status=406, code="not-acceptable")
        if headers.get("mcp-protocol-version") == MODERN_VERSION:
            raise HttpError("GET streams do not exist in 2026-07-28.", http_status=405, code="method-not-allowed")
        session = self._session(headers, who)
        if session.get_queue is not None:
            raise HttpError("This session already has a GET stream.", http_status=409, code="stream-conflict")
        queue: asyncio.Queue[JSON | None] = asyncio.Queue(maxsize=1000)
        session.get_queue = queue
        gone = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await self._start_sse(send)
            await send({"type": "http.response.body", "body": b": stream open\n\n", "more_body": True})
            while not session.closed:
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, gone}, timeout=_KEEPALIVE_S, return_when=asyncio.FIRST_COMPLETED)
                if gone in done:
                    getter.cancel()
                    return
                if getter not in done:
                    getter.cancel()
                    await send({"type": "http.response.body", "body": b": keepalive\n\n", "more_body": True})
                    continue
                item = getter.result()
                if item is None:
                    break
                await _sse(send, item)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            gone.cancel()
            if session.get_queue is queue:
                session.get_queue = None

    # -- DELETE ------------------------------------------------------------------------------------
    async def _delete(self, send: ASGISend, headers: Headers, who: Identity) -> None:
        session = self._session(headers, who)
        self.sessions.pop(session.id, None)
        await session.close()
        await self._respond(send, 200, b"")

    # -- housekeeping --------------------------------------------------------------------------------
    def _reap(self, force: bool = False) -> None:
        cutoff = time.monotonic() - (60.0 if force else self.limits.session_idle_timeout_s)
        for sid, session in list(self.sessions.items()):
            if session.last_seen < cutoff and session.get_queue is None:
                self.sessions.pop(sid, None)
                asyncio.ensure_future(session.close())

    async def reaper(self) -> None:
        while True:
            await asyncio.sleep(60)
            self._reap()

    async def close(self) -> None:
        sessions = list(self.sessions.values())
        self.sessions.clear()
        for s in sessions:
            await s.close()

    # -- responses -----------------------------------------------------------------------------------
    async def _respond(
        self, send: ASGISend, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        hdrs = [(b"content-type", b"application/json")] if body else []
        hdrs.extend(extra or [])
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _send_error(self, send: ASGISend, exc: AegressError) -> None:
        extra: list[tuple[bytes, bytes]] = []
        if isinstance(exc, AuthError):
            value = 'Bearer realm="aegress"'
            if exc.code == "invalid-token":
                value += ', error="invalid_token"'
            extra.append((b"www-authenticate", value.encode()))
        if exc.http_status == 405:
            extra.append((b"allow", b"GET, POST, DELETE"))
        with contextlib.suppress(RuntimeError, OSError):
            await self._respond(send, exc.http_status, dumps(error_from(None, exc)), extra)


async def _sse(send: ASGISend, message: JSON) -> None:
    await send({"type": "http.response.body", "body": b"event: message\ndata: " + dumps(message) + b"\n\n",
                "more_body": True})


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
