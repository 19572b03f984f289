"""`aegress status` against a real gateway with evidence from real calls, and with no gateway at all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.status import detect_environment
from tests.e2e.console_support import GATEWAY_ENV, make_calls, seed, status_json, wait_for_checkpoints
from tests.procs import ROOT, aegress, aegress_json, cli_env, run_gateway


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    home = tmp_path_factory.mktemp("status") / "home"
    tokens = seed(home)
    with run_gateway(home, env=GATEWAY_ENV) as gw:
        calls = make_calls(gw, tokens[("acme", "alice")])
        aegress(home, "audit", "verify")  # kept for status: the last verification and its result
        yield gw, calls


def test_status_json_of_a_running_gateway(served) -> None:  # type: ignore[no-untyped-def]
    gw, calls = served
    status = wait_for_checkpoints(gw.home)
    g = status["gateway"]
    assert g["running"] and g["pid"] == gw.proc.popen.pid and g["url"] == gw.url
    assert g["answering"] and g["ready"] and g["version"] and g["uptime_s"] >= 0
    assert status["binding"] == {"mode": "bearer", "ingress": "direct",
                                 "text": "bearer tokens, each bound to one tenant and one actor"}
    assert status["gate"]["total"] == {"allowed": 3, "held": 1, "blocked": 1, "hidden": 1, "denied": 0}
    assert "bad- texts are refused" in calls.blocked and "Unknown tool" in calls.hidden
    assert status["gate"]["last_hour"] == status["gate"]["total"]
    ev = status["evidence"]
    assert ev["records"] >= 3 * 2 + 2 and ev["logs"] >= 2 and ev["last_checkpoint"]["age_s"] < 60
    assert ev["recording"] == "on"
    verified = ev["last_verification"]
    assert verified["ok"] is True and verified["records"] > 0 and verified["age_s"] < 120
    (client,) = status["clients"]
    assert client["active"] and client["calls"] == 6 and client["versions"]
    assert status["upstreams"] == [{"tenant": "acme", "name": "tools", "transport": "stdio",
                                    "tools": status["upstreams"][0]["tools"], "health": "ok",
                                    "recent_calls": {"completed": 3, "refused": 2}}]  # hidden: no upstream
    assert status["upstreams"][0]["tools"] >= 5
    (review,) = status["reviews"]["items"]
    assert review["tool"] == "tools__slow" and review["tenant"] == "acme" and review["id"] in calls.held
    expected = "docker" if detect_environment(os.environ) in ("container", "kubernetes") else "direct"
    assert status["deploy"]["path"] == expected and status["deploy"]["store"] == "sqlite"


def test_status_of_one_tenant(served) -> None:  # type: ignore[no-untyped-def]
    gw, _ = served
    beta = status_json(gw.home, "--tenant", "beta")
    assert beta["tenant"] == "beta" and beta["gate"]["total"] == dict.fromkeys(beta["gate"]["total"], 0)
    assert beta["clients"] == [] and beta["upstreams"] == [] and beta["reviews"]["items"] == []
    assert beta["gateway"]["running"]  # the gateway is the data dir's, whatever the tenant
    acme = status_json(gw.home, "-t", "acme")
    assert acme["gate"]["total"]["allowed"] == 3 and len(acme["reviews"]["items"]) == 1
    r = aegress(gw.home, "status", "--tenant", "acmee", check=False)
    assert r.returncode == 1 and "No tenant 'acmee'" in r.stderr and "did you mean 'acme'" in r.stderr


def test_status_screen(served) -> None:  # type: ignore[no-untyped-def]
    gw, _ = served
    out = aegress(gw.home, "status").stdout
    review_id = status_json(gw.home)["reviews"]["items"][0]["id"]
    for text in ("running", f"pid {gw.proc.popen.pid}", gw.url, "ready", "Policy gate", "bearer tokens",
                 "Pending reviews", review_id, "tools__slow", "Upstreams", "last verification"):
        assert text in out, (text, out)


def test_status_watch_refreshes_a_bounded_number_of_times(served) -> None:  # type: ignore[no-untyped-def]
    gw, _ = served
    r = aegress(gw.home, "status", "--watch", "--json", "--count", "2", "--interval", "1")
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["gateway"]["running"] for line in lines)
    r = aegress(gw.home, "status", "--watch", "--count", "2", "--interval", "1")
    assert r.stdout.count("Policy gate") >= 1 and r.returncode == 0
    bad = aegress(gw.home, "status", "--watch", "--interval", "0.1", check=False)
    assert bad.returncode == 2 and "--interval must be from 1 to 60 seconds" in bad.stderr


def test_status_watch_ends_cleanly_on_ctrl_c(served) -> None:  # type: ignore[no-untyped-def]
    gw, _ = served
    proc = subprocess.Popen([sys.executable, "-m", "aegress_cli.main", "status", "--watch", "--json", "--interval",
                             "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(gw.home),
                            cwd=ROOT)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the first refresh is out: it runs
        assert json.loads(first)["gateway"]["running"]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0 and "Traceback" not in err


def test_status_without_a_gateway_and_after_one_was_killed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    aegress(home, "tenant", "create", "acme")
    idle = status_json(home)
    assert not idle["gateway"]["running"] and idle["gateway"]["note"] == "no gateway is serving this data dir"
    assert idle["binding"]["mode"] == "unknown" and idle["deploy"]["path"] is None
    assert "not running" in aegress(home, "status").stdout
    with run_gateway(home) as gw:
        assert status_json(home)["gateway"]["pid"] == gw.proc.popen.pid
        os.kill(gw.proc.popen.pid, signal.SIGKILL)  # no clean shutdown: the lock file keeps its facts
        gw.proc.popen.wait(10)
        gone = status_json(home)
        assert not gone["gateway"]["running"] and f"pid {gw.proc.popen.pid}, is gone" in gone["gateway"]["note"]
    with run_gateway(home):
        pass  # a clean stop empties the lock file
    assert status_json(home)["gateway"]["note"] == "no gateway is serving this data dir"


def test_a_gateway_that_does_not_answer_is_named(tmp_path: Path) -> None:
    home = tmp_path / "home"
    aegress(home, "tenant", "create", "acme")
    with run_gateway(home) as gw:
        os.kill(gw.proc.popen.pid, signal.SIGSTOP)  # alive, holding the data dir, answering nothing
        try:
            stuck = status_json(home)["gateway"]
        finally:
            os.kill(gw.proc.popen.pid, signal.SIGCONT)
        assert stuck["running"] and not stuck["answering"] and "does not answer" in stuck["note"]


def test_verify_keeps_its_result_for_status(tmp_path: Path) -> None:
    home = tmp_path / "home"
    aegress(home, "tenant", "create", "acme")
    assert status_json(home)["evidence"]["last_verification"] is None
    aegress(home, "audit", "verify", "--tenant", "acme")
    last = status_json(home)["evidence"]["last_verification"]
    assert last["ok"] is True and [log["origin"].endswith("/tenant/acme") for log in last["logs"]] == [True]
    assert aegress_json(home, "tenant", "list")[0]["id"] == "acme"


def test_status_and_operator_commands_load_no_server_or_evidence_stack(tmp_path: Path) -> None:
    from tests.e2e.test_cli import SERVER_STACK, imported_modules

    home = tmp_path / "home"
    aegress(home, "tenant", "create", "acme")
    heavy = ("cryptography", "gateway.server", "gateway.pipeline", "gateway.evidence", "gateway.console")
    for args in (["status"], ["status", "--json", "--tenant", "acme"], ["operator", "token", "list"]):
        modules = imported_modules(home, *args)
        bad = sorted(m for m in modules if m.split(".")[0] in SERVER_STACK or m.split(".")[0] in heavy
                     or any(m == h or m.startswith(h + ".") for h in heavy))
        assert bad == [], (args, bad)


def test_names_from_clients_and_upstreams_are_shown_as_text_never_as_markup(tmp_path: Path) -> None:
    """A client picks its own name (clientInfo.name): `[/]` in it made `aegress status` fail with rich's
    MarkupError, `[bold]...` restyled the operator's screen, and an escape sequence reached the terminal. Every
    value is printed as plain text, control characters escaped."""
    import asyncio

    import httpx2

    from tests.procs import add_stdio_fixture, allow_all, setup_tenant

    home = tmp_path / "home"
    token = setup_tenant(home, "acme", "alice")
    allow_all(home, "acme")
    add_stdio_fixture(home, "acme", "tools")
    hostile = "evil[/] [bold]OK[/bold] \x1b]0;owned\x07\x1b[2K\u202e"

    async def call(url: str) -> None:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
                   "MCP-Protocol-Version": "2025-11-25"}
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
            init = await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": hostile, "version": "1"}}})
            init.raise_for_status()
            if init.headers.get("mcp-session-id"):
                http.headers["mcp-session-id"] = init.headers["mcp-session-id"]
            await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
            done = await http.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                                              "params": {"name": "tools__echo", "arguments": {"text": "hi"}}})
            assert "hi" in done.text

    with run_gateway(home) as gw:
        asyncio.run(call(gw.url))
        assert [c["name"] for c in status_json(home)["clients"]] == [hostile]
        r = aegress(home, "status", check=False)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "evil[/]" in r.stdout and "[bold]OK[/bold]" in r.stdout  # shown as written
    assert "\x1b" not in r.stdout and "\u202e" not in r.stdout and "\\x1b]0;owned\\x07\\x1b[2K\\u202e" in r.stdout
