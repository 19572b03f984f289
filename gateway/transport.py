"""The HTTP edge: MCP Streamable HTTP at /mcp, written against raw ASGI.

Order of checks for every request (cheapest and least trusting first):
  0. draining after SIGTERM                                      -> 503
  1. header size, Content-Length, Host and Origin                -> 431 / 413 / 421 / 403
  2. HTTP method (POST, GET, DELETE); credentials in the query   -> 405 / 400
  3. authenticate (bearer token); repeated failures per address  -> 401 + WWW-Authenticate / 429
  4. bind (tenant/actor claims in headers and query)             -> 403
  5. POST: Content-Type, Accept, body size, pace and deadline     -> 415 / 406 / 413 / 408 / 400
     (duplicate keys refused), envelope
  6. protocol revision and session; per actor/tenant caps        -> 400 / 404 / 409 / 429
  7. dispatch: decide -> forward -> record (gateway.pipeline)

Header deadlines, header count and the connection caps sit below ASGI, in `gateway.server`.

Handshake-era (2025-06-18, 2025-11-25) requests are answered on an SSE stream, as the reference
server does. A 2026-07-28 request is answered with JSON when nothing related (progress, a log)
comes before the result, and on an SSE stream otherwise, as that revision's reference does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import Headers, QueryParams

from gateway import binding, ratelimit
from gateway.bus import Bus
from gateway.config import Limits
from gateway.errors import AegressError, AuthError, ProtocolError, RateLimited
from gateway.jsonrpc import (
    HANDSHAKE_VERSIONS,
    HEADER_MISMATCH,
    INVALID_PARAMS,
    JSON,
    META_CLIENT_CAPABILITIES,
    META_CLIENT_INFO,
    META_LOG_LEVEL,
    META_PROTOCOL_VERSION,
    MODERN_VERSION,
    MODERN_VERSIONS,
    NAME_BEARING,
    STREAM_BREAK,
    STREAM_OPEN,
    UNSUPPORTED_VERSION,
    decode_header_value,
    dumps,
    error_from,
    is_notification,
    is_request,
    loads_strict,
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
# SSE resumability (SEP-1699, 2025-11-25 sessions): how long a call whose client went away waits for
# it to come back with Last-Event-ID, the reconnect delay we suggest, and what one stream may keep.
RESUMABLE_VERSIONS = ("2025-11-25",)
_RESUME_GRACE_S = 30.0
_RETRY_MS = 500
_OPEN_AFTER_S = 0.05
_MAX_EVENTS = 1000
_MAX_STREAM_BYTES = 32 * 1024 * 1024
"""What one request's stream keeps of the messages its call caused (progress, logs, upstream requests),
in serialized bytes: a hostile upstream's flood of large notifications to a slow or parked reader drops
the oldest of them instead of growing the gateway. The final answer is never dropped."""
_MAX_PARKED = 64
# 2026-07-28 maps these JSON-RPC errors onto HTTP statuses; everything else is 200.
_MODERN_STATUS = {-32700: 400, -32600: 400, -32602: 400, -32020: 400, -32021: 400, -32022: 400, -32601: 404}
# Query parameters that look like credentials: never read as such, and refused so they stop leaking into logs.
CREDENTIAL_PARAMS = frozenset({"access_token", "token", "api_key", "apikey", "api-key", "authorization", "bearer",
                               "id_token", "key", "auth", "password", "secret", "client_secret"})
_MAX_THROTTLED_PEERS = 10_000
SHUTTING_DOWN = -32000


def header(headers: Headers, name: str) -> str | None:
    """A header value with optional whitespace stripped (RFC 9110 5.5), as h11 would hand it over."""
    value = headers.get(name)
    return value.strip(" \t") if value is not None else None


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


def version_fits(header_version: str, negotiated: str) -> bool:
    """Pure: may a request on a session negotiated at `negotiated` carry this MCP-Protocol-Version?

    The negotiated one, or an older handshake-era one: clients (and the conformance suite) send older
    values on newer sessions. A newer one is refused: it would claim behaviour (resumable streams,
    say) that initialize never agreed to."""
    if header_version == negotiated:
        return True
    return header_version in HANDSHAKE_VERSIONS and header_version < negotiated


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


_NO_QUERY = QueryParams("")


DISCONNECT_KEY = "aegress.connection"
"""Scope key under which our server (gateway.server) puts the request's ConnectionWatch."""


class ConnectionWatch:
    """A client connection as the server sees it: ended or not, and whom to tell when it ends. One per
    connection, set by the server, instead of a task per request blocked on `receive()` for the disconnect."""

    __slots__ = ("_listeners", "gone")

    def __init__(self) -> None:
        self.gone = False
        self._listeners: set[Callable[[], None]] = set()

    def add(self, listener: Callable[[], None]) -> None:
        self._listeners.add(listener)

    def discard(self, listener: Callable[[], None]) -> None:
        self._listeners.discard(listener)

    def ended(self) -> None:
        self.gone = True
        for listener in list(self._listeners):
            listener()


class RequestStream:
    """What one request produces, in order: related messages, then its response as the last event.

    Event n (from 1) has the SSE id `<stream id>:<n>`; `<stream id>:0` is the priming event. A stream
    without an id is not resumable and forgets each event once it is written."""

    def __init__(self, stream_id: str | None) -> None:
        self.id = stream_id
        self._events: collections.deque[tuple[JSON, int]] = collections.deque()  # (message, bytes counted)
        self._bytes = 0
        self.dropped = 0
        self.done = False
        self.breaks = 0
        self.reader: object | None = None  # the response currently writing this stream
        self.error: AegressError | None = None
        self.opened = False
        self.waiters: set[asyncio.Future[None]] = set()  # one per reader waiting for news
        self.deadline = float("inf")
        self.task: asyncio.Future[JSON] | None = None
        self._msg_id: Any = None
        self._parked: asyncio.TimerHandle | None = None

    @property
    def total(self) -> int:
        return self.dropped + len(self._events)

    def event(self, n: int) -> JSON:
        if n < self.dropped:
            raise IndexError(n)
        if self.id is None and n == self.dropped:  # not resumable: written once, then forgotten
            self.dropped += 1
            message, size = self._events.popleft()
            self._bytes -= size
            return message
        return self._events[n - self.dropped][0]

    def poke(self, _: object = None) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _push(self, message: JSON, size: int = 0) -> None:
        """Keep an event; `size` counts a related message's bytes against _MAX_STREAM_BYTES (the final
        answer, bounded by the upstream's message limit, counts 0 and is never dropped)."""
        if self.done:
            return
        self._events.append((message, size))
        self._bytes += size
        while len(self._events) > 1 and (len(self._events) > _MAX_EVENTS or self._bytes > _MAX_STREAM_BYTES):
            _, gone = self._events.popleft()
            self._bytes -= gone
            self.dropped += 1

    async def related(self, message: JSON) -> None:
        """The dispatch task's `send`: a message the request caused (or the upstream's stream break)."""
        if message is STREAM_BREAK:
            self.breaks += 1
        elif message is STREAM_OPEN:  # a call that answers within moments needs no separate wake-up
            self.opened = True
            asyncio.get_running_loop().call_later(_OPEN_AFTER_S, self.poke)
            return
        else:
            self._push(message, len(dumps(message)))
        self.poke()

    def start(self, task: asyncio.Future[JSON], msg_id: Any, deadline: float) -> None:
        self.task, self._msg_id, self.deadline = task, msg_id, deadline
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Future[JSON]) -> None:
        if not self.done:
            if task.cancelled():
                pass
            elif isinstance(exc := task.exception(), AegressError):
                self.error = exc  # StoreUnavailable: answered as an HTTP status while nothing is streamed yet
            elif exc is not None:
                log.error("request failed inside the gateway: %s", type(exc).__name__)
                self._push(error_from(self._msg_id, ProtocolError("The gateway failed to handle the request.",
                                                                  code="internal", jsonrpc_code=-32603)))
            else:
                self._push(task.result())
            self.done = True
        self.poke()  # a parked stream keeps its expiry: the answer waits there for the grace period

    def final_error(self) -> JSON:
        assert self.error is not None
        return error_from(self._msg_id, self.error)

    def expire(self, exc: AegressError, reason: str | None = None) -> None:
        """The deadline passed (or the drain grace did): the answer is this error, and the call is cancelled."""
        if not self.done:
            self._push(error_from(self._msg_id, exc))
            self.done = True
        self.cancel(reason)

    def cancel(self, reason: str | None = None) -> None:
        if self._parked is not None:
            self._parked.cancel()
        if self.task is not None and not self.task.done():
            self.task.cancel(reason)

    def park(self, handle: asyncio.TimerHandle) -> None:
        self._parked = handle

    def unpark(self) -> None:
        if self._parked is not None:
            self._parked.cancel()
            self._parked = None


class McpEndpoint:
    def __init__(
        self,
        pipeline: Pipeline,
        runtime: Runtime,
        limits: Limits,
        allowed_hosts: tuple[str, ...],
        allowed_origins: tuple[str, ...],
        bus: Bus | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.bus = bus or Bus()  # the other replicas (gateway.bus); local only without Redis
        self.runtime = runtime
        self.limits = limits
        self.allowed_hosts = allowed_hosts
        self.allowed_origins = allowed_origins
        self.sessions: dict[str, ClientSession] = {}
        self._closing: set[asyncio.Future[None]] = set()
        self._stream_ids = itertools.count(1)
        # fair shares: open sessions and requests in flight per (tenant, actor) and per tenant
        self._sessions_open: collections.Counter[Any] = collections.Counter()  # with initializes under way
        self._initializing = 0
        self._calls_open: collections.Counter[Any] = collections.Counter()
        self._running: set[RequestStream] = set()  # every request being dispatched, for the drain
        self._auth_failures = ratelimit.FailureTable(_MAX_THROTTLED_PEERS)
        self.draining = False

    # -- the ASGI entry point ----------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: ASGISend) -> None:
        headers = Headers(scope=scope)
        modern = False
        try:
            if self.draining:
                raise HttpError("The gateway is shutting down.", hint="Retry against another replica or shortly.",
                                http_status=503, code="shutting-down")
            self._check_edge(scope, headers)
            method = scope["method"]
            version = header(headers, "mcp-protocol-version")
            modern = version is not None and version not in HANDSHAKE_VERSIONS
            if method not in ("POST", "GET", "DELETE") or (modern and method != "POST"):
                raise HttpError(f"Method {method} is not allowed.", http_status=405, code="method-not-allowed",
                                hint="2026-07-28 uses POST only." if modern else None)
            raw_query = scope.get("query_string", b"")
            query = QueryParams(raw_query.decode("latin-1")) if raw_query else _NO_QUERY
            if any(k.lower() in CREDENTIAL_PARAMS for k in query):
                raise HttpError("Credentials are not accepted in the URL query.", code="credentials-in-query",
                                hint="Send the token only as Authorization: Bearer <token>, and drop it from the URL.")
            identity = await self._authenticate(scope, headers)
            identity = self.pipeline.bind(
                identity,
                binding.Claims(
                    headers.getlist(binding.TENANT_HEADER),
                    headers.getlist(binding.ACTOR_HEADER),
                    query.getlist(binding.TENANT_PARAM),
                    query.getlist(binding.ACTOR_PARAM),
                ),
            )
            origin = headers.get("origin")
            if not origin_allowed(origin, self.allowed_origins) and origin not in self.pipeline.decider.origins(
                identity.tenant_id
            ):
                raise HttpError(
                    "Invalid Origin header.",
                    hint="Allow this browser origin with --allowed-origin or the tenant policy's `origins`.",
                    http_status=403,
                    code="invalid-origin",
                )
            if modern:
                await self._modern_post(scope, receive, send, headers, identity)
            elif method == "POST":
                await self._post(scope, receive, send, headers, identity)
            elif method == "GET":
                await self._get(scope, receive, send, headers, identity)
            else:
                await self._delete(send, headers, identity)
        except AegressError as exc:
            await self._send_error(send, exc, modern=modern)

    async def _authenticate(self, scope: Scope, headers: Headers) -> Identity:
        """The token first, then the throttle: a valid token is never refused for other callers' failures
        from the same address (a shared NAT or proxy), and a guesser's failures soon get 429 instead of 401."""
        try:
            return await self.pipeline.authenticate(headers.get("authorization"), scope["path"])
        except AuthError:
            peer = str((scope.get("client") or ("",))[0])
            wait = self._auth_failures.note(peer, self.limits.auth_failures, self.limits.auth_failure_window_s,
                                            time.monotonic())
            if wait is not None:
                raise RateLimited("Too many failed authentications from this address.", retry_after=wait,
                                  code="auth-throttled", hint="Check the token; wait before trying again.") from None
            raise

    def _check_edge(self, scope: Scope, headers: Headers) -> None:
        size = sum(len(k) + len(v) for k, v in scope["headers"])
        if size > self.limits.max_header_bytes or len(scope["headers"]) > self.limits.max_header_count:
            raise HttpError("Request headers are too large.", http_status=431, code="headers-too-large")
        length = headers.get("content-length")
        if length is not None and (not length.strip().isdigit() or int(length) > self.limits.max_body_bytes):
            raise HttpError(f"Request body exceeds {self.limits.max_body_bytes} bytes.", http_status=413,
                            code="body-too-large")
        if not host_allowed(headers.get("host"), self.allowed_hosts):
            raise HttpError(
                "Invalid Host header.",
                hint="Connect with the gateway's own address, or add it with --allowed-host.",
                http_status=421,
                code="invalid-host",
            )

    # -- POST ----------------------------------------------------------------------------------------
    async def _post(self, scope: Scope, receive: Receive, send: ASGISend, headers: Headers, who: Identity) -> None:
        msg = await self._read_message(receive, headers)
        if is_request(msg) and msg["method"] == "initialize":
            await self._initialize(send, who, msg)
            return
        session = self._session(headers, who)
        session.last_seen = time.monotonic()
        if is_request(msg):
            await self._stream_request(scope, receive, send, session, msg)
        elif is_notification(msg):
            await self._respond(send, 202, b"")
            await self.pipeline.client_notification(session, msg)
        else:
            await self.pipeline.client_response(session, msg)
            await self._respond(send, 202, b"")

    async def _modern_post(self, scope: Scope, receive: Receive, send: ASGISend, headers: Headers,
                           who: Identity) -> None:
        """2026-07-28: no session; version, capabilities and client info arrive in every request."""
        msg = await self._read_message(receive, headers)
        if not is_request(msg):
            if is_notification(msg):
                await self._respond(send, 202, b"")
                return
            raise HttpError("Only requests and notifications can be sent in 2026-07-28.")
        msg_id = msg["id"]
        for name in ("mcp-protocol-version", "mcp-method", "mcp-name", *{k for k, _ in headers.items()
                                                                          if k.startswith("mcp-param-")}):
            if len(headers.getlist(name)) > 1:
                raise _modern_error(msg_id, HEADER_MISMATCH, f"The {name} header appears more than once.")
        params = msg.get("params") or {}
        meta = params.get("_meta")
        if not isinstance(meta, dict) or META_PROTOCOL_VERSION not in meta or not isinstance(
            meta.get(META_CLIENT_CAPABILITIES), dict
        ):
            raise _modern_error(
                msg_id, INVALID_PARAMS, "params._meta must carry protocolVersion and clientCapabilities."
            )
        version = meta[META_PROTOCOL_VERSION]
        if header(headers, "mcp-protocol-version") != version:
            raise _modern_error(msg_id, HEADER_MISMATCH, "MCP-Protocol-Version does not match params._meta.")
        if header(headers, "mcp-method") != msg["method"]:
            raise _modern_error(msg_id, HEADER_MISMATCH, "Mcp-Method does not match the body's method.")
        key = NAME_BEARING.get(msg["method"])
        if key is not None and decode_header_value(header(headers, "mcp-name")) != params.get(key):
            raise _modern_error(msg_id, HEADER_MISMATCH, f"Mcp-Name does not match params.{key}.")
        if not isinstance(version, str):
            raise _modern_error(msg_id, INVALID_PARAMS, "The protocol version must be a string.")
        if version not in MODERN_VERSIONS:
            raise _modern_error(msg_id, UNSUPPORTED_VERSION, f"Unsupported protocol version {version[:40]}.",
                                {"supported": list(MODERN_VERSIONS), "requested": version[:40]})
        info = meta.get(META_CLIENT_INFO) if isinstance(meta.get(META_CLIENT_INFO), dict) else {}
        envelope = {k: meta[k] for k in (META_PROTOCOL_VERSION, META_CLIENT_CAPABILITIES, META_CLIENT_INFO,
                                         META_LOG_LEVEL) if k in meta}
        session = ClientSession("", who, MODERN_VERSION, meta[META_CLIENT_CAPABILITIES], info, self.runtime, envelope)
        # Mcp-Param-* headers mirror tool arguments that are forwarded unchanged: pass them on as sent.
        session.param_headers = {k: v for k, v in headers.items() if k.startswith("mcp-param-")}
        try:
            await self._stream_request(scope, receive, send, session, msg)
        finally:
            await session.close()

    async def _read_message(self, receive: Receive, headers: Headers) -> JSON:
        """Content-Type and Accept checks, then the bounded body as one JSON-RPC message (both revisions)."""
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise HttpError("Content-Type must be application/json.", http_status=415, code="unsupported-media-type")
        accept = headers.get("accept", "").lower()
        if not ("*/*" in accept or ("application/json" in accept and "text/event-stream" in accept)):
            raise HttpError("Accept must include application/json and text/event-stream.", http_status=406,
                            code="not-acceptable")
        return validate_message(loads_strict(await self._read_body(receive)))

    async def _read_body(self, receive: Receive) -> bytes:
        """The body within its bounds: size, longest pause, and a total deadline (a byte every few seconds
        would otherwise hold a connection for ever)."""
        chunks: list[bytes] = []
        size = 0
        idle, total = self.limits.body_idle_timeout_s, self.limits.body_deadline_s
        loop = asyncio.get_running_loop()
        end = loop.time() + total
        while True:
            wait = min(idle, end - loop.time())
            try:
                async with asyncio.timeout(wait):
                    message = await receive()
            except TimeoutError:
                if wait < idle:
                    raise HttpError(f"The request body was not complete within {total:g} s.", http_status=408,
                                    code="body-deadline", hint="Send the whole body at once.") from None
                raise HttpError(f"The request body stalled for {idle:g} s.", http_status=408, code="body-timeout",
                                hint="Send the whole body without pauses.") from None
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
        if len(self.sessions) + self._initializing >= self.limits.max_sessions:
            self._reap(force=True)
            if len(self.sessions) + self._initializing >= self.limits.max_sessions:
                raise HttpError("Too many sessions.", http_status=503, code="too-many-sessions")
        actor = (who.tenant_id, who.actor_id)
        cap = self._session_cap(who)
        if cap is not None:  # make room from this actor's (tenant's) own idle sessions first
            key, limit = ((actor, self.limits.max_sessions_per_actor) if cap == "actor"
                          else (who.tenant_id, self.limits.max_sessions_per_tenant))
            self._reclaim(key, self._sessions_open[key] - limit + 1)
            cap = self._session_cap(who)
        if cap is not None:
            raise RateLimited(f"Too many open sessions for this {cap}.", retry_after=30, code="too-many-sessions",
                              hint="End sessions you no longer use (DELETE /mcp); sessions idle for "
                              f"{self.limits.session_reclaim_idle_s:g} s make room for new ones.")
        # counted before the await, so concurrent initializes cannot all pass the cap
        self._sessions_open[actor] += 1
        self._sessions_open[who.tenant_id] += 1
        self._initializing += 1
        try:
            version = self.pipeline.negotiate(params.get("protocolVersion"))
            session = ClientSession(secrets.token_urlsafe(24), who, version, caps, info, self.runtime)
            body = result(msg["id"], await self.pipeline.initialize_result(session))
        except BaseException:
            self._release((actor, who.tenant_id))
            raise
        finally:
            self._initializing -= 1
        self.sessions[session.id] = session
        await self._respond(send, 200, dumps(body), extra=[(b"mcp-session-id", session.id.encode())])

    def _session_cap(self, who: Identity) -> str | None:
        return ratelimit.over_cap(self._sessions_open[(who.tenant_id, who.actor_id)],
                                  self._sessions_open[who.tenant_id],
                                  self.limits.max_sessions_per_actor, self.limits.max_sessions_per_tenant)

    def _reclaim(self, key: Any, need: int) -> None:
        """Close up to `need` of an actor's ((tenant, actor) key) or a tenant's (tenant id key) sessions
        that sit idle with nothing in flight, oldest first."""
        mine = [s for s in self.sessions.values()
                if key in ((s.identity.tenant_id, s.identity.actor_id), s.identity.tenant_id)]
        ids = ratelimit.to_reclaim(
            ((s.id, s.last_seen, bool(s.requests or s.streams) or s.get_queue is not None) for s in mine),
            time.monotonic(), self.limits.session_reclaim_idle_s, need)
        for sid in ids:
            self._close_later(self.sessions[sid])

    def _release(self, keys: tuple[Any, ...]) -> None:
        for key in keys:
            self._sessions_open[key] -= 1
            if self._sessions_open[key] <= 0:
                del self._sessions_open[key]

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
        version = header(headers, "mcp-protocol-version")
        if version is not None and not version_fits(version, session.version):
            raise HttpError(f"MCP-Protocol-Version {version[:40]} is newer than this session's {session.version}.",
                            hint="Send the version initialize negotiated.", code="version-mismatch")
        if session.identity != who:
            session.identity = who  # same tenant and actor, rotated token: keep the session
        return session

    def _forget(self, session: ClientSession) -> None:
        """Take a session out of the table and out of its actor's and tenant's counts."""
        if self.sessions.pop(session.id, None) is session:
            who = session.identity
            self._release(((who.tenant_id, who.actor_id), who.tenant_id))

    async def _stream_request(self, scope: Scope, receive: Receive, send: ASGISend, session: ClientSession,
                              msg: JSON) -> None:
        """Run one request and answer it; what it causes (progress, logs, upstream requests) goes first.

        The dispatch task produces into a `RequestStream`; `_pump` writes that stream to this HTTP
        response. On a resumable session (2025-11-25) the stream outlives the response: when the
        client drops it, or the upstream closes its own stream mid-call (SSE polling, SEP-1699), the
        call goes on and the client reconnects with GET + Last-Event-ID (`_resume`)."""
        resumable = session.version in RESUMABLE_VERSIONS
        key = repr(msg["id"])
        if key in session.requests:
            raise HttpError("A request with this id is still in flight on this session.", http_status=409,
                            code="duplicate-request-id", hint="Use a new id for every request of a session.")
        who = session.identity
        actor = (who.tenant_id, who.actor_id)
        cap = ratelimit.over_cap(self._calls_open[actor], self._calls_open[who.tenant_id],
                                 self.limits.max_calls_per_actor, self.limits.max_calls_per_tenant)
        if cap is not None:
            raise RateLimited(f"Too many requests in flight for this {cap}.", retry_after=2, code="too-many-calls",
                              hint="Wait for running calls to finish before starting more.")
        # ids only mean something inside their session (itself a secret bound to one identity)
        stream = RequestStream(f"s{next(self._stream_ids)}" if resumable else None)
        task = asyncio.ensure_future(self.pipeline.dispatch(session, msg, stream.related))
        stream.start(task, msg["id"], time.monotonic() + (
            float("inf") if msg["method"] == "subscriptions/listen" else self.limits.request_deadline_s))
        self._calls_open[actor] += 1
        self._calls_open[who.tenant_id] += 1
        self._running.add(stream)

        def finished(_: object) -> None:
            self._running.discard(stream)
            session.last_seen = time.monotonic()  # idle from the end of its last call, not its start
            for k in (actor, who.tenant_id):
                self._calls_open[k] -= 1
                if self._calls_open[k] <= 0:
                    del self._calls_open[k]

        task.add_done_callback(finished)
        session.requests[key] = stream  # so notifications/cancelled can reach it, attached or not
        task.add_done_callback(lambda _: session.requests.pop(key, None) if session.requests.get(key) is stream
                               else None)
        if stream.id is not None:  # findable at once: a reconnect may overtake the noticed disconnect
            session.streams[stream.id] = stream
        try:
            ended = await self._pump(scope, receive, send, session, stream, 0)
        except BaseException:
            stream.cancel()
            session.streams.pop(stream.id or "", None)
            raise
        self._after_pump(session, stream, ended)

    def _after_pump(self, session: ClientSession, stream: RequestStream, ended: str) -> None:
        """Done: forget the stream. Replaced: a newer reader has it. Gone or broken: park it (resumable)
        for its client to come back to within the grace period, else cancel the call."""
        if ended == "replaced":
            return
        if ended == "done":
            if session.streams.get(stream.id or "") is stream:
                del session.streams[stream.id or ""]
            return
        if stream.id is None:
            stream.cancel("client_disconnected")  # upstream gets notifications/cancelled; evidence says why
            return
        parked = [s for s in session.streams.values() if s.reader is None and s is not stream]
        for old in parked[: max(0, len(parked) - _MAX_PARKED + 1)]:  # oldest first
            session.streams.pop(old.id or "", None)
            old.cancel("client_disconnected")

        def expire() -> None:
            if stream.reader is None and session.streams.get(stream.id or "") is stream:
                del session.streams[stream.id or ""]
                stream.cancel("client_disconnected")

        stream.park(asyncio.get_running_loop().call_later(_RESUME_GRACE_S, expire))

    async def _pump(self, scope: Scope, receive: Receive, send: ASGISend, session: ClientSession, stream: RequestStream,
                    cursor: int, *, resumed: bool = False) -> str:
        """Write `stream` from event `cursor` on to this response until the answer is out ("done"),
        the client goes away ("gone") or the upstream asked its clients to reconnect ("break").

        One wake-up future serves new events, the dispatch task, the client's disconnect (told by the
        server's ConnectionWatch) and the keep-alive/deadline timer, so a call costs one task of its own
        and no `asyncio.wait` bookkeeping."""
        loop = asyncio.get_running_loop()
        poke = stream.poke
        watch = scope.get(DISCONNECT_KEY)
        watcher: asyncio.Future[None] | None = None
        if isinstance(watch, ConnectionWatch):
            watch.add(poke)
        else:  # another ASGI server: learn of the disconnect from receive()
            watcher = asyncio.ensure_future(_wait_disconnect(receive))
            watcher.add_done_callback(poke)
        ticked = False
        breaks = stream.breaks
        streaming = False

        def tick() -> None:
            nonlocal ticked
            ticked = True
            stream.poke()

        me = object()
        stream.reader = me
        stream.poke()  # a reader this one replaces stops at its next wake-up

        prefix = b""

        async def start() -> None:
            """Commit to SSE. Not before there is something to say, so that a refusal (503 when the
            evidence store cannot take the intent) can still be an HTTP status; a resumable stream
            opens with a priming event (its id is where a reconnect starts) and a retry hint, which
            goes out with the next write."""
            nonlocal streaming, prefix
            await self._start_sse(send)
            streaming = True
            if stream.id is not None:
                prefix = b"id: %s:%d\nretry: %d\ndata: \n\n" % (stream.id.encode(), cursor, _RETRY_MS)

        async def write(body: bytes, more: bool = True) -> None:
            nonlocal prefix
            if prefix:
                body, prefix = prefix + body, b""
            await send({"type": "http.response.body", "body": body, "more_body": more})

        try:
            if resumed:
                await start()
                await write(b"")
            while True:
                if stream.reader is not me:
                    return "replaced"
                if cursor < stream.dropped:  # more than _MAX_EVENTS came faster than they could be written
                    cursor = stream.dropped
                if cursor < stream.total:
                    message = stream.event(cursor)
                    last = stream.done and stream.error is None and cursor + 1 == stream.total
                    if last and not streaming:  # nothing streamed before the answer: plain JSON, every revision
                        status = 200
                        if session.modern and "error" in message:
                            status = _MODERN_STATUS.get(message["error"].get("code"), 200)
                        await self._respond(send, status, dumps(message))
                        return "done"
                    if not streaming:  # something comes before the answer: commit to SSE
                        await start()
                    cursor += 1
                    body = _event(message, f"{stream.id}:{cursor}" if stream.id is not None else None)
                    await write(body, not last)
                    if last:
                        return "done"
                    continue
                if stream.done:  # ended without an answer: an error the edge maps, or cancelled
                    if stream.error is not None and not streaming:
                        raise stream.error
                    if not streaming:
                        await start()
                    await write(_event(stream.final_error()) if stream.error is not None else b"", False)
                    return "done"
                if watch.gone if watcher is None else watcher.done():
                    return "gone"
                if stream.breaks != breaks and stream.id is not None:
                    if not streaming:
                        await start()
                    await write(b"", False)
                    return "break"
                left = stream.deadline - time.monotonic()
                if left <= 0:
                    stream.expire(ProtocolError("The request took longer than the gateway allows.",
                                                code="deadline-exceeded", http_status=504, jsonrpc_code=-32603))
                    if not streaming:
                        await self._respond(send, 504, dumps(stream.event(cursor)))
                        return "done"
                    continue
                if stream.opened and not streaming and stream.id is not None:
                    await start()  # a forwarded call: the client has an event id from now on
                    await write(b"")
                    continue
                if ticked:
                    ticked = False
                    if not streaming:  # a silent call: commit to SSE so idle proxies keep the connection
                        await start()
                    await write(b": ping\n\n")
                    continue
                wake = loop.create_future()
                stream.waiters.add(wake)
                timer = loop.call_later(min(left, _KEEPALIVE_S), tick)
                try:
                    await wake
                finally:
                    timer.cancel()
                    stream.waiters.discard(wake)
        finally:
            if stream.reader is me:
                stream.reader = None
            if watcher is None:
                watch.discard(poke)
            elif not watcher.done():
                watcher.cancel()

    async def _resume(self, scope: Scope, receive: Receive, send: ASGISend, session: ClientSession,
                      last_event_id: str) -> None:
        """GET with Last-Event-ID: replay what the client missed on one request's stream, then go on live."""
        sid, _, number = last_event_id.strip().rpartition(":")
        stream = session.streams.get(sid)
        if stream is None or not number.isdigit() or not stream.dropped <= int(number) <= stream.total:
            raise HttpError("Unknown or expired Last-Event-ID.", http_status=404, code="unknown-stream",
                            hint="The call's events are gone; send the request again.")
        stream.unpark()
        self._after_pump(session, stream, await self._pump(scope, receive, send, session, stream, int(number),
                                                                   resumed=True))

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
    async def _get(self, scope: Scope, receive: Receive, send: ASGISend, headers: Headers, who: Identity) -> None:
        if "text/event-stream" not in headers.get("accept", "").lower():
            raise HttpError("Accept must include text/event-stream.", http_status=406, code="not-acceptable")
        if headers.get("mcp-protocol-version") == MODERN_VERSION:
            raise HttpError("GET streams do not exist in 2026-07-28.", http_status=405, code="method-not-allowed")
        session = self._session(headers, who)
        last_event_id = header(headers, "last-event-id")
        if last_event_id:
            await self._resume(scope, receive, send, session, last_event_id)
            return
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
        self._forget(session)
        await session.close()
        await self._respond(send, 200, b"")

    # -- housekeeping --------------------------------------------------------------------------------
    def _reap(self, force: bool = False) -> None:
        cutoff = time.monotonic() - (self.limits.session_reclaim_idle_s if force
                                     else self.limits.session_idle_timeout_s)
        for session in list(self.sessions.values()):
            if session.last_seen < cutoff and session.get_queue is None:
                self._close_later(session)

    def _close_later(self, session: ClientSession) -> None:
        self._forget(session)
        task = asyncio.ensure_future(session.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def reaper(self) -> None:
        while True:
            await asyncio.sleep(60)
            self._reap()

    async def close(self) -> None:
        sessions = list(self.sessions.values())
        self.sessions.clear()
        self._sessions_open.clear()
        for s in sessions:
            await s.close()

    async def drain(self, grace: float, forced: Callable[[], bool] = lambda: False) -> tuple[int, int]:
        """SIGTERM: refuse new requests (503), give the calls in flight `grace` seconds, then answer each
        one still running with a JSON-RPC error (-32000 "gateway shutting down") as its last event and
        cancel it, so its outcome is recorded before the recorder closes. Returns (completed, cut).

        `forced()` turning true (a second Ctrl-C) ends the grace at once: the calls are cut now."""
        self.draining = True
        running = [s.task for s in self._running if s.task is not None and not s.task.done()]
        log.warning("draining %d calls (grace %g s)", len(running), grace)
        finite = {s.task for s in self._running if s.task in running and s.deadline != float("inf")}
        # subscriptions/listen never ends by itself: it is not waited for
        await _wait_until(finite, grace, forced)
        cut = [s for s in self._running if s.task is not None and not s.task.done()]
        for stream in cut:
            stream.expire(ProtocolError("gateway shutting down", code="shutting-down", http_status=503,
                                        jsonrpc_code=SHUTTING_DOWN), "gateway_shutdown")
        if cut:  # the cancelled calls queue their outcome records on the way out
            await _wait_until({s.task for s in cut if s.task is not None}, 5.0, forced)
        for session in list(self.sessions.values()):  # standalone GET streams end; their clients reconnect elsewhere
            if session.get_queue is not None:
                with contextlib.suppress(asyncio.QueueFull):
                    session.get_queue.put_nowait(None)
        done = len(running) - len(cut)
        log.warning("drained: %d completed, %d cut", done, len(cut))
        return done, len(cut)

    # -- responses -----------------------------------------------------------------------------------
    async def _respond(
        self, send: ASGISend, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        hdrs = [(b"content-type", b"application/json")] if body else []
        hdrs.append((b"content-length", b"%d" % len(body)))
        hdrs.extend(extra or [])
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _send_error(self, send: ASGISend, exc: AegressError, modern: bool = False) -> None:
        extra: list[tuple[bytes, bytes]] = []
        if isinstance(exc, _ModernError):
            with contextlib.suppress(RuntimeError, OSError):
                await self._respond(send, exc.http_status, dumps(exc.body))
            return
        challenge: str | None = getattr(exc, "challenge", None)
        if challenge is not None:  # OAuth mode: resource metadata and scope (gateway.oauth.validator)
            extra.append((b"www-authenticate", challenge.encode()))
        elif isinstance(exc, AuthError):
            value = 'Bearer realm="aegress"'
            if exc.code == "invalid-token":
                value += ', error="invalid_token"'
            extra.append((b"www-authenticate", value.encode()))
        if exc.code == "store-unavailable":
            extra.append((b"retry-after", b"2"))  # sealed evidence: the store could not take the intent
        if isinstance(exc, RateLimited):
            extra.append((b"retry-after", str(exc.retry_after).encode()))
        if exc.http_status in (408, 413) or exc.code == "shutting-down":  # a body may be left unread
            extra.append((b"connection", b"close"))
        if exc.http_status == 405:
            extra.append((b"allow", b"POST" if modern else b"GET, POST, DELETE"))
        with contextlib.suppress(RuntimeError, OSError):
            await self._respond(send, exc.http_status, dumps(error_from(None, exc)), extra)


class _ModernError(HttpError):
    """A 2026-07-28 validation failure: carries the request id and the revision's status mapping."""

    def __init__(self, body: JSON, status: int) -> None:
        super().__init__(body["error"]["message"], http_status=status, jsonrpc_code=body["error"]["code"])
        self.body = body


def _modern_error(msg_id: Any, code: int, message: str, data: Any = None) -> _ModernError:
    err: JSON = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return _ModernError({"jsonrpc": "2.0", "id": msg_id, "error": err}, _MODERN_STATUS.get(code, 400))


def _event(message: JSON, event_id: str | None = None) -> bytes:
    if event_id is None:
        return b"event: message\ndata: " + dumps(message) + b"\n\n"
    return b"event: message\nid: " + event_id.encode() + b"\ndata: " + dumps(message) + b"\n\n"


async def _sse(send: ASGISend, message: JSON) -> None:
    await send({"type": "http.response.body", "body": _event(message), "more_body": True})


async def _wait_until(tasks: set[asyncio.Future[Any]], timeout: float, forced: Callable[[], bool]) -> None:
    """Wait for `tasks` at most `timeout` seconds, looking at `forced` every 0.1 s (bounded)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    pending = {t for t in tasks if not t.done()}
    while pending and not forced():
        left = end - loop.time()
        if left <= 0:
            return
        _, pending = await asyncio.wait(pending, timeout=min(0.1, left))


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
