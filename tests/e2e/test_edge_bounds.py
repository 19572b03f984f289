"""The HTTP edge is bounded: slow senders are cut, oversized requests are refused before they are read,
open connections are capped, and one actor (or tenant) cannot use up what another needs.

Raw sockets where the point is what happens on the wire; the raw HTTP client elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from urllib.parse import urlsplit

import httpx2
import pytest

from tests.procs import add_stdio_fixture, allow_all, answer, run, run_gateway, setup_tenant

ACCEPT = "application/json, text/event-stream"
INIT = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}
ACTORS = [("t1", "a1"), ("t1", "a2"), ("t1", "a3"), ("t2", "b1")]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Small caps so they can be reached: 2 sessions / 2 calls per actor, 3 / 3 per tenant, 3 failed logins."""
    home = tmp_path_factory.mktemp("edge") / "home"
    tokens = {}
    for tenant, actor in ACTORS:
        tokens[(tenant, actor)] = setup_tenant(home, tenant, actor)
    for tenant in ("t1", "t2"):
        allow_all(home, tenant)
        add_stdio_fixture(home, tenant, "tools")
    flags = ["--header-timeout", "1", "--body-timeout", "1", "--body-deadline", "3", "--max-sessions-per-actor", "2",
             "--max-sessions-per-tenant", "3", "--max-calls-per-actor", "2", "--max-calls-per-tenant", "3",
             "--auth-throttle", "3", "--auth-throttle-window", "60"]
    with run_gateway(home, *flags) as g:
        g.tokens.update(tokens)
        yield g


def _addr(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def _read_response(sock: socket.socket, limit_s: float = 8.0) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (or `limit_s` passes): (bytes, closed by the server)."""
    sock.settimeout(0.2)
    data = b""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else 0


def _headers(gw, tenant: str = "t1", actor: str = "a1", **extra: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"Authorization": f"Bearer {gw.tokens[(tenant, actor)]}", "Accept": ACCEPT,
            "Content-Type": "application/json", **extra}


# -- slow senders and oversized requests -------------------------------------------------------------------
def test_dribbled_headers_are_cut_with_408(gw) -> None:  # type: ignore[no-untyped-def]
    host, port = _addr(gw.url)
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(f"POST /mcp HTTP/1.1\r\nHost: {host}:{port}\r\n".encode())
        started = time.monotonic()
        closed = False
        data = b""
        for i in range(40):  # one header line every 0.2 s: never complete, never silent
            try:
                sock.sendall(f"X-Slow-{i}: x\r\n".encode())
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            sock.settimeout(0.2)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            data += chunk
            if not chunk or b"\r\n\r\n" in data:
                break
        more, closed_after = _read_response(sock, 3)
        data += more
    assert closed or closed_after
    assert time.monotonic() - started < 7
    assert _status(data) == 408, data
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["data"]["code"] == "header-timeout"


def test_a_silent_connection_is_closed(gw) -> None:  # type: ignore[no-untyped-def]
    with socket.create_connection(_addr(gw.url), timeout=5) as sock:
        data, closed = _read_response(sock, 6)
    assert closed
    assert data == b"" or _status(data) == 408


def test_stalled_body_gets_408(gw) -> None:  # type: ignore[no-untyped-def]
    host, port = _addr(gw.url)
    head = "".join(f"{k}: {v}\r\n" for k, v in _headers(gw).items())
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(f"POST /mcp HTTP/1.1\r\nHost: {host}:{port}\r\n{head}Content-Length: 200\r\n\r\n".encode())
        sock.sendall(b'{"jsonrpc": "2.0",')  # and then nothing
        data, closed = _read_response(sock, 6)
    assert _status(data) == 408, data
    assert closed
    assert b"body-timeout" in data


def test_a_body_dribbled_below_the_idle_timeout_is_cut_at_the_body_deadline(gw) -> None:  # type: ignore[no-untyped-def]
    """Review finding 3b: one byte every half second never trips the 1 s idle timeout; the 3 s deadline ends it."""
    host, port = _addr(gw.url)
    head = "".join(f"{k}: {v}\r\n" for k, v in _headers(gw).items())
    data = b""
    closed = False
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(f"POST /mcp HTTP/1.1\r\nHost: {host}:{port}\r\n{head}Content-Length: 200\r\n\r\n".encode())
        sock.settimeout(0.5)
        for _ in range(30):  # bounded: 15 s of dribbling, far more than the deadline
            try:
                sock.sendall(b" ")
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            data += chunk
            if not chunk or b"\r\n\r\n" in data:
                break
        more, closed_after = _read_response(sock, 3)
        data += more
    assert _status(data) == 408, data
    assert closed or closed_after
    assert b'"body-deadline"' in data, data


def test_huge_content_length_is_refused_before_the_body(gw) -> None:  # type: ignore[no-untyped-def]
    host, port = _addr(gw.url)
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(f"POST /mcp HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                     "Content-Length: 10000000000\r\n\r\n".encode())
        data, closed = _read_response(sock, 5)
    assert _status(data) == 413, data
    assert closed
    assert b"body-too-large" in data


def test_too_many_headers_get_431(gw) -> None:  # type: ignore[no-untyped-def]
    extra = {f"X-Pad-{i}": "x" for i in range(150)}  # small in bytes, too many in count
    r = httpx2.post(gw.url, content=json.dumps(INIT), headers=_headers(gw, **extra), timeout=10)
    assert r.status_code == 431, r.text
    assert r.json()["error"]["data"]["code"] == "headers-too-large"
    r = httpx2.post(gw.url, content=json.dumps(INIT), headers=_headers(gw), timeout=10)  # still serving
    assert r.status_code == 200
    _delete(gw, r.headers["mcp-session-id"], "t1", "a1")


def test_a_header_flood_is_refused_before_the_headers_end(gw) -> None:  # type: ignore[no-untyped-def]
    host, port = _addr(gw.url)
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(f"POST /mcp HTTP/1.1\r\nHost: {host}:{port}\r\n".encode())
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the server may hang up mid-send
            sock.sendall(b"X-Flood: " + b"y" * 64_000)  # far over 16 KiB, and the header line never ends
        data, closed = _read_response(sock, 5)
    assert _status(data) == 431, data
    assert closed


def test_an_overlong_target_gets_414(gw) -> None:  # type: ignore[no-untyped-def]
    host, port = _addr(gw.url)
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"GET /mcp?" + b"a" * 20_000 + b" HTTP/1.1\r\n")
        data, closed = _read_response(sock, 5)
    assert _status(data) == 414, data
    assert closed


def test_open_connections_are_capped_with_503(tmp_path) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    token = setup_tenant(home, "acme", "alice")
    with run_gateway(home, "--max-connections", "4") as g:
        host, port = _addr(g.url)
        idle = [socket.create_connection((host, port), timeout=5) for _ in range(4)]
        try:
            time.sleep(0.3)  # the server has accepted them
            with httpx2.Client(timeout=10) as http:
                r = http.get(g.base + "/health")
            assert r.status_code == 503
        finally:
            for s in idle:
                s.close()
        headers = {"Authorization": f"Bearer {token}", "Accept": ACCEPT, "Content-Type": "application/json"}
        for _ in range(50):  # bounded: up to 5 s for the server to notice the closed connections
            r = httpx2.post(g.url, content=json.dumps(INIT), headers=headers, timeout=10)
            if r.status_code != 503:
                break
            time.sleep(0.1)
        assert r.status_code == 200, r.text


def test_one_address_cannot_hold_all_connections(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Review finding 3a: connections are counted per client address before any header is read."""
    home = tmp_path / "home"
    token = setup_tenant(home, "acme", "alice")
    with run_gateway(home, "--max-connections-per-address", "3") as g:
        host, port = _addr(g.url)
        idle = [socket.create_connection((host, port), timeout=5) for _ in range(3)]
        try:
            with socket.create_connection((host, port), timeout=5) as extra:
                data, closed = _read_response(extra, 5)
            assert _status(data) == 503, data
            assert closed
            assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["data"]["code"] == "too-many-connections"
        finally:
            for s in idle:
                s.close()
        headers = {"Authorization": f"Bearer {token}", "Accept": ACCEPT, "Content-Type": "application/json"}
        for _ in range(50):  # bounded: up to 5 s for the server to notice the closed connections
            try:
                r = httpx2.post(g.url, content=json.dumps(INIT), headers=headers, timeout=10)
            except httpx2.TransportError:
                time.sleep(0.1)
                continue
            if r.status_code != 503:
                break
            time.sleep(0.1)
        assert r.status_code == 200, r.text


# -- fair shares: sessions and calls in flight per actor and per tenant -------------------------------------
def _init(gw, tenant: str, actor: str) -> httpx2.Response:  # type: ignore[no-untyped-def]
    return httpx2.post(gw.url, content=json.dumps(INIT), headers=_headers(gw, tenant, actor), timeout=30)


def _delete(gw, sid: str, tenant: str, actor: str) -> None:  # type: ignore[no-untyped-def]
    r = httpx2.delete(gw.url, headers=_headers(gw, tenant, actor, **{"Mcp-Session-Id": sid,
                                                                       "MCP-Protocol-Version": "2025-11-25"}))
    assert r.status_code == 200


def _call(tool: str, arguments: dict, msg_id: int = 2) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": msg_id, "method": "tools/call",
                       "params": {"name": tool, "arguments": arguments}}).encode()


def test_session_caps_per_actor_and_tenant(gw) -> None:  # type: ignore[no-untyped-def]
    opened: list[tuple[str, str, str]] = []
    try:
        for _ in range(2):
            r = _init(gw, "t1", "a1")
            assert r.status_code == 200
            opened.append((r.headers["mcp-session-id"], "t1", "a1"))
        r = _init(gw, "t1", "a1")  # a third session for a1: over the actor's cap
        assert r.status_code == 429, r.text
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["data"]["code"] == "too-many-sessions"
        r = _init(gw, "t1", "a2")  # another actor of t1, within the tenant's cap
        assert r.status_code == 200
        opened.append((r.headers["mcp-session-id"], "t1", "a2"))
        r = _init(gw, "t1", "a3")  # t1 has 3 sessions: over the tenant's cap
        assert r.status_code == 429
        assert "retry-after" in r.headers
        r = _init(gw, "t2", "b1")  # another tenant is untouched, initializes and calls
        assert r.status_code == 200
        sid = r.headers["mcp-session-id"]
        opened.append((sid, "t2", "b1"))
        call = httpx2.post(gw.url, content=_call("tools__echo", {"text": "hi"}), timeout=30,
                           headers=_headers(gw, "t2", "b1", **{"Mcp-Session-Id": sid,
                                                                "MCP-Protocol-Version": "2025-11-25"}))
        assert call.status_code == 200
        assert answer(call)["result"]["content"][0]["text"] == "hi"
    finally:
        for sid, tenant, actor in opened:
            _delete(gw, sid, tenant, actor)
    r = _init(gw, "t1", "a3")  # ended sessions no longer count
    assert r.status_code == 200
    _delete(gw, r.headers["mcp-session-id"], "t1", "a3")


def test_the_session_cap_holds_under_concurrent_initializes_and_reclaims_abandoned_sessions(
        tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Review finding 4: the cap is counted before initialize awaits the upstreams (a burst cannot all
    pass), and clients killed without DELETE do not lock their actor out until the 30 min idle reap."""
    home = tmp_path / "home"
    token = setup_tenant(home, "acme", "alice")
    allow_all(home, "acme")
    add_stdio_fixture(home, "acme", "tools")
    headers = {"Authorization": f"Bearer {token}", "Accept": ACCEPT, "Content-Type": "application/json"}
    with run_gateway(home, "--max-sessions-per-actor", "2", "--session-reclaim-idle", "1") as g:
        async def burst() -> list[httpx2.Response]:
            async with httpx2.AsyncClient(timeout=30) as http:  # all wait on the upstream starting
                return list(await asyncio.gather(*[http.post(g.url, content=json.dumps(INIT), headers=headers)
                                                   for _ in range(8)]))

        answers = run(burst(), timeout=60)
        assert sorted(r.status_code for r in answers) == [200, 200] + [429] * 6
        first, second = [r.headers["mcp-session-id"] for r in answers if r.status_code == 200]

        def ping(sid: str) -> httpx2.Response:
            return httpx2.post(g.url, content=json.dumps({"jsonrpc": "2.0", "id": 5, "method": "ping"}), timeout=30,
                               headers={**headers, "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"})

        assert ping(first).status_code == 200
        time.sleep(0.2)
        assert ping(second).status_code == 200
        time.sleep(2.0)  # both idle past --session-reclaim-idle; their clients are gone without a DELETE
        r = httpx2.post(g.url, content=json.dumps(INIT), headers=headers, timeout=30)
        assert r.status_code == 200, r.text  # room made from the actor's own idle sessions
        assert ping(first).status_code == 404  # the longest idle one was closed
        assert ping(second).status_code == 200


def test_calls_in_flight_are_capped_per_actor_and_tenant(gw) -> None:  # type: ignore[no-untyped-def]
    sessions = {}
    for tenant, actor in ACTORS:
        r = _init(gw, tenant, actor)
        assert r.status_code == 200
        sessions[(tenant, actor)] = r.headers["mcp-session-id"]

    def hdrs(tenant: str, actor: str) -> dict[str, str]:
        return _headers(gw, tenant, actor, **{"Mcp-Session-Id": sessions[(tenant, actor)],
                                              "MCP-Protocol-Version": "2025-11-25"})

    async def go() -> None:
        async with httpx2.AsyncClient(timeout=30) as http:
            async def post(tenant: str, actor: str, body: bytes) -> httpx2.Response:
                return await http.post(gw.url, content=body, headers=hdrs(tenant, actor))

            slow = [asyncio.ensure_future(post("t1", "a1", _call("tools__slow", {"seconds": 3}, 10 + i)))
                    for i in range(2)]
            await asyncio.sleep(1.0)  # both are in flight (they take 3 s)
            over = await post("t1", "a1", _call("tools__echo", {"text": "x"}, 20))
            assert over.status_code == 429, over.text
            assert int(over.headers["retry-after"]) >= 1
            assert over.json()["error"]["data"]["code"] == "too-many-calls"
            other_actor = await post("t1", "a2", _call("tools__echo", {"text": "a2"}, 21))
            assert answer(other_actor)["result"]["content"][0]["text"] == "a2"
            third = asyncio.ensure_future(post("t1", "a2", _call("tools__slow", {"seconds": 2}, 22)))
            await asyncio.sleep(0.5)  # t1 now has 3 calls in flight: its cap
            tenant_over = await post("t1", "a3", _call("tools__echo", {"text": "a3"}, 23))
            assert tenant_over.status_code == 429
            other_tenant = await post("t2", "b1", _call("tools__echo", {"text": "b1"}, 24))
            assert answer(other_tenant)["result"]["content"][0]["text"] == "b1"
            for done in await asyncio.gather(*slow, third):
                assert done.status_code == 200
                assert "result" in answer(done)
            again = await post("t1", "a1", _call("tools__echo", {"text": "again"}, 25))  # slots came back
            assert answer(again)["result"]["content"][0]["text"] == "again"

    try:
        run(go(), timeout=60)
    finally:
        for (tenant, actor), sid in sessions.items():
            _delete(gw, sid, tenant, actor)


# -- repeated authentication failures ---------------------------------------------------------------------
def test_failed_logins_are_throttled_but_a_valid_token_still_works(gw) -> None:  # type: ignore[no-untyped-def]
    bad = {"Authorization": "Bearer aeg_" + "x" * 40, "Accept": ACCEPT, "Content-Type": "application/json"}
    statuses = [httpx2.post(gw.url, content=json.dumps(INIT), headers=bad, timeout=10).status_code
                for _ in range(3)]
    assert statuses == [401, 401, 401]
    throttled = httpx2.post(gw.url, content=json.dumps(INIT), headers=bad, timeout=10)
    assert throttled.status_code == 429
    assert int(throttled.headers["retry-after"]) >= 1
    assert throttled.json()["error"]["data"]["code"] == "auth-throttled"
    # the legitimate holder of a token, from the same address, is not locked out
    r = _init(gw, "t2", "b1")
    assert r.status_code == 200
    _delete(gw, r.headers["mcp-session-id"], "t2", "b1")
    assert httpx2.post(gw.url, content=json.dumps(INIT), headers=bad, timeout=10).status_code == 429
    # a guesser cannot shed the throttle by claiming other addresses: forwarded headers are not trusted
    for i in range(3):
        spoofed = {**bad, "X-Forwarded-For": f"203.0.113.{i + 1}", "Forwarded": f"for=203.0.113.{i + 1}"}
        assert httpx2.post(gw.url, content=json.dumps(INIT), headers=spoofed, timeout=10).status_code == 429
