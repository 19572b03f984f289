"""Carrying out `review` verdicts: holding calls for an operator, approvals, caller confirmation.

The store is the channel between processes: the gateway writes a held call (`rev_...`), `aegress
review approve|deny` (any process, any replica sharing the database) decides it, and the waiting
gateway sees the decision by polling, or at once when a `review.decided` signal arrives (Redis). The
approval logic itself (binding, single use, expiry, separation of duties) is pure, in
gateway.policy.approvals; this module does the I/O around it.

    approve mode                                   confirm mode (client declared form elicitation)
    ────────────                                   ───────────────────────────────────────────────
    1. an unused, unexpired approval for the same  1. the gateway sends elicitation/create on the
       tenant, actor, upstream, tool and argument     call's stream: approve / deny and a reason
       digest?  -> use it (atomically) and forward  2. accept + approve -> forward; decline, cancel,
    2. else hold (reusing a pending identical         deny or no answer in time -> denied
       hold): progress keep-alives while waiting    (without the capability: approve mode)
    3. approved -> use it and forward; denied ->
       tool error; no decision in time -> "held for
       review as rev_..., call again once approved"
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway import signals
from gateway.errors import NotFound, UsageError
from gateway.observe import NOTHING, Observer
from gateway.policy import ReviewSettings, argument_digest, check_approver
from gateway.sealed_change import SealedChange, sealed_change
from gateway.secrets import mint_id
from gateway.store.base import HeldCall, Store

if TYPE_CHECKING:
    from gateway.bus import Bus

log = logging.getLogger("aegress.review")

JSON = dict[str, Any]
Send = Callable[[JSON], Awaitable[None]]

POLL_S = 0.2
LIVE_POLL_S = 1.0
KEEPALIVE_S = 5.0
MAX_STORED_ARGUMENTS = 64 * 1024
CONFIRM_SCHEMA: JSON = {
    "type": "object",
    "properties": {
        "decision": {"type": "string", "title": "Decision", "enum": ["approve", "deny"],
                     "description": "Approve to run the call now; deny to refuse it."},
        "reason": {"type": "string", "title": "Reason", "description": "Why (kept with the evidence)."},
    },
    "required": ["decision"],
}


@dataclass(frozen=True, slots=True)
class Settled:
    """How a review ended: `released` forwards the call; otherwise `result` is the tool result."""

    released: bool
    outcome: str  # approved | confirmed | held | denied
    held_id: str
    result: JSON | None = None


def tool_error(text: str) -> JSON:
    return {"content": [{"type": "text", "text": text}], "isError": True}


def held_text(held_id: str, reason: str) -> str:
    why = f" ({reason})" if reason else ""
    return (f"Held for review as {held_id}{why}. Ask an operator to approve it "
            f"(`aegress review approve {held_id}`), then call again with the same arguments.")


class _Answer:
    """Stands in for an upstream in ClientSession.server_requests, so the client's answer to a request
    the gateway itself sent (the confirm elicitation) comes back here instead of going upstream."""

    def __init__(self) -> None:
        self.conn = self
        self.future: asyncio.Future[JSON] = asyncio.get_running_loop().create_future()

    async def respond(self, msg: JSON) -> None:
        if not self.future.done():
            self.future.set_result(msg)


def supports_form_elicitation(client_caps: JSON) -> bool:
    caps = client_caps.get("elicitation")
    return isinstance(caps, dict) and (not caps or isinstance(caps.get("form"), dict))


class ReviewDesk:
    """Held calls for the gateway side. `clock` is wall time (approvals expire in wall time).

    A held call looks at the store every POLL_S, or at once when a `review.decided` signal names it
    (`aegress review approve` on any machine); while the bus is live the poll slows to `live_poll_s`
    (the backstop for a lost message), never stops."""

    observer: Observer = NOTHING
    """Told how long each settled review took (set by the pipeline, gateway.observe)."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time, bus: Bus | None = None,
                 live_poll_s: float = LIVE_POLL_S) -> None:
        self.store = store
        self.clock = clock
        self.bus = bus
        self.live_poll_s = live_poll_s
        self._waiting: dict[str, set[asyncio.Event]] = {}  # held id -> the calls waiting on it here
        if bus is not None:
            bus.subscribe(signals.REVIEW_DECIDED, self._decided)
            bus.on_reconnect(self.wake_all)

    @property
    def poll_s(self) -> float:
        return self.live_poll_s if self.bus is not None and self.bus.live else POLL_S

    def _decided(self, message: JSON) -> None:
        for event in self._waiting.get(str(message.get("held_id", "")), ()):
            event.set()

    def wake_all(self) -> None:
        """Every held call looks at the store now (Redis back: decisions announced meanwhile were lost)."""
        for events in self._waiting.values():
            for event in events:
                event.set()

    async def _io(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args) if self.store.inline_safe else await asyncio.to_thread(fn, *args)

    async def settle(
        self, session: Any, send: Send, *, upstream: str, tool: str, exposed: str, arguments: JSON,
        rule_id: str, reason: str, policy_version: int, mode: str, settings: ReviewSettings,
        progress_token: Any = None,
    ) -> Settled:
        """Release the call at once (an unused approval for exactly these arguments), or hold it until it is
        approved, denied or expires; a hold reports how long it waited (`Observer.review_waited`), also when
        it ends because the call was cancelled or failed."""
        identity = session.identity
        digest = argument_digest(arguments)
        used = await self._io(self.store.consume_approval, identity.tenant_id, identity.actor_id, upstream, tool,
                              digest, self.clock())
        if used is not None:
            return Settled(True, "approved", used.id)
        started = time.perf_counter()
        try:
            if mode == "confirm" and not getattr(session, "modern", False) and supports_form_elicitation(
                session.client_caps
            ):  # 2026-07-28 has no server-to-client requests: confirm falls back to approve there
                return await self._confirm(session, send, upstream, tool, exposed, arguments, digest, rule_id,
                                           reason, policy_version, settings)
            return await self._hold(session, send, upstream, tool, exposed, arguments, digest, rule_id, reason,
                                    policy_version, settings, progress_token)
        finally:
            self.observer.review_waited(time.perf_counter() - started, identity.tenant_id)

    def _new_hold(self, session: Any, upstream: str, tool: str, exposed: str, arguments: JSON, digest: str,
                  rule_id: str, reason: str, policy_version: int, mode: str) -> HeldCall:
        shown = json.dumps(arguments, sort_keys=True, ensure_ascii=False)
        if len(shown) > MAX_STORED_ARGUMENTS:
            shown = json.dumps({"_truncated": shown[:MAX_STORED_ARGUMENTS]})
        return HeldCall(
            id=mint_id("rev_"), tenant_id=session.identity.tenant_id, actor_id=session.identity.actor_id,
            upstream=upstream, tool=tool, exposed=exposed, args_digest=digest, arguments=shown, rule_id=rule_id,
            reason=reason, policy_version=policy_version, mode=mode, status="pending", created_at=self.clock(),
        )

    async def _hold(self, session: Any, send: Send, upstream: str, tool: str, exposed: str, arguments: JSON,
                    digest: str, rule_id: str, reason: str, policy_version: int, settings: ReviewSettings,
                    progress_token: Any) -> Settled:
        identity = session.identity
        held = await self._io(self.store.find_pending_hold, identity.tenant_id, identity.actor_id, upstream, tool,
                              digest)
        if held is None:
            held = self._new_hold(session, upstream, tool, exposed, arguments, digest, rule_id, reason,
                                  policy_version, "approve")
            await self._io(self.store.add_held_call, held)
            log.info("held %s: tenant %s actor %s tool %s (rule %s)", held.id, identity.tenant_id,
                     identity.actor_id, exposed, rule_id)
        woken = asyncio.Event()  # set by a review.decided signal for this hold
        self._waiting.setdefault(held.id, set()).add(woken)
        try:
            return await self._wait(held, woken, session, send, upstream, tool, digest, reason,
                                    settings.hold_timeout_seconds, progress_token)
        finally:
            waiters = self._waiting.get(held.id, set())
            waiters.discard(woken)
            if not waiters:
                self._waiting.pop(held.id, None)

    async def _wait(self, held: HeldCall, woken: asyncio.Event, session: Any, send: Send, upstream: str, tool: str,
                    digest: str, reason: str, timeout: float, progress_token: Any) -> Settled:
        """Look at the hold until it is decided or `timeout` passes: every `poll_s`, or when woken."""
        identity = session.identity
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        next_ping = loop.time()
        beat = 0
        while True:
            now = loop.time()
            if progress_token is not None and now >= next_ping:
                beat += 1
                await send({"jsonrpc": "2.0", "method": "notifications/progress", "params": {
                    "progressToken": progress_token, "progress": beat,
                    "message": f"held for review as {held.id}; waiting for an operator"}})
                next_ping = now + KEEPALIVE_S
            woken.clear()  # a decision from here on is seen by the read below or wakes the wait after it
            current = await self._io(self.store.get_held_call, held.id)
            if current is None:
                return Settled(False, "denied", held.id, tool_error(f"Review {held.id} was removed; call again."))
            if current.status == "denied":
                by = f" by {current.decided_by}" if current.decided_by else ""
                why = f": {current.decision_reason}" if current.decision_reason else ""
                return Settled(False, "denied", held.id, tool_error(f"Denied{by} (review {held.id}){why}"))
            if current.status == "approved":
                used = await self._io(self.store.consume_approval, identity.tenant_id, identity.actor_id, upstream,
                                      tool, digest, self.clock())
                if used is not None:
                    return Settled(True, "approved", used.id)
                return Settled(False, "held", held.id, tool_error(
                    f"Review {held.id} was approved, but the approval was already used or has expired. Call again "
                    "to be held for a new review."))
            if now >= deadline:
                return Settled(False, "held", held.id, tool_error(held_text(held.id, reason)))
            wait = min(self.poll_s, max(0.0, deadline - now))
            if progress_token is not None:
                wait = min(wait, max(0.0, next_ping - now))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), wait)

    async def _confirm(self, session: Any, send: Send, upstream: str, tool: str, exposed: str, arguments: JSON,
                       digest: str, rule_id: str, reason: str, policy_version: int,
                       settings: ReviewSettings) -> Settled:
        held = self._new_hold(session, upstream, tool, exposed, arguments, digest, rule_id, reason, policy_version,
                              "confirm")
        await self._io(self.store.add_held_call, held)
        gid = f"aeg-confirm-{held.id}@{self.store.replica_id}"  # answered on any replica: relayed here
        answer = _Answer()
        session.server_requests[gid] = (answer, gid)
        why = f" Reason: {reason}." if reason else ""
        params: JSON = {
            "message": f"Aegress policy asks you to confirm this call: {exposed} with arguments "
                       f"{held.arguments[:2000]}.{why} (review {held.id})",
            "requestedSchema": CONFIRM_SCHEMA,
        }
        if session.version >= "2025-11-25":
            params = {"mode": "form", **params}
        action, choice, note = "cancel", "", "no answer in time"
        try:
            await send({"jsonrpc": "2.0", "id": gid, "method": "elicitation/create", "params": params})
            reply = await asyncio.wait_for(answer.future, settings.hold_timeout_seconds)
            res = reply.get("result") if isinstance(reply.get("result"), dict) else {}
            action = str(res.get("action", "cancel"))
            content = res.get("content") if isinstance(res.get("content"), dict) else {}
            choice = str(content.get("decision", ""))
            note = str(content.get("reason", ""))[:500] if action == "accept" else action
            if "error" in reply:
                note = "the client could not ask"
        except TimeoutError:
            pass
        finally:
            session.server_requests.pop(gid, None)
        actor = session.identity.actor_id
        now = self.clock()
        if action == "accept" and choice == "approve":
            await self._io(self.store.decide_held_call, held.id, "approved", f"{actor} (confirm)", now, note,
                           now + settings.approval_lifetime_seconds)
            used = await self._io(self.store.consume_approval, held.tenant_id, actor, upstream, tool, digest, now)
            if used is not None:
                return Settled(True, "confirmed", held.id)
        await self._io(self.store.decide_held_call, held.id, "denied", f"{actor} (confirm)", now, note, None)
        return Settled(False, "denied", held.id,
                       tool_error(f"Not confirmed (review {held.id}): {note or 'denied'}. Nothing was run."))


# -- the operator's side (the CLI calls these; they run in any process) -------------------------------
def get_held(store: Store, held_id: str) -> HeldCall:
    held = store.get_held_call(held_id)
    if held is None:
        raise NotFound(f"No held call {held_id!r}.", hint="List them with `aegress review list`.")
    return held


def approve(store: Store, held_id: str, approver: str, now: float, lifetime_seconds: float) -> HeldCall:
    """Approve a pending hold: the approval releases one identical call by the same actor until it expires."""
    held = get_held(store, held_id)
    if held.status != "pending":
        raise UsageError(f"Review {held_id} is already {held.status}.", hint="See `aegress review show`.",
                         code="already-decided")
    check_approver(approver, held.actor_id)
    with sealed_change(store) as change:
        if not store.decide_held_call(held_id, "approved", approver, now, "", now + lifetime_seconds):
            raise UsageError(f"Review {held_id} was decided meanwhile.", code="already-decided")
        _seal_review(change, store, held, "review_approved", approver, "")
    signals.announce(store, signals.REVIEW_DECIDED, signals.review_decided(held.tenant_id, held_id))
    return get_held(store, held_id)


def deny(store: Store, held_id: str, approver: str, now: float, reason: str) -> HeldCall:
    held = get_held(store, held_id)
    if held.status != "pending":
        raise UsageError(f"Review {held_id} is already {held.status}.", hint="See `aegress review show`.",
                         code="already-decided")
    with sealed_change(store) as change:
        if not store.decide_held_call(held_id, "denied", approver, now, reason, None):
            raise UsageError(f"Review {held_id} was decided meanwhile.", code="already-decided")
        _seal_review(change, store, held, "review_denied", approver, reason)
    signals.announce(store, signals.REVIEW_DECIDED, signals.review_decided(held.tenant_id, held_id))
    return get_held(store, held_id)


def _seal_review(change: SealedChange, store: Store, held: HeldCall, kind: str, reviewer: str,
                 reason: str) -> None:
    """Seal the operator's decision in the tenant's log (with the decision itself), linked to the hold's
    own decision record."""
    from gateway.evidence.events import decision_seq_for

    seq = decision_seq_for(store, held.tenant_id, held.id)
    body: dict[str, object] = {"review_id": held.id, "reviewer": reviewer}
    if seq is not None:
        body["decision_seq"] = seq
    if reason:
        body["reason"] = reason
    change.seal(held.tenant_id, kind, body)
