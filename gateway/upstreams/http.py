"""Streamable HTTP upstream, over the lean `h1` client; every upstream is untrusted.

Redirects are never followed (a redirect could point the gateway's credentials elsewhere). The
upstream's own credentials come from the registration (`--header`, values resolved from keyring
or env at connect time); the client's Authorization, cookies and X-Aegress-* headers never get here
because nothing of the client's request is copied: each upstream request is built from scratch.

Every request (POSTs, the GET stream, stream resumption, session DELETE) goes to the addresses that
passed the private-address check at connect time: the name is resolved once. What comes back is
bounded by the upstream's limits (`UpstreamSpec.limits`): a JSON body, each SSE event and all events
of one call's answer to `max_message_bytes`, the silence between bytes of an answer to
`idle_timeout_s`. Crossing one ends that call and closes that one HTTP connection; other calls go on.
A call's stream belongs to its request: a response with another id, or a stream that ends without
the response, fails the call at once. An upstream that forgot our session (404, it restarted) gets a
new `initialize` and the request once more: it never processed it. A 404 whose body is the response
to that very request (a proxy or framework in front) was processed: it is delivered, never resent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl

import orjson

from gateway import netguard
from gateway.errors import UpstreamError
from gateway.jsonrpc import JSON, STREAM_BREAK, modern_headers
from gateway.upstreams.base import CLIENT_INFO, Pending, UpstreamConnection
from gateway.upstreams.h1 import H1Error, H1Pool, H1Timeout, H1TooLarge, Response, check_header
from gateway.upstreams.sse import EventTooLarge, SseParser

log = logging.getLogger("aegress.upstream.http")

_MAX_RESUMES = 5
_MAX_CONNECTIONS = 64
_ERROR_BODY = 64 * 1024
_LONG_LIVED = ("subscriptions/listen",)  # answers that may stay silent and run on: bounded per event only


def resolve_header_value(value: str) -> str:
    """`env:NAME` and `keyring:NAME` references are resolved here, at the edge, never stored."""
    if value.startswith("env:"):
        name = value[4:]
        if name not in os.environ:
            raise UpstreamError(f"Upstream header references env var {name!r}, which is not set.")
        return os.environ[name]
    if value.startswith("keyring:"):
        from gateway.credentials import get_upstream_secret

        secret = get_upstream_secret(value[len("keyring:") :])
        if secret is None:
            raise UpstreamError(
                f"Upstream header references keyring entry {value[8:]!r}, which is missing.",
                hint="Store it with `aegress upstream secret set`.",
            )
        return secret
    return value


def _is_request(message: JSON) -> bool:
    return "method" in message and "id" in message


class HttpConnection(UpstreamConnection):
    _pool: H1Pool | None = None
    _session_id: str | None = None
    _listener: asyncio.Task[None] | None = None
    _renewing: asyncio.Lock | None = None

    async def _open(self) -> None:
        url = self.spec.url or ""
        addresses = await asyncio.to_thread(netguard.resolve, url)
        netguard.check_url(url, addresses, allow_private=self.spec.allow_private)
        if not addresses:
            raise UpstreamError(f"Upstream {self.name!r}: its host name does not resolve.",
                                hint="Check the URL with `aegress upstream list` and the DNS.")
        headers = {k: resolve_header_value(v) for k, v in self.spec.headers.items()}
        limits = self.spec.limits
        self._max = limits.max_message_bytes
        self._idle = limits.idle_timeout_s
        self._renewing = asyncio.Lock()
        tls = _tls_context() if url.startswith("https:") else None
        try:
            self._pool = H1Pool(url, addresses, ssl_context=tls, max_connections=_MAX_CONNECTIONS,
                                connect_timeout=limits.connect_timeout_s)
            self._static = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
            for name, value in self._static:
                check_header(name, value)
        except (H1Error, UnicodeEncodeError, ValueError) as exc:
            raise UpstreamError(f"Upstream {self.name!r} has a URL or header the gateway cannot send.",
                                hint="Check `aegress upstream list`.") from exc

    async def start(self) -> None:
        """Initialize, then open the GET stream: servers send unrelated requests and notifications there."""
        await super().start()
        if not self.modern:
            await self.listen()

    def _headers(self, get: bool = False) -> dict[str, str]:
        h = {"accept": "text/event-stream" if get else "application/json, text/event-stream"}
        if not get:
            h["content-type"] = "application/json"
        if self._session_id:
            h["mcp-session-id"] = self._session_id
        if self.init_result and not self.modern:
            h["mcp-protocol-version"] = str(self.init_result.get("protocolVersion", self.protocol_version))
        return h

    def _wire(self, headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
        return [*self._static, *((k.encode(), v.encode()) for k, v in headers.items())]

    # -- errors that end one call ------------------------------------------------------------------
    def _too_large(self, what: str) -> UpstreamError:
        return UpstreamError(
            f"Upstream {self.name!r} sent {what} larger than its limit of {self._max} bytes "
            "(max_message_bytes); the call was ended.",
            code="upstream-answer-too-large",
            hint=f"If answers this large are expected, raise the limit: `aegress upstream set --tenant "
                 f"{self.spec.tenant_id} {self.name} --max-message-bytes N`.",
        )

    def _stalled(self) -> UpstreamError:
        return UpstreamError(
            f"Upstream {self.name!r} went silent for {self._idle:g} s in the middle of an answer "
            "(idle_timeout_s); the call was ended.",
            code="upstream-stalled",
            hint=f"If this upstream is slow by design, raise the limit: `aegress upstream set --tenant "
                 f"{self.spec.tenant_id} {self.name} --idle-timeout SECONDS`.",
        )

    def _bad_answer(self, what: str) -> UpstreamError:
        return UpstreamError(f"Upstream {self.name!r} {what}; the call was ended.", code="upstream-bad-answer")

    # -- sending -------------------------------------------------------------------------------------
    async def _send(self, message: JSON, pending: Pending | None) -> None:
        stale = self._session_id
        try:
            await self._post(message, pending)
        except UpstreamError as exc:
            if exc.code != "upstream-session-gone" or not _is_request(message) or message["method"] == "initialize":
                raise
            log.info("upstream %s forgot session; initializing a new one", self.name)
            await self._renew(stale)
            await self._post(message, pending)  # it never reached the old session: safe to send once more

    async def _renew(self, stale: str | None) -> None:
        """A new session after the upstream forgot ours (it restarted); once, however many calls noticed."""
        assert self._renewing is not None
        async with self._renewing:
            if self._session_id != stale:
                return  # another call renewed it already
            if self._listener is not None:
                self._listener.cancel()
                self._listener = None
            params = {"protocolVersion": self.protocol_version, "capabilities": self.client_capabilities,
                      "clientInfo": CLIENT_INFO}
            try:
                response = await self.request("initialize", params, timeout=self.spec.limits.init_timeout_s)
                if "error" in response or self._session_id in (None, stale):
                    raise UpstreamError(f"Upstream {self.name!r} refused a new session.")
                self.init_result = response.get("result") or {}
                await self.notify("notifications/initialized")
            except UpstreamError:
                await self.close()  # the next call connects afresh
                raise
            await self.listen()

    async def _post(self, message: JSON, pending: Pending | None) -> None:
        """POST one message and read its answer (JSON or an SSE stream) up to our response."""
        pool = self._pool
        if pool is None:
            raise UpstreamError(f"Upstream {self.name!r} is not connected.", code="upstream-not-connected")
        headers = self._headers()
        if message.get("method") == "initialize":  # a new session: calls in flight keep the old id meanwhile
            headers.pop("mcp-session-id", None)
            headers.pop("mcp-protocol-version", None)
        if self.modern:
            headers.update(modern_headers(message))
            if pending is not None and pending.headers:
                headers.update(pending.headers)
        expected = message["id"] if _is_request(message) else None
        try:
            resp = await pool.post(self._wire(headers), orjson.dumps(message), timeout=self.timeout)
        except H1Timeout as exc:
            raise UpstreamError(f"Upstream {self.name!r} did not answer in time.", code="upstream-timeout") from exc
        except H1Error as exc:
            raise UpstreamError(f"Upstream {self.name!r} is unreachable ({exc}).") from exc
        drain = False
        try:
            drain = await self._answer(resp, message, pending, expected)
        except H1TooLarge as exc:
            raise self._too_large("a response body") from exc
        except EventTooLarge as exc:
            raise self._too_large("a server-sent event") from exc
        except H1Timeout as exc:
            raise self._stalled() from exc
        except H1Error as exc:
            raise UpstreamError(f"Upstream {self.name!r} failed mid-answer ({exc}).") from exc
        finally:
            resp.release(drain=drain)

    async def _answer(self, resp: Response, message: JSON, pending: Pending | None, expected: object) -> bool:
        """Read one POST's answer; True when the connection may be drained and reused."""
        status = resp.status
        got = resp.headers
        if status in (301, 302, 303, 307, 308):
            raise UpstreamError(f"Upstream {self.name!r} answered with a redirect, which is refused.")
        if status >= 400:
            # The bounded body first: a JSON-RPC response to our very request means the request was
            # processed (a proxy or framework answering 404 with it), so it is delivered, never re-sent.
            with contextlib.suppress(H1TooLarge, orjson.JSONDecodeError):  # an error body is a courtesy
                parsed = orjson.loads(await resp.read(self._idle, _ERROR_BODY))
                if _answers(parsed, expected):
                    await self._dispatch(parsed, pending)
                    return False
            if status == 404 and self._session_id:  # spec: the session is gone; the request never ran
                raise UpstreamError(f"Upstream {self.name!r} ended the session.", code="upstream-session-gone")
            raise UpstreamError(f"Upstream {self.name!r} answered HTTP {status}.")
        if status == 202:
            if expected is not None:
                raise self._bad_answer("accepted a request without answering it")
            return False
        if message.get("method") == "initialize":
            self._session_id = got.get(b"mcp-session-id", b"").decode() or None
        ctype = got.get(b"content-type", b"").split(b";")[0].strip().lower()
        drain = False
        if ctype == b"text/event-stream":
            long_lived = message.get("method") in _LONG_LIVED
            await self._read_stream(resp, pending, expected, long_lived=long_lived)
            drain = True
        elif ctype == b"application/json":
            body = await resp.read(self._idle, self._max)
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise self._bad_answer("answered with a body that is not JSON") from exc
            if isinstance(parsed, dict):
                await self._accept(parsed, pending, expected)
        else:
            raise UpstreamError(f"Upstream {self.name!r} answered with content type {ctype.decode()!r}.")
        if expected is not None and pending is not None and not pending.future.done():
            raise self._bad_answer("ended its answer without the response")
        return drain

    async def _accept(self, msg: JSON, pending: Pending | None, expected: object) -> None:
        """A message on a request's stream: requests and notifications travel with the call; a response
        must be the one to that request (anything else is dropped, and fails the call at once)."""
        if "method" in msg:
            await self._dispatch(msg, pending)
            return
        if expected is not None and _same_id(msg.get("id"), expected):
            await self._dispatch(msg, pending)
            return
        log.warning("upstream %s sent a response for id %.40r on the stream of request %r; dropped",
                    self.name, msg.get("id"), expected)
        if pending is not None:
            raise self._bad_answer("answered with a response to another request")

    async def _read_stream(self, resp: Response, pending: Pending | None, expected: object, *,
                           long_lived: bool = False) -> None:
        """Read one SSE answer up to our response; if it ends before that, resume it with Last-Event-ID.

        All events of the answer, across resumptions, count against `max_message_bytes`."""
        idle = None if long_lived else self._idle
        budget = None if long_lived else self._max
        received = 0
        last_id = ""
        retry_ms = 1000
        for attempt in range(_MAX_RESUMES + 1):
            if attempt:
                await asyncio.sleep(min(retry_ms, 5000) / 1000)
                resumed = await self._resume(last_id)
                if resumed is None:
                    return
                resp = resumed
            parser = SseParser(self._max)
            answered = False
            try:
                while not answered and (chunk := await resp.next_chunk(idle)) is not None:
                    received += len(chunk)
                    if budget is not None and received > budget:
                        raise self._too_large("an answer stream")
                    for event_id, retry, data in parser.feed(chunk):
                        last_id = event_id or last_id
                        retry_ms = retry if retry is not None else retry_ms
                        if not data:
                            continue
                        try:
                            msg = orjson.loads(data)
                        except orjson.JSONDecodeError:
                            log.warning("upstream %s sent an event that is not JSON; dropped", self.name)
                            continue
                        if isinstance(msg, dict):
                            await self._accept(msg, pending, expected)
                    answered = pending is not None and pending.future.done()
            finally:
                if attempt:
                    resp.release(drain=answered)
            if pending is None or pending.future.done() or not last_id:
                return
            if pending.sink is not None and attempt == 0:  # the upstream polls: let a resumable client poll too
                await pending.sink(STREAM_BREAK)

    async def _resume(self, last_id: str) -> Response | None:
        assert self._pool is not None
        headers = {**self._headers(get=True), "last-event-id": last_id}
        try:
            resp = await self._pool.request(b"GET", self._wire(headers), None, timeout=self._idle)
        except H1Error as exc:
            raise UpstreamError(f"Upstream {self.name!r} could not resume an answer ({exc}).") from exc
        if resp.status != 200:
            resp.release()
            return None
        return resp

    async def listen(self) -> None:
        """Open the standalone GET stream for unsolicited messages (list changes, subscriptions)."""
        if self._listener is None and self._pool is not None:
            self._listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        """The GET stream may stay silent for ever; only its events are bounded. Responses never
        belong on it (spec): they are dropped."""
        assert self._pool is not None
        try:
            resp = await self._pool.request(b"GET", self._wire(self._headers(get=True)), None, timeout=self.timeout)
        except H1Error:
            return
        try:
            if resp.status != 200:
                return
            parser = SseParser(self._max)
            while (chunk := await resp.next_chunk(None)) is not None:
                for _, _, data in parser.feed(chunk):
                    with contextlib.suppress(orjson.JSONDecodeError):
                        msg = orjson.loads(data) if data else None
                        if isinstance(msg, dict):
                            await self._accept(msg, None, None)
        except (H1Error, EventTooLarge) as exc:
            log.warning("upstream %s: GET stream ended (%s)", self.name, exc)
        finally:
            resp.release()

    async def _close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
        pool = self._pool
        if pool is None:
            return
        if self._session_id:
            with contextlib.suppress(H1Error, TimeoutError):
                async with asyncio.timeout(2.0):
                    resp = await pool.request(b"DELETE", self._wire(self._headers(get=True)), None, timeout=2.0)
                    resp.release()
        await pool.aclose()


def _same_id(got: object, expected: object) -> bool:
    return type(got) is type(expected) and got == expected


def _answers(parsed: object, expected: object) -> bool:
    """Pure: whether a decoded body is a JSON-RPC response (result or error) to the request with id `expected`."""
    return (expected is not None and isinstance(parsed, dict) and ("error" in parsed or "result" in parsed)
            and "method" not in parsed and _same_id(parsed.get("id"), expected))


def _tls_context() -> ssl.SSLContext:
    """Certificates verified with httpx2's default context (the SDK's stack), environment ignored."""
    import httpx2

    return httpx2.create_ssl_context(trust_env=False)
