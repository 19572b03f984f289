"""The request pipeline, in one place: authenticate -> bind -> limit -> decide -> forward -> record.

    HTTP edge (gateway/transport.py, McpEndpoint.__call__): Host/Origin, method, query     per HTTP request
      │
      ├─ 1 authenticate  Pipeline.authenticate   bearer token -> Identity          401 / 429 (throttle)
      ├─ 2 bind          Pipeline.bind           header/query claims == Identity    403, nothing forwarded
      │     body checks, protocol revision, session (transport)
      │
      │  per JSON-RPC request: McpEndpoint._stream_request -> Pipeline.dispatch -> gateway.methods handler
      ├─ 3 limit         Pipeline.admit          requests in flight per actor/tenant     429 + Retry-After
      │                  Pipeline.limit          the actor's call budget (policy rate_limits)  tool error
      ├─ 4 decide        Pipeline.decide         policy: allow / review / block / hidden  (gateway.decide)
      ├─ 6 record        Pipeline.record_intent  the intent, durable before anything leaves  503 otherwise
      ├─ 5 forward       Pipeline.forward        to the tenant's upstream under fresh ids  (gateway.proxy)
      └─ 6 record        Pipeline.record_outcome the outcome; refusals via Pipeline.record  (gateway.record)

`Pipeline.dispatch` looks the method up in `gateway.methods.HANDLERS`; a handler answers what the
gateway answers itself (ping, discovery, listings) or resolves the exposed name to one upstream (a
`Call`) and runs it through `Pipeline.call`, the one flow: limit -> decide -> record intent -> forward
-> record outcome. Each stage is a method here, in that order, so the path reads on one screen; the
decisions they call (binding, naming, policy) are pure functions elsewhere.

Observation (gateway.observe): every stage is timed here and reported as `self.observer.stage(name, start_ns,
end_ns, tenant)`: authenticate and bind by `enter` (the transport calls it), limit by `admit` (and `limit`
when a tool call has a budget), decide (a review's hold included), forward and record by `call` (record once,
after the outcome, as an interval ending then whose length is the intent's wait plus the outcome's);
`call_done` once per JSON-RPC request from `dispatch` (or `not_dispatched`, for what the transport answers
itself), `upstream_error` where an upstream call fails, `review_waited` from the review desk.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from gateway import binding, signals
from gateway.admin import now_iso
from gateway.bus import Bus
from gateway.decide import CLIENT_REQUESTS, POLL_INTERVAL_S, AllowAll, Decider, GateDecision
from gateway.errors import AegressError, AuthError, ProtocolError, RateLimited, StoreUnavailable, UpstreamError
from gateway.evidence import now_time
from gateway.jsonrpc import (
    JSON,
    METHOD_NOT_FOUND,
    REMOVED_IN_MODERN,
    STREAM_OPEN,
    decorate_modern_result,
    error,
    error_from,
    result,
)
from gateway.methods import HANDLERS, SERVER_INFO_STAMP, Call, Send, Ticket, upstream_error_kind
from gateway.observe import NOTHING, Observer, method_label
from gateway.proxy import ClientSession, Runtime, UnknownTarget, Upstream
from gateway.record import CallFacts, Recorder, call_entry, elicitation_entry, outcome_entry
from gateway.relay import SESSION_TOPIC
from gateway.review import ReviewDesk, Settled, tool_error
from gateway.secrets import derive_key, mint_id, token_hash
from gateway.shared_limits import SharedLimits
from gateway.store.base import Store, WouldBlock
from gateway.types import Decision, Identity

if TYPE_CHECKING:
    from gateway.oauth.validator import OAuthValidator

log = logging.getLogger("aegress.pipeline")

LIVE_POLL_S = 1.0
"""How often policies are polled while the bus is live (signals carry changes at once; the poll is the
backstop for a lost message). Without live signals: POLL_INTERVAL_S."""
INTENT_WAIT_S = 3.0
"""At most this long for the store to take a call's intent; then 503 + Retry-After, nothing forwarded (an
intent committed after that is answered `not_forwarded` by the evidence writer)."""
OUTCOME_WAIT_S = 3.0
"""At most this long for an outcome's commit before answering without a receipt; the writer keeps the
outcome and retries until the store takes it."""
_now_ns = time.perf_counter_ns


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


async def _within(awaitable: Awaitable[Any], seconds: float) -> Any:
    """`asyncio.wait_for(awaitable, seconds)` for the evidence writer's plain futures, at half its cost on
    the request path (no waiter future, no extra loop turn: about 8 µs a call). On timeout the future is
    done (failed with TimeoutError), so the writer sees the caller gave up, as after wait_for's cancel; the
    caller's own cancellation cancels it. Anything else (the no-evidence recorder's coroutine) goes to
    wait_for."""
    if not isinstance(awaitable, asyncio.Future):
        return await asyncio.wait_for(awaitable, seconds)
    handle = awaitable.get_loop().call_later(seconds, _expire, awaitable)
    try:
        return await awaitable
    finally:
        handle.cancel()


class Pipeline:
    """The stages, in order, and the one call flow that runs them (see the module docstring)."""

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
        *,
        observer: Observer | None = None,
    ) -> None:
        self.store = store
        self.bus = bus or Bus(store.replica_id)  # the other replicas (gateway.bus); local only without Redis
        self.runtime = runtime
        self.recorder = recorder
        self.decider: Decider = decider or AllowAll()
        self.review_desk = review_desk or ReviewDesk(store, bus=self.bus)
        self.shared = shared or SharedLimits(self.bus)  # rate limits (and the edge's caps) across replicas
        self.observer = observer or NOTHING
        self._token_key = derive_key(master_key, "token-hash")
        self._policies_polled = float("-inf")
        self._refreshing = asyncio.Lock()  # one decider refresh at a time (a poll and a signal may meet)
        self._tasks: set[asyncio.Future[None]] = set()
        self._sealing = 0  # sealed calls between their intent and their end: 1 means a lone call
        self.bus.subscribe(signals.POLICY_CHANGED, self._policy_changed)
        self.bus.on_reconnect(self._policy_changed_all)

    @property
    def observer(self) -> Observer:
        """Where the stages report (gateway.observe); the transport and the review desk report here too."""
        return self._observer

    @observer.setter
    def observer(self, observer: Observer) -> None:
        self._observer = observer
        self.review_desk.observer = observer

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
            info = await self.store.find_token_async(digest)
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

    async def enter(self, authorization: str | None, path: str, claims: binding.Claims,
                    on_auth_failure: Callable[[AuthError], None] | None = None) -> tuple[Identity, int]:
        """Stages 1 and 2 of one HTTP request, each timed and reported (authenticate also when it fails, then
        without a tenant). `on_auth_failure` sees a refused token first and may raise instead (the transport's
        per-address throttle: 429). Returns the bound identity and the request's start (perf_counter_ns), from
        which `dispatch` measures the whole request."""
        obs = self.observer
        t0 = _now_ns()
        try:
            try:
                identity = await self.authenticate(authorization, path)
            except AuthError as exc:
                if on_auth_failure is not None:
                    on_auth_failure(exc)
                raise
        except AegressError:
            obs.stage("authenticate", t0, _now_ns())
            raise
        t1 = _now_ns()
        obs.stage("authenticate", t0, t1, identity.tenant_id)
        try:
            identity = self.bind(identity, claims)
        finally:
            obs.stage("bind", t1, _now_ns(), identity.tenant_id)
        return identity, t0

    # -- stage 3: limit ------------------------------------------------------------------------
    async def admit(self, who: Identity, per_actor: int, per_tenant: int) -> None:
        """Fair shares, before a request is dispatched: at most `per_actor` / `per_tenant` requests in flight,
        across replicas (gateway.shared_limits: no Redis round trip while this replica's lease covers the
        call). The transport calls it and counts the request before its next await, so concurrent requests
        cannot all pass; a refusal is an HTTP 429 with Retry-After (`not_dispatched` reports it). Reported as
        the request's `limit` stage."""
        t0 = _now_ns()
        try:
            cap = await self.shared.over_cap("calls", who.tenant_id, who.actor_id, per_actor, per_tenant)
        finally:
            self.observer.stage("limit", t0, _now_ns(), who.tenant_id)
        if cap is not None:
            raise RateLimited(f"Too many requests in flight for this {cap}.", retry_after=2, code="too-many-calls",
                              hint="Wait for running calls to finish before starting more.")

    async def limit(self, session: ClientSession, call: Call) -> str | None:
        """The actor's call budget from the policy's rate_limits, spent by tool calls: a message when it is
        spent, else None. One bucket per (tenant, actor) for the whole fleet while Redis answers
        (gateway.shared_limits). Runs once the tool is resolved, so unknown tools spend nothing. Reported as a
        second `limit` stage only when there is a budget to spend."""
        if call.tool is None:
            return None
        limit = self.decider.rate_limit(session.identity)
        if limit is None:
            return None
        t0 = _now_ns()
        try:
            allowed, wait = await self.shared.admit_rate(session.identity.tenant_id, session.identity.actor_id,
                                                         limit)
        finally:
            self.observer.stage("limit", t0, _now_ns(), session.identity.tenant_id)
        if allowed:
            return None
        return (f"Rate limit reached: at most {limit.calls} calls per {limit.per_seconds:g} s for this actor. "
                f"Try again in {max(wait, 0.1):.1f} s.")

    # -- stage 4: decide -----------------------------------------------------------------------
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

    def decide(self, session: ClientSession, call: Call) -> GateDecision:
        """The policy's verdict for one call (pure over the decider's state; refresh_policies polls first):
        tool rules for a tool, else the rules of the method's kind (resource, prompt, completion)."""
        if call.tool is not None:
            return self.decider.decide(session.identity, call.up.spec.name, call.tool, call.arguments or {})
        return self.decider.decide_other(session.identity, call.kind, call.up.spec.name, call.name,
                                         call.params.get("arguments"))

    # -- stage 5: forward ----------------------------------------------------------------------
    async def forward(
        self, session: ClientSession, up: Upstream, method: str, params: JSON, send: Send
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

    def guard_client_requests(self, session: ClientSession, up: Upstream, send: Send) -> Send:
        """Wrap a call's `send`: sampling, elicitation and roots requests from the upstream reach the
        client only when a `client_request` rule allows them; otherwise the upstream gets an error."""

        async def guarded(msg: JSON) -> None:
            kind = CLIENT_REQUESTS.get(msg.get("method", "")) if "id" in msg else None
            if kind is not None:
                started_at = now_iso("milliseconds")
                decision = self.decider.decide_other(session.identity, "client_request", up.spec.name, kind)
                if decision.verdict != "allow":
                    entry = session.server_requests.pop(msg["id"], None)
                    if entry is not None:
                        target, upstream_id = entry
                        await target.conn.respond({"jsonrpc": "2.0", "id": upstream_id, "error": {
                            "code": -32600,
                            "message": f"Denied by Aegress policy rule {decision.rule_id}: {decision.reason}"}})
                    self.record(session, msg["method"], kind, up.spec.name, decision, "refused", started_at,
                                refuse_when_full=False)  # inside a call already recorded
                    return
            await send(msg)

        return guarded

    # -- stage 6: record -----------------------------------------------------------------------
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
        started_at: str,
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
            sealed = await _within(self.recorder.append(entry, alone=self._sealing == 1), INTENT_WAIT_S)
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
            return await _within(self.recorder.append(entry), OUTCOME_WAIT_S)
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
            await _within(self.recorder.append(entry), INTENT_WAIT_S)
        except TimeoutError:
            raise StoreUnavailable(f"The evidence store did not take the answer within {INTENT_WAIT_S:g} s; "
                                   "it was not relayed.", hint="Retry later.") from None

    # -- one JSON-RPC request: dispatch, then the call flow ---------------------------------------
    async def dispatch(self, session: ClientSession, msg: JSON, send: Send, start_ns: int | None = None) -> JSON:
        """Answer one JSON-RPC request with its method's handler (gateway.methods); reports `call_done`, timed
        from `start_ns` (the request's start as `enter` returned it; else now)."""
        start = _now_ns() if start_ns is None else start_ns
        method = msg["method"]
        ticket = Ticket()
        handler = HANDLERS.get(method)
        if (session.modern and method in REMOVED_IN_MODERN) or (not session.modern and method == "server/discover"):
            handler = None
        try:
            if handler is None:
                ticket.outcome = "error"
                return error(msg["id"], METHOD_NOT_FOUND, f"Method not found: {method}",
                             method if session.modern else None)
            try:
                response = await handler(self, session, msg, send, ticket)
            except UnknownTarget as exc:
                if ticket.outcome == "ok":
                    ticket.outcome = "refused" if ticket.verdict == "hidden" else "error"
                response = error(msg["id"], exc.jsonrpc_code, exc.message)
            except StoreUnavailable:
                ticket.outcome = "not_forwarded"
                raise  # fail closed: the transport answers 503 + Retry-After; nothing was forwarded
            except AegressError as exc:
                if ticket.outcome == "ok":
                    ticket.outcome = "error"
                response = error_from(msg["id"], exc)
            if ticket.outcome == "ok" and "error" in response:
                ticket.outcome = "error"
            if session.modern and isinstance(response.get("result"), dict):
                response = {**response,
                            "result": decorate_modern_result(method, response["result"], SERVER_INFO_STAMP)}
            return response
        except asyncio.CancelledError:
            ticket.outcome = "cancelled"
            raise
        except Exception:  # a bug or an unmapped failure: never counted as answered
            ticket.outcome = "error"
            raise
        finally:  # the method as a label only when the gateway knows it: clients choose the others
            self.observer.call_done(method if handler is not None else "other", ticket.verdict, ticket.outcome,
                                    start, _now_ns(), session.identity.tenant_id)

    def not_dispatched(self, method: str, outcome: str, start_ns: int, tenant: str) -> None:
        """`call_done` for a request the transport answers itself: `initialize`, and requests refused before
        dispatch (too many in flight: 429, a duplicate id: 409; outcome `refused`)."""
        self.observer.call_done(method_label(method), "none", outcome, start_ns, _now_ns(), tenant)

    async def call(self, session: ClientSession, msg: JSON, send: Send, call: Call, ticket: Ticket) -> JSON | None:
        """One request to one upstream: limit -> decide -> record intent -> forward -> record outcome.

        Returns the upstream's response (`call.forwarded`; `call.receipt` names its record), the answer to
        a refused tool call (over budget, blocked, not released by review; recorded as a decision), or None
        when policy does not allow a resource, prompt or completion target (the handler answers as if it
        did not exist). Only `call.sealed` methods are recorded."""
        obs, tenant, up = self.observer, session.identity.tenant_id, call.up
        # 3 limit: the call budget (`admit` did the fair shares before dispatch)
        limited = await self.limit(session, call)
        t1 = _now_ns()
        if limited is not None:
            ticket.verdict, ticket.outcome = "block", "refused"
            decision = GateDecision("block", "rate-limit", limited, audit_id=mint_id("aud_"))
            self._record_refusal(session, call, decision, "refused")
            return result(msg["id"], tool_error(f"{limited} (audit id {decision.audit_id})"))
        # 4 decide; a `review` verdict's hold is part of it (the verdict is only final when the review settles)
        await self.refresh_policies()
        decision = self.decide(session, call)
        ticket.verdict = decision.verdict
        settled: Settled | None = None
        try:
            if decision.verdict == "review" and call.tool is not None:
                settled = await self._review(session, send, call, decision)
        finally:
            obs.stage("decide", t1, _now_ns(), tenant)
        if decision.verdict != "allow":
            if call.tool is None:  # what policy does not allow answers exactly like what does not exist
                ticket.verdict = "hidden"
                return None
            if settled is not None:
                decision = replace(decision, audit_id=settled.held_id)
                if not settled.released:
                    ticket.outcome = "refused"
                    self._record_refusal(session, call, decision, settled.outcome)
                    return result(msg["id"], settled.result or tool_error("Not run."))
            else:
                ticket.outcome = "refused"
                decision = replace(decision, audit_id=mint_id("aud_"))
                self._record_refusal(session, call, decision, "refused")
                reason = decision.reason or "Policy does not allow this call."
                return result(msg["id"], tool_error(
                    f"Blocked by policy rule {decision.rule_id}: {reason} (audit id {decision.audit_id})"))
        send = self.guard_client_requests(session, up, send)
        # 6 record (intent) -> 5 forward -> 6 record (outcome)
        facts: CallFacts | None = None
        intent: Any = None
        status, code, recorded, forwarding = "not_forwarded", None, False, False
        t3 = _now_ns()
        t4 = t5 = 0
        up_started = 0.0
        self._sealing += call.sealed
        try:
            if call.sealed:  # durable before anything leaves: StoreUnavailable (503) otherwise
                facts, intent = await self.record_intent(session, call.method, call.target, up, call.tool,
                                                         decision if call.tool is not None else None,
                                                         call.arguments, msg, call.started_at)
            t4 = _now_ns()
            up_started = time.perf_counter()
            if call.sealed:
                await send(STREAM_OPEN)
            status, forwarding = "failed", True
            response = await self.forward(session, up, call.method, call.params, send)
            t5 = _now_ns()
            call.forwarded = True
            if intent is not None:
                self.recorder.crash("after-forward")
            res: Any = response.get("result")
            if "error" in response:
                err = response["error"]
                code, res = (err.get("code") if isinstance(err, dict) else None), err
            elif isinstance(res, dict) and res.get("isError"):
                code = "tool_error"
            else:
                status = "completed"
            ticket.outcome = "ok" if status == "completed" else "error"
            if intent is None:
                return response
            recorded = True
            if not self.recorder.await_outcome:  # AEGRESS_AUDIT_AWAIT_OUTCOME=off: the receipt is the intent's
                self.record_outcome_nowait(facts, intent, status, call.started, up_started, code, res)
                call.receipt = intent
                return response
            call.receipt = await self.record_outcome(facts, intent, status, call.started, up_started, res,
                                                     code) or intent
            return response
        except asyncio.CancelledError as exc:
            ticket.outcome = "cancelled"
            if forwarding:  # else it stays not_forwarded: the call never left the gateway
                status = "client_disconnected" if "disconnect" in " ".join(map(str, exc.args)) else "cancelled"
            raise
        except UpstreamError as exc:
            if exc.code == "upstream-not-connected":  # the connection closed before the call was sent
                status, code = "not_forwarded", exc.code
                ticket.outcome = "not_forwarded"
            else:
                status, code = ("timeout" if exc.code == "upstream-timeout" else "failed"), exc.code
                ticket.outcome = "timeout" if status == "timeout" else "error"
            obs.upstream_error(up.spec.name, upstream_error_kind(exc), tenant)
            raise
        except StoreUnavailable:
            ticket.outcome = "not_forwarded"
            raise
        except Exception:  # anything else (a bug, an unmapped failure): an error, never "ok"
            ticket.outcome = "error"
            raise
        finally:
            self._sealing -= call.sealed
            if not recorded:
                self.record_outcome_nowait(facts, intent, status, call.started, up_started, code)
            end = _now_ns()
            if t4:
                obs.stage("forward", t4, t5 or end, tenant)
            if call.sealed:  # the intent's wait plus the outcome's, as one interval ending now
                waited = (t4 or end) - t3 + (end - t5 if t5 else 0)
                obs.stage("record", end - waited, end, tenant)

    def _record_refusal(self, session: ClientSession, call: Call, decision: Decision, outcome: str) -> None:
        self.record_refusal(session, call.method, call.target, call.up.spec.name, decision, outcome, call.started_at,
                            arguments=call.arguments, tool=call.tool)

    def record_refusal(self, session: ClientSession, method: str, target: str, upstream: str, decision: Decision,
                       outcome: str, started_at: str, *, arguments: Any = None, tool: JSON | None = None) -> None:
        """6 record, for a request that is not forwarded (also the handlers' own refusals: an unknown tool, a
        header mismatch): its decision record, queued (`record`), reported as the record stage."""
        t = _now_ns()
        try:
            self.record(session, method, target, upstream, decision, outcome, started_at, arguments=arguments,
                        tool=tool)
        finally:
            self.observer.stage("record", t, _now_ns(), session.identity.tenant_id)

    async def _review(self, session: ClientSession, send: Send, call: Call, decision: GateDecision) -> Settled:
        """A `review` verdict: hold the call until it is approved, denied or expires (gateway.review)."""
        meta = call.params.get("_meta")
        tool = call.tool
        assert tool is not None
        return await self.review_desk.settle(
            session, send, upstream=call.up.spec.name, tool=tool["name"], exposed=call.target,
            arguments=call.arguments or {}, rule_id=decision.rule_id, reason=decision.reason,
            policy_version=decision.policy_version, mode=decision.review_mode,
            settings=self.decider.review_settings(session.identity.tenant_id),
            progress_token=meta.get("progressToken") if isinstance(meta, dict) else None,
        )

    # -- sessions ------------------------------------------------------------------------------
    async def tell_replicas(self, session: ClientSession, kind: str, **body: Any) -> None:
        """Tell the other replicas holding this session (gateway.relay.SESSION_TOPIC); a lost message
        only means they keep what they had (see docs/replicas.md)."""
        if session.digest and self.bus.live:
            await self.bus.publish(SESSION_TOPIC, {"d": session.digest, "from": self.store.replica_id, "kind": kind,
                                                   **body})

    # -- client responses ----------------------------------------------------------------------
    async def client_response(self, session: ClientSession, msg: JSON) -> None:
        await self.record_client_answer(session, msg)
        if not await session.answer_server_request(msg):
            raise ProtocolError("A response for a request this session was not sent.", http_status=400)
