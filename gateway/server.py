"""Assembles the gateway: store, runtime, pipeline, HTTP edge; runs it under uvicorn.

The app is built once, explicitly: error handling is the endpoint's outermost layer, startup and
shutdown go through the host app's lifespan (upstream processes are stopped there).

Below ASGI, `bounded_protocol` adds what uvicorn's httptools protocol lacks: a deadline for a
request's headers (slowloris) and a cap on their count and size, answered before any app code runs.
uvicorn's `limit_concurrency` caps open connections (503), and no one client address may hold more
than its share of them. On SIGTERM `DrainingServer` stops listening, lets calls in flight finish
within the drain grace (a second Ctrl-C ends it at once), cuts the rest with an error event, then
shuts down as uvicorn does and the process exits 0.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway import sessions
from gateway.bus import connect as connect_bus
from gateway.config import Limits, ServeSettings
from gateway.console import console_route
from gateway.datadir import DataDirLock, hold
from gateway.decide import Decider, PolicyDecider
from gateway.errors import ConfigError, StoreUnavailable
from gateway.evidence import Evidence, EvidenceSettings, NoEvidence, install_log_redaction
from gateway.ingress import parse_public_url, parse_trusted_proxies, pin_static_token
from gateway.jsonrpc import dumps
from gateway.metrics import MetricsEndpoint, MetricsObserver
from gateway.observe import NOTHING, Observer, Observers
from gateway.pipeline import Pipeline
from gateway.proxy import Runtime
from gateway.secrets import load_master_key
from gateway.store import open_store
from gateway.token_watch import TokenWatch
from gateway.transport import DISCONNECT_KEY, ConnectionWatch, McpEndpoint, default_allowed

if TYPE_CHECKING:
    import uvicorn

    from gateway.store.base import Store
    from gateway.tracing import TracingObserver

log = logging.getLogger("aegress.server")

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Gateway:
    app: Callable[[Scope, Receive, Send], Awaitable[None]]
    endpoint: McpEndpoint
    pipeline: Pipeline


def mcp_first(endpoint: McpEndpoint, rest: Starlette) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """`/mcp` straight to the endpoint (it maps its own errors; uvicorn answers 500 for anything else),
    everything else (lifespan, /health, redirects, 404s) through Starlette: its routing and middleware
    layers were about a tenth of the gateway's CPU per call."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/mcp":
            await endpoint(scope, receive, send)
        else:
            await rest(scope, receive, send)

    return app


STORE_BUSY_S = 1.0
"""How long one gateway statement waits for another process's database lock: intents are refused (503)
within a few of these, and a locked store never holds a request for the lock's whole duration."""


HEALTH_TTL_S = 1.0
"""How long one store/recorder check answers /health: it needs no token, so a flood of it must not fill
the worker threads that token lookups need."""


class HealthCache:
    """`probe()`'s answer (store ok, unready reason), computed by one probe at a time (single flight):
    requests arriving while a probe runs share its answer. An unready answer is reused for `ttl`
    seconds (the slow case: a locked or full store makes each probe wait); a ready one only by the
    requests that shared its probe, so a fault shows at the next /health."""

    def __init__(self, probe: Callable[[], Awaitable[tuple[bool, str | None]]], ttl: float = HEALTH_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._probe, self._ttl, self._clock = probe, ttl, clock
        self._value: tuple[bool, str | None] | None = None
        self._at = 0.0
        self._running: asyncio.Future[tuple[bool, str | None]] | None = None

    async def get(self) -> tuple[bool, str | None]:
        if self._value is not None and self._value[1] is not None and self._clock() - self._at < self._ttl:
            return self._value
        if self._running is None:
            self._running = asyncio.ensure_future(self._refresh())
        return await asyncio.shield(self._running)  # a caller that goes away does not cancel the others' probe

    async def _refresh(self) -> tuple[bool, str | None]:
        try:
            value = await self._probe()
            self._value, self._at = value, self._clock()
            return value
        finally:
            self._running = None


def build_gateway(home: Path, settings: ServeSettings, *, database_url: str | None = None,
                  decider: Decider | None = None, evidence: bool = True,
                  lock: DataDirLock | None = None) -> Gateway:
    """`lock`: the data dir's lock, taken here unless the caller holds it already; before any record
    is read, since start-up recovery assumes no other gateway appends to these logs."""
    lock = lock or hold(home)
    store = open_store(home, database_url, busy_timeout_s=STORE_BUSY_S)
    master = load_master_key(home)
    bus = connect_bus(store, store.replica_id)  # Redis/Valkey when AEGRESS_REDIS_URL is set
    runtime = Runtime(store, settings.limits, bus)
    metrics, tracing = observers(settings, store)
    observer = _combined([o for o in (metrics, tracing) if o is not None])
    # sealed evidence: key loaded (a readable key file refuses start-up), open intents recovered, writer started
    evidence_settings = EvidenceSettings.from_env(home)
    recorder: Evidence | NoEvidence = (
        Evidence(store, master, home, evidence_settings, observer=observer) if evidence else NoEvidence()
    )
    if decider is None:  # each tenant's stored policy; an invalid one stops start-up here (ConfigError)
        decider = PolicyDecider(store)
        decider.check_stored()
    pipeline = Pipeline(store, master, runtime, recorder, decider, bus=bus, observer=observer)
    if settings.static_binding is not None:  # fail closed: a missing or mismatched token stops start-up
        pipeline.only_token = pin_static_token(settings.static_binding, store, pipeline.token_digest)
    hosts, origins = default_allowed(settings.host)
    if settings.public_url:  # the tunnel's (or reverse proxy's) name is the one clients send
        public = parse_public_url(settings.public_url)
        hosts, origins = hosts + public.host_values, (*origins, public.origin)
    # session ids are sealed with a key every replica of this database derives alike (gateway.sessions)
    session_key = sessions.session_key(master, store.shared_value(sessions.SHARED_KEY, sessions.new_shared_secret()))
    endpoint = McpEndpoint(
        pipeline,
        runtime,
        settings.limits,
        allowed_hosts=hosts + settings.allowed_hosts,
        allowed_origins=origins + settings.allowed_origins,
        bus=bus,
        session_key=session_key,
    )
    endpoint.trusted_proxies = parse_trusted_proxies(settings.trusted_proxies)
    tokens = TokenWatch(store, bus, endpoint)  # a revoked token's open sessions and streams end on every replica

    async def probe() -> tuple[bool, str | None]:
        try:
            await asyncio.to_thread(store.ping)
        except StoreUnavailable:
            return False, "the store is unreachable"
        return True, await asyncio.to_thread(recorder.unready_reason)

    checked = HealthCache(probe)

    async def health(request: Request) -> JSONResponse:
        store_ok, reason = await checked.get()
        if endpoint.draining:  # a load balancer stops sending new requests while calls in flight finish
            reason = "draining: the gateway is shutting down"
        ready = reason is None
        body: dict[str, object] = {
            "status": "ok" if ready else "unready", "live": True, "ready": ready,
            "store": "ok" if store_ok else "unavailable", "recorder": "ok" if ready else "failing",
            "evidence": "on" if recorder.enabled else "off (--no-evidence: calls are not recorded)"}
        if reason is not None:
            body["reason"] = reason
        return JSONResponse(body, status_code=200 if ready else 503)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await bus.start()
        await pipeline.shared.start()  # the first heartbeat: the fleet's membership is known before serving
        tokens.start()
        reaper = asyncio.create_task(endpoint.reaper())
        try:
            yield
        finally:
            reaper.cancel()
            await tokens.close()
            await pipeline.shared.close()  # frees this replica's leased slots for the others at once
            await bus.close()
            await endpoint.close()
            await runtime.close()
            await asyncio.to_thread(recorder.close)
            if tracing is not None:  # the spans still batched go out (for at most tracing.SHUTDOWN_FLUSH_S)
                await asyncio.to_thread(tracing.shutdown)
            store.close()
            lock.release()

    routes = [Route("/health", health, methods=["GET"]), Route("/mcp", endpoint, methods=None),
              console_route(home, settings, endpoint, master, lock)]
    if not settings.limits.json_only:  # not an MCP request: never counted by the observers it serves
        routes.append(Route("/metrics", MetricsEndpoint(metrics, settings.metrics, store, master,
                                                        lambda: endpoint.allowed_hosts, settings.limits),
                            methods=None))
    app = Starlette(routes=routes, lifespan=lifespan)
    served = mcp_first(endpoint, app)
    if settings.auth_mode == "oauth":  # JWT access tokens, metadata and the embedded authorization server
        from gateway.oauth.server import enable

        served = enable(home, store, master, settings, pipeline, endpoint, served)
    return Gateway(served, endpoint, pipeline)


def observers(settings: ServeSettings, store: Store) -> tuple[MetricsObserver | None, TracingObserver | None]:
    """What listens to the request path: Prometheus metrics unless `--metrics off`, OTLP traces when the
    standard OTEL_* settings ask for them (opentelemetry is imported only then). Lambda's JSON-only mode has
    neither: an instance lives for a few requests and its shutdown hook never runs."""
    if settings.limits.json_only:
        return None, None
    from gateway.status import package_version

    version = package_version()
    metrics = None if settings.metrics == "off" else MetricsObserver(
        tenant_label=settings.metrics_tenant_label, store=store, version=version)
    from gateway import tracing

    return metrics, tracing.from_env(os.environ, tenant_label=settings.metrics_tenant_label, version=version)


def _combined(listeners: list[Observer]) -> Observer:
    """NOTHING, the one listener, or a fan-out: the hot path pays for no layer it does not need."""
    if not listeners:
        return NOTHING
    return listeners[0] if len(listeners) == 1 else Observers(listeners)


def check_bind(host: str, allow_public: bool) -> None:
    if host not in LOOPBACK and not allow_public:
        raise ConfigError(
            f"Refusing to listen on {host}: only loopback addresses are served by default.",
            hint="Pass --allow-public-bind to listen on a non-loopback address (put TLS in front of it).",
            code="public-bind",
        )


def serve(home: Path, settings: ServeSettings, *, database_url: str | None = None,
          on_ready: Callable[[str], None] | None = None, log_level: str = "warning", evidence: bool = True,
          lock: DataDirLock | None = None) -> None:
    """Bind first (so port 0 works and the real URL can be printed), then run uvicorn on that socket."""
    import uvicorn

    lock = lock or hold(home)
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        raise ConfigError(
            f"Cannot listen on {settings.host}:{settings.port}: {exc.strerror}.",
            hint="Pick another port with --port (0 picks a free one).",
            code="bind-failed",
        ) from exc
    sock.listen(2048)
    port = sock.getsockname()[1]
    shown = f"[{settings.host}]" if family == socket.AF_INET6 else settings.host
    url = f"http://{shown}:{port}/mcp"
    if settings.auth_mode == "oauth" and not settings.public_url:  # loopback only (gateway.oauth.resource)
        settings = replace(settings, public_url=f"http://{shown}:{port}/mcp")
    # built once the port is known: OAuth mode's metadata names the public URL, by default this address
    gateway = build_gateway(home, settings, database_url=database_url, evidence=evidence, lock=lock)
    lock.set_url(url)
    config = uvicorn.Config(
        gateway.app,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http=bounded_protocol(settings.limits),
        limit_concurrency=settings.limits.max_connections,
        timeout_keep_alive=settings.limits.keep_alive_s,  # type: ignore[arg-type]  # a float works (call_later)
        timeout_graceful_shutdown=5,  # after the drain: for responses still being written
        server_header=False,
        # the peer is the socket's address: uvicorn would otherwise believe X-Forwarded-For from any loopback
        # client, which could then pick the address the per-address limits count (and it costs a layer per request)
        proxy_headers=False,
    )
    server = draining_server(config, gateway.endpoint, settings.limits.drain_grace_s)
    install_log_redaction()
    if threading.current_thread() is threading.main_thread():
        # uvicorn re-raises the SIGTERM it handled once it has shut down; a drained gateway exits 0
        signal.signal(signal.SIGTERM, _exit_cleanly)

    async def run() -> None:
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not serving.done():
            await asyncio.sleep(0.01)
        if server.started and on_ready is not None:
            on_ready(url)
        await serving

    asyncio.run(run()) if sys.platform == "win32" else _run_uvloop(run)


def _run_uvloop(main: Callable[[], object]) -> None:
    import uvloop

    uvloop.run(main())  # type: ignore[arg-type]


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def draining_server(config: uvicorn.Config, endpoint: McpEndpoint, grace: float) -> uvicorn.Server:
    """A uvicorn.Server whose shutdown first stops listening and drains the endpoint (see `McpEndpoint.drain`)."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            for server in self.servers:
                server.close()  # no new connections; requests on open ones get 503 while draining
            for sock in sockets or []:
                sock.close()
            await endpoint.drain(grace, lambda: self.force_exit)  # a second Ctrl-C cuts the calls now
            await super().shutdown(sockets)  # skips its own waits once force_exit is set

    return DrainingServer(config)


class _HeadWithBody:
    """A response's transport that holds the head until the first body write, so both leave in one send: on
    loopback every send wakes the peer, and a call's answer then costs one wake-up instead of two. A head
    with no body write in the same loop turn goes out on its own at the next turn."""

    __slots__ = ("_handle", "_head", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None
        self._handle: asyncio.Handle | None = None

    def write(self, data: bytes) -> None:
        if self._handle is None and self._head is None:  # the first write of a response is its head
            self._head = data
            self._handle = self._loop.call_soon(self._flush)
            return
        if self._head is not None:
            data, self._head = self._head + data, None
            if self._handle is not None:
                self._handle.cancel()
        self._transport.write(data)

    def _flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            if not self._transport.is_closing():
                self._transport.write(head)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


def _refusal(status: int, reason: bytes, code: str, message: str) -> bytes:
    body = dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": message, "data": {"code": code}}})
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (status, reason, len(body))) + body


def bounded_protocol(limits: Limits) -> type:
    """uvicorn's httptools protocol with a per-address connection cap, a header deadline and header
    count/size caps.

    A client address over `max_connections_per_address` open connections gets 503 and a closed
    connection at once (uvicorn's `limit_concurrency` counts every connection, before authentication).

    The deadline starts with a connection (or with the first byte of a later request on it) and ends
    when the headers are complete: a client dribbling headers (or sending none) gets 408 and a closed
    connection. Too many or too large headers get 431, a target over the header bound 414, as soon as
    they arrive, before they are buffered further. Body pace is the endpoint's job (it reads the body)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    per_address: collections.Counter[str] = collections.Counter()  # open connections per client address

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        _timer: asyncio.TimerHandle | None = None
        _count = 0
        _size = 0
        _pending = 0  # raw bytes received while the current request's headers are incomplete
        _refused = False
        _peer: str | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._watch = ConnectionWatch()  # tells this connection's requests when it ends
            super().connection_made(transport)
            self._peer = str(self.client[0]) if self.client else ""
            per_address[self._peer] += 1
            if per_address[self._peer] > limits.max_connections_per_address:
                # one address cannot hold the whole --max-connections (before any header is read)
                self._refuse(503, b"Service Unavailable", "too-many-connections",
                             f"At most {limits.max_connections_per_address} open connections per client address.")
                return
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._watch.ended()
            if self._peer is not None:
                per_address[self._peer] -= 1
                if per_address[self._peer] <= 0:
                    del per_address[self._peer]
                self._peer = None
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._timer is None:
                self._timer = self.loop.call_later(limits.header_timeout_s, self._late)

        def _disarm(self) -> None:
            self._pending = 0
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _late(self) -> None:
            self._timer = None
            self._refuse(408, b"Request Timeout", "header-timeout",
                         f"Request headers were not complete within {limits.header_timeout_s:g} s.")

        def _refuse(self, status: int, reason: bytes, code: str, message: str) -> None:
            self._refused = True
            if not self.transport.is_closing():
                self.transport.write(_refusal(status, reason, code, message))
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._timer is not None:
                self._pending += len(data)
            super().data_received(data)
            # httptools holds an unfinished header line in memory: bound it before it ends
            if self._timer is not None and self._pending > 2 * limits.max_header_bytes + 4096:
                self._disarm()
                self._refuse(431, b"Request Header Fields Too Large", "headers-too-large",
                             f"Request headers are over {limits.max_header_bytes} bytes.")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._count = self._size = 0
            self._arm()

        def on_url(self, url: bytes) -> None:
            if self._refused:
                return
            self._size += len(url)
            if self._size > limits.max_header_bytes:
                self._disarm()
                self._refuse(414, b"URI Too Long", "uri-too-long",
                             f"The request target is over {limits.max_header_bytes} bytes.")
                return
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            if self._refused:
                return
            if self._count == 0:
                self._size = 0  # the target had its own check
            self._count += 1
            self._size += len(name) + len(value)
            if self._count > limits.max_header_count or self._size > limits.max_header_bytes:
                self._disarm()
                self._refuse(431, b"Request Header Fields Too Large", "headers-too-large",
                             f"At most {limits.max_header_count} request headers of "
                             f"{limits.max_header_bytes} bytes in all are accepted.")
                return
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            if self._refused:
                return
            self._disarm()
            before = self.cycle
            super().on_headers_complete()
            if self.cycle is not None and self.cycle is not before:
                self.cycle.transport = _HeadWithBody(self.transport, self.loop)  # type: ignore[assignment]
                self.scope[DISCONNECT_KEY] = self._watch  # type: ignore[literal-required]

        def on_body(self, body: bytes) -> None:
            if not self._refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if not self._refused:
                super().on_message_complete()

    return BoundedHttpToolsProtocol
