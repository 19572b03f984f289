"""A lean HTTP/1.1 client for everything the gateway sends to a Streamable HTTP upstream.

Why not httpx2/httpcore2 here: measured on this machine (docs/benchmarks.md), httpcore2 over anyio
cost about 260 µs more event-loop CPU per forwarded call than this client, more than any other
stage of the pipeline. The GET stream, stream resumption and session teardown go through this
client too, so every request of an upstream goes to the addresses checked when it connected.

What it is: asyncio protocols (uvloop in `aegress serve`) with httptools, the llhttp binding that
uvicorn already parses our own requests with, for the responses; TLS from the stdlib with httpx2's
default context. A keep-alive pool per upstream, connections pinned to the addresses `netguard`
checked (a later DNS answer cannot redirect them), TCP_NODELAY (asyncio's default).

What it is not: no redirects (the caller refuses them), proxies, cookies, HTTP/2, request
streaming or retries. A POST is never retried: a JSON-RPC call is not idempotent, and a request
that failed on a pooled connection may have reached the upstream.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import select
import ssl
from collections.abc import Sequence
from urllib.parse import urlsplit

import httptools

MAX_HEADER_BYTES = 64 * 1024
_HIGH_WATER = 1 << 20  # pause reading while this much body is buffered and unread
RECHECK_IDLE_S = 0.25
"""A connection idle this long is polled before reuse: the server may have closed it while the event loop was
busy and has not read the FIN yet (a request sent on it would be lost)."""
IDLE_MARGIN = 0.8
"""When the server last closed an idle connection after t seconds (at least LEARN_IDLE_S), connections idle for
IDLE_MARGIN * t are not reused: a request sent just as the server closes (uvicorn's 5 s, say) would fail, and a
POST is never retried. The latest such close counts, so one restart of the upstream is not remembered."""
LEARN_IDLE_S = 1.0

_BAD_VALUE = re.compile(rb"[\r\n\0]")
_BAD_NAME = re.compile(rb"[\r\n\0: ]")


class H1Error(Exception):
    """A transport failure (connect, reset, malformed response); the caller maps it to UpstreamError."""


class H1Timeout(H1Error):
    """Connect, pool or read inactivity timeout."""


class H1TooLarge(H1Error):
    """A body larger than the caller's limit; the connection is not reusable."""


def _timeout_waiter(fut: asyncio.Future[None], what: str) -> None:
    if not fut.done():
        fut.set_exception(H1Timeout(f"{what} timed out"))


class Response:
    """One response: status and headers at once, the body as it arrives. `release()` exactly once."""

    __slots__ = ("_buffered", "_chunks", "_conn", "_eof_ok", "_waiter", "complete", "error", "headers",
                 "headers_done", "keep_alive", "status")

    def __init__(self, conn: _Conn) -> None:
        self._conn = conn
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.error: H1Error | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._eof_ok = False

    # -- fed by the connection (parser callbacks) ------------------------------------------------
    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _fail(self, error: H1Error) -> None:
        if not self.complete and self.error is None:
            self.error = error
        self._wake()

    # -- read by the caller ------------------------------------------------------------------------
    async def _wait(self, timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        fut = self._waiter = loop.create_future()
        handle = None if timeout is None else loop.call_later(timeout, _timeout_waiter, fut, "upstream read")
        try:
            await fut
        finally:
            if handle is not None:
                handle.cancel()
            self._waiter = None

    async def wait_headers(self, timeout: float) -> None:
        while not self.headers_done:
            if self.error is not None:
                raise self.error
            await self._wait(timeout)

    async def next_chunk(self, timeout: float | None) -> bytes | None:
        """The body's next bytes as they arrive (de-chunked); None at the end of the message.

        `timeout` bounds the silence before the next bytes (None: a stream that may stay silent)."""
        while True:
            if self._chunks:
                chunks = self._chunks
                data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                self._conn.resume()
                return data
            if self.complete:
                return None
            if self.error is not None:
                raise self.error
            await self._wait(timeout)

    async def read(self, timeout: float, limit: int) -> bytes:
        """The whole body, refused (H1TooLarge) as soon as it is known to exceed `limit` bytes."""
        declared = self.headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            raise H1TooLarge("response body too large")
        out = bytearray()
        while (chunk := await self.next_chunk(timeout)) is not None:
            out += chunk
            if len(out) > limit:
                raise H1TooLarge("response body too large")
        return bytes(out)

    def release(self, *, drain: bool = False) -> None:
        """Give the connection back. A complete keep-alive response returns it to the pool; with
        `drain`, an unfinished one is read to its end in the background first (the upstream usually
        closes an SSE answer right after the response event); anything else closes it."""
        self._conn.finish(self, drain)


class _Conn(asyncio.Protocol):
    """One pooled connection: at most one request at a time."""

    def __init__(self, pool: H1Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.resp: Response | None = None
        self.lost = False
        self.paused = False
        self.idle_at = 0.0
        self._draining: asyncio.TimerHandle | None = None
        self._header_bytes = 0

    # -- asyncio.Protocol ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        if self.resp is None:  # bytes nobody asked for: the connection cannot be trusted any more
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            resp = self.resp
            if resp is not None:
                resp._fail(H1Error(f"malformed HTTP response ({type(exc).__name__})"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost and self.resp is None and self.idle_at:  # the server closed it while it was idle
            self.pool._server_closed_idle(asyncio.get_running_loop().time() - self.idle_at)
        self.lost = True
        resp = self.resp
        if resp is not None and not resp.complete:
            if resp._eof_ok:  # a close-delimited body ends with the connection
                resp.complete = True
                resp._wake()
            else:
                resp._fail(H1Error("the upstream closed the connection"))
        if self._draining is not None:
            self._draining.cancel()
        self.pool._forget(self)

    # -- httptools callbacks -------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._header_bytes = 0
        if self.resp is not None:
            self.resp.headers = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > MAX_HEADER_BYTES:
            raise H1Error("response headers too large")
        assert self.resp is not None
        self.resp.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        resp = self.resp
        assert resp is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # informational: the real response follows
            return
        resp.status = status
        h = resp.headers
        resp._eof_ok = b"content-length" not in h and b"chunked" not in h.get(b"transfer-encoding", b"").lower()
        resp.headers_done = True
        resp._wake()

    def on_body(self, body: bytes) -> None:
        resp = self.resp
        assert resp is not None
        if self._draining is not None:
            return
        resp._chunks.append(body)
        resp._buffered += len(body)
        if resp._buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        resp._wake()

    def on_message_complete(self) -> None:
        resp = self.resp
        assert resp is not None
        if not resp.headers_done:  # the end of an informational response
            return
        resp.complete = True
        resp.keep_alive = self.parser.should_keep_alive()
        if self._draining is not None:
            self._draining.cancel()
            self._draining = None
            self.resp = None
            self.pool._put(self, resp.keep_alive)
            return
        resp._wake()

    # -- used by the pool and the response -----------------------------------------------------------
    def resume(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def send(self, data: bytes) -> Response:
        assert self.transport is not None and self.resp is None
        resp = self.resp = Response(self)
        self.transport.write(data)
        return resp

    def finish(self, resp: Response, drain: bool) -> None:
        if self.resp is not resp:
            return
        if resp.complete:
            self.resp = None
            self.pool._put(self, resp.keep_alive and not self.lost)
        elif drain and resp.error is None and not self.lost:
            self.resume()
            self._draining = asyncio.get_running_loop().call_later(self.pool.drain_timeout, self.close)
        else:
            self.resp = None
            self.close()
            self.pool._put(self, False)

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()

    def closed_by_peer(self) -> bool:
        """One poll of an idle connection's socket: readable means the server closed it (or sent bytes nobody
        asked for) and the event loop has not seen it yet; either way it must not carry a request."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None:
            return False
        try:
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True


class H1Pool:
    """Keep-alive connections to one upstream origin, at most `max_connections` of them."""

    def __init__(self, url: str, addresses: Sequence[str], *, ssl_context: ssl.SSLContext | None = None,
                 max_connections: int = 64, connect_timeout: float = 10.0, keepalive_expiry: float = 30.0,
                 drain_timeout: float = 5.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("an http(s) URL with a host is required")
        self.tls = parts.scheme == "https"
        self.hostname = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        if not addresses:
            raise ValueError("the checked addresses are required: the pool never resolves names itself")
        self.addresses = list(addresses)
        self.ssl_context = ssl_context if self.tls else None
        path = parts.path or "/"
        target = path + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rsplit("@", 1)[-1]
        rest = b" " + target.encode("ascii") + b" HTTP/1.1\r\nhost: " + host.encode("ascii") + b"\r\n"
        self._heads = {method: method + rest for method in (b"POST", b"GET", b"DELETE")}
        check_header(b"host", host.encode("ascii"))
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.keepalive_expiry = keepalive_expiry
        self.server_idle_s: float | None = None  # how long the server last let one idle before closing it
        self.drain_timeout = drain_timeout
        self._idle: list[_Conn] = []
        self._conns: set[_Conn] = set()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False

    # -- the request ---------------------------------------------------------------------------------
    async def post(self, headers: Sequence[tuple[bytes, bytes]], body: bytes, *, timeout: float) -> Response:
        """Send a POST and wait for the response headers (`timeout`: pool wait and read inactivity)."""
        return await self.request(b"POST", headers, body, timeout=timeout)

    async def request(self, method: bytes, headers: Sequence[tuple[bytes, bytes]], body: bytes | None, *,
                      timeout: float) -> Response:
        """Send one request (POST, GET or DELETE; no body: no content-length) and wait for its headers."""
        head = self._heads.get(method)
        if head is None:
            raise H1Error("unsupported method")
        parts = [head]
        for name, value in headers:
            check_header(name, value)
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n" if body is None else b"content-length: %d\r\n\r\n" % len(body))
        if body is not None:
            parts.append(body)
        data = b"".join(parts)
        conn = await self._acquire(timeout)
        resp = conn.send(data)
        try:
            await resp.wait_headers(timeout)
        except BaseException:
            resp.release()
            raise
        return resp

    # -- the pool ------------------------------------------------------------------------------------
    async def _acquire(self, timeout: float) -> _Conn:
        if self._closed:
            raise H1Error("the connection pool is closed")
        loop = asyncio.get_running_loop()
        now = loop.time()
        idle = self._idle
        limit = self.keepalive_expiry
        if self.server_idle_s is not None:
            limit = min(limit, self.server_idle_s * IDLE_MARGIN)
        while idle:
            conn = idle.pop()
            quiet = now - conn.idle_at
            if not conn.lost and quiet < limit and (quiet < RECHECK_IDLE_S or not conn.closed_by_peer()):
                return conn
            conn.close()
        if len(self._conns) < self.max_connections:
            return await self._connect()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.append(fut)
        handle = loop.call_later(timeout, _timeout_waiter, fut, "waiting for an upstream connection")
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._wake_one()  # we were handed a free slot but are leaving: pass it on
            raise
        finally:
            handle.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)
        return await self._acquire(timeout)

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        last: Exception | None = None
        for address in self.addresses:
            conn = _Conn(self)
            self._conns.add(conn)
            try:
                async with asyncio.timeout(self.connect_timeout):
                    await loop.create_connection(
                        lambda conn=conn: conn, address, self.port, ssl=self.ssl_context,
                        server_hostname=self.hostname if self.tls else None,
                    )
                return conn
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                self._conns.discard(conn)
                last = exc
            except BaseException:
                self._conns.discard(conn)
                conn.close()
                raise
        self._wake_one()
        if isinstance(last, TimeoutError):
            raise H1Timeout("connecting to the upstream timed out") from last
        raise H1Error(f"cannot connect to the upstream ({type(last).__name__})") from last

    def _put(self, conn: _Conn, reusable: bool) -> None:
        if reusable and not conn.lost and not self._closed:
            conn.idle_at = asyncio.get_running_loop().time()
            self._idle.append(conn)
        else:
            conn.close()
            self._conns.discard(conn)
        self._wake_one()

    def _server_closed_idle(self, idle_s: float) -> None:
        if idle_s >= LEARN_IDLE_S:
            self.server_idle_s = idle_s

    def _forget(self, conn: _Conn) -> None:
        if conn in self._conns:
            self._conns.discard(conn)
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        for conn in list(self._conns):
            conn.close()
        self._idle.clear()
        self._conns.clear()
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(H1Error("the connection pool is closed"))


def check_header(name: bytes, value: bytes) -> None:
    """No header splitting: a name or value with CR, LF or NUL (or an empty name) never reaches the wire."""
    if not name or _BAD_NAME.search(name) or _BAD_VALUE.search(value):
        raise H1Error("refusing a header with control characters")
