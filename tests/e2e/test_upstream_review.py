"""Review findings on upstream connections, against a real gateway and real hostile upstreams
(tests/servers/hostile_http.py, hostile_stdio.py): a client cannot make the gateway open unlimited
connections; a listing that times out does not fail other calls on the same connection; a 404 carrying
the answer to our call is delivered, not re-sent; an upstream's error never quotes its injected credential."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import sys
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from tests.e2e.test_hostile_http import HOSTILE, set_limits, start
from tests.procs import ROOT, Gateway, aegress, allow_all, answer, mcp_client, run, run_gateway, setup_tenant

STDIO_HOSTILE = [sys.executable, "-m", "tests.servers.hostile_stdio"]
SECRET = "plain-review-words-kept"  # no detector would catch it: only knowing the injected value does
ACCEPT = "application/json, text/event-stream"
LEGACY = "2025-11-25"
CAP_AT = 16  # gateway.proxy.MAX_PROFILES_PER_UPSTREAM


@dataclasses.dataclass
class World:
    gw: Gateway
    acme: str
    beta: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Tenant acme: `h` (hostile HTTP, init timeout 2 s), `g` (the same server, defaults) and `s` (hostile
    stdio holding an injected secret). Tenant beta: only `p` (the hostile HTTP server)."""
    home = tmp_path_factory.mktemp("review") / "home"
    acme = setup_tenant(home, "acme", "alice")
    beta = setup_tenant(home, "beta", "bob")
    allow_all(home, "acme")
    allow_all(home, "beta")
    url, upstream = start(HOSTILE)
    try:
        for tenant, name in (("acme", "h"), ("acme", "g"), ("beta", "p")):
            aegress(home, "upstream", "add", "--tenant", tenant, name, "--url", url, "--allow-private")
        set_limits(home, "acme", "h", init_timeout_s=2.0)
        aegress(home, "upstream", "add", "--tenant", "acme", "s",
                *[x for a in STDIO_HOSTILE for x in ("--command", a)],
                "--env", f"PYTHONPATH={ROOT}", "--cwd", str(ROOT), "--env", f"UPSTREAM_PASS={SECRET}")
        with run_gateway(home) as gw:
            yield World(gw, acme, beta)
    finally:
        upstream.stop()


# -- finding 1: profiles ------------------------------------------------------------------------------

def _capability_sets() -> list[dict[str, Any]]:
    """Distinct, legitimate client capability declarations (each a distinct profile)."""
    sampling = [None, {}, {"context": {}}, {"tools": {}}, {"context": {}, "tools": {}}]
    roots = [None, {}, {"listChanged": True}]
    elicitation = [None, {}]
    out = []
    for s, r, e in itertools.product(sampling, roots, elicitation):
        caps = {k: v for k, v in (("sampling", s), ("roots", r), ("elicitation", e)) if v is not None}
        out.append(caps)
    return out


class RawSession:
    """A legacy client session over raw HTTP, so the test chooses the declared capabilities."""

    def __init__(self, gw: Gateway, token: str, caps: dict[str, Any]) -> None:
        self.gw = gw
        self.headers = {"Authorization": f"Bearer {token}", "Accept": ACCEPT, "Content-Type": "application/json"}
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": LEGACY, "capabilities": caps, "clientInfo": {"name": "raw", "version": "0"}}}
        r = httpx2.post(gw.url, content=json.dumps(init), headers=self.headers, timeout=30)
        assert r.status_code == 200, r.text
        self.headers.update({"Mcp-Session-Id": r.headers["mcp-session-id"], "MCP-Protocol-Version": LEGACY})
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert httpx2.post(gw.url, content=json.dumps(note), headers=self.headers, timeout=30).status_code == 202

    def call(self, tool: str, args: dict[str, Any]) -> dict[str, Any]:
        msg = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": tool, "arguments": args}}
        r = httpx2.post(self.gw.url, content=json.dumps(msg), headers=self.headers, timeout=30)
        assert r.status_code == 200, r.text
        return dict(answer(r))

    def delete(self) -> None:
        assert httpx2.delete(self.gw.url, headers=self.headers, timeout=30).status_code in (200, 204)


def test_distinct_capabilities_open_at_most_16_connections_per_upstream(world: World) -> None:
    combos = _capability_sets()
    # Flags MCP does not define are dropped: this declaration is the same profile as combos[index].
    junk = {"sampling": {"n": 99, "context": "yes"}, "roots": {"listChanged": "yes", "x": 1}}
    index = combos.index({"sampling": {}, "roots": {}})
    assert index < CAP_AT
    sessions = []
    try:
        for caps in combos[:CAP_AT]:
            s = RawSession(world.gw, world.beta, caps)
            sessions.append(s)
            assert s.call("p__echo", {"text": "in"})["result"]["content"][0]["text"] == "in"
        extra = RawSession(world.gw, world.beta, combos[CAP_AT])
        refused = extra.call("p__echo", {"text": "one too many"})
        assert "error" in refused, refused
        assert "connections in use" in refused["error"]["message"]
        assert refused["error"]["data"]["code"] == "upstream-profiles-exhausted"
        same = RawSession(world.gw, world.beta, junk)  # shares combos[index]'s connection: no new one
        sessions.append(same)
        assert same.call("p__echo", {"text": "shared"})["result"]["content"][0]["text"] == "shared"
        sessions.pop(0).delete()  # its connection is now unused: the next new profile may replace it
        assert extra.call("p__echo", {"text": "now"})["result"]["content"][0]["text"] == "now"
        sessions.append(extra)
    finally:
        for s in sessions:
            s.delete()


# -- finding 8: a timed-out listing does not fail calls in flight ----------------------------------------

def test_a_listing_timeout_does_not_fail_a_call_in_flight_on_the_same_connection(world: World) -> None:
    async def go() -> None:
        async with mcp_client(world.gw.url, world.acme) as a, mcp_client(world.gw.url, world.acme) as b:
            assert (await a.call_tool("h__echo", {"text": "warm"})).content[0].text == "warm"
            beside = asyncio.ensure_future(a.call_tool("h__slow_echo", {"text": "beside", "seconds": 6}))
            try:
                await a.call_tool("h__slow_lists", {"seconds": 10})
                listed = await asyncio.wait_for(b.list_tools(), 20)  # h's listing times out after 2 s
                assert not any(t.name.startswith("h__") for t in listed.tools)
                done = await asyncio.wait_for(beside, 20)
                assert done.content[0].text == "beside"
            finally:
                beside.cancel()

    run(go())


# -- finding 7: a 404 that carries our answer ---------------------------------------------------------------

def test_a_404_holding_the_answer_is_delivered_and_the_call_runs_once(world: World) -> None:
    async def go() -> None:
        async with mcp_client(world.gw.url, world.acme) as c:
            first = (await c.call_tool("g__answered_404", {})).content[0].text
            second = (await c.call_tool("g__answered_404", {})).content[0].text
            n = int(first.split()[1])
            assert second == f"run {n + 1}"  # each call ran exactly once upstream: no renewal, no re-send
            assert (await c.call_tool("g__echo", {"text": "still"})).content[0].text == "still"

    run(go())


# -- finding 11: injected credentials never reach the client -----------------------------------------------

def test_an_upstream_error_quoting_its_injected_credential_reaches_the_client_scrubbed(world: World) -> None:
    from mcp.shared.exceptions import MCPError

    async def go() -> None:
        async with mcp_client(world.gw.url, world.acme) as c:
            with pytest.raises(MCPError) as err:
                await c.call_tool("s__leak", {"name": "UPSTREAM_PASS"})
            wire = json.dumps({"message": err.value.error.message, "data": err.value.error.data})
            assert SECRET not in wire
            assert "[REDACTED]" in err.value.error.message
            assert err.value.error.data["sent"] == "[REDACTED]"

    run(go())
