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

import httpx2
import orjson

from gateway import netguard
from gateway.errors import UpstreamError
from gateway.jsonrpc import JSON, modern_headers
from gateway.upstreams.base import Pending, UpstreamConnection

log = logging.getLogger("aegress.upstream.http")

_MAX_RESUMES = 5
# httpcore's pool probes every idle connection on each request it assigns, so one pool of 64
# connections costs 64 syscalls per call. Several small pools, picked by load, keep that constant.
_SHARDS = 8
_PER_SHARD = 8


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
    _shards: list[httpx2.AsyncClient]
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

        self._shards = [client() for _ in range(_SHARDS)]
        self._load = [0] * _SHARDS
        self._client = client()  # initialize, the GET stream and session teardown

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
        client = self._shards[shard]
        self._load[shard] += 1
        url = self.spec.url or ""
        try:
            headers = self._headers()
            if self.modern:
                headers.update(modern_headers(message))
                if pending is not None and pending.headers:
                    headers.update(pending.headers)
            async with client.stream("POST", url, content=orjson.dumps(message), headers=headers) as resp:
                if resp.status_code in (301, 302, 303, 307, 308):
                    raise UpstreamError(f"Upstream {self.name!r} answered with a redirect, which is refused.")
                if resp.status_code == 202:
                    return
                if resp.status_code == 404 and self._session_id:
                    raise UpstreamError(f"Upstream {self.name!r} ended the session.", code="upstream-session-gone")
                if resp.status_code >= 400:
                    body = (await resp.aread())[:2000]
                    with contextlib.suppress(Exception):
                        parsed = orjson.loads(body)
                        if isinstance(parsed, dict) and "error" in parsed and "id" in parsed:
                            await self._dispatch(parsed, pending)
                            return
                    raise UpstreamError(f"Upstream {self.name!r} answered HTTP {resp.status_code}.")
                if message.get("method") == "initialize":
                    self._session_id = resp.headers.get("mcp-session-id") or None
                ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
                if ctype == "text/event-stream":
                    await self._read_stream(resp, pending)
                elif ctype == "application/json":
                    parsed = orjson.loads(await resp.aread())
                    if isinstance(parsed, dict):
                        await self._dispatch(parsed, pending)
                else:
                    raise UpstreamError(f"Upstream {self.name!r} answered with content type {ctype!r}.")
        except httpx2.HTTPError as exc:
            raise UpstreamError(f"Upstream {self.name!r} is unreachable ({type(exc).__name__}).") from exc
        finally:
            self._load[shard] -= 1

    async def _read_stream(self, resp: httpx2.Response, pending: Pending | None) -> None:
        """Read one SSE stream; if it ends before our response, resume it with Last-Event-ID."""
        last_id = ""
        retry_ms = 1000
        attempts = 0
        response: httpx2.Response | None = resp
        while response is not None:
            async for event in httpx2.EventSource(response):
                if event.id:
                    last_id = event.id
                if event.retry is not None:
                    retry_ms = event.retry
                if not event.data:
                    continue
                try:
                    msg = orjson.loads(event.data)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(msg, dict):
                    await self._dispatch(msg, pending)
            if pending is None or pending.future.done() or not last_id or attempts >= _MAX_RESUMES:
                return
            attempts += 1
            await asyncio.sleep(min(retry_ms, 5000) / 1000)
            response = await self._resume(last_id)

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
                async for event in httpx2.EventSource(resp):
                    if event.data:
                        with contextlib.suppress(orjson.JSONDecodeError):
                            msg = orjson.loads(event.data)
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
        for c in [client, *self._shards]:
            await c.aclose()
