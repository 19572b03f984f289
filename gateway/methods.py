"""The MCP methods the gateway answers, one handler each, and the table `Pipeline.dispatch` reads.

A handler reads its method's parameters, answers what the gateway answers itself (ping, discovery,
listings) and, for a request that goes to one upstream, resolves the exposed name to that upstream and
its own name (a `Call`) and hands it to the one call flow, `Pipeline.call` (limit -> decide -> record
intent -> forward -> record outcome). What is method specific stays here: renaming names and URIs
between the tenant's single namespace and each upstream's, merging listings, trying candidate
upstreams in turn, the shape of the answer. The stages themselves live in `gateway.pipeline`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from gateway import naming
from gateway.admin import now_iso
from gateway.errors import UpstreamError
from gateway.jsonrpc import (
    HEADER_MISMATCH,
    INVALID_PARAMS,
    JSON,
    LATEST_LEGACY,
    LEGACY_VERSIONS,
    MODERN_VERSIONS,
    SUBSCRIPTION_ID,
    error,
    notification,
    param_header_mismatch,
    result,
)
from gateway.proxy import ClientSession, UnknownTarget, Upstream, list_all
from gateway.record import with_receipt
from gateway.types import Decision

if TYPE_CHECKING:
    from gateway.pipeline import Pipeline

log = logging.getLogger("aegress.methods")

Send = Callable[[JSON], Awaitable[None]]
"""Where a request's messages go (progress, logs, upstream requests, then its answer)."""
SERVER_INFO = {"name": "aegress", "title": "Aegress MCP gateway", "version": "0.1.0"}
SERVER_INFO_STAMP = {"name": "aegress", "version": "0.1.0"}
POLICY_KIND = {
    "resources/list": "resource", "resources/templates/list": "resource", "resources/read": "resource",
    "resources/subscribe": "resource", "resources/unsubscribe": "resource",
    "prompts/list": "prompt", "prompts/get": "prompt", "completion/complete": "completion",
}
"""Which policy rules a method's targets answer to (tools answer to tool rules)."""
_LISTEN_TIMEOUT_S = 24 * 3600.0


class Ticket:
    """What one JSON-RPC request came to, for `Observer.call_done`: set along the way, read once at the end.
    verdict: allow|review|block|hidden|none; outcome: ok|error|refused|not_forwarded|timeout|cancelled."""

    __slots__ = ("outcome", "verdict")

    def __init__(self) -> None:
        self.verdict = "none"
        self.outcome = "ok"


class Call:
    """One request for one upstream, as its method's handler resolved it; `Pipeline.call` runs it and
    leaves the evidence receipt (the record the answer's `_meta.aegress` names) in `receipt`."""

    __slots__ = (
        "arguments",
        "forwarded",
        "kind",
        "method",
        "name",
        "params",
        "receipt",
        "sealed",
        "started",
        "started_at",
        "target",
        "tool",
        "up",
    )

    def __init__(self, method: str, up: Upstream, params: JSON, target: str, *, tool: JSON | None = None,
                 arguments: Any = None, sealed: bool = True, started: float, started_at: str) -> None:
        self.method = method
        self.kind = "tool" if tool is not None else POLICY_KIND[method]  # which policy rules it answers to
        self.name = "" if tool is not None else target_name(params)  # the upstream's own name of its target
        self.up = up
        self.params = params  # what goes upstream, in the upstream's own names
        self.target = target  # the name or URI as the client sent it (evidence)
        self.tool = tool  # tools/call: the tool's definition (policy matches on it); else None
        self.arguments = arguments
        self.sealed = sealed  # an intent and an outcome record (tools/call, resources/read, prompts/get)
        self.started = started
        self.started_at = started_at
        self.receipt: Any = None
        self.forwarded = False


def target_name(item: JSON) -> str:
    """The upstream's own name of a listed item or a request's target (uri, template, name, or ref)."""
    ref = item.get("ref") if isinstance(item.get("ref"), dict) else {}
    for value in (item.get("uri"), item.get("uriTemplate"), item.get("name"), ref.get("name"), ref.get("uri")):
        if isinstance(value, str):
            return value
    return ""


def upstream_error_kind(exc: BaseException) -> str:
    """Observer.upstream_error's kind for a failed upstream call."""
    code = getattr(exc, "code", "")
    return "timeout" if code == "upstream-timeout" else "unavailable" if code == "upstream-unavailable" else "error"


def _upstream_failed(p: Pipeline, session: ClientSession, up: Upstream, method: str, exc: BaseException) -> None:
    """A fan-out's request failed on one upstream: logged (our error's message, which names no URL or secret;
    else only the exception's type) and reported."""
    log.warning("%s failed on upstream %s: %s", method, up.spec.name, getattr(exc, "message", type(exc).__name__))
    p.observer.upstream_error(up.spec.name, upstream_error_kind(exc), session.identity.tenant_id)


def _either(first: asyncio.Future[Any], second: asyncio.Future[Any]) -> asyncio.Future[Any]:
    """A future done as soon as either is (the other is left running)."""
    return asyncio.ensure_future(asyncio.wait({first, second}, return_when=asyncio.FIRST_COMPLETED))


# -- answered by the gateway ------------------------------------------------------------------------
async def ping(p: Pipeline, session: ClientSession, msg: JSON, send: Send, ticket: Ticket) -> JSON:
    return result(msg["id"], {})


def merge_capabilities(upstream_caps: list[JSON]) -> JSON:
    """Pure: advertise only what some upstream supports (a sub-flag is on if any upstream has it)."""
    merged: JSON = {"tools": {}}
    for caps in upstream_caps:
        for key in ("tools", "resources", "prompts", "completions", "logging"):
            value = caps.get(key)
            if isinstance(value, dict):
                target = merged.setdefault(key, {})
                for flag, on in value.items():
                    if on is True:
                        target[flag] = True
    return merged


def negotiate(requested: Any) -> str:
    """Pure: the handshake-era revision a session speaks, given the one its client asked for."""
    return requested if requested in LEGACY_VERSIONS else LATEST_LEGACY


async def initialize_result(session: ClientSession) -> JSON:
    """What `initialize` (and, in part, `server/discover`) answers: the tenant's upstreams as one server."""
    ups = await session.upstreams()
    caps = merge_capabilities([u.conn.capabilities for u in ups])
    out: JSON = {"protocolVersion": session.version, "capabilities": caps, "serverInfo": SERVER_INFO}
    instructions = [
        (u.spec.name, u.conn.init_result.get("instructions"))
        for u in ups
        if isinstance(u.conn.init_result.get("instructions"), str)
    ]
    if len(instructions) == 1 and len(ups) == 1:
        out["instructions"] = instructions[0][1]
    elif instructions:
        out["instructions"] = "\n\n".join(f"[{n}] {text}" for n, text in instructions)
    return out


async def discover(p: Pipeline, session: ClientSession, msg: JSON, send: Send, ticket: Ticket) -> JSON:
    """2026-07-28's replacement for initialize: what this tenant's gateway offers, per request."""
    init = await initialize_result(session)
    out: JSON = {"supportedVersions": list(MODERN_VERSIONS), "capabilities": init["capabilities"]}
    if "instructions" in init:
        out["instructions"] = init["instructions"]
    return result(msg["id"], out)


# -- tools ------------------------------------------------------------------------------------------
async def _tools(session: ClientSession, up: Upstream, *, refresh: bool = False) -> dict[str, JSON]:
    if up.tools is None or refresh:
        if "tools" not in up.conn.capabilities:
            up.tools = {}
        else:
            items = await list_all(up, "tools/list", "tools", meta=session.meta_for(up))
            up.tools = {t["name"]: t for t in items if isinstance(t.get("name"), str)}
    return up.tools


async def list_tools(p: Pipeline, session: ClientSession, msg: JSON, send: Send, ticket: Ticket) -> JSON:
    await p.refresh_policies()
    ups = await session.upstreams()
    lists = await asyncio.gather(*(_tools(session, u, refresh=True) for u in ups), return_exceptions=True)
    seen: set[str] = set()
    tools: list[JSON] = []
    for up, listed in zip(ups, lists, strict=True):
        if isinstance(listed, BaseException):
            _upstream_failed(p, session, up, "tools/list", listed)
            continue
        await asyncio.to_thread(p.decider.observe_tools, session.identity.tenant_id, up.spec.name, listed, now_iso())
        for name, tool in listed.items():
            exposed = naming.prefixed(up.spec.name, name) if up.spec.prefix else name
            if exposed in seen or not p.decider.visible(session.identity, up.spec.name, tool):
                continue
            seen.add(exposed)
            tools.append({**tool, "name": exposed})
    return result(msg["id"], {"tools": tools})


async def resolve_tool(p: Pipeline, session: ClientSession, name: str) -> tuple[Upstream, JSON]:
    """Exposed name -> (upstream, tool definition); hidden and unknown answer alike."""
    rt = await session.tenant_runtime()
    split = naming.split_prefixed(name)
    if split and split[0] in rt.specs and rt.specs[split[0]].prefix:
        candidates = [split]
    else:
        candidates = [(n, name) for n in sorted(rt.specs) if not rt.specs[n].prefix]
    for upstream_name, tool_name in candidates:
        try:
            up = await session.upstream(upstream_name)
        except UpstreamError:
            if len(candidates) == 1:
                raise
            continue
        tools = await _tools(session, up)
        tool = tools.get(tool_name)
        if tool is None:
            tools = await _tools(session, up, refresh=True)
            tool = tools.get(tool_name)
            await asyncio.to_thread(p.decider.observe_tools, session.identity.tenant_id, upstream_name, tools,
                                    now_iso())
        if tool is not None and p.decider.visible(session.identity, upstream_name, tool):
            return up, tool
    raise UnknownTarget("tool", name)


async def call_tool(p: Pipeline, session: ClientSession, msg: JSON, send: Send, ticket: Ticket) -> JSON:
    started, started_at = time.perf_counter(), now_iso("milliseconds")
    params = msg.get("params") or {}
    name = params.get("name")
    arguments = params.get("arguments")
    if not isinstance(name, str) or (arguments is not None and not isinstance(arguments, dict)):
        return error(msg["id"], INVALID_PARAMS, "tools/call needs a string name and object arguments.")
    try:
        up, tool = await resolve_tool(p, session, name)
    except UnknownTarget:
        ticket.verdict, ticket.outcome = "hidden", "refused"
        p.record_refusal(session, "tools/call", name, "", Decision("block", "unknown-tool"), "refused", started_at,
                         arguments=arguments)
        raise
    if session.modern:  # Mcp-Param-* headers must mirror the arguments (2026-07-28); only declared ones go on
        mismatch, session.param_headers = param_header_mismatch(tool.get("inputSchema"), arguments or {},
                                                                session.param_headers)
        if mismatch is not None:
            ticket.verdict, ticket.outcome = "block", "refused"
            p.record_refusal(session, "tools/call", name, up.spec.name, Decision("block", "header-mismatch"),
                             "refused", started_at, arguments=arguments, tool=tool)
            return error(msg["id"], HEADER_MISMATCH, mismatch)
    call = Call("tools/call", up, {**params, "name": tool["name"]}, name, tool=tool, arguments=arguments,
                started=started, started_at=started_at)
    answer = await p.call(session, msg, send, call, ticket)
    if not call.forwarded:  # refused: over budget, blocked, or not released by review
        assert answer is not None
        return answer
    assert answer is not None
    out = {"jsonrpc": "2.0", "id": msg["id"], **{k: answer[k] for k in ("result", "error") if k in answer}}
    if "error" in out:
        out["error"] = up.client_error("tools/call", out["error"])
    if "result" in out:
        out["result"] = with_receipt(out["result"], call.receipt)
    return out


# -- resources, prompts, completion -----------------------------------------------------------------
async def _aggregate(p: Pipeline, session: ClientSession, msg: JSON, cap: str, method: str, key: str,
                     rename: Callable[[Upstream, JSON], JSON]) -> JSON:
    ups = [u for u in await session.upstreams() if cap in u.conn.capabilities]
    lists = await asyncio.gather(*(list_all(u, method, key, meta=session.meta_for(u)) for u in ups),
                                 return_exceptions=True)
    items: list[JSON] = []
    for up, listed in zip(ups, lists, strict=True):
        if isinstance(listed, BaseException):
            _upstream_failed(p, session, up, method, listed)
            continue
        kind = POLICY_KIND[method]
        items.extend(
            rename(up, item) for item in listed
            if p.decider.visible_other(session.identity, kind, up.spec.name, target_name(item))
        )
    return result(msg["id"], {key: items})


def _rename_uri(field: str) -> Callable[[Upstream, JSON], JSON]:
    def rename(up: Upstream, item: JSON) -> JSON:
        if up.spec.prefix and isinstance(item.get(field), str):
            return {**item, field: naming.prefixed_uri(up.spec.name, item[field])}
        return item

    return rename


def _rename_name(up: Upstream, item: JSON) -> JSON:
    if up.spec.prefix and isinstance(item.get("name"), str):
        return {**item, "name": naming.prefixed(up.spec.name, item["name"])}
    return item


async def list_resources(p: Pipeline, session: ClientSession, msg: JSON, send: Send, ticket: Ticket) -> JSON:
    return await _aggregate(p, session, msg, "resources", "resources/list", "resources", _rename_uri("uri"))


async def list_templates(p: Pipeline, session: ClientSession, msg: JSON, send: Send, ticket: Ticket) -> JSON:
    return await _aggregate(p, session, msg, "resources", "resources/templates/list", "resourceTemplates",
                            _rename_uri("uriTemplate"))


async def list_prompts(p: Pipeline, session: ClientSession, msg: JSON, send: Send, ticket: Ticket) -> JSON:
    return await _aggregate(p, session, msg, "prompts", "prompts/list", "prompts", _rename_name)


async def _routes(session: ClientSession, exposed: str, cap: str) -> list[tuple[Upstream, str]]:
    """Exposed name or URI -> (upstream, its own name) candidates: the prefixed upstream it names, else
    every unprefixed upstream offering `cap`."""
    rt = await session.tenant_runtime()
    split = naming.split_prefixed_uri(exposed) if cap == "resources" else naming.split_prefixed(exposed)
    if split and split[0] in rt.specs and rt.specs[split[0]].prefix:
        return [(await session.upstream(split[0]), split[1])]
    out = []
    for name in sorted(rt.specs):
        if not rt.specs[name].prefix:
            try:
                up = await session.upstream(name)
            except UpstreamError:
                continue
            if cap in up.conn.capabilities:
                out.append((up, exposed))
    return out


async def _first_success(
    p: Pipeline, session: ClientSession, msg: JSON, send: Send, ticket: Ticket, method: str,
    routes: list[tuple[Upstream, JSON]], kind: str, label: str,
    fix: Callable[[Upstream, JSON], JSON] | None = None,
) -> JSON:
    """Each candidate upstream in turn through the call flow, until one answers with a result. What policy
    does not allow answers exactly like what does not exist."""
    started, started_at = time.perf_counter(), now_iso("milliseconds")
    sealed = method in ("resources/read", "prompts/get")
    last: tuple[Upstream, JSON] | None = None
    allowed = 0
    for up, params in routes:
        call = Call(method, up, params, label, arguments=params.get("arguments") if method == "prompts/get" else None,
                    sealed=sealed, started=started, started_at=started_at)
        response = await p.call(session, msg, send, call, ticket)
        if response is None:  # not allowed here
            continue
        allowed += 1
        if "result" in response:
            res = response["result"]
            return result(msg["id"], with_receipt(fix(up, res) if fix else res, call.receipt))
        last = (up, response)
    if last is None or allowed > 1:
        raise UnknownTarget(kind, label)
    return {"jsonrpc": "2.0", "id": msg["id"], "error": last[0].client_error(method, last[1].get("error"))}


async def read_resource(p: Pipeline, session: ClientSession, msg: JSON, send: Send, ticket: Ticket) -> JSON:
    params = msg.get("params") or {}
    uri = params.get("uri")
    if not isinstance(uri, str):
        return error(msg["id"], INVALID_PARAMS, "resources/read needs a string uri.")
    routes = [(up, {**params, "uri": inner}) for up, inner in await _routes(session, uri, "resources")]

    def fix(up: Upstream, res: JSON) -> JSON:
        contents = res.get("contents")
        if up.spec.prefix and isinstance(contents, list):
            rename = _rename_uri("uri")
            return {**res, "contents": [rename(up, c) if isinstance(c, dict) else c for c in contents]}
        return res

    return await _first_success(p, session, msg, send, ticket, "resources/read", routes, "resource", uri, fix)


async def subscribe(p: Pipeline, session: ClientSession, msg: JSON, send: Send, ticket: Ticket) -> JSON:
    """resources/subscribe and resources/unsubscribe."""
    params = msg.get("params") or {}
    uri = params.get("uri")
    if not isinstance(uri, str):
        return error(msg["id"], INVALID_PARAMS, f"{msg['method']} needs a string uri.")
    routes = [(up, {**params, "uri": inner}) for up, inner in await _routes(session, uri, "resources")]
    for up, _ in routes:
        listen = getattr(up.conn, "listen", None)
        if listen is not None:
            await listen()
    response = await _first_success(p, session, msg, send, ticket, msg["method"], routes, "resource", uri)
    if "result" in response:
        if msg["method"] == "resources/subscribe":
            session.subscriptions.add(uri)
        else:
            session.subscriptions.discard(uri)
            await p.tell_replicas(session, "unsubscribe", uri=uri)  # another may hold the subscription
    return response


async def get_prompt(p: Pipeline, session: ClientSession, msg: JSON, send: Send, ticket: Ticket) -> JSON:
    params = msg.get("params") or {}
    name = params.get("name")
    if not isinstance(name, str):
        return error(msg["id"], INVALID_PARAMS, "prompts/get needs a string name.")
    routes = [(up, {**params, "name": inner}) for up, inner in await _routes(session, name, "prompts")]
    return await _first_success(p, session, msg, send, ticket, "prompts/get", routes, "prompt", name)


async def complete(p: Pipeline, session: ClientSession, msg: JSON, send: Send, ticket: Ticket) -> JSON:
    params = msg.get("params") or {}
    ref = params.get("ref")
    if not isinstance(ref, dict):
        return error(msg["id"], INVALID_PARAMS, "completion/complete needs a ref.")
    if ref.get("type") == "ref/prompt" and isinstance(ref.get("name"), str):
        found = await _routes(session, ref["name"], "prompts")
        routes = [(up, {**params, "ref": {**ref, "name": inner}}) for up, inner in found]
        label, kind = ref["name"], "prompt"
    elif ref.get("type") == "ref/resource" and isinstance(ref.get("uri"), str):
        found = await _routes(session, ref["uri"], "resources")
        routes = [(up, {**params, "ref": {**ref, "uri": inner}}) for up, inner in found]
        label, kind = ref["uri"], "resource"
    else:
        return error(msg["id"], INVALID_PARAMS, "Unknown completion ref type.")
    routes = [(u, q) for u, q in routes if "completions" in u.conn.capabilities]
    return await _first_success(p, session, msg, send, ticket, "completion/complete", routes, kind, label)


# -- logging and subscriptions ----------------------------------------------------------------------
async def set_level(p: Pipeline, session: ClientSession, msg: JSON, send: Send, ticket: Ticket) -> JSON:
    params = msg.get("params") or {}
    level = params.get("level")
    if not isinstance(level, str):
        return error(msg["id"], INVALID_PARAMS, "logging/setLevel needs a level.")
    ups = [u for u in await session.upstreams() if "logging" in u.conn.capabilities]
    responses = await asyncio.gather(
        *(u.conn.request("logging/setLevel", params) for u in ups), return_exceptions=True
    )
    for up, r in zip(ups, responses, strict=True):
        if isinstance(r, Exception):  # unreachable or failed: the level holds on the others
            _upstream_failed(p, session, up, "logging/setLevel", r)
        elif isinstance(r, dict) and "error" in r:
            return {"jsonrpc": "2.0", "id": msg["id"], "error": up.client_error("logging/setLevel", r["error"])}
    session.log_level = level
    await p.tell_replicas(session, "level", level=level)
    return result(msg["id"], {})


async def listen(p: Pipeline, session: ClientSession, msg: JSON, send: Send, ticket: Ticket) -> JSON:
    """2026-07-28 `subscriptions/listen`: one long-lived stream per request, fed by the same request
    to every upstream that speaks the revision; the ack (first) names what is actually honoured."""
    params = msg.get("params") or {}
    wanted = params.get("notifications") if isinstance(params.get("notifications"), dict) else {}
    tag = {SUBSCRIPTION_ID: msg["id"]}
    rt = await session.tenant_runtime()
    ups = [u for u in await session.upstreams() if u.conn.modern]
    acked = False
    early: list[JSON] = []

    async def emit(m: JSON) -> None:
        if acked:
            await send(m)
        else:
            early.append(m)

    streams: list[asyncio.Future[JSON]] = []
    acks: list[tuple[Upstream, asyncio.Future[JSON]]] = []
    loop = asyncio.get_running_loop()
    for up in ups:
        flt = {k: True for k in ("toolsListChanged", "promptsListChanged", "resourcesListChanged") if wanted.get(k)}
        uris = []
        for uri in wanted.get("resourceSubscriptions") or []:
            split = naming.split_prefixed_uri(uri) if isinstance(uri, str) else None
            if up.spec.prefix and split and split[0] == up.spec.name:
                uris.append(split[1])
            elif not up.spec.prefix and isinstance(uri, str) and not (split and split[0] in rt.specs):
                uris.append(uri)
        if uris:
            flt["resourceSubscriptions"] = uris
        if not flt:
            continue
        ack: asyncio.Future[JSON] = loop.create_future()

        async def sink(m: JSON, up: Upstream = up, ack: asyncio.Future[JSON] = ack) -> None:
            method = m.get("method", "")
            if method == "notifications/subscriptions/acknowledged":
                if not ack.done():
                    ack.set_result((m.get("params") or {}).get("notifications") or {})
                return
            if "id" in m:
                return
            if method == "notifications/tools/list_changed":
                up.tools = None
            out = session.rename_outbound(up, m)
            q = dict(out.get("params") or {})
            q["_meta"] = {**(q.get("_meta") or {}), **tag}
            await emit({**out, "params": q})

        streams.append(asyncio.ensure_future(up.conn.request(
            "subscriptions/listen", {"notifications": flt}, meta=session.meta_for(up), sink=sink,
            timeout=_LISTEN_TIMEOUT_S)))
        acks.append((up, ack))
    honored: JSON = {}
    try:
        if acks:  # an upstream whose listen ended (an error, say) acknowledges nothing: stop waiting for it
            await asyncio.wait([_either(a, s) for (_, a), s in zip(acks, streams, strict=True)], timeout=10)
        for up, ack in acks:
            got = ack.result() if ack.done() else {}
            for key in ("toolsListChanged", "promptsListChanged", "resourcesListChanged"):
                if got.get(key):
                    honored[key] = True
            for uri in got.get("resourceSubscriptions") or []:
                exposed = naming.prefixed_uri(up.spec.name, uri) if up.spec.prefix else uri
                honored.setdefault("resourceSubscriptions", []).append(exposed)
        await send(notification("notifications/subscriptions/acknowledged",
                                {"notifications": honored, "_meta": tag}))
        acked = True
        for m in early:
            await send(m)
        if streams:
            ended = await asyncio.gather(*streams, return_exceptions=True)
            for (up, _), r in zip(acks, ended, strict=True):
                if isinstance(r, Exception):
                    _upstream_failed(p, session, up, "subscriptions/listen", r)
        else:
            await asyncio.Event().wait()  # nothing upstream to relay: hold the stream until the client leaves
    finally:
        for f in streams:
            f.cancel()
    return result(msg["id"], {"_meta": tag})


# -- from the client or another replica: no answer ---------------------------------------------------
async def apply_log_level(session: ClientSession, level: str) -> None:
    """Another replica set this session's log level: pass it to the upstream connections the session
    uses here (connecting none), so its log messages outside a call follow it on this replica too."""
    session.log_level = level
    if session.tenant is None:
        return
    ups = [u for u in session.tenant._live.values() if session in u.listeners and "logging" in u.conn.capabilities]
    failures = await asyncio.gather(*(u.conn.request("logging/setLevel", {"level": level}) for u in ups),
                                    return_exceptions=True)
    for up, failure in zip(ups, failures, strict=True):
        if isinstance(failure, Exception):
            log.warning("logging/setLevel (from another replica) failed on upstream %s: %s", up.spec.name,
                        getattr(failure, "message", type(failure).__name__))


async def client_notification(session: ClientSession, msg: JSON) -> None:
    """A notification from the client (or relayed by another replica holding its session)."""
    method = msg["method"]
    params = msg.get("params") or {}
    if method == "notifications/cancelled":
        stream = session.requests.get(repr(params.get("requestId")))
        if stream is not None:  # stop the call here; `Pipeline.forward` tells the upstream
            stream.cancel("cancelled")
    elif method == "notifications/roots/list_changed" and session.tenant is not None:
        for up in list(session.tenant._live.values()):
            if session in up.listeners:
                await up.conn.notify_quiet(method, params or None)


Handler = Callable[["Pipeline", ClientSession, JSON, Send, Ticket], Awaitable[JSON]]
HANDLERS: dict[str, Handler] = {
    "ping": ping,
    "server/discover": discover,
    "subscriptions/listen": listen,
    "tools/list": list_tools,
    "tools/call": call_tool,
    "resources/list": list_resources,
    "resources/templates/list": list_templates,
    "resources/read": read_resource,
    "resources/subscribe": subscribe,
    "resources/unsubscribe": subscribe,
    "prompts/list": list_prompts,
    "prompts/get": get_prompt,
    "completion/complete": complete,
    "logging/setLevel": set_level,
}
"""MCP method -> handler; `Pipeline.dispatch` answers any other method with -32601."""
