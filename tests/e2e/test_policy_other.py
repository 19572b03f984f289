"""Policy on resources and prompts through a real gateway: what a rule does not allow is hidden from
lists and answers like something that does not exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.procs import add_stdio_fixture, aegress, mcp_client, run, run_gateway, setup_tenant

POLICY = """\
version = 1
default = "block"

[[rules]]
id = "tools"
verdict = "allow"

[[rules]]
id = "some-resources"
kind = "resource"
name = "fixture://*"
verdict = "allow"

[[rules]]
id = "no-info"
kind = "resource"
name = "fixture://info"
verdict = "block"

[[rules]]
id = "prompts"
kind = "prompt"
name = "greet"
verdict = "allow"
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    home = tmp_path_factory.mktemp("pol-other") / "home"
    token = setup_tenant(home, "acme", "alice")
    add_stdio_fixture(home, "acme", "a")
    add_stdio_fixture(home, "acme", "b")
    policy = home.parent / "policy.toml"
    policy.write_text(POLICY.replace('name = "greet"', 'upstream = "a"\nname = "greet"'))
    aegress(home, "policy", "apply", str(policy), "--tenant", "acme", "--yes")
    with run_gateway(home) as g:
        g.tokens[("acme", "alice")] = token
        yield g


def test_blocked_resources_and_prompts_are_hidden_and_unknown(gw, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from mcp.shared.exceptions import MCPError

    async def go() -> None:
        async with mcp_client(gw.url, gw.tokens[("acme", "alice")]) as c:
            uris = {str(r.uri) for r in (await c.list_resources()).resources}
            assert {"a+fixture://other", "b+fixture://other"} <= uris
            assert not any(u.endswith("fixture://info") for u in uris)
            assert (await c.read_resource("b+fixture://other")).contents[0].text == "other from b"
            prompts = {p.name for p in (await c.list_prompts()).prompts}
            assert prompts == {"a__greet"}
            assert "Hello X from a" in (await c.get_prompt("a__greet", {"name": "X"})).messages[0].content.text
            with pytest.raises(MCPError) as hidden:
                await c.get_prompt("b__greet", {"name": "X"})
            with pytest.raises(MCPError) as missing:
                await c.get_prompt("b__nothing", {"name": "X"})
            assert hidden.value.error.code == missing.value.error.code
            assert hidden.value.error.message.replace("b__greet", "N") == missing.value.error.message.replace(
                "b__nothing", "N")
            with pytest.raises(MCPError) as blocked_read:
                await c.read_resource("a+fixture://info")
            assert blocked_read.value.error.message == "Unknown resource: a+fixture://info"

    run(go())


LIMITED = """\
version = 1
default = "allow"
origins = ["https://app.example.com"]

[builtin]
destructive = "off"

[rate_limits]
default = { calls = 3, per_seconds = 600 }

[[rules]]
id = "tools"
verdict = "allow"
"""


def test_policy_origins_and_rate_limits(tmp_path_factory: pytest.TempPathFactory) -> None:
    import json

    import httpx2

    from tests.procs import answer

    home = tmp_path_factory.mktemp("limits") / "home"
    token = setup_tenant(home, "acme", "alice")
    add_stdio_fixture(home, "acme", "a")
    policy = home.parent / "limited.toml"
    policy.write_text(LIMITED)
    aegress(home, "policy", "apply", str(policy), "--tenant", "acme", "--yes")
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "t", "version": "0"}}}
    with run_gateway(home) as g:
        def post(body: dict, **extra: str) -> httpx2.Response:
            return httpx2.post(g.url, content=json.dumps(body), timeout=30, headers={
                "Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
                "Content-Type": "application/json", **extra})

        assert post(init, Origin="https://other.example.com").status_code == 403
        ok = post(init, Origin="https://app.example.com")
        assert ok.status_code == 200
        h = {"Mcp-Session-Id": ok.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
        texts = []
        for i in range(4):
            r = post({"jsonrpc": "2.0", "id": 10 + i, "method": "tools/call",
                      "params": {"name": "a__echo", "arguments": {"text": f"n{i}"}}}, **h)
            texts.append(answer(r)["result"]["content"][0]["text"])
        assert texts[:3] == ["n0", "n1", "n2"]
        assert texts[3].startswith("Rate limit reached: at most 3 calls per 600 s")


def test_policy_changes_are_sealed_evidence(tmp_path_factory: pytest.TempPathFactory) -> None:
    import json

    home = tmp_path_factory.mktemp("polev") / "home"
    aegress(home, "tenant", "create", "acme")
    policy = home.parent / "p.toml"
    policy.write_text(LIMITED)
    aegress(home, "policy", "apply", str(policy), "--tenant", "acme", "--yes", "--as", "ops")
    aegress(home, "policy", "apply", str(policy), "--tenant", "acme", "--yes", "--as", "ops")
    records = json.loads(aegress(home, "audit", "query", "--tenant", "acme", "--json").stdout)
    changes = [r["record"]["body"] for r in sorted(records, key=lambda r: r["seq"]) if r["kind"] == "policy_changed"]
    assert [c["policy_version"] for c in changes] == ["1", "2"]
    assert changes[1]["previous_version"] == "1" and changes[1]["actor"] == "ops"
    assert aegress(home, "audit", "verify", "--tenant", "acme", check=False).returncode == 0
