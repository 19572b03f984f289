"""Tenant isolation through a real gateway: same tool names, same JSON-RPC ids, concurrent calls
with progress; claims that disagree with the token; revocation; sessions bound to their owner."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx2
import pytest

from tests.procs import (
    add_stdio_fixture,
    aegress,
    allow_all,
    answer,
    mcp_client,
    run,
    run_gateway,
    run_http_upstream,
    setup_tenant,
)

INIT = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Tenants red and blue, each with a stdio upstream `tools` and the same HTTP upstream `shared`."""
    home = tmp_path_factory.mktemp("iso") / "home"
    tokens = {t: setup_tenant(home, t, "user") for t in ("red", "blue")}
    for t in tokens:
        allow_all(home, t)
    with run_http_upstream("shared") as (url, _):
        for tenant in ("red", "blue"):
            add_stdio_fixture(home, tenant, "tools", label=f"{tenant}-tools")
            aegress(home, "upstream", "add", "--tenant", tenant, "shared", "--url", url, "--allow-private")
        with run_gateway(home) as gw:
            gw.tokens = {(t, "user"): tok for t, tok in tokens.items()}
            yield gw


def test_same_names_same_ids_concurrent_progress_never_cross(two) -> None:  # type: ignore[no-untyped-def]
    rounds, clients_per_tenant, calls_per_client = 3, 2, 6

    async def one_client(tenant: str, mistakes: list[str]) -> int:
        done = 0
        async with mcp_client(two.url, two.tokens[(tenant, "user")]) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert "tools__nonce_echo" in names and "shared__nonce_echo" in names

            async def call(upstream: str) -> None:
                nonce = uuid.uuid4().hex
                seen: list[str] = []

                async def on_progress(p, total, message):  # type: ignore[no-untyped-def]
                    seen.append(str(message))

                r = await c.call_tool(f"{upstream}__nonce_echo", {"nonce": f"{tenant}-{nonce}", "steps": 3},
                                      progress_callback=on_progress)
                # each tenant's stdio upstream is its own process; the HTTP one is shared by both
                expected_server = f"{tenant}-tools" if upstream == "tools" else "shared"
                if r.content[0].text != f"{expected_server}:{tenant}-{nonce}":
                    mistakes.append(f"result {r.content[0].text!r} for {tenant}-{nonce}")
                want = [f"{expected_server}:{tenant}-{nonce}:{i}" for i in (1, 2, 3)]
                if seen != want:
                    mistakes.append(f"progress {seen!r} != {want!r}")

            await asyncio.gather(*(call("tools" if i % 2 else "shared") for i in range(calls_per_client)))
            done += calls_per_client
        return done

    async def go() -> None:
        mistakes: list[str] = []
        total = 0
        for _ in range(rounds):
            counts = await asyncio.gather(
                *(one_client(t, mistakes) for t in ("red", "blue") for _ in range(clients_per_tenant))
            )
            total += sum(counts)
        assert total == rounds * 2 * clients_per_tenant * calls_per_client
        assert mistakes == []

    run(go(), timeout=240)


def _post(gw, token: str, body: dict, headers: dict | None = None, url: str | None = None) -> httpx2.Response:  # type: ignore[no-untyped-def]
    h = {**ACCEPT, "Authorization": f"Bearer {token}", **(headers or {})}
    return httpx2.post(url or gw.url, content=json.dumps(body), headers=h, timeout=30)


def _session(gw, token: str) -> str:  # type: ignore[no-untyped-def]
    r = _post(gw, token, INIT)
    assert r.status_code == 200, r.text
    return r.headers["mcp-session-id"]


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({"X-Aegress-Tenant-Id": "blue"}, ""),
        ({"X-Aegress-Actor-Id": "someone-else"}, ""),
        ({}, "?tenantId=blue"),
        ({}, "?actorId=someone-else"),
        ({"X-Aegress-Tenant-Id": "red"}, "?tenantId=blue"),
        ({}, "?tenantId=red&tenantId=red"),
        ({"X-Aegress-Tenant-Id": "r\u00e9d"}, ""),
    ],
)
def test_claims_that_disagree_with_the_token_are_refused(two, headers: dict, query: str) -> None:  # type: ignore[no-untyped-def]
    raw = [(k.encode(), v.encode()) for k, v in headers.items()]
    h = httpx2.Headers({**ACCEPT, "Authorization": f"Bearer {two.tokens[('red', 'user')]}"})
    with httpx2.Client(timeout=30) as http:
        r = http.send(http.build_request("POST", two.url + query, content=json.dumps(INIT), headers=[*h.raw, *raw]))
    assert r.status_code == 403
    body = r.json()
    assert body["error"]["code"] == -32002
    assert body["error"]["data"]["code"] == "binding"
    assert "blue" not in r.text and "someone-else" not in r.text
    assert "mcp-session-id" not in r.headers


def test_duplicate_header_claim_is_refused(two) -> None:  # type: ignore[no-untyped-def]
    with httpx2.Client(timeout=30) as http:
        h = httpx2.Headers({**ACCEPT, "Authorization": f"Bearer {two.tokens[('red', 'user')]}"})
        raw = [*h.raw, (b"x-aegress-tenant-id", b"red"), (b"x-aegress-tenant-id", b"red")]
        r = http.send(http.build_request("POST", two.url, content=json.dumps(INIT), headers=raw))
    assert r.status_code == 403
    assert r.json()["error"]["data"]["code"] == "binding"


def test_matching_claims_are_accepted(two) -> None:  # type: ignore[no-untyped-def]
    r = _post(two, two.tokens[("red", "user")], INIT, {"X-Aegress-Tenant-Id": "red", "X-Aegress-Actor-Id": "user"},
              url=two.url + "?tenantId=red&actorId=user")
    assert r.status_code == 200


def test_a_session_belongs_to_its_tenant(two) -> None:  # type: ignore[no-untyped-def]
    sid = _session(two, two.tokens[("red", "user")])
    r = _post(two, two.tokens[("blue", "user")], {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
              {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"})
    assert r.status_code == 404
    assert "red" not in r.text


def test_hidden_and_foreign_tools_answer_like_unknown_ones(two) -> None:  # type: ignore[no-untyped-def]
    token = two.tokens[("red", "user")]
    sid = _session(two, token)
    h = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
    answers = []
    for name in ("tools__no_such_tool", "nowhere__echo", "blue__echo", "echo"):
        r = _post(two, token, {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                               "params": {"name": name, "arguments": {}}}, h)
        assert r.status_code == 200
        err = answer(r)["error"]
        answers.append((err["code"], err["message"].replace(name, "NAME")))
    assert len(set(answers)) == 1, answers


def test_revocation_applies_to_the_next_request(tmp_path_factory: pytest.TempPathFactory) -> None:
    home = tmp_path_factory.mktemp("rev") / "home"
    token = setup_tenant(home, "acme", "bob")
    allow_all(home, "acme")
    add_stdio_fixture(home, "acme", "tools")
    with run_gateway(home) as gw:
        sid = _session(gw, token)
        h = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
        ok = _post(gw, token, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, h)
        assert ok.status_code == 200 and answer(ok)["result"]["tools"]
        token_id = next(t for t in json.loads(aegress(home, "token", "list", "--json").stdout) if t["active"])["id"]
        aegress(home, "token", "revoke", token_id, "--yes")
        r = _post(gw, token, {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, h)
        assert r.status_code == 401
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
        assert r.json()["error"]["data"]["code"] == "invalid-token"
