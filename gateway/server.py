"""Assembles the gateway: store, runtime, pipeline, HTTP edge; runs it under uvicorn.

The app is built once, explicitly: error handling is the endpoint's outermost layer, startup and
shutdown go through the host app's lifespan (upstream processes are stopped there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.config import ServeSettings
from gateway.datadir import DataDirLock, hold
from gateway.decide import Decider, PolicyDecider
from gateway.errors import ConfigError, StoreUnavailable
from gateway.evidence import Evidence, EvidenceSettings, NoEvidence, install_log_redaction
from gateway.pipeline import Pipeline
from gateway.proxy import Runtime
from gateway.secrets import load_master_key
from gateway.store import open_store
from gateway.transport import McpEndpoint, default_allowed

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


def build_gateway(home: Path, settings: ServeSettings, *, database_url: str | None = None,
                  decider: Decider | None = None, evidence: bool = True,
                  lock: DataDirLock | None = None) -> Gateway:
    """`lock`: the data dir's lock, taken here unless the caller holds it already; before any record
    is read, since start-up recovery assumes no other gateway appends to these logs."""
    lock = lock or hold(home)
    store = open_store(home, database_url, busy_timeout_s=STORE_BUSY_S)
    master = load_master_key(home)
    runtime = Runtime(store, settings.limits)
    # sealed evidence: key loaded (a readable key file refuses start-up), open intents recovered, writer started
    evidence_settings = EvidenceSettings.from_env(home)
    recorder: Evidence | NoEvidence = (
        Evidence(store, master, home, evidence_settings) if evidence else NoEvidence()
    )
    if decider is None:  # each tenant's stored policy; an invalid one stops start-up here (ConfigError)
        decider = PolicyDecider(store)
        decider.check_stored()
    pipeline = Pipeline(store, master, runtime, recorder, decider)
    hosts, origins = default_allowed(settings.host)
    endpoint = McpEndpoint(
        pipeline,
        runtime,
        settings.limits,
        allowed_hosts=hosts + settings.allowed_hosts,
        allowed_origins=origins + settings.allowed_origins,
    )

    async def health(request: Request) -> JSONResponse:
        try:
            await asyncio.to_thread(store.ping)
            store_ok = True
        except StoreUnavailable:
            store_ok = False
        reason = await asyncio.to_thread(recorder.unready_reason) if store_ok else "the store is unreachable"
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
        reaper = asyncio.create_task(endpoint.reaper())
        try:
            yield
        finally:
            reaper.cancel()
            await endpoint.close()
            await runtime.close()
            await asyncio.to_thread(recorder.close)
            store.close()
            lock.release()

    app = Starlette(
        routes=[Route("/health", health, methods=["GET"]), Route("/mcp", endpoint, methods=None)],
        lifespan=lifespan,
    )
    return Gateway(mcp_first(endpoint, app), endpoint, pipeline)


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
    gateway = build_gateway(home, settings, database_url=database_url, evidence=evidence, lock=lock)
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
    lock.set_url(url)
    config = uvicorn.Config(
        gateway.app,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http="httptools",
        timeout_graceful_shutdown=5,
        server_header=False,
    )
    server = uvicorn.Server(config)
    install_log_redaction()

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
