"""Per-upstream limits and health against a real gateway: timeouts and sizes set per upstream (and changed
while it runs), and a dead upstream that neither stalls its tenant's other upstreams nor every listing."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_hostile_stdio import HOSTILE, add_hostile
from tests.procs import ROOT, aegress, aegress_json, allow_all, mcp_client, run, run_gateway, setup_tenant


def _code(exc: BaseException) -> object:
    data = getattr(getattr(exc, "error", None), "data", None)
    return data.get("code") if isinstance(data, dict) else None


@contextlib.contextmanager
def black_hole() -> Iterator[str]:
    """A loopback TCP listener that accepts connections and never answers a byte."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/mcp"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()


def test_limits_are_per_upstream_shown_and_changed_while_running(tmp_path: Path) -> None:
    from mcp.shared.exceptions import MCPError

    home = tmp_path / "home"
    token = setup_tenant(home, "acme", "alice")
    allow_all(home, "acme")
    add_hostile(home, "acme", "quick", "--call-timeout", "1")
    add_hostile(home, "acme", "roomy")
    shown = aegress_json(home, "upstream", "show", "--tenant", "acme", "quick")["limits"]
    assert shown["call_timeout_s"] == 1.0 and shown["max_message_bytes"] == 16 * 1024 * 1024
    with run_gateway(home) as gw:
        async def go() -> None:
            async with mcp_client(gw.url, token) as c:
                with pytest.raises(MCPError) as slow:
                    await c.call_tool("quick__slow", {"seconds": 3})
                assert _code(slow.value) == "upstream-timeout" and "--call-timeout" in slow.value.error.message
                assert (await c.call_tool("roomy__slow", {"seconds": 2})).content[0].text == "slept"
                assert not (await c.call_tool("roomy__huge", {"kib": 200})).is_error
                aegress(home, "upstream", "set", "--tenant", "acme", "roomy", "--max-message-bytes", "102400")
                code = None
                for _ in range(30):  # bounded: a running gateway applies the change within a second or so
                    try:
                        await c.call_tool("roomy__huge", {"kib": 200})
                    except MCPError as exc:
                        code = _code(exc)
                        break
                    await asyncio.sleep(0.2)
                assert code == "upstream-answer-too-large"

        run(go())
    listed = {u["name"]: u["limits"] for u in aegress_json(home, "upstream", "list", "--tenant", "acme")}
    assert listed["roomy"]["max_message_bytes"] == 102400 and listed["quick"]["call_timeout_s"] == 1.0
    bad = aegress(home, "upstream", "set", "--tenant", "acme", "roomy", "--call-timeout", "0", check=False)
    assert bad.returncode == 1 and "--call-timeout" in bad.stderr


@pytest.mark.parametrize("dead", ["stdio", "http", "silent-after-init"])
def test_a_dead_upstream_is_marked_unavailable_and_stalls_nothing(tmp_path: Path, dead: str) -> None:
    """The first listing may wait out the dead upstream's init timeout (3 s); afterwards listings and
    calls to the healthy upstream return before that timeout could have passed, and calls to the dead one
    fail at once with `upstream-unavailable`, across backoff retries. `silent-after-init` answers the
    handshake and then nothing: its silent listing is what marks it."""
    from mcp.shared.exceptions import MCPError

    home = tmp_path / "home"
    token = setup_tenant(home, "acme", "alice")
    allow_all(home, "acme")
    add_hostile(home, "acme", "good")
    with black_hole() as hole_url:
        if dead != "http":
            flag = "--never-init" if dead == "stdio" else "--silent-after-init"
            aegress(home, "upstream", "add", "--tenant", "acme", "dead", *[x for a in HOSTILE for x in ("-c", a)],
                    "-c", flag, "--env", f"PYTHONPATH={ROOT}", "--cwd", str(ROOT), "--no-probe",
                    "--init-timeout", "3")
        else:
            aegress(home, "upstream", "add", "--tenant", "acme", "dead", "--url", hole_url, "--allow-private",
                    "--no-probe", "--init-timeout", "3")
        with run_gateway(home) as gw:
            async def go() -> None:
                async with mcp_client(gw.url, token) as c:
                    first = {t.name for t in (await c.list_tools()).tools}
                    assert "good__pid" in first and not any(n.startswith("dead__") for n in first)
                    for _ in range(3):  # inside and past the backoff (1 s, then 2 s): nothing waits on it
                        started = time.monotonic()
                        names = {t.name for t in (await c.list_tools()).tools}
                        assert (await c.call_tool("good__echo", {"text": "ok"})).content[0].text == "ok"
                        with pytest.raises(MCPError) as down:
                            await c.call_tool("dead__pid", {})
                        assert time.monotonic() - started < 2.5  # less than the dead one's 3 s init timeout
                        assert "good__pid" in names
                        assert _code(down.value) == "upstream-unavailable"
                        assert "retries it in" in down.value.error.message
                        await asyncio.sleep(1.2)

            run(go())
            assert "upstream dead unavailable" in "".join(gw.proc.output)
