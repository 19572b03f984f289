"""What every upstream transport shares: id allocation, pending calls, and routing of what comes back.

The gateway allocates its own JSON-RPC ids towards each upstream, so client ids never reach an
upstream and responses can only ever be matched to the call that caused them. Messages an upstream
sends during a call (progress, logs, requests for sampling or elicitation) go to that call's sink:
by the stream they arrived on (HTTP), by progress token, or, on stdio where nothing else relates
them, to the only call in flight. Anything else goes to `on_unsolicited`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.audit.redact import scrub
from gateway.errors import UpstreamError
from gateway.jsonrpc import (
    JSON,
    META_CLIENT_CAPABILITIES,
    META_CLIENT_INFO,
    META_PROTOCOL_VERSION,
    MODERN_VERSION,
    SUBSCRIPTION_ID,
    notification,
)
from gateway.types import UpstreamSpec

log = logging.getLogger("aegress.upstream")

Sink = Callable[[JSON], Awaitable[None]]


def _subscription_id(msg: JSON) -> int | None:
    """Pure: the id of our `subscriptions/listen` request a notification belongs to (2026-07-28), if it says.

    Over stdio every frame shares one pipe, so the acknowledgement and the events of a listen stream are
    told apart only by this `_meta` tag; without it they would reach no sink and the listen would stall."""
    params = msg.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    value = meta.get(SUBSCRIPTION_ID) if isinstance(meta, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None

CLIENT_INFO = {"name": "aegress-gateway", "version": "0.1.0"}
_COURTESY_TIMEOUT_S = 2.0


@dataclass(slots=True)
class Pending:
    future: asyncio.Future[JSON]
    sink: Sink | None
    progress_token: str | None = None
    method: str = ""
    headers: dict[str, str] | None = None


@dataclass(slots=True)
class _State:
    pending: dict[int, Pending] = field(default_factory=dict)
    by_progress: dict[str, Pending] = field(default_factory=dict)


class UpstreamConnection:
    """One initialized MCP session with one upstream; safe for many concurrent calls."""

    def __init__(self, spec: UpstreamSpec, *, protocol_version: str, capabilities: dict, timeout: float) -> None:
        self.spec = spec
        self.name = spec.name
        self.protocol_version = protocol_version
        self.modern = protocol_version == MODERN_VERSION
        self.client_capabilities = capabilities
        self.timeout = timeout
        self.init_result: JSON = {}
        self.closed = False
        self.on_unsolicited: Callable[[JSON], Awaitable[None]] | None = None
        self.on_closed: Callable[[], None] | None = None
        self.secrets: tuple[str, ...] = ()  # credentials injected towards this upstream, scrubbed from logs
        self._ids = itertools.count(1)
        self._last_id = 0  # ids above this were never sent: an answer bearing one is not late, it is wrong
        self._state = _State()
        self._progress_ids = itertools.count(1)

    # -- what transports implement -------------------------------------------------------------
    async def _open(self) -> None:
        raise NotImplementedError

    async def _send(self, message: JSON, pending: Pending | None) -> None:
        """Deliver one message; for HTTP the response stream is read here and dispatched."""
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    def scrub(self, text: str) -> str:
        """Text for our logs with this upstream's injected credentials replaced."""
        return scrub(text, self.secrets)

    # -- public API ----------------------------------------------------------------------------
    @property
    def capabilities(self) -> JSON:
        caps = self.init_result.get("capabilities")
        return caps if isinstance(caps, dict) else {}

    @property
    def busy(self) -> bool:
        """Whether any request is waiting on an answer from this upstream."""
        return any(not p.future.done() for p in self._state.pending.values())

    async def settle(self, timeout: float) -> None:
        """Wait, at most `timeout` seconds, until the requests in flight now have their answers."""
        waiting = [p.future for p in self._state.pending.values() if not p.future.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=timeout)

    async def start(self) -> None:
        """Open (bounded by the upstream's connect timeout), then handshake (bounded by its init timeout)."""
        limits = self.spec.limits
        try:
            async with asyncio.timeout(limits.connect_timeout_s):
                await self._open()
        except TimeoutError as exc:
            raise UpstreamError(
                f"Upstream {self.name!r} did not connect within {limits.connect_timeout_s:g} s.",
                hint=f"Raise it with `aegress upstream set --tenant {self.spec.tenant_id} {self.name} "
                     "--connect-timeout SECONDS`.",
                code="upstream-timeout",
            ) from exc
        if self.modern:
            await self._discover()
            return
        params = {
            "protocolVersion": self.protocol_version,
            "capabilities": self.client_capabilities,
            "clientInfo": CLIENT_INFO,
        }
        response = await self.request("initialize", params, timeout=limits.init_timeout_s)
        if "error" in response:
            raise UpstreamError(f"Upstream {self.name!r} refused to initialize: {response['error'].get('message')}")
        self.init_result = response.get("result") or {}
        await self.notify("notifications/initialized")

    async def _discover(self) -> None:
        """2026-07-28 has no handshake: ask what the upstream supports; legacy-only ones are refused here."""
        try:
            response = await self.request("server/discover", {}, timeout=min(self.spec.limits.init_timeout_s, 10.0))
        except UpstreamError as exc:
            raise UpstreamError(
                f"Upstream {self.name!r} does not speak 2026-07-28.", code="upstream-legacy-only"
            ) from exc
        res = response.get("result")
        if not isinstance(res, dict) or MODERN_VERSION not in (res.get("supportedVersions") or []):
            raise UpstreamError(f"Upstream {self.name!r} does not speak 2026-07-28.", code="upstream-legacy-only")
        meta = res.get("_meta") or {}
        self.init_result = {
            "protocolVersion": MODERN_VERSION,
            "capabilities": res.get("capabilities") or {},
            "serverInfo": meta.get("io.modelcontextprotocol/serverInfo") or {},
            **({"instructions": res["instructions"]} if isinstance(res.get("instructions"), str) else {}),
        }

    def _envelope(self, params: JSON | None, meta: JSON | None) -> JSON | None:
        """Per-request `_meta` for a 2026-07-28 upstream: the caller's envelope, else an honest empty one."""
        if not self.modern:
            if not meta:
                return params
            return {**(params or {}), "_meta": {**((params or {}).get("_meta") or {}), **meta}}
        merged = {**((params or {}).get("_meta") or {}), **(meta or {})}
        merged.setdefault(META_PROTOCOL_VERSION, MODERN_VERSION)
        merged.setdefault(META_CLIENT_CAPABILITIES, self.client_capabilities)
        merged.setdefault(META_CLIENT_INFO, CLIENT_INFO)
        return {**(params or {}), "_meta": merged}

    async def request(
        self,
        method: str,
        params: JSON | None = None,
        *,
        meta: JSON | None = None,
        sink: Sink | None = None,
        timeout: float | None = None,
        progress_token: Any = None,
        on_sent: Callable[[int], None] | None = None,
        headers: dict[str, str] | None = None,
    ) -> JSON:
        """Send a request and wait for its response message (result or error, upstream's own id).

        When `progress_token` is given the caller wants progress: the upstream sees a fresh token
        of ours, and notifications come back to `sink` with the caller's token restored by them.
        """
        if self.closed:
            raise UpstreamError(f"Upstream {self.name!r} is not connected.", code="upstream-not-connected")
        params = self._envelope(params, meta)
        msg_id = self._last_id = next(self._ids)
        loop = asyncio.get_running_loop()
        pending = Pending(loop.create_future(), sink, method=method, headers=headers)
        message: JSON = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not None:
            message["params"] = params
        if progress_token is not None:
            token = f"p{next(self._progress_ids)}"
            pending.progress_token = token
            self._state.by_progress[token] = pending
            meta = dict(params.get("_meta") or {}) if params else {}
            meta["progressToken"] = token
            message["params"] = {**(params or {}), "_meta": meta}
        self._state.pending[msg_id] = pending
        if on_sent is not None:
            on_sent(msg_id)
        try:
            # One task, no helper tasks: the transport's send returns once the answer is dispatched
            # (HTTP reads its response stream up to our response) or once the bytes are written (stdio).
            async with asyncio.timeout(timeout or self.timeout):
                await self._send(message, pending)
                return await pending.future
        except TimeoutError as exc:
            if method != "initialize":  # MCP: initialize is never cancelled
                await self.notify_quiet("notifications/cancelled", {"requestId": msg_id, "reason": "gateway timeout"})
            raise UpstreamError(
                f"Upstream {self.name!r} did not answer {method} within {timeout or self.timeout:g} s.",
                hint=f"Raise it with `aegress upstream set --tenant {self.spec.tenant_id} {self.name} "
                     f"--{'init' if method in ('initialize', 'server/discover') else 'call'}-timeout SECONDS`.",
                code="upstream-timeout",
            ) from exc
        finally:
            self._state.pending.pop(msg_id, None)
            if pending.progress_token is not None:
                self._state.by_progress.pop(pending.progress_token, None)

    async def notify(self, method: str, params: JSON | None = None) -> None:
        await self._send(notification(method, params), None)

    async def notify_quiet(self, method: str, params: JSON | None = None) -> None:
        """A best-effort courtesy (cancel): bounded, so an upstream that stopped reading cannot hold us."""
        try:
            async with asyncio.timeout(_COURTESY_TIMEOUT_S):
                await self.notify(method, params)
        except Exception:  # a best-effort courtesy (cancel) must not mask the real error
            log.debug("could not send %s to %s", method, self.name)

    async def respond(self, message: JSON) -> None:
        """Answer a request the upstream sent us (sampling, elicitation, roots) with its own id."""
        await self._send(message, None)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._fail_all(UpstreamError(f"Upstream {self.name!r} closed."))
        try:
            await self._close()
        finally:
            if self.on_closed is not None:
                self.on_closed()

    # -- routing what comes back ---------------------------------------------------------------
    def _only_call(self) -> Pending | None:
        """The one request in flight, if exactly one is: the only call an unattributable answer can be for."""
        live = [p for p in self._state.pending.values() if not p.future.done()]
        return live[0] if len(live) == 1 else None

    def _bad_answer(self, msg_id: object) -> None:
        """An answer bearing an id we never sent: fail the only call in flight at once; with several in
        flight it cannot be attributed, so it is dropped and their call timeouts bound the wait."""
        only = self._only_call()
        log.warning("upstream %s answered with an id it was never sent (%s); %s", self.name,
                    str(msg_id)[:40], "failing the call in flight" if only else "dropped")
        if only is not None:
            only.future.set_exception(UpstreamError(
                f"Upstream {self.name!r} sent an answer that matches no request of ours.",
                hint="The upstream server is misbehaving; check its logs or version.", code="upstream-bad-answer"))

    def fail_oversize(self, msg_id: int | None) -> None:
        """An answer over `max_message_bytes` was discarded: fail the call it answered (by id, else the
        only call in flight) at once, instead of leaving it to the call timeout."""
        if msg_id is not None and 0 < msg_id <= self._last_id:  # an id we sent: that call, if still waiting
            pending = self._state.pending.get(msg_id)
            pending = pending if pending is not None and not pending.future.done() else None
        else:
            pending = self._only_call()
        limit = self.spec.limits.max_message_bytes
        log.warning("upstream %s sent a message over %d bytes; discarded%s", self.name, limit,
                    "" if pending else " (no call to fail)")
        if pending is not None:
            pending.future.set_exception(UpstreamError(
                f"Upstream {self.name!r} sent an answer larger than {limit} bytes; it was discarded.",
                hint=f"Raise the limit with `aegress upstream set --tenant {self.spec.tenant_id} {self.name} "
                     "--max-message-bytes N`.",
                code="upstream-answer-too-large"))

    def _fail_all(self, exc: Exception) -> None:
        for pending in list(self._state.pending.values()):
            if not pending.future.done():
                pending.future.set_exception(exc)

    async def _dispatch(self, msg: JSON, related: Pending | None = None) -> None:
        if "method" not in msg:
            msg_id = msg.get("id")
            pending = self._state.pending.get(msg_id) if isinstance(msg_id, int) else None
            if pending is not None and not pending.future.done():
                pending.future.set_result(msg)
                return
            if isinstance(msg_id, int) and not isinstance(msg_id, bool) and 0 < msg_id <= self._last_id:
                log.debug("dropping a late answer from %s to finished call %d", self.name, msg_id)
                return
            self._bad_answer(msg_id)
            return
        method = msg["method"]
        target = related
        if method == "notifications/progress":
            token = (msg.get("params") or {}).get("progressToken")
            target = self._state.by_progress.get(token) if isinstance(token, str) else None
            if target is None:
                return  # a progress token we did not hand out: never guess its owner
        elif target is None and (sub_id := _subscription_id(msg)) in self._state.pending:
            target = self._state.pending[sub_id]  # a listen stream's frame, on a transport without per-request streams
        elif target is None and ("id" in msg or method == "notifications/message"):
            live = [p for p in self._state.pending.values() if p.sink is not None and p.method != "initialize"]
            if len(live) == 1:
                target = live[0]
        if target is not None and target.sink is not None:
            await target.sink(msg)
        elif self.on_unsolicited is not None:
            await self.on_unsolicited(msg)
        elif "id" in msg:
            await self.respond(
                {"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32601, "message": "Not available here."}}
            )
