"""SIGTERM drains: new requests are refused, calls in flight get the grace period, a call still running
at its end is answered with a JSON-RPC error event (never a truncated stream) and its outcome recorded,
and the process exits 0, saying on stderr what it did."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import time

import httpx2

from tests.e2e.audit_support import evidence_rows
from tests.procs import add_stdio_fixture, allow_all, answer, run, run_gateway, setup_tenant

ACCEPT = "application/json, text/event-stream"
INIT = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}
GRACE = 3


def _call(seconds: float, msg_id: int) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": msg_id, "method": "tools/call",
                       "params": {"name": "tools__slow", "arguments": {"seconds": seconds}}}).encode()


def _events(response: httpx2.Response) -> list[dict]:
    datas = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
    return [json.loads(d) for d in datas if d]


def test_sigterm_drains_calls_in_flight_then_exits_0(tmp_path) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    token = setup_tenant(home, "acme", "alice")
    allow_all(home, "acme")
    add_stdio_fixture(home, "acme", "tools")
    headers = {"Authorization": f"Bearer {token}", "Accept": ACCEPT, "Content-Type": "application/json"}
    with run_gateway(home, "--drain-grace", str(GRACE)) as gw:
        r = httpx2.post(gw.url, content=json.dumps(INIT), headers=headers, timeout=30)
        assert r.status_code == 200
        session = {**headers, "Mcp-Session-Id": r.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
        warm = httpx2.post(gw.url, content=_call(0, 9), headers=session, timeout=30)  # upstream started
        assert "result" in answer(warm)

        async def go() -> tuple[httpx2.Response, httpx2.Response, float]:
            async with httpx2.AsyncClient(timeout=30) as http:
                short = asyncio.ensure_future(http.post(gw.url, content=_call(1.5, 1), headers=session))
                long = asyncio.ensure_future(http.post(gw.url, content=_call(60, 2), headers=session))
                await asyncio.sleep(0.7)  # both in flight
                gw.proc.popen.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                await asyncio.sleep(0.5)
                try:  # no new requests while draining: refused, on a new connection or an open one
                    async with httpx2.AsyncClient(timeout=5) as fresh:
                        late = await fresh.post(gw.url, content=_call(0, 3), headers=session)
                    assert late.status_code == 503
                except httpx2.TransportError:
                    pass
                return await short, await long, signalled

        short, long, signalled = run(go(), timeout=60)
        assert short.status_code == 200
        assert answer(short)["result"]["content"][0]["text"]  # completed normally within the grace
        assert long.status_code == 200
        last = _events(long)[-1]  # the stream ended with a final event, not a cut connection
        assert last["id"] == 2
        assert last["error"]["code"] == -32000
        assert "gateway shutting down" in last["error"]["message"]
        code = gw.proc.popen.wait(timeout=GRACE + 10)
        assert code == 0
        assert time.monotonic() - signalled < GRACE + 8
        gw.proc.stop()
        log = "".join(gw.proc.output)
        assert f"draining 2 calls (grace {GRACE} s)" in log, log[-3000:]
        assert "drained: 1 completed, 1 cut" in log
    rows = evidence_rows(home, "--tenant", "acme")
    intents = {r["seq"]: r for r in rows if r["kind"] == "intent"}
    outcomes = {r["intent_seq"]: r["record"]["body"]["status"] for r in rows if r["kind"] == "outcome"}
    assert set(outcomes) == set(intents)  # every call, the cut one included, ends with a final record
    assert sorted(outcomes.values()) == ["cancelled", "completed", "completed"]  # warm-up, short, cut


def test_a_second_sigint_during_the_drain_cuts_the_grace_short(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """docs/limits.md: the first Ctrl-C drains, a second one forces the exit: a 60 s grace is not waited out."""
    home = tmp_path / "home"
    token = setup_tenant(home, "acme", "alice")
    allow_all(home, "acme")
    add_stdio_fixture(home, "acme", "tools")
    headers = {"Authorization": f"Bearer {token}", "Accept": ACCEPT, "Content-Type": "application/json"}
    with run_gateway(home, "--drain-grace", "60") as gw:
        r = httpx2.post(gw.url, content=json.dumps(INIT), headers=headers, timeout=30)
        session = {**headers, "Mcp-Session-Id": r.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}

        async def go() -> int | None:
            async with httpx2.AsyncClient(timeout=30) as http:
                long = asyncio.ensure_future(http.post(gw.url, content=_call(60, 2), headers=session))
                await asyncio.sleep(1.0)  # in flight
                gw.proc.popen.send_signal(signal.SIGINT)
                for _ in range(50):  # bounded: up to 5 s for the drain to start
                    if any("draining 1 calls" in line for line in gw.proc.output):
                        break
                    await asyncio.sleep(0.1)
                gw.proc.popen.send_signal(signal.SIGINT)
                try:  # the client stays connected meanwhile: its call would run out the grace
                    return await asyncio.to_thread(gw.proc.popen.wait, 15)  # far below the 60 s grace
                except subprocess.TimeoutExpired:
                    return None
                finally:
                    with contextlib.suppress(httpx2.TransportError):
                        await long

        code = run(go(), timeout=60)
        log = "".join(gw.proc.output)
        assert "draining 1 calls (grace 60 s)" in log, log[-3000:]
        assert code is not None, "a second SIGINT did not end the drain"
