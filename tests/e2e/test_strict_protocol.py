"""Protocol strictness at the edge: what two readers of one request could disagree about is refused.

Request ids reused while in flight, a version header that is not the session's, credentials in the
URL, duplicate JSON keys, and 2026-07-28 `Mcp-Param-*` headers that disagree with the body.
"""

from __future__ import annotations

import asyncio
import json
import sys

import httpx2
import pytest

from tests.e2e.audit_support import evidence_rows
from tests.procs import ROOT, aegress, answer, gateway_with_fixture, mcp_client, run

ACCEPT = "application/json, text/event-stream"
INIT = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}
MODERN = "2026-07-28"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    home = tmp_path_factory.mktemp("strict") / "home"
    with gateway_with_fixture(home) as g:
        aegress(home, "upstream", "add", "--tenant", "acme", "params", "--command", sys.executable,
                "--command", "-m", "--command", "tests.servers.param_server", "--env", f"PYTHONPATH={ROOT}",
                "--cwd", str(ROOT))
        yield g


def _headers(gw, **extra: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"Authorization": f"Bearer {gw.tokens[('acme', 'alice')]}", "Accept": ACCEPT,
            "Content-Type": "application/json", **extra}


def _session(gw) -> dict[str, str]:  # type: ignore[no-untyped-def]
    r = httpx2.post(gw.url, content=json.dumps(INIT), headers=_headers(gw), timeout=30)
    assert r.status_code == 200
    return _headers(gw, **{"Mcp-Session-Id": r.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"})


def _call(tool: str, arguments: dict, msg_id: object) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": msg_id, "method": "tools/call",
                       "params": {"name": tool, "arguments": arguments}}).encode()


def test_a_request_id_in_flight_cannot_be_reused(gw) -> None:  # type: ignore[no-untyped-def]
    hdrs = _session(gw)

    async def go() -> None:
        async with httpx2.AsyncClient(timeout=30) as http:
            first = asyncio.ensure_future(http.post(gw.url, content=_call("tools__slow", {"seconds": 2}, 7),
                                                    headers=hdrs))
            await asyncio.sleep(0.8)  # the first call is in flight (it takes 2 s)
            again = await http.post(gw.url, content=_call("tools__echo", {"text": "again"}, 7), headers=hdrs)
            assert again.status_code == 409, again.text
            body = again.json()
            assert body["error"]["code"] == -32600
            assert body["error"]["data"]["code"] == "duplicate-request-id"
            other = await http.post(gw.url, content=_call("tools__echo", {"text": "x"}, "7"), headers=hdrs)
            assert answer(other)["result"]["content"][0]["text"] == "x"  # the string "7" is another id
            done = await first
            assert "result" in answer(done)
            reused = await http.post(gw.url, content=_call("tools__echo", {"text": "later"}, 7), headers=hdrs)
            assert answer(reused)["result"]["content"][0]["text"] == "later"  # finished ids may come back

    run(go(), timeout=60)


def test_a_version_header_newer_than_the_sessions_is_refused(gw) -> None:  # type: ignore[no-untyped-def]
    init = {**INIT, "params": {**INIT["params"], "protocolVersion": "2025-06-18"}}
    r = httpx2.post(gw.url, content=json.dumps(init), headers=_headers(gw), timeout=30)
    assert r.json()["result"]["protocolVersion"] == "2025-06-18"
    hdrs = _headers(gw, **{"Mcp-Session-Id": r.headers["mcp-session-id"]})
    body = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    r = httpx2.post(gw.url, content=body, headers={**hdrs, "MCP-Protocol-Version": "2025-11-25"}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["data"]["code"] == "version-mismatch"
    for fits in ("2025-06-18", "2025-03-26"):  # the negotiated one, or older (clients and the conformance suite)
        r = httpx2.post(gw.url, content=body, headers={**hdrs, "MCP-Protocol-Version": fits}, timeout=30)
        assert r.status_code == 200


@pytest.mark.parametrize("param", ["access_token", "token", "api_key", "authorization", "Access_Token"])
def test_credentials_in_the_query_are_refused(gw, param: str) -> None:  # type: ignore[no-untyped-def]
    token = gw.tokens[("acme", "alice")]
    r = httpx2.post(f"{gw.url}?{param}={token}", content=json.dumps(INIT), headers=_headers(gw), timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["data"]["code"] == "credentials-in-query"
    assert token not in r.text
    alone = {k: v for k, v in _headers(gw).items() if k != "Authorization"}
    r = httpx2.post(f"{gw.url}?{param}={token}", content=json.dumps(INIT), headers=alone, timeout=30)
    assert r.status_code == 400  # on its own it never authenticates


DUPLICATES = [
    ("top-level", b'{"jsonrpc": "2.0", "id": 1, "id": 2, "method": "initialize", "params": {}}'),
    ("nested", json.dumps(INIT).replace('"name": "raw"', '"name": "raw", "name": "other"').encode()),
    ("deep-with-spaces", json.dumps(INIT).replace('"capabilities": {}',
                                                  '"capabilities": {"x": {"a" : 1, "a"\t: 2}}').encode()),
]


@pytest.mark.parametrize(("name", "body"), DUPLICATES, ids=[d[0] for d in DUPLICATES])
def test_duplicate_json_keys_are_refused(gw, name: str, body: bytes) -> None:  # type: ignore[no-untyped-def]
    r = httpx2.post(gw.url, content=body, headers=_headers(gw), timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == -32700
    assert r.json()["error"]["data"]["code"] == "duplicate-key"
    lookalike = json.dumps(INIT).replace('"name": "raw"', '"name": "raw \\": x\\":"').encode()
    r = httpx2.post(gw.url, content=lookalike, headers=_headers(gw), timeout=30)  # quoted colons are no keys
    assert r.status_code == 200, r.text


def _modern_call(arguments: dict, msg_id: int = 5) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": {
        "name": "params__route", "arguments": arguments,
        "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN,
                  "io.modelcontextprotocol/clientCapabilities": {},
                  "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"}}}}).encode()


def _modern_headers(gw, **extra: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return _headers(gw, **{"MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": "params__route",
                           **extra})


def test_mcp_param_headers_must_mirror_the_arguments(gw) -> None:  # type: ignore[no-untyped-def]
    async def sdk() -> str:
        async with mcp_client(gw.url, gw.tokens[("acme", "alice")], mode=MODERN) as c:
            await c.list_tools()  # the SDK learns which arguments it must mirror
            res = await c.call_tool("params__route", {"region": "eu-west", "text": "hi"})
            return str(res.content[0].text)

    assert run(sdk()) == "eu-west:hi"  # a conforming client is served
    ok = httpx2.post(gw.url, content=_modern_call({"region": "eu", "text": "t"}),
                     headers=_modern_headers(gw, **{"Mcp-Param-Region": "eu"}), timeout=30)
    assert answer(ok)["result"]["content"][0]["text"] == "eu:t"
    cases = [
        {"Mcp-Param-Region": "us"},  # disagrees with the body
        {},  # missing although the argument is present
    ]
    for extra in cases:
        r = httpx2.post(gw.url, content=_modern_call({"region": "eu", "text": "t"}),
                        headers=_modern_headers(gw, **extra), timeout=30)
        assert r.status_code == 400, (extra, r.text)
        assert r.json()["error"]["code"] == -32020
        assert r.json()["id"] == 5


def test_a_header_mismatch_refusal_carries_its_argument_digest(gw) -> None:  # type: ignore[no-untyped-def]
    """Finding 12(a): the refused call is found by the digest of the arguments it carried."""
    arguments = {"region": "eu", "text": "mismatch-digest"}
    r = httpx2.post(gw.url, content=_modern_call(arguments, msg_id=9),
                    headers=_modern_headers(gw, **{"Mcp-Param-Region": "us"}), timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == -32020
    digest = aegress(gw.home, "audit", "hash", "--tenant", "acme", "--json-value", json.dumps(arguments)).stdout.strip()
    found = evidence_rows(gw.home, "--digest", digest)
    assert [(r["kind"], r["verdict"]) for r in found] == [("decision", "deny")]
    body = found[0]["record"]["body"]
    assert body["args_digest"] == digest and "mismatch-digest" in body["args_preview"]
    assert body["tool"] == "params__route" and str(body.get("tool_def_hash")).startswith("sha256:")
