"""Idle keep-alive connections: the gateway keeps them longer than the proxies and load balancers in front of it
(else one sends a request on a connection just as the gateway closes it: a 502 for a POST), `--keep-alive` sets it.

Raw sockets: the point is when the server closes a connection."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

from tests.procs import run_gateway


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=5)


def _health(sock: socket.socket, url: str) -> bytes:
    """One keep-alive GET /health on an open connection; the whole response."""
    host = urlsplit(url).netloc
    sock.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the gateway closed the connection instead of answering: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return head


def _closed(sock: socket.socket) -> bool:
    """True when the server has closed the connection (EOF or reset), without waiting."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.setblocking(True)


def test_idle_connections_outlive_uvicorns_5s_default_and_keep_alive_sets_the_time(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with (
        run_gateway(tmp_path / "a") as default,
        run_gateway(tmp_path / "b", "--keep-alive", "2") as short,
        _connect(default.url) as a,
        _connect(short.url) as b,
    ):
        assert _health(a, default.url).startswith(b"HTTP/1.1 200")
        assert _health(b, short.url).startswith(b"HTTP/1.1 200")
        idle_from = time.monotonic()
        time.sleep(1.0)
        assert _health(b, short.url).startswith(b"HTTP/1.1 200")  # within --keep-alive: reused
        b_from = time.monotonic()
        deadline = b_from + 10
        while not _closed(b) and time.monotonic() < deadline:
            time.sleep(0.05)
        b_idle = time.monotonic() - b_from
        assert 1.5 <= b_idle < 10, f"--keep-alive 2 closed an idle connection after {b_idle:.2f} s"
        time.sleep(max(0.0, idle_from + 6.5 - time.monotonic()))  # past uvicorn's own 5 s
        assert not _closed(a), "the default closed an idle connection within 6.5 s"
        assert _health(a, default.url).startswith(b"HTTP/1.1 200")
