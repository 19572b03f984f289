"""The lean HTTP/1.1 client (gateway.upstreams.h1) against real loopback servers scripted per test."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from gateway.upstreams.h1 import H1Error, H1Pool, H1Timeout, H1TooLarge

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Server:
    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []
        self.url = ""


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


@contextlib.asynccontextmanager
async def serve(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    state = Server()
    tasks: set[asyncio.Future[None]] = set()

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        inner = asyncio.ensure_future(handler(reader, writer, state.connections))
        tasks.add(inner)
        try:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await inner
        finally:
            writer.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    state.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/mcp?x=1"
    try:
        yield state
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.01)  # let the connection handlers close their writers
        await server.wait_closed()


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))  # type: ignore[arg-type]


def json_response(body: bytes, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % len(body)
            + extra + b"\r\n" + body)


async def body_of(pool: H1Pool, payload: bytes = b"{}", headers: list[tuple[bytes, bytes]] | None = None) -> bytes:
    resp = await pool.post(headers or [], payload, timeout=5)
    try:
        return await resp.read(5, 1 << 20)
    finally:
        resp.release()


def test_keep_alive_reuses_one_connection_and_sends_exact_request() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            request = await read_request(reader)
            state.requests.append(request)
            writer.write(json_response(b'{"ok":%d}' % len(state.requests)))
            await writer.drain()

    async def main() -> None:
        nonlocal state
        async with serve(handler) as state:
            pool = H1Pool(state.url, ["127.0.0.1"])
            assert await body_of(pool, b'{"a":1}', [(b"x-up", b"secret-1")]) == b'{"ok":1}'
            assert await body_of(pool, b'{"a":2}') == b'{"ok":2}'
            await pool.aclose()
        assert state.connections == 1
        first = state.requests[0]
        assert first.startswith(b"POST /mcp?x=1 HTTP/1.1\r\nhost: 127.0.0.1:")
        assert b"\r\nx-up: secret-1\r\n" in first and b"content-length: 7\r\n\r\n" in first
        assert first.endswith(b'{"a":1}')

    state = Server()
    run(main())


def test_chunked_sse_arrives_as_it_is_sent_and_drain_returns_the_connection() -> None:
    release_end = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            for part in (b"data: one\n\n", b"data: two\n\n"):
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                await writer.drain()
                await asyncio.sleep(0.05)
            await release_end.wait()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            release_end.clear()

    async def main() -> None:
        async with serve(handler) as state:
            pool = H1Pool(state.url, ["127.0.0.1"])
            resp = await pool.post([], b"{}", timeout=5)
            assert resp.status == 200 and resp.headers[b"content-type"] == b"text/event-stream"
            assert await resp.next_chunk(5) == b"data: one\n\n"
            assert await resp.next_chunk(5) == b"data: two\n\n"
            resp.release(drain=True)  # the caller has its answer; the stream's end comes later
            release_end.set()
            await asyncio.sleep(0.2)
            assert pool._idle, "a drained keep-alive connection goes back to the pool"
            resp = await pool.post([], b"{}", timeout=5)
            release_end.set()
            chunks = []
            while (chunk := await resp.next_chunk(5)) is not None:
                chunks.append(chunk)
            resp.release()
            assert b"".join(chunks) == b"data: one\n\ndata: two\n\n"
            await pool.aclose()
            assert state.connections == 1

    run(main())


def test_close_delimited_body_ends_with_the_connection_and_is_not_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{\"n\":%d}" % n)
        await writer.drain()
        writer.close()

    async def main() -> None:
        async with serve(handler) as state:
            pool = H1Pool(state.url, ["127.0.0.1"])
            assert await body_of(pool) == b'{"n":1}'
            assert await body_of(pool) == b'{"n":2}'
            await pool.aclose()

    run(main())


def test_informational_response_is_skipped() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + json_response(b"{}", b"x-final: yes\r\n"))
        await writer.drain()
        await asyncio.sleep(1)

    async def main() -> None:
        async with serve(handler) as state:
            pool = H1Pool(state.url, ["127.0.0.1"])
            resp = await pool.post([], b"{}", timeout=5)
            assert resp.status == 200 and resp.headers[b"x-final"] == b"yes"
            assert await resp.read(5, 100) == b"{}"
            resp.release()
            await pool.aclose()

    run(main())


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", "closed the connection"),
        (b"NOT HTTP AT ALL\r\n\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\r\n" + b"x-big: " + b"a" * 70_000 + b"\r\n\r\n", "malformed"),
    ],
    ids=["cut-mid-body", "garbage", "huge-headers"],
)
def test_broken_responses_raise_h1error(reply: bytes, message: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(reply)
        await writer.drain()
        writer.close()

    async def main() -> None:
        async with serve(handler) as state:
            pool = H1Pool(state.url, ["127.0.0.1"])
            with pytest.raises(H1Error, match=message):
                await body_of(pool)
            await pool.aclose()

    run(main())


def test_header_injection_is_refused_before_anything_is_sent() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        state.requests.append(await read_request(reader))

    async def main() -> None:
        nonlocal state
        async with serve(handler) as state:
            pool = H1Pool(state.url, ["127.0.0.1"])
            for name, value in ((b"x-a", b"v\r\nx-evil: 1"), (b"x-a", b"v\nx"), (b"x-a\r\nb", b"v"), (b"", b"v"),
                                (b"x a", b"v"), (b"x-a", b"v\0")):
                with pytest.raises(H1Error, match="control characters"):
                    await pool.post([(name, value)], b"{}", timeout=5)
            await asyncio.sleep(0.1)
            await pool.aclose()
        assert state.requests == [] and state.connections == 0

    state = Server()
    run(main())


def test_read_timeout_and_pool_limit() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            request = await read_request(reader)
            if b"slow" in request:
                await asyncio.sleep(3)
            writer.write(json_response(b"{}"))
            await writer.drain()

    async def main() -> None:
        async with serve(handler) as state:
            pool = H1Pool(state.url, ["127.0.0.1"], max_connections=1)
            with pytest.raises(H1Timeout):
                await pool.post([], b'"slow"', timeout=0.2)
            # the timed-out connection was closed, so the pool may open a fresh one
            assert await body_of(pool) == b"{}"
            # one connection at most: two concurrent calls share it one after the other
            results = await asyncio.gather(body_of(pool), body_of(pool))
            assert results == [b"{}", b"{}"]
            assert state.connections == 2
            await pool.aclose()

    run(main())


def test_a_connection_the_server_closed_while_idle_is_not_used() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(json_response(b'{"n":%d}' % n))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()  # keep-alive promised, then the server drops the idle connection

    async def main() -> None:
        async with serve(handler) as state:
            pool = H1Pool(state.url, ["127.0.0.1"])
            assert await body_of(pool) == b'{"n":1}'
            await asyncio.sleep(0.3)
            assert await body_of(pool) == b'{"n":2}'
            await pool.aclose()

    run(main())


class ThreadServer:
    """A keep-alive server on its own threads (plain sockets), so it acts while the client's event loop is blocked.
    Connection n answers `{"n":n}`; with `idle_close_s` it closes a connection left idle that long."""

    def __init__(self, idle_close_s: float | None = None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/mcp"
        self.idle_close_s = idle_close_s
        self.conns: list[socket.socket] = []
        self.answered = 0
        self.stopping = threading.Event()
        self.listener.settimeout(0.1)  # accept() wakes to see `stopping`
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            self.conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn, len(self.conns)), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket, n: int) -> None:
        conn.settimeout(self.idle_close_s)
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(buf) < length:
                    buf += conn.recv(65536)
                buf = buf[length:]
                conn.sendall(json_response(b'{"n":%d}' % n))
                self.answered += 1
        except OSError:  # idle for idle_close_s (a timeout), or closed by the test
            return
        finally:
            conn.close()

    def drop(self, n: int) -> None:
        """Close connection n now, from the server's side (the client sees a FIN)."""
        conn = self.conns[n - 1]
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> ThreadServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        self.threads[0].join(5)
        self.listener.close()
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for t in self.threads:
            t.join(5)


def test_a_connection_closed_while_the_event_loop_was_busy_is_not_used() -> None:
    """The server closes an idle connection while the client's loop is busy (it has not read the FIN): the next
    request must not go out on that connection, where it would be lost, but on a new one."""
    server = ThreadServer()

    async def main() -> None:
        pool = H1Pool(server.url, ["127.0.0.1"])
        assert await body_of(pool) == b'{"n":1}'
        server.drop(1)
        time.sleep(0.4)  # the loop is busy: the FIN has arrived, nobody has read it
        assert await body_of(pool) == b'{"n":2}'
        await pool.aclose()

    with server:
        run(main())
    assert len(server.conns) == 2 and server.answered == 2


def test_connections_are_not_reused_near_the_servers_own_idle_timeout() -> None:
    """A server that closes idle connections after 2 s: once the pool has seen it do so, a connection idle for most
    of that time is replaced, not reused just as the server may be closing it."""
    server = ThreadServer(idle_close_s=2.0)

    async def main() -> None:
        pool = H1Pool(server.url, ["127.0.0.1"])
        assert await body_of(pool) == b'{"n":1}'
        await asyncio.sleep(2.5)  # the server closes connection 1; the pool sees it and learns the time
        assert pool.server_idle_s is not None and 1.9 <= pool.server_idle_s <= 2.5
        assert await body_of(pool) == b'{"n":2}'
        await asyncio.sleep(1.9)  # connection 2 is still open, but within 20 % of the server's timeout
        assert await body_of(pool) == b'{"n":3}'
        assert await body_of(pool) == b'{"n":3}'  # a fresh connection is reused as usual
        await pool.aclose()

    with server:
        run(main())
    assert len(server.conns) == 3 and server.answered == 4


def test_connect_failure_and_closed_pool() -> None:
    async def main() -> None:
        async with serve(lambda r, w, n: asyncio.sleep(0)) as state:
            url = state.url
        pool = H1Pool(url, ["127.0.0.1"])  # the server is gone: nothing listens on that port
        with pytest.raises(H1Error, match="cannot connect"):
            await pool.post([], b"{}", timeout=2)
        await pool.aclose()
        with pytest.raises(H1Error, match="closed"):
            await pool.post([], b"{}", timeout=2)

    run(main())


def _tls_files(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (and its key), made here for the test."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aegress-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_verifies_the_upstream_certificate(tmp_path: Path) -> None:
    cert, key = _tls_files(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(json_response(b'{"tls":true}'))
        await writer.drain()
        await asyncio.sleep(1)

    async def main() -> None:
        async with serve(handler, server_ctx) as state:
            trusted = H1Pool(state.url, ["127.0.0.1"], ssl_context=ssl.create_default_context(cafile=str(cert)))
            assert await body_of(trusted) == b'{"tls":true}'
            await trusted.aclose()
            untrusted = H1Pool(state.url, ["127.0.0.1"], ssl_context=ssl.create_default_context())
            with pytest.raises(H1Error, match="cannot connect"):
                await untrusted.post([], b"{}", timeout=5)
            await untrusted.aclose()

    run(main())


def test_get_and_delete_go_to_the_given_address_without_resolving_the_name() -> None:
    """The pool connects to the addresses it was given; the URL's name (here one that can never
    resolve, RFC 2606) only goes into the Host header."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            state.requests.append(head)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()

    async def main() -> None:
        nonlocal state
        async with serve(handler) as state:
            port = state.url.split(":")[2].split("/")[0]
            pool = H1Pool(f"http://pinned.invalid:{port}/mcp", ["127.0.0.1"])
            for method in (b"GET", b"DELETE"):
                resp = await pool.request(method, [(b"x-a", b"1")], None, timeout=5)
                assert await resp.read(5, 10) == b"ok"
                resp.release()
            with pytest.raises(H1Error, match="unsupported"):
                await pool.request(b"PUT", [], None, timeout=5)
            await pool.aclose()
        assert [r.split(b"\r\n")[0] for r in state.requests] == [b"GET /mcp HTTP/1.1", b"DELETE /mcp HTTP/1.1"]
        assert all(b"host: pinned.invalid:" in r and b"content-length" not in r for r in state.requests)
        with pytest.raises(ValueError, match="addresses"):
            H1Pool("http://pinned.invalid/mcp", [])

    state = Server()
    run(main())


def test_a_body_over_the_limit_is_refused_by_its_declared_length_or_as_it_arrives() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        request = await read_request(reader)
        if b"declared" in request:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 999999999\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for _ in range(50):
                writer.write(b"400\r\n" + b"x" * 1024 + b"\r\n")
        await writer.drain()
        await asyncio.sleep(2)

    async def main() -> None:
        async with serve(handler) as state:
            pool = H1Pool(state.url, ["127.0.0.1"])
            for body in (b'"declared"', b'"chunked"'):
                resp = await pool.post([], body, timeout=5)
                with pytest.raises(H1TooLarge):
                    await resp.read(5, 10_000)
                resp.release()
            await pool.aclose()

    run(main())
