"""Streamable HTTP upstream over httpx2 (the HTTP stack the MCP SDK itself brings).

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
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpcore2
import httpx2
import orjson

from gateway import netguard
from gateway.errors import UpstreamError
from gateway.jsonrpc import JSON, modern_headers
from gateway.upstreams.base import Pending, UpstreamConnection

log = logging.getLogger("aegress.upstream.http")

_MAX_RESUMES = 5
# Calls go through httpcore2 (the transport under httpx2, the SDK's HTTP stack) without httpx2's
# request/response model layer, which was most of the gateway's CPU per call. httpcore's pool probes
# every idle connection on each request it assigns, so one pool of 64 connections costs 64 syscalls
# per call; several small pools, picked by load, keep that constant.
_SHARDS = 8
_PER_SHARD = 8
_TRANSPORT_ERRORS = (httpcore2.NetworkError, httpcore2.TimeoutException, httpcore2.ProtocolError,
                     httpcore2.PoolTimeout)


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


async def sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[str, int | None, bytes]]:
    """Server-sent events from a byte stream (LF or CRLF line ends), parsed without decoding text."""
    buf = b""
    async for chunk in chunks:
        buf += chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        while (end := buf.find(b"\n\n")) >= 0:
            block, buf = buf[:end], buf[end + 2 :]
            yield _parse_event(block)
    if buf.strip():
        yield _parse_event(buf)


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


async def _read_all(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    out = bytearray()
    async for chunk in chunks:
        out += chunk
        if len(out) > limit:
            raise UpstreamError("An upstream answer exceeds the size the gateway accepts.")
    return bytes(out)


class HttpConnection(UpstreamConnection):
    _client: httpx2.AsyncClient | None = None
    _pools: list[httpcore2.AsyncConnectionPool]
    _load: list[int]
    _session_id: str | None = None
    _listener: asyncio.Task[None] | None = None

    async def _open(self) -> None:
        url = self.spec.url or ""
        addresses = await asyncio.to_thread(netguard.resolve, url)
        netguard.check_url(url, addresses, allow_private=self.spec.allow_private)
        headers = {k: resolve_header_value(v) for k, v in self.spec.headers.items()}

        def client() -> httpx2.AsyncClient:
            return httpx2.AsyncClient(
                headers=headers,
                timeout=httpx2.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
                follow_redirects=False,
                trust_env=False,
                limits=httpx2.Limits(
                    max_connections=_PER_SHARD, max_keepalive_connections=_PER_SHARD, keepalive_expiry=30.0
                ),
            )

        self._pools = [
            httpcore2.AsyncConnectionPool(max_connections=_PER_SHARD, max_keepalive_connections=_PER_SHARD,
                                          keepalive_expiry=30.0)
            for _ in range(_SHARDS)
        ]
        self._load = [0] * _SHARDS
        parts = urlsplit(url)
        self._url = url.encode()
        self._static = [(b"host", (parts.netloc.rsplit("@", 1)[-1]).encode()),
                        *((k.encode(), v.encode()) for k, v in headers.items())]
        read = httpx2.Timeout(self.timeout).read or self.timeout
        self._extensions = {"timeout": {"connect": min(self.timeout, 10.0), "read": read, "write": read,
                                        "pool": read}}
        self._client = client()  # the GET stream, stream resumption and session teardown

    def _pick(self) -> int:
        return min(range(_SHARDS), key=self._load.__getitem__)

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
        if self._client is None:
            raise UpstreamError(f"Upstream {self.name!r} is not connected.")
        shard = self._pick()
        self._load[shard] += 1
        try:
            headers = self._headers()
            if self.modern:
                headers.update(modern_headers(message))
                if pending is not None and pending.headers:
                    headers.update(pending.headers)
            wire = [*self._static, *((k.encode(), v.encode()) for k, v in headers.items())]
            async with self._pools[shard].stream("POST", self._url, headers=wire, content=orjson.dumps(message),
                                                 extensions=self._extensions) as resp:
                status = resp.status
                got = {k.lower(): v for k, v in resp.headers}
                if status in (301, 302, 303, 307, 308):
                    raise UpstreamError(f"Upstream {self.name!r} answered with a redirect, which is refused.")
                if status == 202:
                    return
                if status == 404 and self._session_id:
                    raise UpstreamError(f"Upstream {self.name!r} ended the session.", code="upstream-session-gone")
                if status >= 400:
                    body = (await _read_all(resp.aiter_stream(), 64 * 1024))[:2000]
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
                    await self._read_stream(resp.aiter_stream(), pending)
                elif ctype == b"application/json":
                    parsed = orjson.loads(await _read_all(resp.aiter_stream(), 64 * 1024 * 1024))
                    if isinstance(parsed, dict):
                        await self._dispatch(parsed, pending)
                else:
                    raise UpstreamError(f"Upstream {self.name!r} answered with content type {ctype.decode()!r}.")
        except _TRANSPORT_ERRORS as exc:
            raise UpstreamError(f"Upstream {self.name!r} is unreachable ({type(exc).__name__}).") from exc
        finally:
            self._load[shard] -= 1

    async def _read_stream(self, chunks: AsyncIterator[bytes], pending: Pending | None) -> None:
        """Read one SSE stream; if it ends before our response, resume it with Last-Event-ID."""
        last_id = ""
        retry_ms = 1000
        source: AsyncIterator[bytes] | None = chunks
        for attempt in range(_MAX_RESUMES + 1):
            resumed: httpx2.Response | None = None
            if attempt:
                await asyncio.sleep(min(retry_ms, 5000) / 1000)
                resumed = await self._resume(last_id)
                if resumed is None:
                    return
                source = resumed.aiter_raw()
            try:
                assert source is not None
                async for event_id, retry, data in sse_events(source):
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
            finally:
                if resumed is not None:
                    await resumed.aclose()
            if pending is None or pending.future.done() or not last_id:
                return

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
        for pool in self._pools:
            await pool.aclose()
