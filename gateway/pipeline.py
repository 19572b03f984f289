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
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from gateway import binding, naming, signals
from gateway.bus import Bus
from gateway.decide import CLIENT_REQUESTS, POLL_INTERVAL_S, AllowAll, Decider, GateDecision
from gateway.errors import AegressError, AuthError, ProtocolError, StoreUnavailable, UpstreamError
from gateway.evidence import now_time
from gateway.jsonrpc import (
    HEADER_MISMATCH,
    INVALID_PARAMS,
    JSON,
    LATEST_LEGACY,
    LEGACY_VERSIONS,
    METHOD_NOT_FOUND,
    MODERN_VERSIONS,
    REMOVED_IN_MODERN,
    STREAM_OPEN,
    SUBSCRIPTION_ID,
    decorate_modern_result,
    error,
    error_from,
    notification,
    param_header_mismatch,
    result,
)
from gateway.observe import NOTHING, Observer
from gateway.proxy import ClientSession, Runtime, UnknownTarget, Upstream, list_all
from gateway.record import CallFacts, Recorder, call_entry, elicitation_entry, outcome_entry, with_receipt
from gateway.relay import SESSION_TOPIC
from gateway.review import ReviewDesk, tool_error
from gateway.secrets import derive_key, mint_id, token_hash
from gateway.shared_limits import SharedLimits
from gateway.store.base import Store, WouldBlock
from gateway.types import Decision, Identity

if TYPE_CHECKING:
    from gateway.oauth.validator import OAuthValidator

log = logging.getLogger("aegress.pipeline")

Send = Callable[[JSON], Awaitable[None]]
SERVER_INFO = {"name": "aegress", "title": "Aegress MCP gateway", "version": "0.1.0"}
SERVER_INFO_STAMP = {"name": "aegress", "version": "0.1.0"}
# which policy rules a method's targets answer to
_POLICY_KIND = {
    "resources/list": "resource", "resources/templates/list": "resource", "resources/read": "resource",
    "resources/subscribe": "resource", "resources/unsubscribe": "resource",
    "prompts/list": "prompt", "prompts/get": "prompt", "completion/complete": "completion",
}


def _target_name(item: JSON) -> str:
    """The upstream's own name of a listed item or a request's target (uri, template, name, or ref)."""
    ref = item.get("ref") if isinstance(item.get("ref"), dict) else {}
    for value in (item.get("uri"), item.get("uriTemplate"), item.get("name"), ref.get("name"), ref.get("uri")):
        if isinstance(value, str):
            return value
    return ""
MODERN_ONLY = ("server/discover", "subscriptions/listen")
LIVE_POLL_S = 1.0
"""How often policies are polled while the bus is live (signals carry changes at once; the poll is the
backstop for a lost message). Without live signals: POLL_INTERVAL_S."""
INTENT_WAIT_S = 3.0
"""At most this long for the store to take a call's intent; then 503 + Retry-After, nothing forwarded (an
intent committed after that is answered `not_forwarded` by the evidence writer)."""
OUTCOME_WAIT_S = 3.0
"""At most this long for an outcome's commit before answering without a receipt; the writer keeps the
outcome and retries until the store takes it."""
_LISTEN_TIMEOUT_S = 24 * 3600.0


def _either(first: asyncio.Future[Any], second: asyncio.Future[Any]) -> asyncio.Future[Any]:
    """A future done as soon as either is (the other is left running)."""
    return asyncio.ensure_future(asyncio.wait({first, second}, return_when=asyncio.FIRST_COMPLETED))


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
        review_desk: ReviewDesk | None = None,
        bus: Bus | None = None,
        shared: SharedLimits | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.observer = observer or NOTHING
        self.store = store
        self.bus = bus or Bus(store.replica_id)  # the other replicas (gateway.bus); local only without Redis
        self.runtime = runtime
        self.recorder = recorder
        self.decider: Decider = decider or AllowAll()
        self.review_desk = review_desk or ReviewDesk(store, bus=self.bus)
        self.shared = shared or SharedLimits(self.bus)  # rate limits (and the edge's caps) across replicas
        self._token_key = derive_key(master_key, "token-hash")
        self._policies_polled = float("-inf")
        self._refreshing = asyncio.Lock()  # one decider refresh at a time (a poll and a signal may meet)
        self._tasks: set[asyncio.Future[None]] = set()
        self.bus.subscribe(signals.POLICY_CHANGED, self._policy_changed)
        self.bus.on_reconnect(self._policy_changed_all)

    # -- stage 1: authenticate -----------------------------------------------------------------
    only_token: str | None = None
    """A static binding's token digest (gateway.ingress.pin_static_token): then no other token is accepted."""

    def token_digest(self, token: str) -> str:
        return token_hash(self._token_key, token)

    oauth: OAuthValidator | None = None
    """OAuth mode (MCP_AUTH_MODE=oauth): JWT access tokens checked by `gateway.oauth.validator` instead of
    the stored bearer tokens; set by `gateway.server.build_gateway`."""

    async def authenticate(self, authorization: str | None, path: str = "/mcp") -> Identity:
        """Every request looks its token up (a revocation applies to the next request). The lookup is tried
        on the event loop first, where it costs microseconds and never waits; when it would wait (another
        process's lock) it runs in a worker thread, so a stalled store never stalls the loop. `path`: the
        resource asked for (`/mcp`, or `/t/<tenant>/mcp` in OAuth mode), which an access token's audience
        must name."""
        if self.oauth is not None:
            try:
                return await self.oauth.authenticate(authorization, path)
            except AegressError as exc:
                if exc.http_status in (401, 403):
                    self.recorder.auth_failure(exc.code)
                raise
        if not authorization:
            self.recorder.auth_failure("missing-token")
            raise AuthError("Missing bearer token.", hint="Send Authorization: Bearer <token>.")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            self.recorder.auth_failure("malformed-authorization")
            raise AuthError("Malformed Authorization header.", hint="Send Authorization: Bearer <token>.")
        digest = token_hash(self._token_key, token)
        if self.only_token is not None and not hmac.compare_digest(digest, self.only_token):
            self.recorder.auth_failure("not-the-static-token")
            raise AuthError("The bearer token is invalid or revoked.", code="invalid-token",
                            hint="This gateway accepts only its configured token (static binding).")
        try:
            info = self.store.find_token_nowait(digest)
        except WouldBlock:
            info = await asyncio.to_thread(self.store.find_token, digest)
        if info is None or not info.active:
            self.recorder.auth_failure("invalid-token" if info is None else "revoked-token")
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
    async def refresh_policies(self) -> None:
        """Newly applied policies and approvals are in force within POLL_INTERVAL_S (LIVE_POLL_S while the
        bus is live: a `policy.changed` signal then refreshes at once, see `_policy_changed`): the decider's
        poll of the store runs in a worker thread, so a locked or full store never stalls the event loop."""
        now = time.monotonic()
        if now - self._policies_polled >= (LIVE_POLL_S if self.bus.live else POLL_INTERVAL_S):
            self._policies_polled = now
            await self._refresh(now, force=False)

    async def _refresh(self, now: float, force: bool) -> None:
        async with self._refreshing:
            await asyncio.to_thread(self.decider.refresh, now, force)

    def _policy_changed(self, message: JSON) -> None:
        """A `policy.changed` signal (or Redis back after an outage): look at the store now, not at the next poll."""
        task = asyncio.ensure_future(self._refresh_now())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _policy_changed_all(self) -> None:
        self._policy_changed({})

    async def _refresh_now(self) -> None:
        try:
            await self._refresh(time.monotonic(), force=True)
        except Exception as exc:  # StoreUnavailable and the like: the next poll tries again
            log.warning("refreshing policies on a signal failed (%s); the next poll retries",
                        getattr(exc, "message", type(exc).__name__))

    def decide(self, session: ClientSession, up: Upstream, tool: JSON, arguments: JSON) -> GateDecision:
        """The policy's verdict for one call (pure over the decider's state; refresh_policies polls first)."""
        return self.decider.decide(session.identity, up.spec.name, tool, arguments)

    async def over_budget(self, session: ClientSession) -> str | None:
        """The actor's call budget from the policy's rate_limits: a message when it is spent, else None. One
        bucket per (tenant, actor) for the whole fleet while Redis answers (gateway.shared_limits)."""
        limit = self.decider.rate_limit(session.identity)
        if limit is None:
            return None
        allowed, wait = await self.shared.admit_rate(session.identity.tenant_id, session.identity.actor_id, limit)
        if allowed:
            return None
        return (f"Rate limit reached: at most {limit.calls} calls per {limit.per_seconds:g} s for this actor. "
                f"Try again in {max(wait, 0.1):.1f} s.")

    def guard_client_requests(self, session: ClientSession, up: Upstream, send: Send) -> Send:
        """Wrap a call's `send`: sampling, elicitation and roots requests from the upstream reach the
        client only when a `client_request` rule allows them; otherwise the upstream gets an error."""

        async def guarded(msg: JSON) -> None:
            kind = CLIENT_REQUESTS.get(msg.get("method", "")) if "id" in msg else None
            if kind is not None:
                started, started_at = time.perf_counter(), _now()
                decision = self.decider.decide_other(session.identity, "client_request", up.spec.name, kind)
                if decision.verdict != "allow":
                    entry = session.server_requests.pop(msg["id"], None)
                    if entry is not None:
                        target, upstream_id = entry
                        await target.conn.respond({"jsonrpc": "2.0", "id": upstream_id, "error": {
                            "code": -32600,
                            "message": f"Denied by Aegress policy rule {decision.rule_id}: {decision.reason}"}})
                    self.record(session, msg["method"], kind, up.spec.name, decision, "refused", started,
                                started_at, refuse_when_full=False)  # inside a call already recorded
                    return
            await send(msg)

        return guarded

    # -- stage 5: record -----------------------------------------------------------------------
    # Sealed evidence (gateway.evidence): an intent is durably committed BEFORE anything is forwarded
    # (StoreUnavailable otherwise: 503, nothing forwarded), the outcome after; refusals are recorded as
    # decisions. The response carries a receipt of its record in result._meta.aegress.
    def _facts(self, session: ClientSession, method: str, target: str, upstream: str, tool: JSON | None,
               decision: Decision | None, arguments: Any, request_id: Any, started_at: str,
               secrets: tuple[str, ...] = ()) -> CallFacts:
        info = session.client_info
        return CallFacts(
            identity=session.identity, client_name=str(info.get("name") or "") or None,
            client_version=str(info.get("version") or "") or None, session_id=session.digest[:32], method=method,
            upstream=upstream, tool=target, tool_def=tool, decision=decision or Decision("allow", "no-policy"),
            arguments=arguments, request_id=str(request_id if request_id is not None else ""),
            started_at=started_at, time=now_time(), secrets=secrets,
        )

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
        *,
        arguments: Any = None,
        tool: JSON | None = None,
        refuse_when_full: bool = True,
    ) -> None:
        """A call that was NOT forwarded (blocked, hidden, held for review): a `decision` record, queued.
        When too many records already wait for a failing store, the request is refused instead
        (StoreUnavailable: 503) unless `refuse_when_full` is off (then the record is only logged as lost)."""
        tenant = session.identity.tenant_id
        facts = self._facts(session, method, target, upstream, tool, decision, arguments, None, started_at)
        verdict = "hidden" if decision is not None and decision.rule_id == "unknown-tool" else None
        if decision is not None and decision.verdict == "review" and outcome not in ("refused", ""):
            facts = replace(facts, decision=replace(decision, reason=f"{outcome}: {decision.reason}"[:500]))
        audit_id = getattr(decision, "audit_id", "")
        if audit_id:
            facts = replace(facts, request_id=audit_id)
        try:
            self.recorder.submit(call_entry(self.recorder.origin(tenant), self.recorder.tenant_key(tenant), facts,
                                            kind="decision", verdict=verdict))
        except StoreUnavailable:
            if refuse_when_full:
                raise
            log.error("could not record a refused %s: too many records wait for the evidence store", method)
        except AegressError as exc:
            log.error("could not record a refused call: %s", exc.message)

    async def record_intent(self, session: ClientSession, method: str, target: str, up: Upstream,
                            tool: JSON | None, decision: Decision | None, arguments: Any,
                            msg: JSON, started_at: str) -> tuple[CallFacts, Any]:
        """Commit the intent durably; raises StoreUnavailable (fail closed) when the store cannot take it."""
        tenant = session.identity.tenant_id
        facts = self._facts(session, method, target, up.spec.name, tool, decision, arguments, msg.get("id"),
                            started_at, up.conn.secrets)
        verdict = "review_approved" if decision is not None and decision.verdict == "review" else "allow"
        entry = call_entry(self.recorder.origin(tenant), self.recorder.tenant_key(tenant), facts, kind="intent",
                           verdict=verdict)
        try:
            sealed = await asyncio.wait_for(self.recorder.append(entry), INTENT_WAIT_S)
        except TimeoutError:
            raise StoreUnavailable(
                f"The evidence store did not take the call's intent within {INTENT_WAIT_S:g} s; nothing was "
                "forwarded.", hint="Retry later; the gateway's /health says why it is not ready.") from None
        self.recorder.crash("after-intent")
        return facts, sealed

    def _outcome(self, facts: CallFacts, intent: Any, status: str, started: float, up_started: float | None,
                 res: Any, code: Any) -> Callable[[], Any]:
        """The outcome's builder, with its clock read now: it may run later, on the evidence writer's thread."""
        now, when = time.perf_counter(), now_time()
        tenant = facts.identity.tenant_id
        origin, key = self.recorder.origin(tenant), self.recorder.tenant_key(tenant)

        def build() -> Any:
            return outcome_entry(
                origin, key, facts, intent.record.seq, status=status, time=when, latency_ms=(now - started) * 1000,
                upstream_latency_ms=None if up_started is None else (now - up_started) * 1000, result=res,
                error_code=code,
            )

        return build

    async def record_outcome(self, facts: CallFacts, intent: Any, status: str, started: float,
                             up_started: float | None, res: Any = None, code: Any = None) -> Any:
        """Commit the outcome; if the store cannot take it now the call already ran: answer after at most
        OUTCOME_WAIT_S without a receipt; the writer holds the outcome and retries until it commits."""
        if intent is None:
            return None
        entry = self._outcome(facts, intent, status, started, up_started, res, code)()
        try:
            return await asyncio.wait_for(self.recorder.append(entry), OUTCOME_WAIT_S)
        except TimeoutError:
            log.warning("the outcome of intent %s is not committed yet; answering without a receipt",
                        intent.record.seq)
            return None
        except AegressError as exc:
            log.error("could not record the outcome of intent %s: %s", intent.record.seq, exc.message)
            return None

    def record_outcome_nowait(self, facts: CallFacts, intent: Any, status: str, started: float,
                              up_started: float | None, code: Any = None, res: Any = None) -> None:
        """An answered call (the default; the receipt names the intent) or one abandoned mid-flight: the outcome
        is built off the event loop and rides the next commit (Evidence.defer)."""
        if intent is None:
            return
        self.recorder.defer(self._outcome(facts, intent, status, started, up_started, res, code))

    async def record_client_answer(self, session: ClientSession, msg: JSON) -> None:
        """An elicitation answer relayed from the client: digest + redacted preview, committed first."""
        res = msg.get("result")
        if not (isinstance(res, dict) and res.get("action") in ("accept", "decline", "cancel")):
            return
        if msg.get("id") not in session.server_requests:
            return
        tenant = session.identity.tenant_id
        entry = elicitation_entry(self.recorder.origin(tenant), self.recorder.tenant_key(tenant), tenant,
                                  session.identity.actor_id, str(msg.get("id")), res, now_time())
        try:
            await asyncio.wait_for(self.recorder.append(entry), INTENT_WAIT_S)
        except TimeoutError:
            raise StoreUnavailable(f"The evidence store did not take the answer within {INTENT_WAIT_S:g} s; "
                                   "it was not relayed.", hint="Retry later.") from None

    async def _sealed_forward(self, session: ClientSession, up: Upstream, method: str, params: JSON, msg: JSON,
                              send: Send, *, target: str, tool: JSON | None, decision: Decision | None,
                              arguments: Any, started: float, started_at: str) -> tuple[JSON, Any]:
        """intent (durable) -> forward -> outcome (durable); returns the response and the receipt's record."""
        facts, intent = await self.record_intent(session, method, target, up, tool, decision, arguments, msg,
                                                 started_at)
        status, code, recorded, forwarding = "not_forwarded", None, False, False
        up_started = time.perf_counter()
        try:
            await send(STREAM_OPEN)
            status, forwarding = "failed", True
            response = await self.forward(session, up, method, params, msg, send)
            self.recorder.crash("after-forward")
            res: Any = response.get("result")
            if "error" in response:
                err = response["error"]
                code, res = (err.get("code") if isinstance(err, dict) else None), err
            elif isinstance(res, dict) and res.get("isError"):
                code = "tool_error"
            else:
                status = "completed"
            recorded = True
            if not self.recorder.await_outcome:  # AEGRESS_AUDIT_AWAIT_OUTCOME=off: the receipt is the intent's
                self.record_outcome_nowait(facts, intent, status, started, up_started, code, res)
                return response, intent
            sealed = await self.record_outcome(facts, intent, status, started, up_started, res, code)
            return response, sealed or intent
        except asyncio.CancelledError as exc:
            if forwarding:  # else it stays not_forwarded: the call never left the gateway
                status = "client_disconnected" if "disconnect" in " ".join(map(str, exc.args)) else "cancelled"
            raise
        except UpstreamError as exc:
            if exc.code == "upstream-not-connected":  # the connection closed before the call was sent
                status, code = "not_forwarded", exc.code
            else:
                status, code = ("timeout" if exc.code == "upstream-timeout" else "failed"), exc.code
            raise
        finally:
            if not recorded:
                self.record_outcome_nowait(facts, intent, status, started, up_started, code)

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
        except StoreUnavailable:
            raise  # fail closed: the transport answers 503 + Retry-After; nothing was forwarded
        except AegressError as exc:
            response = error_from(msg["id"], exc)
        if session.modern and isinstance(response.get("result"), dict):
            response = {**response, "result": decorate_modern_result(method, response["result"], SERVER_INFO_STAMP)}
        return response

    async def _listen(self, session: ClientSession, msg: JSON, send: Send) -> JSON:
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
                p = dict(out.get("params") or {})
                p["_meta"] = {**(p.get("_meta") or {}), **tag}
                await emit({**out, "params": p})

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
                await asyncio.gather(*streams, return_exceptions=True)
            else:
                await asyncio.Event().wait()  # nothing upstream to relay: hold the stream until the client leaves
        finally:
            for f in streams:
                f.cancel()
        return result(msg["id"], {"_meta": tag})

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
        await self.refresh_policies()
        ups = await session.upstreams()
        lists = await asyncio.gather(*(self._tools(session, u, refresh=True) for u in ups), return_exceptions=True)
        seen: set[str] = set()
        tools: list[JSON] = []
        for up, listed in zip(ups, lists, strict=True):
            if isinstance(listed, BaseException):
                log.warning("tools/list failed on upstream %s: %s", up.spec.name, listed)
                continue
            await asyncio.to_thread(self.decider.observe_tools, session.identity.tenant_id, up.spec.name, listed,
                                    _now())
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
                await asyncio.to_thread(self.decider.observe_tools, session.identity.tenant_id, upstream_name,
                                        tools, _now())
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
                        started, started_at, INVALID_PARAMS, arguments=arguments)
            raise
        if session.modern:  # Mcp-Param-* headers must mirror the arguments (2026-07-28); only declared ones go on
            mismatch, session.param_headers = param_header_mismatch(tool.get("inputSchema"), arguments or {},
                                                                    session.param_headers)
            if mismatch is not None:
                self.record(session, "tools/call", name, up.spec.name, Decision("block", "header-mismatch"),
                            "refused", started, started_at, HEADER_MISMATCH, arguments=arguments, tool=tool)
                return error(msg["id"], HEADER_MISMATCH, mismatch)
        limited = await self.over_budget(session)
        if limited is not None:
            decision = GateDecision("block", "rate-limit", limited, audit_id=mint_id("aud_"))
            self.record(session, "tools/call", name, up.spec.name, decision, "refused", started, started_at,
                        arguments=arguments, tool=tool)
            return result(msg["id"], tool_error(f"{limited} (audit id {decision.audit_id})"))
        await self.refresh_policies()
        decision = self.decide(session, up, tool, arguments or {})
        if decision.verdict == "review":
            meta = params.get("_meta")
            settled = await self.review_desk.settle(
                session, send, upstream=up.spec.name, tool=tool["name"], exposed=name, arguments=arguments or {},
                rule_id=decision.rule_id, reason=decision.reason, policy_version=decision.policy_version,
                mode=decision.review_mode, settings=self.decider.review_settings(session.identity.tenant_id),
                progress_token=meta.get("progressToken") if isinstance(meta, dict) else None,
            )
            decision = replace(decision, audit_id=settled.held_id)
            if not settled.released:
                self.record(session, "tools/call", name, up.spec.name, decision, settled.outcome, started, started_at,
                            arguments=arguments, tool=tool)
                return result(msg["id"], settled.result or tool_error("Not run."))
        elif decision.verdict != "allow":
            decision = replace(decision, audit_id=mint_id("aud_"))
            self.record(session, "tools/call", name, up.spec.name, decision, "refused", started, started_at,
                        arguments=arguments, tool=tool)
            reason = decision.reason or "Policy does not allow this call."
            return result(msg["id"], tool_error(
                f"Blocked by policy rule {decision.rule_id}: {reason} (audit id {decision.audit_id})"))
        forwarded = {**params, "name": tool["name"]}
        guarded = self.guard_client_requests(session, up, send)
        response, sealed = await self._sealed_forward(
            session, up, "tools/call", forwarded, msg, guarded, target=name, tool=tool, decision=decision,
            arguments=arguments, started=started, started_at=started_at)
        out = {"jsonrpc": "2.0", "id": msg["id"], **{k: response[k] for k in ("result", "error") if k in response}}
        if "error" in out:
            out["error"] = up.client_error("tools/call", out["error"])
        if "result" in out:
            out["result"] = with_receipt(out["result"], sealed)
        return out

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
        upstream_id: list[int] = []
        try:
            return await up.conn.request(
                method,
                params,
                meta=session.meta_for(up),
                headers=session.param_headers if up.conn.modern and method == "tools/call" else None,
                sink=session.sink_for(up, send, client_token),
                progress_token=client_token,
                on_sent=upstream_id.append,
            )
        except asyncio.CancelledError as exc:  # the client cancelled, went away, or the deadline passed
            if upstream_id:
                gone = "disconnect" in " ".join(map(str, exc.args))
                await up.conn.notify_quiet("notifications/cancelled", {
                    "requestId": upstream_id[0], "reason": "client went away" if gone else "cancelled"})
            raise

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
            kind = _POLICY_KIND[method]
            items.extend(
                rename(up, item) for item in listed
                if self.decider.visible_other(session.identity, kind, up.spec.name, _target_name(item))
            )
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

    async def _routes(self, session: ClientSession, exposed: str, cap: str) -> list[tuple[Upstream, str]]:
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
        self, session: ClientSession, msg: JSON, send: Send, method: str,
        routes: list[tuple[Upstream, JSON]], kind: str, label: str,
        fix: Callable[[Upstream, JSON], JSON] | None = None,
    ) -> JSON:
        started, started_at = time.perf_counter(), _now()
        last: tuple[Upstream, JSON] | None = None
        sealed_method = method in ("resources/read", "prompts/get")
        # decide: what policy does not allow answers exactly like what does not exist
        routes = [
            (up, params) for up, params in routes
            if self.decider.decide_other(session.identity, _POLICY_KIND[method], up.spec.name,
                                         _target_name(params), params.get("arguments")).verdict == "allow"
        ]
        outer_send = send
        for up, params in routes:
            send = self.guard_client_requests(session, up, outer_send)
            receipt_of = None
            if sealed_method:
                response, receipt_of = await self._sealed_forward(
                    session, up, method, params, msg, send, target=label, tool=None, decision=None,
                    arguments=params.get("arguments") if method == "prompts/get" else None,
                    started=started, started_at=started_at)
            else:
                response = await self.forward(session, up, method, params, msg, send)
            if "result" in response:
                res = response["result"]
                return result(msg["id"], with_receipt(fix(up, res) if fix else res, receipt_of))
            last = (up, response)
        if last is None or len(routes) > 1:
            raise UnknownTarget(kind, label)
        return {"jsonrpc": "2.0", "id": msg["id"], "error": last[0].client_error(method, last[1].get("error"))}

    async def _read_resource(self, session: ClientSession, msg: JSON, send: Send) -> JSON:
        params = msg.get("params") or {}
        uri = params.get("uri")
        if not isinstance(uri, str):
            return error(msg["id"], INVALID_PARAMS, "resources/read needs a string uri.")
        routes = [(up, {**params, "uri": inner}) for up, inner in await self._routes(session, uri, "resources")]

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
        routes = [(up, {**params, "uri": inner}) for up, inner in await self._routes(session, uri, "resources")]
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
                await self.tell_replicas(session, "unsubscribe", uri=uri)  # another may hold the subscription
        return response

    async def _get_prompt(self, session: ClientSession, msg: JSON, send: Send) -> JSON:
        params = msg.get("params") or {}
        name = params.get("name")
        if not isinstance(name, str):
            return error(msg["id"], INVALID_PARAMS, "prompts/get needs a string name.")
        routes = [(up, {**params, "name": inner}) for up, inner in await self._routes(session, name, "prompts")]
        return await self._first_success(session, msg, send, "prompts/get", routes, "prompt", name)

    async def _complete(self, session: ClientSession, msg: JSON, send: Send) -> JSON:
        params = msg.get("params") or {}
        ref = params.get("ref")
        if not isinstance(ref, dict):
            return error(msg["id"], INVALID_PARAMS, "completion/complete needs a ref.")
        if ref.get("type") == "ref/prompt" and isinstance(ref.get("name"), str):
            found = await self._routes(session, ref["name"], "prompts")
            routes = [(up, {**params, "ref": {**ref, "name": inner}}) for up, inner in found]
            label, kind = ref["name"], "prompt"
        elif ref.get("type") == "ref/resource" and isinstance(ref.get("uri"), str):
            found = await self._routes(session, ref["uri"], "resources")
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
        for up, r in zip(ups, responses, strict=True):
            if isinstance(r, dict) and "error" in r:
                return {"jsonrpc": "2.0", "id": msg["id"], "error": up.client_error("logging/setLevel", r["error"])}
        session.log_level = level
        await self.tell_replicas(session, "level", level=level)
        return result(msg["id"], {})

    async def apply_log_level(self, session: ClientSession, level: str) -> None:
        """Another replica set this session's log level: pass it to the upstream connections the session
        uses here (connecting none), so its log messages outside a call follow it on this replica too."""
        session.log_level = level
        if session.tenant is None:
            return
        ups = [u for u in session.tenant._live.values() if session in u.listeners and "logging" in u.conn.capabilities]
        await asyncio.gather(*(u.conn.request("logging/setLevel", {"level": level}) for u in ups),
                             return_exceptions=True)

    async def tell_replicas(self, session: ClientSession, kind: str, **body: Any) -> None:
        """Tell the other replicas holding this session (gateway.relay.SESSION_TOPIC); a lost message
        only means they keep what they had (see docs/replicas.md)."""
        if session.digest and self.bus.live:
            await self.bus.publish(SESSION_TOPIC, {"d": session.digest, "from": self.store.replica_id, "kind": kind,
                                                   **body})

    _handlers: ClassVar[dict[str, Callable[[Pipeline, ClientSession, JSON, Send], Awaitable[JSON]]]] = {
        "ping": _ping,
        "server/discover": _discover,
        "subscriptions/listen": _listen,
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
            stream = session.requests.get(repr(params.get("requestId")))
            if stream is not None:  # stop the call here; `forward` tells the upstream
                stream.cancel("cancelled")
        elif method == "notifications/roots/list_changed" and session.tenant is not None:
            for up in list(session.tenant._live.values()):
                if session in up.listeners:
                    await up.conn.notify_quiet(method, params or None)

    async def client_response(self, session: ClientSession, msg: JSON) -> None:
        await self.record_client_answer(session, msg)
        if not await session.answer_server_request(msg):
            raise ProtocolError("A response for a request this session was not sent.", http_status=400)
