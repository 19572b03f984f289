"""The forward stage: one tenant's upstreams seen as one MCP server.

`TenantRuntime` owns a tenant's upstream connections. Connections are shared by the tenant's client
sessions that declared the same capabilities and protocol revision (the profile), so the gateway
declares upstream what its client declared, reduced to the capability flags MCP defines (a finite set;
at most `MAX_PROFILES_PER_UPSTREAM` connections per upstream). `ClientSession` is one client's view: routing
by namespaced name, id and progress-token remapping, and the server-to-client requests in flight.

Health: an upstream that fails to connect or initialize is marked unavailable with exponential
backoff (1 s doubling to 60 s; a successful connect clears it). While marked, requests to it fail at
once with `upstream-unavailable`, and listings leave it out; once the backoff has passed, the next
request starts a retry in the background and does not wait for it, so a black hole costs one connect
or init timeout, not one per request. A connection taken out of use is closed once the calls on it
have finished (bounded by its call timeout), never under another session's call.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway import naming, signals
from gateway.audit.redact import REDACTED, scrub, truncate
from gateway.bus import Bus
from gateway.config import Limits
from gateway.errors import ProtocolError, UpstreamError
from gateway.jsonrpc import (
    INVALID_PARAMS,
    JSON,
    LATEST_LEGACY,
    LOG_LEVELS,
    META_LOG_LEVEL,
    MISSING_CAPABILITY,
    MODERN_VERSION,
    STREAM_BREAK,
    UNSUPPORTED_VERSION,
)
from gateway.store.base import Store
from gateway.types import Identity, UpstreamSpec
from gateway.upstreams import UpstreamConnection, connect

log = logging.getLogger("aegress.proxy")

Send = Callable[[JSON], Awaitable[None]]
_MAX_PAGES = 100
# The client capability flags the gateway declares upstream, and nothing else: a profile is built from this
# finite set, so a client cannot mint unlimited distinct profiles (each one its own upstream connection).
_CLIENT_CAP_FLAGS: dict[str, tuple[str, ...]] = {
    "sampling": ("context", "tools"),
    "elicitation": ("form", "url"),
    "roots": ("listChanged",),
}
MAX_PROFILES_PER_UPSTREAM = 16
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0
UPSTREAMS_POLL_S = 1.0
"""How often the store's upstream registrations are polled (with or without live signals)."""
MAX_ERROR_MESSAGE_CHARS = 1000
_MAX_LOGGED_ERROR_CHARS = 16_000


def next_backoff(previous: float | None) -> float:
    """Pure: how long an upstream stays marked unavailable after a failed connect."""
    return BACKOFF_FIRST_S if previous is None else min(previous * 2, BACKOFF_MAX_S)


# Errors whose `data` MCP defines and clients act on: missing capability (requiredCapabilities), unsupported
# version (supported/requested), URL elicitation required (elicitations). Their data always passes.
PROTOCOL_DATA_CODES = frozenset({MISSING_CAPABILITY, UNSUPPORTED_VERSION, -32042})


def client_error(err: object, *, forward_data: bool) -> JSON:
    """Pure: the error object a client sees for an upstream's error: its code and a bounded message;
    `data` (stack traces, internal names) only when the upstream is registered with forward_error_data,
    or when MCP defines that code's data (`PROTOCOL_DATA_CODES`)."""
    if not isinstance(err, dict):
        return {"code": -32603, "message": "The upstream sent a malformed error."}
    code = err.get("code")
    message = err.get("message")
    out: JSON = {
        "code": code if isinstance(code, int) and not isinstance(code, bool) else -32603,
        "message": truncate(message, MAX_ERROR_MESSAGE_CHARS) if isinstance(message, str) and message
        else "The upstream gave no message.",
    }
    if "data" in err and (forward_data or out["code"] in PROTOCOL_DATA_CODES):
        out["data"] = err["data"]
    return out


def known_capabilities(client_caps: JSON) -> JSON:
    """Pure: the client's sampling / elicitation / roots capabilities reduced to the flags MCP defines
    (`roots.listChanged` true, every other flag `{}`); anything else a client puts there is dropped."""
    out: JSON = {}
    for key, flags in _CLIENT_CAP_FLAGS.items():
        declared = client_caps.get(key)
        if not isinstance(declared, dict):
            continue
        kept: JSON = {}
        for flag in flags:
            value = declared.get(flag)
            if flag == "listChanged":
                if value is True:
                    kept[flag] = True
            elif isinstance(value, dict):
                kept[flag] = {}
        out[key] = kept
    return out


def scrub_value(value: Any, secrets: tuple[str, ...], _depth: int = 0) -> Any:
    """Pure: a copy of a JSON value with every injected credential value (`secrets`) replaced in its
    strings and keys; too deep a value is replaced whole rather than passed unexamined."""
    if not secrets:
        return value
    if _depth > 64:
        return REDACTED
    if isinstance(value, str):
        return scrub(value, secrets)
    if isinstance(value, dict):
        return {scrub(str(k), secrets): scrub_value(v, secrets, _depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_value(v, secrets, _depth + 1) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class Profile:
    """What the gateway declares upstream on behalf of a client: its revision and capabilities."""

    version: str
    capabilities: str  # canonical JSON of the client's sampling / elicitation / roots capabilities

    @classmethod
    def of(cls, version: str, client_caps: JSON) -> Profile:
        return cls(version, orjson.dumps(known_capabilities(client_caps), option=orjson.OPT_SORT_KEYS).decode())

    def caps(self) -> JSON:
        return orjson.loads(self.capabilities)


class UnknownTarget(ProtocolError):
    """Hidden and unknown tools, prompts and resources answer exactly alike."""

    def __init__(self, kind: str, name: str) -> None:
        label = {"tool": "Unknown tool", "prompt": "Unknown prompt", "resource": "Unknown resource"}[kind]
        super().__init__(f"{label}: {name}", code=f"unknown-{kind}", jsonrpc_code=INVALID_PARAMS)

    def to_wire(self) -> tuple[int, str]:
        return self.jsonrpc_code, self.message


@dataclass(slots=True)
class Upstream:
    """A live connection plus the tool definitions it last listed (for routing and decisions)."""

    spec: UpstreamSpec
    conn: UpstreamConnection
    tools: dict[str, JSON] | None = None
    listeners: set[ClientSession] = field(default_factory=set)
    on_unresponsive: Callable[[Exception], None] | None = None
    """Set by the tenant runtime: a listing that times out marks the upstream unavailable (backoff)."""

    def client_error(self, method: str, err: object) -> JSON:
        """Log an upstream's error in full (bounded, injected credentials scrubbed); return what the
        client may see of it (see `client_error`)."""
        text = orjson.dumps(err, default=str).decode()[:_MAX_LOGGED_ERROR_CHARS]
        log.warning("upstream %s answered %s with an error: %s", self.spec.name, method, self.conn.scrub(text))
        return client_error(scrub_value(err, self.conn.secrets), forward_data=self.spec.limits.forward_error_data)


@dataclass(frozen=True, slots=True)
class _Down:
    """An upstream marked unavailable: until `retry_at` (monotonic) nothing waits on it."""

    delay: float
    retry_at: float


class TenantRuntime:
    def __init__(self, tenant_id: str, specs: list[UpstreamSpec], limits: Limits) -> None:
        self.tenant_id = tenant_id
        self.specs = {s.name: s for s in specs}
        self.limits = limits
        self._live: dict[tuple[str, Profile], Upstream] = {}
        self._starting: dict[tuple[str, Profile], asyncio.Task[Upstream]] = {}
        self._legacy_only: set[str] = set()
        self._down: dict[str, _Down] = {}
        self._retiring: dict[asyncio.Task[None], Upstream] = {}
        self.sessions: set[ClientSession] = set()

    async def upstream(self, name: str, profile: Profile) -> Upstream:
        """The live connection, connecting first if needed; an upstream marked unavailable fails at once."""
        key = (name, profile)
        live = self._live.get(key)
        down = self._down.get(name)
        if down is None and live is not None and not live.conn.closed:
            return live
        task = self._starting.get(key)
        if task is None and (down is None or time.monotonic() >= down.retry_at):
            self._make_room(name, profile)
            task = asyncio.ensure_future(self._start_tracked(name, profile))
            self._starting[key] = task
            task.add_done_callback(lambda t: self._started(key, t))
        if down is not None:  # a retry, if any, runs in the background: nobody waits on a known-bad upstream
            raise self._unavailable(name, down)
        assert task is not None
        return await asyncio.shield(task)

    def _make_room(self, name: str, profile: Profile) -> None:
        """At most MAX_PROFILES_PER_UPSTREAM connections per upstream (one per distinct profile): a new
        profile first closes one no session uses and nothing is pending on; if every one is in use, it
        is refused rather than opening yet another connection or process."""
        profiles = {p for (n, p) in [*self._live, *self._starting] if n == name}
        if profile in profiles or len(profiles) < MAX_PROFILES_PER_UPSTREAM:
            return
        for (n, _), up in list(self._live.items()):
            if n == name and not up.listeners and not up.conn.busy and not up.conn.closed:
                self._drop(up)
                return
        raise UpstreamError(
            f"Upstream {name!r} already has {MAX_PROFILES_PER_UPSTREAM} connections in use, one per distinct "
            "combination of client protocol version and capabilities; no more are opened.",
            hint="Retry once other sessions have ended; clients that declare the same capabilities share one.",
            code="upstream-profiles-exhausted",
        )

    def _started(self, key: tuple[str, Profile], task: asyncio.Task[Upstream]) -> None:
        if self._starting.get(key) is task:
            self._starting.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved here: a background retry's failure is logged by _start_tracked

    def _unavailable(self, name: str, down: _Down) -> UpstreamError:
        wait = max(0.0, down.retry_at - time.monotonic())
        return UpstreamError(
            f"Upstream {name!r} is unavailable; the gateway retries it in {wait:.0f} s (backoff {down.delay:g} s).",
            hint=f"Check it with `aegress upstream test --tenant {self.tenant_id} {name}`.",
            code="upstream-unavailable",
        )

    async def _start_tracked(self, name: str, profile: Profile) -> Upstream:
        """Connect, keeping the backoff: a failure marks the upstream, a success clears the mark. A retry
        after a backoff must also answer a listing: an upstream that takes the handshake and then stays
        silent is not healthy, and would otherwise hold the next listing for its whole timeout."""
        previous = self._down.get(name)
        try:
            live = self._live.get((name, profile))
            up = live if live is not None and not live.conn.closed else await self._start(name, profile)
            if previous is not None:
                await self._probe(up)
        except Exception as exc:
            self._mark_down(name, exc)
            raise
        self._down.pop(name, None)
        return up

    async def _probe(self, up: Upstream) -> None:
        try:
            async with asyncio.timeout(up.spec.limits.init_timeout_s):
                if "tools" in up.conn.capabilities:
                    await _list_pages(up, "tools/list", "tools", None, None)
                else:
                    await up.conn.request("ping", None)
        except TimeoutError as exc:
            self._drop(up)
            raise UpstreamError(f"Upstream {up.spec.name!r} connected but did not answer within "
                                f"{up.spec.limits.init_timeout_s:g} s.", code="upstream-timeout") from exc
        except BaseException:
            self._drop(up)
            raise

    def _mark_down(self, name: str, exc: Exception) -> None:
        previous = self._down.get(name)
        delay = next_backoff(previous.delay if previous else None)
        self._down[name] = _Down(delay, time.monotonic() + delay)
        log.warning("tenant %s upstream %s unavailable, retried in %g s: %s", self.tenant_id, name, delay,
                    exc.message if isinstance(exc, UpstreamError) else type(exc).__name__)

    def _unresponsive(self, up: Upstream, exc: Exception) -> None:
        """Connected but silent (a black hole after the handshake): back off and drop the connection, so
        listings and calls stop waiting on it; the next try after the backoff connects afresh."""
        self._mark_down(up.spec.name, exc)
        self._drop(up)

    def _drop(self, up: Upstream) -> None:
        """Take a connection out of use: nothing new starts on it at once, but it is closed only once
        the calls already on it have finished (bounded by its call timeout), so a slow listing on a
        shared connection does not fail another session's legitimate call."""
        for key, live in list(self._live.items()):
            if live is up:
                self._live.pop(key, None)
        task = asyncio.ensure_future(self._retire(up))
        self._retiring[task] = up
        task.add_done_callback(self._retired)

    async def _retire(self, up: Upstream) -> None:
        await up.conn.settle(up.spec.limits.call_timeout_s)
        await up.conn.close()

    def _retired(self, task: asyncio.Task[None]) -> None:
        self._retiring.pop(task, None)
        if not task.cancelled():
            task.exception()

    async def _start(self, name: str, profile: Profile) -> Upstream:
        """Speak the client's revision upstream; a 2026-07-28 client whose upstream only knows the
        handshake era gets a legacy session declaring that client's capabilities instead."""
        if profile.version == MODERN_VERSION and name not in self._legacy_only:
            try:
                return await self._connect(name, profile, MODERN_VERSION)
            except UpstreamError as exc:
                if exc.code != "upstream-legacy-only":
                    raise
                self._legacy_only.add(name)
        version = LATEST_LEGACY if profile.version == MODERN_VERSION else profile.version
        return await self._connect(name, profile, version)

    async def _connect(self, name: str, profile: Profile, version: str) -> Upstream:
        """Open and initialize within the upstream's own connect and init timeouts; calls then get its
        call timeout."""
        spec = self.specs[name]
        lim = spec.limits
        conn = connect(spec, protocol_version=version, capabilities=profile.caps(), timeout=lim.call_timeout_s)
        conn.secrets = await asyncio.to_thread(injected_secrets, spec)
        try:
            async with asyncio.timeout(lim.connect_timeout_s + lim.init_timeout_s):  # a backstop only
                await conn.start()
        except BaseException as exc:
            await conn.close()
            if isinstance(exc, TimeoutError):
                raise UpstreamError(f"Upstream {name!r} did not initialize in time.", code="upstream-timeout") from exc
            raise
        up = Upstream(spec, conn)
        up.on_unresponsive = lambda exc: self._unresponsive(up, exc)
        conn.on_unsolicited = lambda msg: self._unsolicited(up, msg)
        key = (name, profile)
        conn.on_closed = lambda: self._live.pop(key, None) if self._live.get(key) is up else None
        self._live[key] = up
        return up

    async def _unsolicited(self, up: Upstream, msg: JSON) -> None:
        """Messages no call caused: list changes and resource updates go to the sessions they concern."""
        method = msg.get("method", "")
        if method == "notifications/tools/list_changed":
            up.tools = None
        if "id" in msg:  # a request we cannot attribute to one call: refuse rather than guess
            await up.conn.respond(
                {
                    "jsonrpc": "2.0",
                    "id": msg["id"],
                    "error": {"code": -32600, "message": "No client request to relate this to."},
                }
            )
            return
        for session in list(up.listeners):
            await session.deliver_unsolicited(up, msg)

    async def close(self) -> None:
        for task in self._starting.values():
            task.cancel()
        retiring = list(self._retiring.items())
        for task, _ in retiring:
            task.cancel()
        live = [*self._live.values(), *(up for _, up in retiring)]
        self._live.clear()
        await asyncio.gather(*(u.conn.close() for u in live), return_exceptions=True)


def injected_secrets(spec: UpstreamSpec) -> tuple[str, ...]:
    """The credential values the gateway sends this upstream (resolved headers, stdio environment),
    for scrubbing; a reference that does not resolve is simply not known (connecting reports it)."""
    from gateway.audit.redact import secret_values
    from gateway.upstreams.http import resolve_header_value

    values = list(spec.env.values())
    for value in spec.headers.values():
        try:
            values.append(resolve_header_value(value))
        except UpstreamError:
            continue
    return secret_values(values)


class Runtime:
    """All tenants' runtimes; picks up upstream registrations changed by the CLI while serving: polled every
    UPSTREAMS_POLL_S, and at once on an `upstreams.changed` signal (gateway.signals)."""

    def __init__(self, store: Store, limits: Limits, bus: Bus | None = None) -> None:
        self.store = store
        self.limits = limits
        self.bus = bus or Bus(store.replica_id)  # the other replicas (gateway.bus); local only without Redis
        self._tenants: dict[str, TenantRuntime] = {}
        self._version = -1
        self._checked = 0.0
        self._reloading = asyncio.Lock()  # one reload at a time (a poll and a signal may meet)
        self._tasks: set[asyncio.Future[None]] = set()
        self.bus.subscribe(signals.UPSTREAMS_CHANGED, self._changed)
        self.bus.on_reconnect(lambda: self._changed({}))

    async def tenant(self, tenant_id: str) -> TenantRuntime:
        now = time.monotonic()
        if now - self._checked > UPSTREAMS_POLL_S:
            self._checked = now
            await self.refresh()
        rt = self._tenants.get(tenant_id)
        if rt is None:
            specs = await asyncio.to_thread(self.store.list_upstreams, tenant_id)
            rt = self._tenants.get(tenant_id)  # another request may have built it meanwhile
            if rt is None:
                rt = TenantRuntime(tenant_id, specs, self.limits)
                self._tenants[tenant_id] = rt
        return rt

    async def refresh(self) -> None:
        """Compare the store's upstreams counter with the one last loaded; reload when it moved."""
        async with self._reloading:
            version = await asyncio.to_thread(self.store.upstreams_version)  # never on the event loop
            if version != self._version:
                self._version = version
                await self._reload()

    def _changed(self, message: JSON) -> None:
        """An `upstreams.changed` signal (or Redis back after an outage): reload now, not at the next poll."""
        task = asyncio.ensure_future(self._refresh_now())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh_now(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # StoreUnavailable and the like: the next poll tries again
            log.warning("reloading upstreams on a signal failed (%s); the next poll retries",
                        getattr(exc, "message", type(exc).__name__))

    async def _reload(self) -> None:
        """Registrations changed: rebuild the runtimes whose upstream specs differ."""
        for tenant_id, rt in list(self._tenants.items()):
            specs = {s.name: s for s in await asyncio.to_thread(self.store.list_upstreams, tenant_id)}
            if specs != rt.specs:
                self._tenants.pop(tenant_id, None)
                sessions = list(rt.sessions)
                await rt.close()
                for s in sessions:
                    s.tenant = None  # the session reconnects through the new runtime

    async def close(self) -> None:
        tenants = list(self._tenants.values())
        self._tenants.clear()
        await asyncio.gather(*(t.close() for t in tenants), return_exceptions=True)


_gids = itertools.count(1)


def request_owner(request_id: Any) -> str | None:
    """Pure: the replica that relayed a server-to-client request (its id is `aeg-<n>@<replica>`), or None
    for an id the gateway did not make. A replica id never holds '@' (gateway.store.replica_id_from_env)."""
    if isinstance(request_id, str) and request_id.startswith("aeg-") and "@" in request_id:
        return request_id.rpartition("@")[2] or None
    return None


class ClientSession:
    """One client session (legacy revisions) or one request's worth of state (2026-07-28)."""

    def __init__(
        self,
        session_id: str,
        identity: Identity,
        version: str,
        client_caps: JSON,
        client_info: JSON,
        runtime: Runtime,
        envelope: JSON | None = None,
    ) -> None:
        self.id = session_id
        self.modern = version == MODERN_VERSION
        self.envelope = envelope or {}
        self.param_headers: dict[str, str] = {}  # 2026-07-28 Mcp-Param-* mirrors of tools/call arguments
        self.identity = identity
        self.version = version
        self.client_caps = client_caps
        self.client_info = client_info
        self.profile = Profile.of(version, client_caps)
        self.runtime = runtime
        self.tenant: TenantRuntime | None = None
        self.last_seen = time.monotonic()
        self.get_queue: asyncio.Queue[JSON | None] | None = None
        self.server_requests: dict[str, tuple[Upstream, Any]] = {}
        self.subscriptions: set[str] = set()
        self.log_level: str | None = None
        self.closed = False
        self.requests: dict[str, Any] = {}  # transport.RequestStream by repr(request id), while running
        self.streams: dict[str, Any] = {}  # transport.RequestStream by stream id, parked for resumption
        # handshake-era sessions (gateway.sessions): the sha256 of the sealed id names the session in the
        # ended-sessions table, bus messages and records; `counted` only on the replica that initialized it
        self.digest = ""
        self.counted = False
        self.expires_at = float("inf")  # wall clock (time.time())
        # a message no request caused, while this replica has no GET stream of the session: the endpoint
        # hands it to the replica that has one (gateway.transport; none without Redis)
        self.elsewhere: Callable[[ClientSession, JSON], None] | None = None

    # -- upstream access -----------------------------------------------------------------------
    async def tenant_runtime(self) -> TenantRuntime:
        rt = await self.runtime.tenant(self.identity.tenant_id)
        if rt is not self.tenant:
            self.tenant = rt
            rt.sessions.add(self)
        return rt

    async def upstreams(self) -> list[Upstream]:
        """Every upstream of the tenant that answers; one that fails is logged and left out."""
        rt = await self.tenant_runtime()
        names = sorted(rt.specs)
        results = await asyncio.gather(*(rt.upstream(n, self.profile) for n in names), return_exceptions=True)
        ups: list[Upstream] = []
        for name, res in zip(names, results, strict=True):
            if isinstance(res, BaseException):  # in backoff: already logged when it failed, so quieter here
                marked = isinstance(res, UpstreamError) and res.code == "upstream-unavailable"
                log.log(logging.INFO if marked else logging.WARNING, "tenant upstream %s left out: %s", name, res)
                continue
            res.listeners.add(self)
            ups.append(res)
        return ups

    async def upstream(self, name: str) -> Upstream:
        rt = await self.tenant_runtime()
        up = await rt.upstream(name, self.profile)
        up.listeners.add(self)
        return up

    def meta_for(self, up: Upstream) -> JSON | None:
        """The 2026-07-28 `_meta` envelope this client sent, for an upstream that speaks that revision."""
        return self.envelope if up.conn.modern and self.envelope else None

    def wants_log(self, msg: JSON) -> bool:
        """2026-07-28: log notifications only for requests that opted in, at or above their level."""
        if not self.modern:
            return True
        wanted = self.envelope.get(META_LOG_LEVEL)
        level = (msg.get("params") or {}).get("level")
        if wanted not in LOG_LEVELS:
            return False
        return level not in LOG_LEVELS or LOG_LEVELS.index(level) >= LOG_LEVELS.index(wanted)

    # -- messages that reach the client ----------------------------------------------------------
    def sink_for(self, up: Upstream, send: Send, client_token: Any) -> Send:
        """Rewrite what an upstream sends during one call so it fits this client, then send it."""

        async def sink(msg: JSON) -> None:
            if msg is STREAM_BREAK:
                await send(msg)
                return
            method = msg.get("method", "")
            if method == "notifications/progress":
                if client_token is None:
                    return
                params = dict(msg.get("params") or {})
                params["progressToken"] = client_token
                await send({**msg, "params": params})
            elif "id" in msg:
                if self.modern:  # 2026-07-28 has no server-to-client requests on the wire
                    await up.conn.respond({"jsonrpc": "2.0", "id": msg["id"], "error": {
                        "code": -32601, "message": "The client cannot be asked (protocol 2026-07-28)."}})
                    return
                await send(self.relay_server_request(up, msg))
            elif method == "notifications/message" and not self.wants_log(msg):
                return
            else:
                await send(self.rename_outbound(up, msg))

        return sink

    def relay_server_request(self, up: Upstream, msg: JSON) -> JSON:
        gid = f"aeg-{next(_gids)}@{self.runtime.store.replica_id}"  # the client may answer on any replica
        log.debug("relaying upstream request %s to the client as %s", msg.get("method"), gid)
        self.server_requests[gid] = (up, msg["id"])
        return {**msg, "id": gid}

    async def answer_server_request(self, msg: JSON) -> bool:
        """A client response to a request we relayed: return it upstream with the upstream's id."""
        key = msg.get("id")
        entry = self.server_requests.pop(key, None) if isinstance(key, str) else None
        if entry is None:
            return False
        up, upstream_id = entry
        log.debug("relaying the client's answer to %s upstream as id %r", key, upstream_id)
        await up.conn.respond({**msg, "id": upstream_id})
        return True

    def rename_outbound(self, up: Upstream, msg: JSON) -> JSON:
        if up.spec.prefix and msg.get("method") == "notifications/resources/updated":
            params = dict(msg.get("params") or {})
            if isinstance(params.get("uri"), str):
                params["uri"] = naming.prefixed_uri(up.spec.name, params["uri"])
            return {**msg, "params": params}
        return msg

    async def deliver_unsolicited(self, up: Upstream, msg: JSON) -> None:
        method = msg.get("method", "")
        out = self.rename_outbound(up, msg)
        if method == "notifications/resources/updated":
            uri = (out.get("params") or {}).get("uri")
            if uri not in self.subscriptions:
                return
        if self.get_queue is not None:
            with contextlib.suppress(asyncio.QueueFull):
                self.get_queue.put_nowait(out)
        elif self.elsewhere is not None:
            self.elsewhere(self, out)

    async def close(self) -> None:
        self.closed = True
        for stream in [*self.streams.values(), *self.requests.values()]:
            stream.cancel("client_disconnected")
        self.streams.clear()
        if self.tenant is not None:
            self.tenant.sessions.discard(self)
            for up in list(self.tenant._live.values()):
                up.listeners.discard(self)
        if self.get_queue is not None:
            with contextlib.suppress(asyncio.QueueFull):
                self.get_queue.put_nowait(None)


async def list_all(up: Upstream, method: str, key: str, params: JSON | None = None,
                   meta: JSON | None = None) -> list[JSON]:
    """Follow an upstream's pagination to the end (bounded), so clients get one merged page.

    A listing is metadata: one that takes longer than the upstream's init timeout means the upstream is
    not answering, and it is marked unavailable rather than holding every later listing for the whole
    call timeout."""
    try:
        async with asyncio.timeout(up.spec.limits.init_timeout_s):
            return await _list_pages(up, method, key, params, meta)
    except TimeoutError as exc:
        err = UpstreamError(f"Upstream {up.spec.name!r} did not answer {method} within "
                            f"{up.spec.limits.init_timeout_s:g} s.", code="upstream-timeout",
                            hint="It is left out and retried with backoff; raise `--init-timeout` with "
                                 "`aegress upstream set` if it is only slow.")
        if up.on_unresponsive is not None:
            up.on_unresponsive(err)
        raise err from exc


async def _list_pages(up: Upstream, method: str, key: str, params: JSON | None, meta: JSON | None) -> list[JSON]:
    items: list[JSON] = []
    cursor: str | None = None
    for _ in range(_MAX_PAGES):
        p: JSON = dict(params or {})
        if cursor:
            p["cursor"] = cursor
        resp = await up.conn.request(method, p or None, meta=meta)
        if "error" in resp:
            raise UpstreamError(f"Upstream {up.spec.name!r} failed {method}.")
        result = resp.get("result") or {}
        page = result.get(key)
        if isinstance(page, list):
            items.extend(x for x in page if isinstance(x, dict))
        cursor = result.get("nextCursor")
        if not cursor:
            break
    return items
