"""Streamable HTTP upstream: calls over the lean `h1` client, the rest over httpx2 (the SDK's stack).

Redirects are never followed (a redirect could point the gateway's credentials elsewhere). The
upstream's own credentials come from the registration (`--header`, values resolved from keyring
or env at connect time); the client's Authorization, cookies and X-Aegress-* headers never get here
because nothing of the client's request is copied: each upstream request is built from scratch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx2
import orjson

from gateway import netguard
from gateway.errors import UpstreamError
from gateway.jsonrpc import JSON, STREAM_BREAK, modern_headers
from gateway.upstreams.base import Pending, UpstreamConnection
from gateway.upstreams.h1 import H1Error, H1Pool, check_header

log = logging.getLogger("aegress.upstream.http")

_MAX_RESUMES = 5
_MAX_CONNECTIONS = 64
_MAX_JSON = 64 * 1024 * 1024


def _parse_event(block: bytes) -> tuple[str, int | None, bytes]:
    """One SSE event block -> (id, retry, data)."""
    event_id, retry, data = "", None, []
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"id":
            event_id = value.decode(errors="replace")
        elif name == b"retry" and value.isdigit():
            retry = int(value)
    return event_id, retry, b"\n".join(data)


class SseParser:
    """Server-sent events from bytes as they arrive (LF or CRLF line ends), without decoding text."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[tuple[str, int | None, bytes]]:
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        events = []
        while (end := buf.find(b"\n\n")) >= 0:
            events.append(_parse_event(buf[:end]))
            buf = buf[end + 2 :]
        self._buf = buf
        return events

    def end(self) -> list[tuple[str, int | None, bytes]]:
        buf, self._buf = self._buf, b""
        return [_parse_event(buf)] if buf.strip() else []


async def sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[str, int | None, bytes]]:
    """Server-sent events from a byte stream (the GET stream and resumed streams)."""
    parser = SseParser()
    async for chunk in chunks:
        for event in parser.feed(chunk):
            yield event
    for event in parser.end():
        yield event


def _next_of(chunks: AsyncIterator[bytes]) -> Callable[[], Awaitable[bytes | None]]:
    it = aiter(chunks)

    async def next_chunk() -> bytes | None:
        try:
            return await anext(it)
        except StopAsyncIteration:
            return None

    return next_chunk


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


class HttpConnection(UpstreamConnection):
    _client: httpx2.AsyncClient | None = None
    _pool: H1Pool | None = None
    _session_id: str | None = None
    _listener: asyncio.Task[None] | None = None

    async def _open(self) -> None:
        url = self.spec.url or ""
        addresses = await asyncio.to_thread(netguard.resolve, url)
        netguard.check_url(url, addresses, allow_private=self.spec.allow_private)
        headers = {k: resolve_header_value(v) for k, v in self.spec.headers.items()}
        tls = httpx2.create_ssl_context(trust_env=False) if url.startswith("https:") else None
        try:
            self._pool = H1Pool(url, addresses, ssl_context=tls, max_connections=_MAX_CONNECTIONS,
                                connect_timeout=min(self.timeout, 10.0))
            self._static = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
            for name, value in self._static:
                check_header(name, value)
        except (H1Error, UnicodeEncodeError, ValueError) as exc:
            raise UpstreamError(f"Upstream {self.name!r} has a URL or header the gateway cannot send.",
                                hint="Check `aegress upstream list`.") from exc
        self._read_timeout = httpx2.Timeout(self.timeout).read or self.timeout
        # the GET stream, stream resumption and session teardown
        self._client = httpx2.AsyncClient(
            headers=headers,
            timeout=httpx2.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
            follow_redirects=False,
            trust_env=False,
            limits=httpx2.Limits(max_connections=4, max_keepalive_connections=2, keepalive_expiry=30.0),
        )

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

    async def _send(self, message: JSON, pending: Pending | None) -> None:
        pool = self._pool
        if pool is None or self._client is None:
            raise UpstreamError(f"Upstream {self.name!r} is not connected.")
        headers = self._headers()
        if self.modern:
            headers.update(modern_headers(message))
            if pending is not None and pending.headers:
                headers.update(pending.headers)
        wire = [*self._static, *((k.encode(), v.encode()) for k, v in headers.items())]
        timeout = self._read_timeout
        try:
            resp = await pool.post(wire, orjson.dumps(message), timeout=timeout)
        except H1Error as exc:
            raise UpstreamError(f"Upstream {self.name!r} is unreachable ({exc}).") from exc
        drain = False
        try:
            status = resp.status
            got = resp.headers
            if status in (301, 302, 303, 307, 308):
                raise UpstreamError(f"Upstream {self.name!r} answered with a redirect, which is refused.")
            if status == 202:
                return
            if status == 404 and self._session_id:
                raise UpstreamError(f"Upstream {self.name!r} ended the session.", code="upstream-session-gone")
            if status >= 400:
                body = (await resp.read(timeout, 64 * 1024))[:2000]
                with contextlib.suppress(Exception):
                    parsed = orjson.loads(body)
                    if isinstance(parsed, dict) and "error" in parsed and "id" in parsed:
                        await self._dispatch(parsed, pending)
                        return
                raise UpstreamError(f"Upstream {self.name!r} answered HTTP {status}.")
            if message.get("method") == "initialize":
                self._session_id = got.get(b"mcp-session-id", b"").decode() or None
            ctype = got.get(b"content-type", b"").split(b";")[0].strip().lower()
            if ctype == b"text/event-stream":
                await self._read_stream(lambda: resp.next_chunk(timeout), pending)
                drain = True
            elif ctype == b"application/json":
                parsed = orjson.loads(await resp.read(timeout, _MAX_JSON))
                if isinstance(parsed, dict):
                    await self._dispatch(parsed, pending)
            else:
                raise UpstreamError(f"Upstream {self.name!r} answered with content type {ctype.decode()!r}.")
        except (H1Error, httpx2.HTTPError) as exc:  # httpx2: a resumed stream (`_read_stream`)
            raise UpstreamError(f"Upstream {self.name!r} failed mid-answer ({exc}).") from exc
        finally:
            resp.release(drain=drain)

    async def _read_stream(self, next_chunk: Callable[[], Awaitable[bytes | None]], pending: Pending | None) -> None:
        """Read one SSE stream up to our response; if it ends before that, resume it with Last-Event-ID."""
        last_id = ""
        retry_ms = 1000
        for attempt in range(_MAX_RESUMES + 1):
            resumed: httpx2.Response | None = None
            if attempt:
                await asyncio.sleep(min(retry_ms, 5000) / 1000)
                resumed = await self._resume(last_id)
                if resumed is None:
                    return
                next_chunk = _next_of(resumed.aiter_raw())
            parser = SseParser()
            try:
                while True:
                    chunk = await next_chunk()
                    events = parser.feed(chunk) if chunk is not None else parser.end()
                    for event_id, retry, data in events:
                        last_id = event_id or last_id
                        retry_ms = retry if retry is not None else retry_ms
                        if not data:
                            continue
                        try:
                            msg = orjson.loads(data)
                        except orjson.JSONDecodeError:
                            continue
                        if isinstance(msg, dict):
                            await self._dispatch(msg, pending)
                    if chunk is None or (pending is not None and pending.future.done()):
                        break
            finally:
                if resumed is not None:
                    await resumed.aclose()
            if pending is None or pending.future.done() or not last_id:
                return
            if pending.sink is not None and attempt == 0:  # the upstream polls: let a resumable client poll too
                await pending.sink(STREAM_BREAK)

    async def _resume(self, last_id: str) -> httpx2.Response | None:
        assert self._client is not None
        headers = {**self._headers(get=True), "last-event-id": last_id}
        request = self._client.build_request("GET", self.spec.url or "", headers=headers)
        resp = await self._client.send(request, stream=True)
        if resp.status_code != 200:
            await resp.aclose()
            return None
        return resp

    async def listen(self) -> None:
        """Open the standalone GET stream for unsolicited messages (list changes, subscriptions)."""
        if self._listener is None and self._client is not None:
            self._listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        assert self._client is not None
        with contextlib.suppress(httpx2.HTTPError, asyncio.CancelledError):
            async with self._client.stream("GET", self.spec.url or "", headers=self._headers(get=True)) as resp:
                if resp.status_code != 200:
                    return
                async for _, _, data in sse_events(resp.aiter_raw()):
                    if data:
                        with contextlib.suppress(orjson.JSONDecodeError):
                            msg = orjson.loads(data)
                            if isinstance(msg, dict):
                                await self._dispatch(msg, None)

    async def _close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
        client = self._client
        if client is None:
            return
        if self._session_id:
            with contextlib.suppress(Exception):
                await client.delete(self.spec.url or "", headers=self._headers(get=True), timeout=2.0)
        await client.aclose()
        if self._pool is not None:
            await self._pool.aclose()
