"""A hostile stdio upstream against a real gateway: oversized lines, wrong ids, leaky errors, echoed secrets.

The upstream is `tests/servers/hostile_stdio.py` (raw JSON-RPC, so it can break the rules); the client
is the official SDK over Streamable HTTP; evidence is read back through the `aegress audit` commands.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest

from tests.procs import (
    ROOT,
    aegress,
    allow_all,
    mcp_client,
    run,
    run_gateway,
    run_http_upstream,
    setup_tenant,
)

HOSTILE = [sys.executable, "-m", "tests.servers.hostile_stdio"]
ENV_SECRET = "plain-words-kept-here"  # no detector would catch it: only knowing the value does
HEADER_SECRET = "header-words-kept-here"
INTERNAL = "db-7.internal.corp"


def add_hostile(home: Path, tenant: str, name: str, *flags: str) -> None:
    aegress(home, "upstream", "add", "--tenant", tenant, name, *[x for a in HOSTILE for x in ("--command", a)],
            "--env", f"PYTHONPATH={ROOT}", "--cwd", str(ROOT), *flags)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Tenant acme: the hostile stdio upstream `bad` (holding an injected secret) and an HTTP fixture
    `web` whose registered header holds another; the gateway logs at debug level."""
    home = tmp_path_factory.mktemp("hostile") / "home"
    token = setup_tenant(home, "acme", "alice")
    allow_all(home, "acme")
    add_hostile(home, "acme", "bad", "--env", f"UPSTREAM_PASS={ENV_SECRET}")
    with run_http_upstream("web") as (web_url, _):
        aegress(home, "upstream", "add", "--tenant", "acme", "web", "--url", web_url, "--allow-private",
                "--header", f"X-Upstream-Key={HEADER_SECRET}")
        with run_gateway(home, "--log-level", "debug") as g:
            g.tokens[("acme", "alice")] = token
            yield g


def _code(exc: BaseException) -> object:
    data = getattr(getattr(exc, "error", None), "data", None)
    return data.get("code") if isinstance(data, dict) else None


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


def test_an_oversized_line_fails_its_call_and_the_upstream_keeps_working(gw) -> None:  # type: ignore[no-untyped-def]
    from mcp.shared.exceptions import MCPError

    async def go() -> None:
        async with mcp_client(gw.url, gw.tokens[("acme", "alice")]) as c:
            pid = (await c.call_tool("bad__pid", {})).content[0].text
            with pytest.raises(MCPError) as too_large:
                await asyncio.wait_for(c.call_tool("bad__huge", {"kib": 50 * 1024}), 60)
            assert _code(too_large.value) == "upstream-answer-too-large"
            assert "--max-message-bytes" in too_large.value.error.message
            assert (await c.call_tool("bad__pid", {})).content[0].text == pid  # the same process, still working
            assert (await c.call_tool("bad__echo", {"text": "after"})).content[0].text == "after"

    run(go())
    assert _peak_rss_kib(gw.proc.popen.pid) < 400 * 1024  # a 50 MiB line was never held whole (limit 16 MiB)


def test_an_answer_with_an_id_never_sent_fails_the_only_call_at_once(gw) -> None:  # type: ignore[no-untyped-def]
    from mcp.shared.exceptions import MCPError

    async def go() -> None:
        async with mcp_client(gw.url, gw.tokens[("acme", "alice")]) as c:
            with pytest.raises(MCPError) as bad:  # well inside the 300 s call timeout
                await asyncio.wait_for(c.call_tool("bad__wrong_id", {}), 20)
            assert _code(bad.value) == "upstream-bad-answer"
            assert (await c.call_tool("bad__echo", {"text": "fine"})).content[0].text == "fine"

    run(go())
    assert "answered with an id it was never sent" in "".join(gw.proc.output)


def test_upstream_errors_keep_their_code_with_a_bounded_message_and_no_data(gw) -> None:  # type: ignore[no-untyped-def]
    from mcp.shared.exceptions import MCPError

    async def go() -> None:
        async with mcp_client(gw.url, gw.tokens[("acme", "alice")]) as c:
            with pytest.raises(MCPError) as failed:
                await c.call_tool("bad__fail", {})
            err = failed.value.error
            assert err.code == -32050
            assert 100 < len(err.message) <= 1000 and set(err.message) <= {"E", "…"}
            assert err.data is None and INTERNAL not in json.dumps(failed.value.error.model_dump())

    run(go())
    log = "".join(gw.proc.output)
    assert INTERNAL in log and "E" * 5000 in log  # the full error stays in the gateway's own log


def test_injected_credentials_never_reach_previews_logs_or_exports(gw, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        async with mcp_client(gw.url, gw.tokens[("acme", "alice")]) as c:
            echoed = (await c.call_tool("bad__env", {"name": "UPSTREAM_PASS"})).content[0].text
            assert ENV_SECRET in echoed  # the upstream's answer reaches the client as it is
            headers = (await c.call_tool("web__seen_headers", {})).content[0].text
            assert HEADER_SECRET in headers

    run(go())
    home = gw.home
    rows: list[dict] = []
    for _ in range(50):  # bounded: up to 5 s for both outcomes to be queryable
        rows = json.loads(aegress(home, "audit", "query", "--tenant", "acme", "--limit", "1000", "--json").stdout)
        if sum(1 for r in rows if r["outcome"] == "completed" and r["tool"] in ("bad__env", "web__seen_headers")) >= 2:
            break
        time.sleep(0.1)
    queried = json.dumps(rows)
    assert "web__seen_headers" in queried and "bad__env" in queried
    assert "[REDACTED]" in queried
    exported = tmp_path / "log.jsonl"
    aegress(home, "audit", "export", "--tenant", "acme", "--format", "jsonl", "--out", str(exported))
    bundle = tmp_path / "bundle"
    aegress(home, "audit", "export", "--tenant", "acme", "--out", str(bundle))
    texts = [queried, exported.read_text(), "".join(gw.proc.output),
             *(p.read_text(errors="replace") for p in bundle.rglob("*") if p.is_file())]
    for text in texts:
        assert ENV_SECRET not in text and HEADER_SECRET not in text
