"""HTTP upstreams are untrusted: a real gateway, a hostile HTTP upstream (tests/servers/hostile_http.py),
the official SDK client. A bad answer ends only its own call, with an error saying what to change."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import (
    FIXTURE_SERVER,
    ROOT,
    Gateway,
    Proc,
    aegress,
    allow_all,
    mcp_client,
    run,
    run_gateway,
    setup_tenant,
)

HOSTILE = [sys.executable, "-m", "tests.servers.hostile_http"]


@dataclasses.dataclass
class World:
    gw: Gateway
    token: str


def set_limits(home: Path, tenant: str, name: str, **limits: float) -> None:
    """Per-upstream limits through the store API (until `aegress upstream set` exists on this branch)."""
    from gateway.store import open_store
    from gateway.types import UpstreamLimits

    store = open_store(home)
    spec = store.get_upstream(tenant, name)
    assert spec is not None
    store.remove_upstream(tenant, name)
    store.add_upstream(dataclasses.replace(spec, limits=UpstreamLimits(**limits)))  # type: ignore[arg-type]


def start(argv: list[str]) -> tuple[str, Proc]:
    proc = Proc(argv, dict(os.environ, PYTHONPATH=str(ROOT), FIXTURE_NAME="web"))
    try:
        return proc.wait_for("LISTENING", timeout=60).split("LISTENING", 1)[1].strip(), proc
    except BaseException:
        proc.stop()
        raise


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Tenant acme: `bad` (the hostile upstream, default limits) and `slowpoke` (the same, idle 1 s)."""
    home = tmp_path_factory.mktemp("hostile") / "home"
    token = setup_tenant(home, "acme", "alice")
    allow_all(home, "acme")
    url, upstream = start(HOSTILE)
    try:
        for name in ("bad", "slowpoke"):
            aegress(home, "upstream", "add", "--tenant", "acme", name, "--url", url, "--allow-private")
        set_limits(home, "acme", "slowpoke", idle_timeout_s=1.0)
        with run_gateway(home) as gw:
            yield World(gw, token)
    finally:
        upstream.stop()


def high_water_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        ("huge_json", {"mb": 200}),
        ("huge_json", {"mb": 200, "chunked": True}),
        ("huge_event", {"mb": 200}),
        ("many_events", {"mb": 64}),
    ],
    ids=["json-declared", "json-chunked", "one-event", "many-events"],
)
def test_an_oversized_answer_ends_only_its_call(world: World, tool: str, args: dict[str, object]) -> None:
    from mcp.shared.exceptions import MCPError

    async def go() -> None:
        async with mcp_client(world.gw.url, world.token) as c:
            beside = asyncio.ensure_future(c.call_tool("bad__slow_echo", {"text": "beside", "seconds": 1.5}))
            with pytest.raises(MCPError) as err:
                await c.call_tool(f"bad__{tool}", args)
            assert err.value.error.data == {"code": "upstream-answer-too-large"}
            assert "limit of 16777216 bytes" in err.value.error.message
            assert "aegress upstream set --tenant acme bad --max-message-bytes" in err.value.error.message
            assert (await beside).content[0].text == "beside"  # a concurrent call on the same upstream
            assert (await c.call_tool("bad__echo", {"text": "after"})).content[0].text == "after"

    run(go(), timeout=60)
    # bounded by the limit, not by what the upstream sent (16 MiB limit, up to 200 MiB sent)
    assert high_water_mb(world.gw.proc.popen.pid) < 200


def test_a_stalled_answer_ends_its_call(world: World) -> None:
    from mcp.shared.exceptions import MCPError

    async def go() -> None:
        async with mcp_client(world.gw.url, world.token) as c:
            with pytest.raises(MCPError) as err:
                await asyncio.wait_for(c.call_tool("slowpoke__stall", {"seconds": 60}), 30)
            assert err.value.error.data == {"code": "upstream-stalled"}
            assert "went silent for 1 s" in err.value.error.message
            assert "aegress upstream set --tenant acme slowpoke --idle-timeout" in err.value.error.message
            assert (await c.call_tool("slowpoke__echo", {"text": "still"})).content[0].text == "still"

    run(go(), timeout=60)


@pytest.mark.parametrize(
    ("tool", "says"),
    [
        ("foreign_id", "a response to another request"),
        ("no_answer", "ended its answer without the response"),
        ("accepted", "accepted a request without answering it"),
    ],
)
def test_an_answer_that_is_not_ours_fails_the_call_at_once(world: World, tool: str, says: str) -> None:
    """The call timeout is 300 s: the error must come from the answer itself, not from waiting."""
    from mcp.shared.exceptions import MCPError

    async def go() -> None:
        async with mcp_client(world.gw.url, world.token) as c:
            with pytest.raises(MCPError) as err:
                await asyncio.wait_for(c.call_tool(f"bad__{tool}", {}), 20)
            assert err.value.error.data == {"code": "upstream-bad-answer"}
            assert says in err.value.error.message
            assert (await c.call_tool("bad__echo", {"text": "next"})).content[0].text == "next"

    run(go(), timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_restarted_upstream_gets_a_new_session_transparently(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The SDK fixture server on a fixed port; killed and started again, it answers 404 for our old
    session: the gateway initializes a new one and the very next calls (two at once) succeed."""
    home = tmp_path_factory.mktemp("restart") / "home"
    token = setup_tenant(home, "acme", "alice")
    allow_all(home, "acme")
    port = free_port()
    argv = [*FIXTURE_SERVER, "--http", "--port", str(port)]
    url, upstream = start(argv)
    try:
        aegress(home, "upstream", "add", "--tenant", "acme", "web", "--url", url, "--allow-private")
        with run_gateway(home) as gw:
            async def go() -> None:
                nonlocal upstream
                async with mcp_client(gw.url, token) as c:
                    assert (await c.call_tool("web__whoami", {})).content[0].text == "web"
                    upstream.stop()
                    _, upstream = start(argv)
                    both = await asyncio.gather(c.call_tool("web__echo", {"text": "again"}),
                                                c.call_tool("web__echo", {"text": "too"}))  # one renewal
                    assert [r.content[0].text for r in both] == ["again", "too"]
                    assert (await c.call_tool("web__whoami", {})).content[0].text == "web"

            run(go(), timeout=90)
    finally:
        upstream.stop()
