"""The request pipeline, in one place: authenticate -> bind -> decide -> forward -> record.

    HTTP edge (transport.py): Host/Origin, method, size, content type, protocol revision, session
      │
      ├─ authenticate   bearer token -> Identity (tenant, actor, token id)     401 on failure
      ├─ bind           headers / query claims checked against the Identity   403, nothing forwarded
      ├─ decide         the policy seam: visible? allow / review / block       (gateway.decide)
      ├─ forward        route by namespaced name to the tenant's upstream      (gateway.proxy)
      └─ record         one record per call, refusals included                 (gateway.record)

Authentication and binding run before the body is interpreted; decide, forward and record run per
JSON-RPC request in `Pipeline.dispatch`. Each stage is a method here so the order is readable in one
screen; the decisions they call (binding, naming, policy) are pure functions elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, ClassVar

from gateway import binding, naming
from gateway.decide import AllowAll, Decider
from gateway.errors import AegressError, AuthError, ProtocolError, UpstreamError
from gateway.jsonrpc import (
    INVALID_PARAMS,
    JSON,
    LATEST_LEGACY,
    LEGACY_VERSIONS,
    METHOD_NOT_FOUND,
    MODERN_VERSIONS,
    REMOVED_IN_MODERN,
    decorate_modern_result,
    error,
    error_from,
    result,
)
from gateway.proxy import ClientSession, Runtime, UnknownTarget, Upstream, list_all
from gateway.record import Recorder
from gateway.secrets import derive_key, token_hash
from gateway.store.base import Store
from gateway.types import CallRecord, Decision, Identity

log = logging.getLogger("aegress.pipeline")

Send = Callable[[JSON], Awaitable[None]]
SERVER_INFO = {"name": "aegress", "title": "Aegress MCP gateway", "version": "0.1.0"}
SERVER_INFO_STAMP = {"name": "aegress", "version": "0.1.0"}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


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


class Pipeline:
    def __init__(
        self,
        store: Store,
        master_key: bytes,
        runtime: Runtime,
        recorder: Recorder,
        decider: Decider | None = None,
    ) -> None:
        self.store = store
        self.runtime = runtime
        self.recorder = recorder
        self.decider: Decider = decider or AllowAll()
        self._token_key = derive_key(master_key, "token-hash")

    # -- stage 1: authenticate -----------------------------------------------------------------
    def authenticate(self, authorization: str | None) -> Identity:
        if not authorization:
            raise AuthError("Missing bearer token.", hint="Send Authorization: Bearer <token>.")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError("Malformed Authorization header.", hint="Send Authorization: Bearer <token>.")
        info = self.store.find_token(token_hash(self._token_key, token))
        if info is None or not info.active:
            raise AuthError(
                "The bearer token is invalid or revoked.",
                hint="Issue a new one with `aegress token issue`.",
                code="invalid-token",
            )
        return Identity(info.tenant_id, info.actor_id, info.id)

    # -- stage 2: bind -------------------------------------------------------------------------
    def bind(self, identity: Identity, claims: binding.Claims) -> Identity:
        return binding.bind(identity, claims)

    # -- stage 3: decide -----------------------------------------------------------------------
    def decide(self, session: ClientSession, up: Upstream, tool: JSON, arguments: JSON) -> Decision:
        return self.decider.decide(session.identity, up.spec.name, tool, arguments)

    # -- stage 5: record -----------------------------------------------------------------------
    def record(
        self,
        session: ClientSession,
        method: str,
        target: str,
        upstream: str,
        decision: Decision | None,
        outcome: str,
        started: float,
        started_at: str,
        error_code: int | None = None,
    ) -> None:
        self.recorder.record(
            CallRecord(
                tenant_id=session.identity.tenant_id,
                actor_id=session.identity.actor_id,
                token_id=session.identity.token_id,
                method=method,
                target=target,
                upstream=upstream,
                verdict=decision.verdict if decision else "",
                rule_id=decision.rule_id if decision else "",
                outcome=outcome,
                started_at=started_at,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
                error_code=error_code,
                session_id=session.id,
                client_name=str(session.client_info.get("name", ""))[:100],
            )
        )

    # -- sessions ------------------------------------------------------------------------------
    @staticmethod
    def negotiate(requested: Any) -> str:
        return requested if requested in LEGACY_VERSIONS else LATEST_LEGACY

    async def initialize_result(self, session: ClientSession) -> JSON:
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

    # -- dispatch: decide + forward + record for one JSON-RPC request ----------------------------
    async def dispatch(self, session: ClientSession, msg: JSON, send: Send) -> JSON:
        method = msg["method"]
        handler = self._handlers.get(method)
        if (session.modern and method in REMOVED_IN_MODERN) or (not session.modern and method == "server/discover"):
            handler = None
        if handler is None:
            return error(msg["id"], METHOD_NOT_FOUND, f"Method not found: {method}", method if session.modern else None)
        try:
            response = await handler(self, session, msg, send)
        except UnknownTarget as exc:
            response = error(msg["id"], exc.jsonrpc_code, exc.message)
        except AegressError as exc:
            response = error_from(msg["id"], exc)
        if session.modern and isinstance(response.get("result"), dict):
            response = {**response, "result": decorate_modern_result(method, response["result"], SERVER_INFO_STAMP)}
        return response

    async def _discover(self, session: ClientSession, msg: JSON, send: Send) -> JSON:
        """2026-07-28's replacement for initialize: what this tenant's gateway offers, per request."""
        init = await self.initialize_result(session)
        out: JSON = {"supportedVersions": list(MODERN_VERSIONS), "capabilities": init["capabilities"]}
        if "instructions" in init:
            out["instructions"] = init["instructions"]
        return result(msg["id"], out)

    async def _ping(self, session: ClientSession, msg: JSON, send: Send) -> JSON:
        return result(msg["id"], {})

    async def _tools(self, session: ClientSession, up: Upstream, *, refresh: bool = False) -> dict[str, JSON]:
        if up.tools is None or refresh:
            if "tools" not in up.conn.capabilities:
                up.tools = {}
            else:
                items = await list_all(up, "tools/list", "tools", meta=session.meta_for(up))
                up.tools = {t["name"]: t for t in items if isinstance(t.get("name"), str)}
        return up.tools

    async def _list_tools(self, session: ClientSession, msg: JSON, send: Send) -> JSON:
        ups = await session.upstreams()
        lists = await asyncio.gather(*(self._tools(session, u, refresh=True) for u in ups), return_exceptions=True)
        seen: set[str] = set()
        tools: list[JSON] = []
        for up, listed in zip(ups, lists, strict=True):
            if isinstance(listed, BaseException):
                log.warning("tools/list failed on upstream %s: %s", up.spec.name, listed)
                continue
            for name, tool in listed.items():
                exposed = naming.prefixed(up.spec.name, name) if up.spec.prefix else name
                if exposed in seen or not self.decider.visible(session.identity, up.spec.name, tool):
                    continue
                seen.add(exposed)
                tools.append({**tool, "name": exposed})
        return result(msg["id"], {"tools": tools})

    async def resolve_tool(self, session: ClientSession, name: str) -> tuple[Upstream, JSON]:
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
            tools = await self._tools(session, up)
            tool = tools.get(tool_name)
            if tool is None:
                tools = await self._tools(session, up, refresh=True)
                tool = tools.get(tool_name)
            if tool is not None and self.decider.visible(session.identity, upstream_name, tool):
                return up, tool
        raise UnknownTarget("tool", name)

    async def _call_tool(self, session: ClientSession, msg: JSON, send: Send) -> JSON:
        started, started_at = time.perf_counter(), _now()
        params = msg.get("params") or {}
        name = params.get("name")
        arguments = params.get("arguments")
        if not isinstance(name, str) or (arguments is not None and not isinstance(arguments, dict)):
            return error(msg["id"], INVALID_PARAMS, "tools/call needs a string name and object arguments.")
        try:
            up, tool = await self.resolve_tool(session, name)
        except UnknownTarget:
            self.record(session, "tools/call", name, "", Decision("block", "unknown-tool"), "refused",
                        started, started_at, INVALID_PARAMS)
            raise
        decision = self.decide(session, up, tool, arguments or {})
        if decision.verdict != "allow":
            self.record(session, "tools/call", name, up.spec.name, decision, "refused", started, started_at)
            reason = decision.reason or "Policy does not allow this call."
            return result(
                msg["id"],
                {"content": [{"type": "text", "text": f"Blocked by policy rule {decision.rule_id}: {reason}"}],
                 "isError": True},
            )
        forwarded = {**params, "name": tool["name"]}
        outcome, code = "completed", None
        try:
            response = await self.forward(session, up, "tools/call", forwarded, msg, send)
            if "error" in response:
                outcome, code = "failed", response["error"].get("code")
            elif (response.get("result") or {}).get("isError"):
                outcome = "tool_error"
            return {"jsonrpc": "2.0", "id": msg["id"], **{k: response[k] for k in ("result", "error") if k in response}}
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except UpstreamError as exc:
            outcome = "timeout" if exc.code == "upstream-timeout" else "failed"
            raise
        finally:
            self.record(session, "tools/call", name, up.spec.name, decision, outcome, started, started_at, code)

    # -- stage 4: forward ----------------------------------------------------------------------
    async def forward(
        self, session: ClientSession, up: Upstream, method: str, params: JSON, msg: JSON, send: Send
    ) -> JSON:
        """Send one request upstream under a fresh id; remap progress; cancel upstream if abandoned."""
        meta = params.get("_meta")
        client_token = meta.get("progressToken") if isinstance(meta, dict) else None
        if client_token is not None:
            meta = {k: v for k, v in meta.items() if k != "progressToken"}
            params = {**params, "_meta": meta} if meta else {k: v for k, v in params.items() if k != "_meta"}
        key = repr(msg["id"])
        upstream_id: list[int] = []

        def sent(uid: int) -> None:
            upstream_id.append(uid)
            session.inflight[key] = (up, uid)

        try:
            return await up.conn.request(
                method,
                params,
                meta=session.meta_for(up),
                sink=session.sink_for(up, send, client_token),
                progress_token=client_token,
                on_sent=sent,
            )
        except asyncio.CancelledError:
            if upstream_id:
                await up.conn.notify_quiet(
                    "notifications/cancelled", {"requestId": upstream_id[0], "reason": "client went away"}
                )
            raise
        finally:
            session.inflight.pop(key, None)

    # -- resources, prompts, completion ----------------------------------------------------------
    async def _aggregate(self, session: ClientSession, msg: JSON, cap: str, method: str, key: str,
                         rename: Callable[[Upstream, JSON], JSON]) -> JSON:
        ups = [u for u in await session.upstreams() if cap in u.conn.capabilities]
        lists = await asyncio.gather(*(list_all(u, method, key, meta=session.meta_for(u)) for u in ups),
                                     return_exceptions=True)
        items: list[JSON] = []
        for up, listed in zip(ups, lists, strict=True):
            if isinstance(listed, BaseException):
                log.warning("%s failed on upstream %s: %s", method, up.spec.name, listed)
                continue
            items.extend(rename(up, item) for item in listed)
        return result(msg["id"], {key: items})

    @staticmethod
    def _rename_uri(field: str) -> Callable[[Upstream, JSON], JSON]:
        def rename(up: Upstream, item: JSON) -> JSON:
            if up.spec.prefix and isinstance(item.get(field), str):
                return {**item, field: naming.prefixed_uri(up.spec.name, item[field])}
            return item

        return rename

    @staticmethod
    def _rename_name(up: Upstream, item: JSON) -> JSON:
        if up.spec.prefix and isinstance(item.get("name"), str):
            return {**item, "name": naming.prefixed(up.spec.name, item["name"])}
        return item

    async def _list_resources(self, session: ClientSession, msg: JSON, send: Send) -> JSON:
        return await self._aggregate(session, msg, "resources", "resources/list", "resources", self._rename_uri("uri"))

    async def _list_templates(self, session: ClientSession, msg: JSON, send: Send) -> JSON:
        return await self._aggregate(
            session, msg, "resources", "resources/templates/list", "resourceTemplates", self._rename_uri("uriTemplate")
        )

    async def _list_prompts(self, session: ClientSession, msg: JSON, send: Send) -> JSON:
        return await self._aggregate(session, msg, "prompts", "prompts/list", "prompts", self._rename_name)

    async def _route_uri(self, session: ClientSession, uri: str) -> list[tuple[Upstream, str]]:
        rt = await session.tenant_runtime()
        split = naming.split_prefixed_uri(uri)
        if split and split[0] in rt.specs and rt.specs[split[0]].prefix:
            return [(await session.upstream(split[0]), split[1])]
        out = []
        for name in sorted(rt.specs):
            if not rt.specs[name].prefix:
                try:
                    up = await session.upstream(name)
                except UpstreamError:
                    continue
                if "resources" in up.conn.capabilities:
                    out.append((up, uri))
        return out

    async def _route_name(self, session: ClientSession, name: str, cap: str) -> list[tuple[Upstream, str]]:
        rt = await session.tenant_runtime()
        split = naming.split_prefixed(name)
        if split and split[0] in rt.specs and rt.specs[split[0]].prefix:
            return [(await session.upstream(split[0]), split[1])]
        out = []
        for n in sorted(rt.specs):
            if not rt.specs[n].prefix:
                try:
                    up = await session.upstream(n)
                except UpstreamError:
                    continue
                if cap in up.conn.capabilities:
                    out.append((up, name))
        return out

    async def _first_success(
        self, session: ClientSession, msg: JSON, send: Send, method: str,
        routes: list[tuple[Upstream, JSON]], kind: str, label: str,
        fix: Callable[[Upstream, JSON], JSON] | None = None,
    ) -> JSON:
        started, started_at = time.perf_counter(), _now()
        last: JSON | None = None
        for up, params in routes:
            response = await self.forward(session, up, method, params, msg, send)
            if "result" in response:
                self.record(session, method, label, up.spec.name, None, "completed", started, started_at)
                res = response["result"]
                return result(msg["id"], fix(up, res) if fix else res)
            last = response
        if last is None or len(routes) > 1:
            raise UnknownTarget(kind, label)
        self.record(session, method, label, routes[0][0].spec.name, None, "failed", started, started_at,
                    last["error"].get("code"))
        return {"jsonrpc": "2.0", "id": msg["id"], "error": last["error"]}

    async def _read_resource(self, session: ClientSession, msg: JSON, send: Send) -> JSON:
        params = msg.get("params") or {}
        uri = params.get("uri")
        if not isinstance(uri, str):
            return error(msg["id"], INVALID_PARAMS, "resources/read needs a string uri.")
        routes = [(up, {**params, "uri": inner}) for up, inner in await self._route_uri(session, uri)]

        def fix(up: Upstream, res: JSON) -> JSON:
            contents = res.get("contents")
            if up.spec.prefix and isinstance(contents, list):
                rename = self._rename_uri("uri")
                return {**res, "contents": [rename(up, c) if isinstance(c, dict) else c for c in contents]}
            return res

        return await self._first_success(session, msg, send, "resources/read", routes, "resource", uri, fix)

    async def _subscribe(self, session: ClientSession, msg: JSON, send: Send) -> JSON:
        params = msg.get("params") or {}
        uri = params.get("uri")
        if not isinstance(uri, str):
            return error(msg["id"], INVALID_PARAMS, f"{msg['method']} needs a string uri.")
        routes = [(up, {**params, "uri": inner}) for up, inner in await self._route_uri(session, uri)]
        for up, _ in routes:
            listen = getattr(up.conn, "listen", None)
            if listen is not None:
                await listen()
        response = await self._first_success(session, msg, send, msg["method"], routes, "resource", uri)
        if "result" in response:
            if msg["method"] == "resources/subscribe":
                session.subscriptions.add(uri)
            else:
                session.subscriptions.discard(uri)
        return response

    async def _get_prompt(self, session: ClientSession, msg: JSON, send: Send) -> JSON:
        params = msg.get("params") or {}
        name = params.get("name")
        if not isinstance(name, str):
            return error(msg["id"], INVALID_PARAMS, "prompts/get needs a string name.")
        routes = [(up, {**params, "name": inner}) for up, inner in await self._route_name(session, name, "prompts")]
        return await self._first_success(session, msg, send, "prompts/get", routes, "prompt", name)

    async def _complete(self, session: ClientSession, msg: JSON, send: Send) -> JSON:
        params = msg.get("params") or {}
        ref = params.get("ref")
        if not isinstance(ref, dict):
            return error(msg["id"], INVALID_PARAMS, "completion/complete needs a ref.")
        if ref.get("type") == "ref/prompt" and isinstance(ref.get("name"), str):
            found = await self._route_name(session, ref["name"], "prompts")
            routes = [(up, {**params, "ref": {**ref, "name": inner}}) for up, inner in found]
            label, kind = ref["name"], "prompt"
        elif ref.get("type") == "ref/resource" and isinstance(ref.get("uri"), str):
            found = await self._route_uri(session, ref["uri"])
            routes = [(up, {**params, "ref": {**ref, "uri": inner}}) for up, inner in found]
            label, kind = ref["uri"], "resource"
        else:
            return error(msg["id"], INVALID_PARAMS, "Unknown completion ref type.")
        routes = [(u, p) for u, p in routes if "completions" in u.conn.capabilities]
        return await self._first_success(session, msg, send, "completion/complete", routes, kind, label)

    async def _set_level(self, session: ClientSession, msg: JSON, send: Send) -> JSON:
        params = msg.get("params") or {}
        level = params.get("level")
        if not isinstance(level, str):
            return error(msg["id"], INVALID_PARAMS, "logging/setLevel needs a level.")
        ups = [u for u in await session.upstreams() if "logging" in u.conn.capabilities]
        responses = await asyncio.gather(
            *(u.conn.request("logging/setLevel", params) for u in ups), return_exceptions=True
        )
        for r in responses:
            if isinstance(r, dict) and "error" in r:
                return {"jsonrpc": "2.0", "id": msg["id"], "error": r["error"]}
        session.log_level = level
        return result(msg["id"], {})

    _handlers: ClassVar[dict[str, Callable[[Pipeline, ClientSession, JSON, Send], Awaitable[JSON]]]] = {
        "ping": _ping,
        "server/discover": _discover,
        "tools/list": _list_tools,
        "tools/call": _call_tool,
        "resources/list": _list_resources,
        "resources/templates/list": _list_templates,
        "resources/read": _read_resource,
        "resources/subscribe": _subscribe,
        "resources/unsubscribe": _subscribe,
        "prompts/list": _list_prompts,
        "prompts/get": _get_prompt,
        "completion/complete": _complete,
        "logging/setLevel": _set_level,
    }

    # -- client notifications and responses ------------------------------------------------------
    async def client_notification(self, session: ClientSession, msg: JSON) -> None:
        method = msg["method"]
        params = msg.get("params") or {}
        if method == "notifications/cancelled":
            entry = session.inflight.get(repr(params.get("requestId")))
            if entry is not None:
                up, upstream_id = entry
                await up.conn.notify_quiet("notifications/cancelled", {**params, "requestId": upstream_id})
        elif method == "notifications/roots/list_changed" and session.tenant is not None:
            for up in list(session.tenant._live.values()):
                if session in up.listeners:
                    await up.conn.notify_quiet(method, params or None)

    async def client_response(self, session: ClientSession, msg: JSON) -> None:
        if not await session.answer_server_request(msg):
            raise ProtocolError("A response for a request this session was not sent.", http_status=400)
