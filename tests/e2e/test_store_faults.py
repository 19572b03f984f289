"""The evidence store under faults, on a real gateway: another process's lock, a full disk.

While the store cannot take intents, calls are refused promptly (503 + Retry-After, nothing forwarded)
and /health says why; an outcome it could not take is retried until it commits, with no restart, so
every intent ends with exactly one final record. Store calls never stall the event loop. Turning the
record stage off takes an explicit serve flag, and says so.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.e2e.audit_support import RawClient
from tests.procs import add_stdio_fixture, aegress, allow_all, run_gateway, setup_tenant

REFUSE_BOUND_S = 4.5  # the gateway refuses an intent after INTENT_WAIT_S = 3 s at the latest

_LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=10, isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("LOCKED", flush=True)
sys.stdin.readline()  # hold the write lock until told (or until the test ends and closes stdin)
conn.execute("ROLLBACK")
print("RELEASED", flush=True)
"""


class Locker:
    """Another process holding SQLite's write lock on aegress.db (`BEGIN EXCLUSIVE`) until released."""

    def __init__(self, db: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _LOCKER, str(db)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "LOCKED"

    def release(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            self.proc.stdout.readline()
            self.proc.wait(10)

    def stop(self) -> None:
        self.release()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@contextmanager
def locked(db: Path) -> Iterator[Locker]:
    locker = Locker(db)
    try:
        yield locker
    finally:
        locker.stop()


def _home(tmp_path: Path, root: Path | None = None) -> tuple[Path, str]:
    home = (root or tmp_path) / "home"
    token = setup_tenant(home, "acme", "alice")
    allow_all(home, "acme")
    add_stdio_fixture(home, "acme", "tools")
    return home, token


def _final_records(db: Path) -> dict[int, list[str]]:
    """intent seq -> the kinds/statuses of the records answering it, for the acme log (read-only)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        intents = [s for (s,) in conn.execute("SELECT seq FROM evidence WHERE kind = 'intent' AND tenant = 'acme'")]
        answers: dict[int, list[str]] = {s: [] for s in intents}
        for kind, status, target in conn.execute(
                "SELECT kind, status, intent_seq FROM evidence WHERE tenant = 'acme' AND intent_seq IS NOT NULL"):
            answers.setdefault(int(target), []).append(f"{kind}:{status}")
        return answers
    finally:
        conn.close()


def _wait_all_answered(db: Path) -> dict[int, list[str]]:
    deadline = time.monotonic() + 20
    while True:
        answers = _final_records(db)
        if all(answers.values()):
            return answers
        assert time.monotonic() < deadline, f"intents left without a final record: {answers}"
        time.sleep(0.2)


def _refused_promptly(url: str, token: str, session: dict[str, str], nonce: str) -> None:
    """A call while the store cannot take intents: 503 + Retry-After within the bound."""
    with httpx2.Client(timeout=REFUSE_BOUND_S, headers={
            "Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json", **session}) as http:
        r = http.post(url, content=json.dumps({"jsonrpc": "2.0", "id": nonce, "method": "tools/call",
                                               "params": {"name": "tools__echo", "arguments": {"text": nonce}}}))
    assert r.status_code == 503, r.text
    assert int(r.headers["retry-after"]) > 0
    assert r.json()["error"]["code"] == -32004


def _session(c: RawClient) -> dict[str, str]:
    return {"mcp-session-id": c.http.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}


def _unready(base: str) -> dict[str, Any]:
    health = httpx2.get(base + "/health", timeout=REFUSE_BOUND_S)
    assert health.status_code == 503, health.text
    body = health.json()
    assert body["ready"] is False and body["live"] is True
    assert "not taking commits" in body["reason"]
    return dict(body)


def _recovered(base: str) -> None:
    deadline = time.monotonic() + 30
    while httpx2.get(base + "/health", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "health never recovered"
        time.sleep(0.2)


def _ride_out_fault(home: Path, token: str, start_fault: Any, end_fault: Any) -> None:
    """A slow call in flight when the fault starts: its outcome waits for the store, the others are refused."""
    db = home / "aegress.db"
    with run_gateway(home) as gw, concurrent.futures.ThreadPoolExecutor(2) as pool:
        c = RawClient(gw.url, token).start()
        assert RawClient.body(c.call("tools__echo", {"text": "warm"}))["result"]
        slow = pool.submit(lambda: RawClient.body(c.call("tools__slow", {"seconds": 2.5})))
        time.sleep(1.0)  # its intent is committed and the upstream is working on it
        start_fault()
        try:
            for i in range(3):
                _refused_promptly(gw.url, token, _session(c), f"refused-{i}")
            _unready(gw.base)
            answered = slow.result(timeout=30)  # answered (without a receipt) though its outcome is not stored yet
            assert answered["result"]["content"][0]["text"] == "done"  # its receipt names the intent
            assert any(not v for v in _final_records(db).values()), "the outcome should still be waiting"
        finally:
            end_fault()
        _recovered(gw.base)  # no restart
        assert RawClient.body(c.call("tools__echo", {"text": "after"}))["result"]["_meta"]["aegress"]
        c.close()
        answers = _wait_all_answered(db)
        assert all(len(v) == 1 for v in answers.values()), answers
        assert not any("outcome_unknown" in v[0] for v in answers.values()), answers
        assert aegress(home, "audit", "verify", "--all").returncode == 0
    assert aegress(home, "audit", "verify", "--all", "--final").returncode == 0
    assert all(len(v) == 1 for v in _final_records(db).values())  # the restart-free recovery was complete


def test_a_locked_store_refuses_promptly_and_commits_every_outcome_after(tmp_path: Path) -> None:
    home, token = _home(tmp_path)
    holder: list[Locker] = []
    try:
        _ride_out_fault(home, token, lambda: holder.append(Locker(home / "aegress.db")),
                        lambda: holder[0].release())
    finally:
        for locker in holder:
            locker.stop()


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=30)


def test_a_full_disk_refuses_promptly_and_commits_every_outcome_after(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    _mount("-t", "tmpfs", "-o", "size=6m", "tmpfs", str(disk))
    try:
        home, token = _home(tmp_path, disk)
        filler = disk / "filler"

        def fill() -> None:
            # unbuffered: once the disk is full, close() has nothing left to flush (and raise again)
            with filler.open("wb", buffering=0) as handle, pytest.raises(OSError):
                for _ in range(10_000):  # 6 MiB at most; the disk is full long before
                    handle.write(b"\0" * 65536)
                    handle.flush()
        _ride_out_fault(home, token, fill, filler.unlink)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)


def test_store_calls_never_stall_the_event_loop(tmp_path: Path) -> None:
    """A tools/list must write the tool definitions (first listing): with the write lock held elsewhere it
    waits in a worker thread, while /health and a ping on another session answer at once."""
    home, token = _home(tmp_path)
    with run_gateway(home) as gw, concurrent.futures.ThreadPoolExecutor(1) as pool:
        lister = RawClient(gw.url, token).start()
        pinger = RawClient(gw.url, token).start()
        with locked(home / "aegress.db"):
            listing = pool.submit(lambda: lister.post("tools/list", {}))
            answered = 0
            for _ in range(200):  # bounded: the listing ends with the store's busy timeout
                health = httpx2.get(gw.base + "/health", timeout=2.0)
                assert health.status_code in (200, 503)
                assert RawClient.body(pinger.post("ping", {})) == {"jsonrpc": "2.0", "id": pinger.ids, "result": {}}
                answered += 1
                if listing.done():
                    break
                time.sleep(0.05)
            listed = listing.result(timeout=30)
            assert listed.status_code in (200, 503)
            assert answered >= 3, "nothing was answered while the listing waited"
        listed = lister.post("tools/list", {})
        assert listed.status_code == 200
        assert "tools__echo" in json.dumps(RawClient.body(listed))
        lister.close()
        pinger.close()


def _child_pids(parent: int, marker: str) -> list[int]:
    """Processes whose parent is `parent` and whose command line holds `marker` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and marker.encode() in command:
            found.append(int(entry.name))
    return found


_REVIEW_SLOW = """
version = 1
default = "allow"

[builtin]
destructive = "off"

[review]
mode = "approve"
hold_timeout_seconds = 30

[[rules]]
id = "slow-needs-review"
upstream = "tools"
name = "slow"
verdict = "review"
"""


def test_a_call_whose_upstream_left_before_sending_is_recorded_not_forwarded(tmp_path: Path) -> None:
    """Finding 12(b): the stdio upstream exits while a routed call waits (held for review); once released
    nothing can be sent, so its outcome says not_forwarded, not failed."""
    home, token = _home(tmp_path)
    policy = tmp_path / "review.toml"
    policy.write_text(_REVIEW_SLOW)
    aegress(home, "policy", "apply", str(policy), "--tenant", "acme", "--yes")
    db = home / "aegress.db"
    with run_gateway(home) as gw, concurrent.futures.ThreadPoolExecutor(1) as pool:
        c = RawClient(gw.url, token).start()
        assert RawClient.body(c.call("tools__echo", {"text": "warm"}))["result"]
        [child] = _child_pids(gw.proc.popen.pid, "tests.servers.fixture_server")
        call = pool.submit(lambda: c.call("tools__slow", {"seconds": 0}))
        held: list[dict[str, Any]] = []
        for _ in range(100):  # bounded: 20 s
            held = json.loads(aegress(home, "review", "list", "--tenant", "acme", "--json").stdout)
            if held:
                break
            time.sleep(0.2)
        assert held, "the call was never held for review"
        os.kill(child, signal.SIGKILL)  # routed to this connection; it closes while the call is held
        time.sleep(0.5)  # the gateway sees the upstream exit
        aegress(home, "review", "approve", held[0]["id"], "--as", "ops")
        answered = RawClient.body(call.result(timeout=30))
        assert "error" in answered, answered
        c.close()
        answers = _wait_all_answered(db)
    assert sorted(answers.items())[-1][1] == ["outcome:not_forwarded"], (answers, answered)
    assert sorted(answers.items())[0][1] == ["outcome:completed"], answers


_BLOCK_FAIL = """
version = 1
default = "allow"

[builtin]
destructive = "off"

[[rules]]
id = "no-fail"
upstream = "tools"
name = "fail"
verdict = "block"
"""


def test_refusals_recorded_during_an_outage_stop_at_the_cap_then_all_commit(tmp_path: Path) -> None:
    """Finding 5: every refused call adds a decision record the failing store cannot take; at most
    AEGRESS_AUDIT_MAX_HELD wait in memory, further requests get 503, and all held commit afterwards."""
    home, token = _home(tmp_path)
    policy = tmp_path / "block.toml"
    policy.write_text(_BLOCK_FAIL)
    aegress(home, "policy", "apply", str(policy), "--tenant", "acme", "--yes")
    db = home / "aegress.db"
    with run_gateway(home, env={"AEGRESS_AUDIT_MAX_HELD": "5"}) as gw:
        c = RawClient(gw.url, token).start()
        assert RawClient.body(c.call("tools__echo", {"text": "warm"}))["result"]
        with locked(db):
            answers = [c.call("tools__fail", {"message": f"refused-{i}"}) for i in range(12)]
            assert [r.status_code for r in answers] == [200] * 5 + [503] * 7, [r.text for r in answers]
            assert {RawClient.body(r)["error"]["code"] for r in answers[:5]} == {-32602}  # blocked, so hidden
            assert {RawClient.body(r)["error"]["code"] for r in answers[5:]} == {-32004}
        _recovered(gw.base)  # no restart: the five held decisions commit
        assert RawClient.body(c.call("tools__fail", {"message": "after"}))["error"]["code"] == -32602
        c.close()
        deadline = time.monotonic() + 20
        while True:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
            try:
                [(decided,)] = conn.execute("SELECT COUNT(*) FROM evidence WHERE kind = 'decision' "
                                            "AND tool = 'tools__fail'").fetchall()
            finally:
                conn.close()
            if decided == 6:
                break
            assert time.monotonic() < deadline and decided < 6, decided
            time.sleep(0.2)
    assert aegress(home, "audit", "verify", "--all", "--final").returncode == 0


def test_evidence_off_takes_the_flag_and_says_so(tmp_path: Path) -> None:
    home, token = _home(tmp_path)
    with run_gateway(home, env={"AEGRESS_AUDIT": "off"}) as gw:  # the variable alone changes nothing
        c = RawClient(gw.url, token).start()
        assert RawClient.body(c.call("tools__echo", {"text": "sealed"}))["result"]["_meta"]["aegress"]
        c.close()
        assert httpx2.get(gw.base + "/health", timeout=10).json()["evidence"] == "on"
    assert "AEGRESS_AUDIT=off is ignored" in "".join(gw.proc.output)
    help_text = aegress(home, "serve", "--help").stdout
    assert "--no-evidence" in help_text and "NO sealed evidence" in help_text
    before = aegress(home, "audit", "query", "--tenant", "acme", "--limit", "1000", "--json").stdout
    with run_gateway(home, "--no-evidence") as gw:
        assert any("EVIDENCE IS OFF" in line for line in gw.proc.output) or gw.proc.wait_for("EVIDENCE IS OFF")
        c = RawClient(gw.url, token).start()
        result = RawClient.body(c.call("tools__echo", {"text": "unsealed"}))["result"]
        assert "aegress" not in (result.get("_meta") or {})
        c.close()
        health = httpx2.get(gw.base + "/health", timeout=10).json()
        assert health["ready"] is True and health["evidence"].startswith("off")
    assert aegress(home, "audit", "query", "--tenant", "acme", "--limit", "1000", "--json").stdout == before

