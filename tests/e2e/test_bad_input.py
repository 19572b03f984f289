"""Malformed and hostile requests get the documented status and JSON-RPC error, and the gateway keeps serving."""

from __future__ import annotations

import json

import httpx2
import pytest

from tests.procs import answer, gateway_with_fixture

ACCEPT = "application/json, text/event-stream"
INIT = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with gateway_with_fixture(tmp_path_factory.mktemp("bad") / "home") as g:
        yield g


def _headers(gw, **extra: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"Authorization": f"Bearer {gw.tokens[('acme', 'alice')]}", "Accept": ACCEPT,
            "Content-Type": "application/json", **extra}


def _session(gw) -> str:  # type: ignore[no-untyped-def]
    r = httpx2.post(gw.url, content=json.dumps(INIT), headers=_headers(gw), timeout=30)
    assert r.status_code == 200
    return r.headers["mcp-session-id"]


CASES = [
    # (name, body, header overrides, expected status, expected JSON-RPC code or None)
    ("non-json", b"{not json", {}, 400, -32700),
    ("batch", json.dumps([INIT, INIT]).encode(), {}, 400, -32600),
    ("not-jsonrpc", json.dumps({"id": 1, "method": "ping"}).encode(), {}, 400, -32600),
    ("params-not-object", json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": [1]}).encode(),
     {}, 400, -32602),
    ("bool-id", json.dumps({"jsonrpc": "2.0", "id": True, "method": "ping"}).encode(), {}, 400, -32600),
    ("wrong-content-type", json.dumps(INIT).encode(), {"Content-Type": "text/plain"}, 415, -32600),
    ("accept-json-only", json.dumps(INIT).encode(), {"Accept": "application/json"}, 406, -32600),
    ("accept-sse-only", json.dumps(INIT).encode(), {"Accept": "text/event-stream"}, 406, -32600),
    ("bad-protocol-version", json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).encode(),
     {"MCP-Protocol-Version": "1999-01-01"}, 400, -32602),
    ("missing-session", json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).encode(),
     {"MCP-Protocol-Version": "2025-11-25"}, 400, -32600),
    ("unknown-session", json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).encode(),
     {"MCP-Protocol-Version": "2025-11-25", "Mcp-Session-Id": "no-such-session"}, 404, -32001),
    ("evil-host", json.dumps(INIT).encode(), {"Host": "evil.example.com"}, 421, -32600),
    ("evil-host-port-suffix", json.dumps(INIT).encode(), {"Host": "localhost:80.evil.example.com"}, 421, -32600),
    ("evil-origin", json.dumps(INIT).encode(), {"Origin": "http://evil.example.com"}, 403, -32600),
    ("no-token", json.dumps(INIT).encode(), {"Authorization": ""}, 401, -32001),
    ("bad-token", json.dumps(INIT).encode(), {"Authorization": "Bearer aeg_" + "x" * 40}, 401, -32001),
    ("basic-auth", json.dumps(INIT).encode(), {"Authorization": "Basic dXNlcjpwYXNz"}, 401, -32001),
]


@pytest.mark.parametrize(("name", "body", "overrides", "status", "code"), CASES, ids=[c[0] for c in CASES])
def test_bad_requests(gw, name: str, body: bytes, overrides: dict, status: int, code: int | None) -> None:  # type: ignore[no-untyped-def]
    headers = _headers(gw, **overrides)
    headers = {k: v for k, v in headers.items() if v != ""}
    r = httpx2.post(gw.url, content=body, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()
    assert err["jsonrpc"] == "2.0"
    assert err["id"] is None or (name == "bad-protocol-version" and err["id"] == 2)  # 2026 errors carry the id
    assert err["error"]["code"] == code
    if err["id"] is None:
        assert isinstance(err["error"]["data"]["code"], str)
    assert gw.tokens[("acme", "alice")] not in r.text
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")


def test_oversized_body_is_refused(gw) -> None:  # type: ignore[no-untyped-def]
    big = json.dumps({**INIT, "params": {**INIT["params"], "pad": "x" * (5 * 1024 * 1024)}}).encode()
    r = httpx2.post(gw.url, content=big, headers=_headers(gw), timeout=60)
    assert r.status_code == 413
    assert r.json()["error"]["data"]["code"] == "body-too-large"


def test_oversized_headers_are_refused(gw) -> None:  # type: ignore[no-untyped-def]
    r = httpx2.post(gw.url, content=json.dumps(INIT), headers=_headers(gw, **{"X-Pad": "y" * 20000}), timeout=30)
    assert r.status_code == 431


def test_other_methods(gw) -> None:  # type: ignore[no-untyped-def]
    r = httpx2.put(gw.url, content=b"{}", headers=_headers(gw), timeout=30)
    assert r.status_code == 405 and "POST" in r.headers["allow"]
    r = httpx2.get(gw.url, headers=_headers(gw, Accept="application/json"), timeout=30)
    assert r.status_code == 406


def test_unknown_method_and_bad_params_within_a_session(gw) -> None:  # type: ignore[no-untyped-def]
    sid = _session(gw)
    h = _headers(gw, **{"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"})
    r = httpx2.post(gw.url, content=json.dumps({"jsonrpc": "2.0", "id": 5, "method": "no/such"}), headers=h)
    assert r.status_code == 200 and answer(r) == {
        "jsonrpc": "2.0", "id": 5, "error": {"code": -32601, "message": "Method not found: no/such"}}
    r = httpx2.post(gw.url, content=json.dumps({"jsonrpc": "2.0", "id": 6, "method": "tools/call",
                                                "params": {"name": 5}}), headers=h)
    assert answer(r)["error"]["code"] == -32602
    r = httpx2.post(gw.url, content=json.dumps({"jsonrpc": "2.0", "id": "x", "result": {}}), headers=h)
    assert r.status_code == 400  # a response to nothing we asked
    r = httpx2.post(gw.url, content=json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}), headers=h)
    assert r.status_code == 202


def test_delete_ends_the_session(gw) -> None:  # type: ignore[no-untyped-def]
    sid = _session(gw)
    h = _headers(gw, **{"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"})
    assert httpx2.delete(gw.url, headers=h).status_code == 200
    r = httpx2.post(gw.url, content=json.dumps({"jsonrpc": "2.0", "id": 2, "method": "ping"}), headers=h)
    assert r.status_code == 404


def test_still_serving_after_all_that(gw) -> None:  # type: ignore[no-untyped-def]
    sid = _session(gw)
    h = _headers(gw, **{"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"})
    r = httpx2.post(gw.url, content=json.dumps({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                                                "params": {"name": "tools__echo", "arguments": {"text": "ok"}}}),
                    headers=h, timeout=30)
    assert r.status_code == 200
    assert answer(r)["result"]["content"][0]["text"] == "ok"
    assert httpx2.get(gw.base + "/health").json()["ready"] is True
