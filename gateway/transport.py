"""The HTTP edge: MCP Streamable HTTP at /mcp, written against raw ASGI.

Order of checks for every request (cheapest and least trusting first):
  0. draining after SIGTERM                                      -> 503
  1. header size, Content-Length, Host and Origin                -> 431 / 413 / 421 / 403
  2. HTTP method (POST, GET, DELETE); credentials in the query   -> 405 / 400
  3. authenticate (bearer token); repeated failures per address  -> 401 + WWW-Authenticate / 429
  4. bind (tenant/actor claims in headers and query)             -> 403
  5. POST: Content-Type, Accept, body size, pace and deadline     -> 415 / 406 / 413 / 408 / 400
     (duplicate keys refused), envelope
  6. protocol revision and session; sessions per actor/tenant    -> 400 / 404 / 409 / 429
  7. limit: requests in flight per actor/tenant (Pipeline.admit)  -> 429
  8. dispatch: limit (budget) -> decide -> record -> forward -> record (gateway.pipeline)

Header deadlines, header count and the connection caps sit below ASGI, in `gateway.server`.

Handshake-era (2025-06-18, 2025-11-25) requests are answered on an SSE stream, as the reference
server does. A 2026-07-28 request is answered with JSON when nothing related (progress, a log)
comes before the result, and on an SSE stream otherwise, as that revision's reference does.
With `Limits.json_only` (AWS Lambda, which buffers whole responses) every answer is JSON: see `JSON_ONLY`.
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

from gateway import binding, methods, ratelimit, sessions
from gateway.bus import Bus
from gateway.config import Limits
from gateway.errors import AegressError, AuthError, ProtocolError, RateLimited
from gateway.ingress import Network, client_address, edge_host
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
from gateway.proxy import ClientSession, Runtime, known_capabilities, request_owner
from gateway.relay import SESSION_TOPIC, Relay
from gateway.types import Identity

log = logging.getLogger("aegress.transport")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
ASGISend = Callable[[dict[str, Any]], Awaitable[None]]
_STARTED = "aegress.started_ns"
"""Scope key: the request's start (perf_counter_ns, from Pipeline.enter), which its call_done measures from."""

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
JSON_ONLY = "This deployment answers with JSON only (no SSE streams)"
"""`Limits.json_only`: GET streams get 405; POSTs need only `Accept: application/json`; the client is declared
upstream without sampling, elicitation or roots (they need a stream to reach it); related messages (progress,
logs) are dropped; a call whose upstream still sends a request to the client ends with an error."""
_STREAM_ONLY_CAPS = ("sampling", "elicitation", "roots")


def deliverable_caps(caps: dict[str, Any], json_only: bool) -> dict[str, Any]:
    """Pure: the client capabilities the gateway can honour; without streams no upstream request reaches it."""
    if not json_only:
        return caps
    return {k: v for k, v in caps.items() if k not in _STREAM_ONLY_CAPS}


# sessions across replicas (gateway.sessions; docs/replicas.md)
ENDED_TOPIC = "session.ended"
_MAX_ENDED_NOTED = 10_000  # recently ended sessions remembered in memory (the database has them all)
_RECHECK_LIVE_FACTOR = 15  # with Redis up, the re-check against the database is only a backstop
_PRUNE_EVERY_S = 600.0
_ANSWER_RELAY_S = 5.0  # a client's answer relayed to the replica that asked: it records evidence first (<= 3 s)
_RESUME_ASK_S = 1.0  # a Last-Event-ID for another replica's stream: its owner must answer this fast, else 404
_RELAY_ALIVE_S = 5.0  # the replica writing a relayed stream says every this often that its client is there
_RELAY_GONE_S = 20.0  # the owner ends a relayed stream's reader (parks the stream) after this much silence
_RELAY_SILENT_S = 3 * _KEEPALIVE_S  # the relaying replica ends its response after this much silence from the owner
_MAX_RELAYED_FRAMES = 2000  # frames waiting at the relaying replica; beyond, the client reconnects


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
        self.who: Identity | None = None  # whose token the request came with: a revocation ends the stream
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
    trusted_proxies: tuple[Network, ...] = ()
    """Proxies whose X-Forwarded-For / X-Forwarded-Host are believed (gateway.ingress); from any other peer,
    a loopback tunnel included, those headers are ignored. Set by gateway.server."""

    def __init__(
        self,
        pipeline: Pipeline,
        runtime: Runtime,
        limits: Limits,
        allowed_hosts: tuple[str, ...],
        allowed_origins: tuple[str, ...],
        bus: Bus | None = None,
        session_key: bytes | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.bus = bus or Bus()  # the other replicas (gateway.bus); local only without Redis
        self.store = pipeline.store
        self.replica = pipeline.store.replica_id
        # the key that seals session ids (gateway.sessions); alone, a random one: sessions end with the process
        self._session_key = session_key or secrets.token_bytes(32)
        self.runtime = runtime
        self.limits = limits
        self.allowed_hosts = allowed_hosts
        self.allowed_origins = allowed_origins
        self.sessions: dict[str, ClientSession] = {}
        self._by_digest: dict[str, ClientSession] = {}  # the same sessions by the sha256 of their id
        self._ended_noted: collections.OrderedDict[str, None] = collections.OrderedDict()  # newest last
        self._recheck_now = asyncio.Event()
        self.bus.subscribe(ENDED_TOPIC, self._on_ended)
        self.bus.subscribe(SESSION_TOPIC, self._on_session_cast)
        self.relay = Relay(self.bus, self.replica)
        self.relay.serve("answer", self._relayed_answer)
        self.relay.serve("resume", self._relayed_resume)
        self.bus.on_reconnect(self._recheck_now.set)  # messages sent during an outage are lost: look now
        self._closing: set[asyncio.Future[None]] = set()
        self._stream_ids = itertools.count(1)
        # fair shares: open sessions and requests in flight per (tenant, actor) and per tenant
        self._sessions_open: collections.Counter[Any] = collections.Counter()  # with initializes under way
        self._initializing = 0
        self._calls_open: collections.Counter[Any] = collections.Counter()
        self._running: set[RequestStream] = set()  # every request being dispatched, for the drain
        self._auth_failures = ratelimit.FailureTable(_MAX_THROTTLED_PEERS)
        self.draining = False
        # the caps across replicas (leases in Redis; this replica's share while Redis is down)
        self.shared = pipeline.shared
        self.shared.track("sessions", self._sessions_open)
        self.shared.track("calls", self._calls_open)

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
            if method == "GET" and self.limits.json_only:
                raise HttpError(f"{JSON_ONLY}: GET streams are not served.", http_status=405, code="json-only",
                                hint="Send requests with POST and Accept: application/json; for streams deploy "
                                "the gateway as a long-running server (docs/operations/README.md).")
            raw_query = scope.get("query_string", b"")
            query = QueryParams(raw_query.decode("latin-1")) if raw_query else _NO_QUERY
            if any(k.lower() in CREDENTIAL_PARAMS for k in query):
                raise HttpError("Credentials are not accepted in the URL query.", code="credentials-in-query",
                                hint="Send the token only as Authorization: Bearer <token>, and drop it from the URL.")
            # 1 authenticate, 2 bind (Pipeline.enter, which times them); the per-address throttle is ours
            identity, scope[_STARTED] = await self.pipeline.enter(
                headers.get("authorization"), scope["path"],
                binding.Claims(headers.getlist(binding.TENANT_HEADER), headers.getlist(binding.ACTOR_HEADER),
                               query.getlist(binding.TENANT_PARAM), query.getlist(binding.ACTOR_PARAM)),
                lambda _: self._throttle(scope, headers))
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

    def _throttle(self, scope: Scope, headers: Headers) -> None:
        """A refused token: count it for its address, and past the limit answer 429 instead. Only failures are
        counted, after the token was looked at, so a valid token is never refused for other callers' failures
        from the same address (a shared NAT or proxy), and a guesser's failures soon get 429 instead of 401."""
        peer = str((scope.get("client") or ("",))[0])
        if self.trusted_proxies:  # behind a named proxy: count the client it forwards for
            peer = client_address(peer, headers.getlist("x-forwarded-for"), self.trusted_proxies)
        wait = self._auth_failures.note(peer, self.limits.auth_failures, self.limits.auth_failure_window_s,
                                        time.monotonic())
        if wait is not None:
            raise RateLimited("Too many failed authentications from this address.", retry_after=wait,
                              code="auth-throttled", hint="Check the token; wait before trying again.") from None

    def _check_edge(self, scope: Scope, headers: Headers) -> None:
        size = sum(len(k) + len(v) for k, v in scope["headers"])
        if size > self.limits.max_header_bytes or len(scope["headers"]) > self.limits.max_header_count:
            raise HttpError("Request headers are too large.", http_status=431, code="headers-too-large")
        length = headers.get("content-length")
        if length is not None and (not length.strip().isdigit() or int(length) > self.limits.max_body_bytes):
            raise HttpError(f"Request body exceeds {self.limits.max_body_bytes} bytes.", http_status=413,
                            code="body-too-large")
        host = headers.get("host")
        if self.trusted_proxies:  # a named proxy's X-Forwarded-Host is the Host the client used
            host = edge_host(str((scope.get("client") or ("",))[0]), host, headers.getlist("x-forwarded-host"),
                             self.trusted_proxies)
        if not host_allowed(host, self.allowed_hosts):
            raise HttpError(
                "Invalid Host header.",
                hint="Connect with the gateway's own address or its --public-url, or add it with --allowed-host.",
                http_status=421,
                code="invalid-host",
            )

    # -- POST ----------------------------------------------------------------------------------------
    async def _post(self, scope: Scope, receive: Receive, send: ASGISend, headers: Headers, who: Identity) -> None:
        msg = await self._read_message(receive, headers)
        if is_request(msg) and msg["method"] == "initialize":
            await self._initialize(scope, send, who, msg)
            return
        session = await self._session(headers, who)
        session.last_seen = time.monotonic()
        if is_request(msg):
            await self._stream_request(scope, receive, send, session, msg)
        elif is_notification(msg):
            await self._respond(send, 202, b"")
            await self._client_notification(session, msg)
        else:
            owner = request_owner(msg.get("id"))
            if owner is not None and owner != self.replica and msg.get("id") not in session.server_requests:
                await self._answer_elsewhere(session, owner, msg)
            else:
                await self.pipeline.client_response(session, msg)
            await self._respond(send, 202, b"")

    # -- what the client sends that concerns another replica (docs/replicas.md) -------------------------
    async def _client_notification(self, session: ClientSession, msg: JSON) -> None:
        """Handled here, then told to the other replicas holding the session when it concerns them: a
        cancellation of a request not running here (the replica running it stops it), a roots change
        (each passes it to the upstreams the session uses there)."""
        method = msg["method"]
        params = msg.get("params") if isinstance(msg.get("params"), dict) else {}
        running_here = repr(params.get("requestId")) in session.requests
        await methods.client_notification(session, msg)
        if (method == "notifications/cancelled" and not running_here) or method == "notifications/roots/list_changed":
            await self.pipeline.tell_replicas(session, "notify", msg=msg)

    async def _answer_elsewhere(self, session: ClientSession, owner: str, msg: JSON) -> None:
        """A client's answer to a server-to-client request another replica relayed: that replica records it
        (elicitation evidence) and returns it upstream; its verdict is this POST's."""
        who = session.identity
        reply = await self.relay.ask(owner, "answer", {"d": session.digest, "t": who.tenant_id, "a": who.actor_id,
                                                       "msg": msg}, _ANSWER_RELAY_S)
        if reply is None:
            raise HttpError("The gateway replica that asked this could not be reached.", http_status=503,
                            code="replica-unreachable",
                            hint="Retry shortly; if the request it answers has failed meanwhile, send that again.")
        failed = reply.get("error")
        if isinstance(failed, dict):
            raise _relayed_error(failed)

    async def _relayed_answer(self, body: JSON) -> JSON:
        """The owner's side of `_answer_elsewhere`: the same checks and path as a POST made here."""
        session = self._by_digest.get(str(body.get("d")))
        msg = body.get("msg")
        who = session.identity if session is not None else None
        if who is None or who.tenant_id != body.get("t") or who.actor_id != body.get("a") or not isinstance(msg, dict):
            return {"error": _error_dict(ProtocolError("A response for a request this session was not sent.",
                                                       http_status=400))}
        try:
            await self.pipeline.client_response(session, msg)
        except AegressError as exc:
            return {"error": _error_dict(exc)}
        return {"ok": True}

    def _on_session_cast(self, message: JSON) -> None:
        """Bus `session.cast` from another replica about a session held here."""
        if message.get("from") == self.replica:
            return
        session = self._by_digest.get(str(message.get("d")))
        if session is None:
            return
        kind = message.get("kind")
        if kind == "notify" and isinstance(message.get("msg"), dict):
            self._later(methods.client_notification(session, message["msg"]))
        elif kind == "level" and isinstance(message.get("level"), str):
            self._later(methods.apply_log_level(session, message["level"]))
        elif kind == "unsubscribe":
            session.subscriptions.discard(message.get("uri"))
        elif kind == "push" and isinstance(message.get("msg"), dict) and session.get_queue is not None:
            with contextlib.suppress(asyncio.QueueFull):
                session.get_queue.put_nowait(message["msg"])

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
        caps = deliverable_caps(meta[META_CLIENT_CAPABILITIES], self.limits.json_only)
        session = ClientSession("", who, MODERN_VERSION, caps, info, self.runtime, envelope)
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
        if self.limits.json_only:
            if not ("*/*" in accept or "application/json" in accept):
                raise HttpError(f"{JSON_ONLY}: Accept must include application/json.", http_status=406,
                                code="json-only", hint="Accept application/json; this deployment never streams.")
        elif not ("*/*" in accept or ("application/json" in accept and "text/event-stream" in accept)):
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

    async def _initialize(self, scope: Scope, send: ASGISend, who: Identity, msg: JSON) -> None:
        """Answered here, not by `Pipeline.dispatch`: a new session (capped), then `methods.initialize_result`;
        reported as `call_done("initialize", ...)`."""
        outcome = "error"
        try:
            await self._new_session(send, who, msg)
            outcome = "ok"
        except RateLimited:
            outcome = "refused"
            raise
        except HttpError as exc:
            outcome = "refused" if exc.code == "too-many-sessions" else "error"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            self.pipeline.not_dispatched("initialize", outcome, scope.get(_STARTED) or time.perf_counter_ns(),
                                         who.tenant_id)

    async def _new_session(self, send: ASGISend, who: Identity, msg: JSON) -> None:
        params = msg.get("params") or {}
        caps = params.get("capabilities") if isinstance(params.get("capabilities"), dict) else {}
        caps = deliverable_caps(caps, self.limits.json_only)
        info = params.get("clientInfo") if isinstance(params.get("clientInfo"), dict) else {}
        if len(self.sessions) + self._initializing >= self.limits.max_sessions:
            self._reap(force=True)
            if len(self.sessions) + self._initializing >= self.limits.max_sessions:
                raise HttpError("Too many sessions.", http_status=503, code="too-many-sessions")
        actor = (who.tenant_id, who.actor_id)
        cap = await self._session_cap(who)
        if cap is not None:  # make room from this actor's (tenant's) own idle sessions first
            key, limit = ((actor, self.limits.max_sessions_per_actor) if cap == "actor"
                          else (who.tenant_id, self.limits.max_sessions_per_tenant))
            self._reclaim(key, self._sessions_open[key] - limit + 1)
            cap = await self._session_cap(who)
        if cap is not None:
            raise RateLimited(f"Too many open sessions for this {cap}.", retry_after=30, code="too-many-sessions",
                              hint="End sessions you no longer use (DELETE /mcp); sessions idle for "
                              f"{self.limits.session_reclaim_idle_s:g} s make room for new ones.")
        # counted before the await, so concurrent initializes cannot all pass the cap
        self._sessions_open[actor] += 1
        self._sessions_open[who.tenant_id] += 1
        self._initializing += 1
        try:
            version = methods.negotiate(params.get("protocolVersion"))
            # the id carries the session (any replica serves it); the session is built from the id's own
            # claims, exactly as a replica that never saw this initialize builds it (`_materialize`)
            claims = sessions.new_claims(self.replica, who.tenant_id, who.actor_id, version,
                                         known_capabilities(caps), info, time.time())
            session = self._build(sessions.seal(claims, self._session_key), claims, who)
            session.counted = True
            body = result(msg["id"], await methods.initialize_result(session))
        except BaseException:
            self._release((actor, who.tenant_id))
            raise
        finally:
            self._initializing -= 1
        self._hold(session)
        await self._respond(send, 200, dumps(body), extra=[(b"mcp-session-id", session.id.encode())])

    async def _session_cap(self, who: Identity) -> str | None:
        """Which session cap one more session would exceed. Across replicas the lease grows with one Redis round
        trip when it must (never per session otherwise), so a burst of initializes is admitted up to the cap;
        the caller counts the session before its next await."""
        return await self.shared.over_cap("sessions", who.tenant_id, who.actor_id, self.limits.max_sessions_per_actor,
                                          self.limits.max_sessions_per_tenant)

    def _reclaim(self, key: Any, need: int) -> None:
        """Close up to `need` of an actor's ((tenant, actor) key) or a tenant's (tenant id key) sessions
        that sit idle with nothing in flight, oldest first."""
        mine = [s for s in self.sessions.values()
                if s.counted and key in ((s.identity.tenant_id, s.identity.actor_id), s.identity.tenant_id)]
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

    async def _session(self, headers: Headers, who: Identity) -> ClientSession:
        """The request's session: held here, or rebuilt from its sealed id (`_materialize`). Unknown,
        tampered, expired, ended and other actors' ids all answer the same 404."""
        sid = headers.get("mcp-session-id")
        if not sid:
            raise HttpError("Missing Mcp-Session-Id header.", hint="Send initialize first.", code="missing-session")
        session = self.sessions.get(sid)
        if session is None:
            session = await self._materialize(sid, who)
        elif session.identity.tenant_id != who.tenant_id or session.identity.actor_id != who.actor_id:
            raise _unknown_session()
        if time.time() >= session.expires_at:
            self._evict_later(session)
            raise _unknown_session()
        version = header(headers, "mcp-protocol-version")
        if version is not None and not version_fits(version, session.version):
            raise HttpError(f"MCP-Protocol-Version {version[:40]} is newer than this session's {session.version}.",
                            hint="Send the version initialize negotiated.", code="version-mismatch")
        if session.identity != who:
            session.identity = who  # same tenant and actor, rotated token: keep the session
        return session

    def _build(self, sid: str, claims: sessions.SessionClaims, who: Identity) -> ClientSession:
        session = ClientSession(sid, who, claims.version, claims.capabilities, claims.client_info, self.runtime)
        session.digest = sessions.digest(sid)
        session.expires_at = claims.issued_at + self.limits.session_max_age_s
        session.elsewhere = self._push_elsewhere
        return session

    def _push_elsewhere(self, session: ClientSession, msg: JSON) -> None:
        """A message for the session's GET stream, which is not here: the replica that has it writes it
        (every replica holding the session hears it; only one has the stream). Without Redis it is dropped,
        as it is on one replica while no GET stream is open."""
        if self.bus.live:
            self._later(self.pipeline.tell_replicas(session, "push", msg=msg))

    async def _materialize(self, sid: str, who: Identity) -> ClientSession:
        """A session this replica does not hold: verify its sealed id, the caller's identity against it and
        that it was not ended (one indexed lookup, once per session and replica), then hold it here.
        It counts against the session caps only on the replica that initialized it."""
        claims = sessions.unseal(sid, self._session_key, time.time(), self.limits.session_max_age_s)
        if claims is None or claims.tenant_id != who.tenant_id or claims.actor_id != who.actor_id:
            raise _unknown_session()
        digest = sessions.digest(sid)
        if digest in self._ended_noted or await asyncio.to_thread(self.store.ended_sessions, [digest]):
            raise _unknown_session()
        if digest in self._ended_noted:  # ended while the database answered
            raise _unknown_session()
        held = self.sessions.get(sid)
        if held is not None:  # another request of this session got here first
            return held
        if len(self.sessions) + self._initializing >= self.limits.max_sessions:
            self._reap(force=True)
            if len(self.sessions) + self._initializing >= self.limits.max_sessions:
                raise HttpError("Too many sessions.", http_status=503, code="too-many-sessions")
        session = self._build(sid, claims, who)
        self._hold(session)
        log.debug("serving session %s (initialized on %s)", digest[:12], claims.replica)
        return session

    def _hold(self, session: ClientSession) -> None:
        self.sessions[session.id] = session
        self._by_digest[session.digest] = session

    def _forget(self, session: ClientSession) -> None:
        """Take a session out of the table and, on the replica that initialized it, out of its actor's and
        tenant's counts."""
        if self.sessions.pop(session.id, None) is session:
            if self._by_digest.get(session.digest) is session:
                del self._by_digest[session.digest]
            if session.counted:
                who = session.identity
                self._release(((who.tenant_id, who.actor_id), who.tenant_id))

    async def _stream_request(self, scope: Scope, receive: Receive, send: ASGISend, session: ClientSession,
                              msg: JSON) -> None:
        """Run one request and answer it; what it causes (progress, logs, upstream requests) goes first.

        The dispatch task produces into a `RequestStream`; `_pump` writes that stream to this HTTP
        response. On a resumable session (2025-11-25) the stream outlives the response: when the
        client drops it, or the upstream closes its own stream mid-call (SSE polling, SEP-1699), the
        call goes on and the client reconnects with GET + Last-Event-ID (`_resume`)."""
        resumable = session.version in RESUMABLE_VERSIONS and not self.limits.json_only
        key = repr(msg["id"])
        who = session.identity
        actor = (who.tenant_id, who.actor_id)
        started = scope.get(_STARTED) or time.perf_counter_ns()
        # 3 limit, its fair shares (Pipeline.admit); from here to the counting below nothing awaits, so
        # concurrent requests cannot all pass the cap
        try:
            await self.pipeline.admit(who, self.limits.max_calls_per_actor, self.limits.max_calls_per_tenant)
            if key in session.requests:
                raise HttpError("A request with this id is still in flight on this session.", http_status=409,
                                code="duplicate-request-id", hint="Use a new id for every request of a session.")
        except AegressError:
            self.pipeline.not_dispatched(msg["method"], "refused", started, who.tenant_id)
            raise
        # ids only mean something inside their session (itself a secret bound to one identity)
        # the stream id names its replica: a Last-Event-ID that reaches another one is relayed here
        stream = RequestStream(f"s{next(self._stream_ids)}@{self.replica}" if resumable else None)
        stream.who = who
        task = asyncio.ensure_future(self.pipeline.dispatch(session, msg, stream.related, started))
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
                    if self.limits.json_only:  # no stream to carry it: drop it, or end a call that needs one
                        cursor += 1
                        if is_request(message):
                            stream.expire(ProtocolError(
                                f"{JSON_ONLY}: the upstream asked the client for {str(message['method'])[:60]}, "
                                "which needs a stream.", code="json-only", http_status=502, jsonrpc_code=-32603,
                                hint="Use this tool through a streaming deployment (docs/operations/README.md)."),
                                "json_only")
                        continue
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
                    if self.limits.json_only:  # nothing to keep alive: the answer comes whole
                        continue
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
        owner = sid.rpartition("@")[2] if "@" in sid else None
        if stream is None and owner and owner != self.replica and number.isdigit():
            await self._resume_elsewhere(scope, receive, send, session, owner, sid, int(number))
            return
        if stream is None or not number.isdigit() or not stream.dropped <= int(number) <= stream.total:
            raise _unknown_stream()
        stream.unpark()
        self._after_pump(session, stream, await self._pump(scope, receive, send, session, stream, int(number),
                                                                   resumed=True))

    # -- a resumable stream whose call runs on another replica (docs/replicas.md) ------------------------
    async def _resume_elsewhere(self, scope: Scope, receive: Receive, send: ASGISend, session: ClientSession,
                                owner: str, sid: str, cursor: int) -> None:
        """Ask the owner to write the stream from `cursor` on here: it replays what the client missed and
        sends the rest live, as ASGI messages over the bus, which this response writes as they come (the
        same bytes, the same event ids). No answer within `_RESUME_ASK_S` (owner gone, or no Redis): 404.
        The client going away is told to the owner, which parks the stream again."""
        frames: collections.deque[JSON] = collections.deque()
        wake = asyncio.Event()
        overflow = False

        def sink(frame: JSON) -> None:
            nonlocal overflow
            if len(frames) >= _MAX_RELAYED_FRAMES:
                overflow = True
            else:
                frames.append(frame)
            wake.set()

        rid = secrets.token_urlsafe(12)
        stop = self.relay.listen(rid, sink)
        who = session.identity
        watch = scope.get(DISCONNECT_KEY)
        watcher = None if isinstance(watch, ConnectionWatch) else asyncio.ensure_future(_wait_disconnect(receive))
        if isinstance(watch, ConnectionWatch):
            watch.add(wake.set)
        else:
            assert watcher is not None
            watcher.add_done_callback(lambda _: wake.set())
        started = finished = False
        try:
            reply = await self.relay.ask(owner, "resume", {"d": session.digest, "t": who.tenant_id,
                                                           "a": who.actor_id, "stream": sid, "cursor": cursor,
                                                           "rid": rid}, _RESUME_ASK_S)
            if reply is None or not reply.get("ok"):
                raise _unknown_stream()
            expected, alive_at, heard = 0, time.monotonic(), time.monotonic()
            while True:
                while frames:
                    frame = frames.popleft()
                    heard = time.monotonic()
                    if frame.get("end"):
                        return
                    if frame.get("seq") != expected:  # lost in an outage: the client resumes from what it has
                        return
                    expected += 1
                    message = _decode_asgi(frame.get("a"))
                    if message is None:
                        return
                    await send(message)
                    if message["type"] == "http.response.start":
                        started = True
                    elif not message.get("more_body", False):
                        finished = True
                        return
                if overflow or (watch.gone if watcher is None else watcher.done()):
                    return
                now = time.monotonic()
                if now - heard > _RELAY_SILENT_S:
                    return
                if now - alive_at >= _RELAY_ALIVE_S:
                    alive_at = now
                    await self.relay.tell(owner, {"t": "frame", "rid": rid, "alive": True})
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), _RELAY_ALIVE_S)
        finally:
            stop()
            if isinstance(watch, ConnectionWatch):
                watch.discard(wake.set)
            elif watcher is not None and not watcher.done():
                watcher.cancel()
            if not finished:  # the client went away, or the relay broke: the owner parks the stream again
                with contextlib.suppress(Exception):
                    await self.relay.tell(owner, {"t": "frame", "rid": rid, "gone": True})
                if started:
                    with contextlib.suppress(RuntimeError, OSError):
                        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _relayed_resume(self, body: JSON) -> JSON:
        """The owner's side of `_resume_elsewhere`: the same checks as a GET made here, then `_pump` writes
        to the asking replica instead of a socket."""
        session = self._by_digest.get(str(body.get("d")))
        who = session.identity if session is not None else None
        cursor, rid, reader = body.get("cursor"), body.get("rid"), body.get("from")
        if session is None or who is None or who.tenant_id != body.get("t") or who.actor_id != body.get("a") \
                or not isinstance(cursor, int) or not isinstance(rid, str) or not isinstance(reader, str):
            return {"error": _error_dict(_unknown_stream())}
        stream = session.streams.get(str(body.get("stream")))
        if stream is None or not stream.dropped <= cursor <= stream.total:
            return {"error": _error_dict(_unknown_stream())}
        stream.unpark()
        self._later(self._pump_to(session, stream, cursor, reader, rid))
        return {"ok": True}

    async def _pump_to(self, session: ClientSession, stream: RequestStream, cursor: int, reader: str,
                       rid: str) -> None:
        """`_pump` for a reader on another replica: its ASGI messages go there as numbered frames; that
        replica's silence for `_RELAY_GONE_S`, or its word, counts as the client going away."""
        gone = asyncio.Event()
        heard = time.monotonic()
        numbers = itertools.count()

        def control(frame: JSON) -> None:
            nonlocal heard
            heard = time.monotonic()
            if frame.get("gone"):
                gone.set()

        async def receive() -> dict[str, Any]:
            while not gone.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(gone.wait(), _RELAY_ALIVE_S)
                if time.monotonic() - heard > _RELAY_GONE_S:
                    gone.set()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            frame = {"t": "frame", "rid": rid, "seq": next(numbers), "a": _encode_asgi(message)}
            if not await self.relay.tell(reader, frame):
                gone.set()  # Redis is down: the reader cannot get anything more

        stop = self.relay.listen(rid, control)
        try:
            ended = await self._pump({}, receive, send, session, stream, cursor, resumed=True)
        finally:
            stop()
        self._after_pump(session, stream, ended)
        if ended != "done":
            await self.relay.tell(reader, {"t": "frame", "rid": rid, "end": True})

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
        session = await self._session(headers, who)
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
        session = await self._session(headers, who)
        await self._end(session)
        await self._respond(send, 200, b"")

    # -- ending sessions everywhere ------------------------------------------------------------------
    async def _end(self, session: ClientSession) -> None:
        """DELETE: recorded first (a replica that has not seen the session refuses it from then on; if the
        store cannot take it the session lives on and the client gets 503), then announced, so replicas
        holding it drop it at once (without Redis, at their next re-check)."""
        await asyncio.to_thread(self.store.end_session, session.digest, time.time())
        self._note_ended(session.digest)
        self._forget(session)
        await session.close()
        await self.bus.publish(ENDED_TOPIC, {"d": session.digest})

    def _close_later(self, session: ClientSession) -> None:
        """End a session everywhere from synchronous code (reclaimed at a session cap): refused here at
        once, recorded and announced in the background."""
        self._note_ended(session.digest)
        self._forget(session)
        self._later(self._ended_here(session))

    async def _ended_here(self, session: ClientSession) -> None:
        await session.close()
        try:
            await asyncio.to_thread(self.store.end_session, session.digest, time.time())
        except AegressError as exc:  # the other replicas keep serving it until it expires
            log.warning("could not record an ended session: %s", exc.message)
            return
        await self.bus.publish(ENDED_TOPIC, {"d": session.digest})

    def _evict_later(self, session: ClientSession) -> None:
        """Forget a session here only (idle, expired, or ended elsewhere): nothing is recorded; an idle one
        comes back on its next request, here or anywhere."""
        self._forget(session)
        self._later(session.close())

    def _later(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _note_ended(self, digest: str) -> None:
        self._ended_noted[digest] = None
        self._ended_noted.move_to_end(digest)
        while len(self._ended_noted) > _MAX_ENDED_NOTED:
            self._ended_noted.popitem(last=False)

    def _on_ended(self, message: JSON) -> None:
        """Bus `session.ended`: another replica (or this one) ended a session; drop it if held here."""
        digest = message.get("d")
        if not isinstance(digest, str):
            return
        self._note_ended(digest)
        session = self._by_digest.get(digest)
        if session is not None:
            self._evict_later(session)

    async def recheck(self) -> int:
        """Drop the held sessions the ended-sessions table names (no Redis, or a message lost in an outage):
        one batched, indexed lookup per 500 sessions, in a worker thread. How many were dropped."""
        held = list(self._by_digest)
        if not held:
            return 0
        try:
            ended = await asyncio.to_thread(self.store.ended_sessions, held)
        except AegressError as exc:
            log.warning("could not re-check sessions against the store: %s", exc.message)
            return 0
        for digest in ended:
            self._on_ended({"d": digest})
        return len(ended)

    async def _recheck_loop(self) -> None:
        pruned = time.monotonic()
        while True:
            every = self.limits.session_recheck_s * (_RECHECK_LIVE_FACTOR if self.bus.live else 1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._recheck_now.wait(), every)
            self._recheck_now.clear()
            await self.recheck()
            if time.monotonic() - pruned >= _PRUNE_EVERY_S:
                pruned = time.monotonic()
                cutoff = time.time() - self.limits.session_max_age_s - sessions.FUTURE_SKEW_S
                try:
                    await asyncio.to_thread(self.store.prune_ended_sessions, cutoff)
                except AegressError as exc:
                    log.warning("could not prune ended sessions: %s", exc.message)

    # -- housekeeping --------------------------------------------------------------------------------
    def _reap(self, force: bool = False) -> None:
        """Forget sessions idle here (they live on: any replica rebuilds one from its id)."""
        cutoff = time.monotonic() - (self.limits.session_reclaim_idle_s if force
                                     else self.limits.session_idle_timeout_s)
        for session in list(self.sessions.values()):
            if session.last_seen < cutoff and session.get_queue is None:
                self._evict_later(session)

    async def reaper(self) -> None:
        """Housekeeping while serving: idle sessions forgotten every minute, ended ones re-checked."""
        await asyncio.gather(self._reap_loop(), self._recheck_loop())

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(60)
            self._reap()

    async def close(self) -> None:
        held = list(self.sessions.values())
        self.sessions.clear()
        self._by_digest.clear()
        self._sessions_open.clear()
        for s in held:
            await s.close()

    def tasks_in_flight(self) -> list[asyncio.Future[JSON]]:
        """Dispatch tasks not finished yet: a cut call records its outcome on the way out, so a host that
        freezes the process once the answer is sent (AWS Lambda) lets these end first."""
        return [s.task for s in self._running if s.task is not None and not s.task.done()]

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

    # -- revoked tokens (gateway.token_watch) ---------------------------------------------------------
    def open_tokens(self, match: Callable[[Identity], bool] = lambda _: True) -> set[str]:
        """The token ids that open sessions and running requests (GET streams, held calls, listens) hold."""
        held = {s.identity.token_id for s in self.sessions.values() if match(s.identity)}
        held.update(s.who.token_id for s in self._running if s.who is not None and not s.done and match(s.who))
        return held

    def end_tokens(self, revoked: set[str]) -> int:
        """The tokens in `revoked` are revoked: their running requests end with an error event (a held call
        stops waiting), their sessions close (a GET stream ends). Returns how many were ended."""
        if not revoked:
            return 0
        ended = 0
        gone = AuthError("The bearer token of this request was revoked.", code="token-revoked",
                         hint="Issue a new one with `aegress token issue`, then start a new session.")
        for stream in list(self._running):
            if stream.who is not None and stream.who.token_id in revoked and not stream.done:
                stream.expire(gone, "token_revoked")
                ended += 1
        for session in list(self.sessions.values()):
            if session.identity.token_id in revoked:
                self._close_later(session)
                ended += 1
        return ended

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
            allow = b"POST" if modern else b"POST, DELETE" if self.limits.json_only else b"GET, POST, DELETE"
            extra.append((b"allow", allow))
        with contextlib.suppress(RuntimeError, OSError):
            await self._respond(send, exc.http_status, dumps(error_from(None, exc)), extra)


def _error_dict(exc: AegressError) -> JSON:
    """An error as it crosses to another replica (gateway.relay), to be raised there alike."""
    return {**exc.to_dict(), "status": exc.http_status, "rpc": exc.jsonrpc_code}


def _relayed_error(err: JSON) -> HttpError:
    status, rpc = err.get("status"), err.get("rpc")
    return HttpError(str(err.get("message") or "The request failed on another replica."),
                     hint=err.get("hint") if isinstance(err.get("hint"), str) else None,
                     code=str(err.get("code") or "protocol"), http_status=status if isinstance(status, int) else 400,
                     jsonrpc_code=rpc if isinstance(rpc, int) else None)


def _unknown_stream() -> HttpError:
    return HttpError("Unknown or expired Last-Event-ID.", http_status=404, code="unknown-stream",
                     hint="The call's events are gone; send the request again.")


def _encode_asgi(message: dict[str, Any]) -> JSON:
    """An ASGI response message as JSON (bytes as latin-1 text, which round-trips every byte)."""
    if message["type"] == "http.response.start":
        return {"type": message["type"], "status": message["status"],
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in message.get("headers", [])]}
    return {"type": message["type"], "body": bytes(message.get("body", b"")).decode("latin-1"),
            "more_body": bool(message.get("more_body", False))}


def _decode_asgi(frame: Any) -> dict[str, Any] | None:
    if not isinstance(frame, dict):
        return None
    if frame.get("type") == "http.response.start" and isinstance(frame.get("status"), int):
        return {"type": "http.response.start", "status": frame["status"],
                "headers": [(str(k).encode("latin-1"), str(v).encode("latin-1")) for k, v in frame.get("headers", [])]}
    if frame.get("type") == "http.response.body" and isinstance(frame.get("body"), str):
        return {"type": "http.response.body", "body": frame["body"].encode("latin-1"),
                "more_body": bool(frame.get("more_body"))}
    return None


def _unknown_session() -> HttpError:
    """Every session id that cannot be served answers alike: never why (tampered, expired, ended, foreign)."""
    return HttpError("Session not found.", hint="Start a new session with initialize.", http_status=404,
                     code="unknown-session", jsonrpc_code=-32001)


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
