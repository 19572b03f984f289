"""Fault soak (issue 9): does the gateway lose a call, or need a restart, under hostile conditions?

Sets up one data dir with 3 tenants, each with a token, an allow-all policy, a stdio recording
upstream (`rec`, bench/soak_stdio.py) and an HTTP recording upstream (`web`, bench/soak_upstream.py);
the first tenant also gets `hole`, an HTTP upstream that handshakes but never answers a call. Every
upstream appends each executed call's nonce (the `mark` argument) to a file. Concurrent raw HTTP
clients (keep-alive, 2025-11-25 sessions, resuming dropped streams) call tools with unique nonces
while ONE fault at a time is applied, then a clean interval follows. Per fault it reports calls
tried, succeeded, refused with a clear error (an HTTP status with our JSON error body, a JSON-RPC
error or a tool error), unclear (timeout, reset, no answer), and LOST: a nonce executed upstream
without an intent record, or an intent without exactly one final record (`outcome` or
`outcome_unknown`) once the fault has cleared; whether a gateway restart was needed (a probe after
the clean interval failed), and whether `aegress audit verify --all` passes.

Faults (`--faults a,b`): upstream-restart, blackhole, stdio-kill, big-answer, sqlite-lock, disk-full,
sigkill, sigterm, garbage, sessions. disk-full puts the data dir on a tmpfs it mounts (needs root);
when mount is refused it reports "not run". `--clean-minutes N` ends with a clean soak at 16
clients, sampling the gateway RSS each minute (slope by least squares).

    .venv/bin/python bench/fault_soak.py [--short] [--faults ...] [--clean-minutes 10] [--json OUT]

Exit 0: nothing lost and every verify passed; 3: a fault lost a call or broke the evidence; 1: the
soak itself failed. Loopback only; every loop and wait is bounded; every process it starts is
stopped, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.procs import ALLOW_ALL_POLICY, Proc, aegress, aegress_json, cli_env  # noqa: E402

ALL_FAULTS = ("upstream-restart", "blackhole", "stdio-kill", "big-answer", "sqlite-lock", "disk-full",
              "sigkill", "sigterm", "garbage", "sessions")
TENANTS = ("soaka", "soakb", "soakc")
REVISION = "2025-11-25"
MARK_RE = re.compile(r"[a-z-]+(?:\+after)?\.[a-z]\.[a-z]+\.[a-z]+")
FINAL_KINDS = ("outcome", "outcome_unknown")


@dataclass(frozen=True)
class Settings:
    """Sizes and durations; --short shrinks them so the suite can run a few faults in under a minute."""

    clients: int = 8
    clean_s: float = 10.0
    outage_s: float = 5.0
    lock_s: float = 10.0
    settle_s: float = 60.0
    call_timeout_s: float = 30.0
    big_mb: int = 200
    sessions: int = 1000
    garbage_conns: int = 200
    tmpfs_mb: int = 2048

    @classmethod
    def short(cls) -> Settings:
        return cls(clients=3, clean_s=2.0, outage_s=2.0, lock_s=3.0, settle_s=20.0, call_timeout_s=15.0,
                   big_mb=50, sessions=100, garbage_conns=30)


def letters(n: int) -> str:
    """A number as lowercase letters: evidence previews redact values that look random (digits + letters)."""
    out = ""
    for _ in range(16):
        n, r = divmod(n, 26)
        out = chr(97 + r) + out
        if n == 0:
            break
    return out


def slope_per_minute(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (minute, MB) samples."""
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mx = sum(x for x, _ in samples) / n
    my = sum(y for _, y in samples) / n
    den = sum((x - mx) ** 2 for x, _ in samples)
    return sum((x - mx) * (y - my) for x, y in samples) / den if den else 0.0


def proc_kb(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


@dataclass
class Tally:
    """What the clients saw in one phase."""

    tried: int = 0
    ok: int = 0
    refused: int = 0
    unclear: int = 0
    wrong: int = 0
    refusals: Counter[str] = field(default_factory=Counter)
    unclears: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"tried": self.tried, "ok": self.ok, "refused": self.refused, "unclear": self.unclear,
                "wrong": self.wrong, "refusals": dict(self.refusals.most_common(6)),
                "unclears": dict(self.unclears.most_common(6))}


def classify(status: int, message: dict[str, Any] | None, mark: str) -> tuple[str, str]:
    """Pure: (category, detail) of one answer. A clear refusal carries a JSON-RPC error or a tool error."""
    if message is None:
        return ("unclear", f"http-{status}-no-json-rpc" if status >= 400 else "no-response")
    if "error" in message and isinstance(message["error"], dict):
        err = message["error"]
        data = err.get("data") if isinstance(err.get("data"), dict) else {}
        return ("refused", str(data.get("code") or err.get("code")))
    result = message.get("result")
    if not isinstance(result, dict):
        return ("unclear", "no-result")
    if result.get("isError"):
        return ("refused", "tool-error")
    content = result.get("content") or [{}]
    text = content[0].get("text", "") if isinstance(content[0], dict) else ""
    return ("ok", "") if text.startswith("ok " + mark) else ("wrong", "answer-of-another-call")


def _sse_messages(text: str) -> tuple[list[dict[str, Any]], str]:
    """JSON-RPC messages of an SSE body and the last event id."""
    messages, last_id = [], ""
    for line in text.splitlines():
        if line.startswith("id:"):
            last_id = line[3:].strip()
        elif line.startswith("data:") and line[5:].strip():
            with contextlib.suppress(ValueError):
                messages.append(json.loads(line[5:]))
    return messages, last_id


class Client:
    """One keep-alive MCP client bound to one tenant; re-initializes when its session is gone."""

    def __init__(self, soak: Soak, tenant: str, name: str, actor: str = "runner") -> None:
        self.soak, self.tenant, self.name, self.actor = soak, tenant, name, actor
        self.http = httpx2.AsyncClient(timeout=httpx2.Timeout(soak.settings.call_timeout_s, connect=5.0),
                                       limits=httpx2.Limits(max_connections=4, max_keepalive_connections=2))
        self.session: tuple[str, str] | None = None  # (url, session id)
        self.ids = 0

    def headers(self) -> dict[str, str]:
        h = {"Authorization": f"Bearer {self.soak.tokens[self.tenant, self.actor]}", "Content-Type": "application/json",
             "Accept": "application/json, text/event-stream"}
        if self.session:
            h.update({"mcp-session-id": self.session[1], "mcp-protocol-version": REVISION})
        return h

    async def ensure_session(self) -> str:
        url = self.soak.url
        if self.session and self.session[0] == url:
            return url
        self.session = None
        r = await self.http.post(url, headers=self.headers(), content=json.dumps({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": REVISION, "capabilities": {},
                       "clientInfo": {"name": "fault-soak", "version": "1"}}}))
        sid = r.headers.get("mcp-session-id")
        if r.status_code != 200 or not sid:
            raise RuntimeError(f"initialize answered {r.status_code}")
        self.session = (url, sid)
        await self.http.post(url, headers=self.headers(),
                             content=json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        return url

    async def call(self, tool: str, args: dict[str, Any], mark: str) -> tuple[str, str]:
        """One tools/call; resumes a dropped SSE stream (at most 3 times) like a 2025-11-25 client."""
        url = await self.ensure_session()
        self.ids += 1
        rid = self.ids
        r = await self.http.post(url, headers=self.headers(), content=json.dumps({
            "jsonrpc": "2.0", "id": rid, "method": "tools/call",
            "params": {"name": tool, "arguments": {"mark": mark, **args}}}))
        if r.status_code == 404:
            self.session = None
        if not r.headers.get("content-type", "").startswith("text/event-stream"):
            try:
                body = r.json()
            except ValueError:
                body = None
            return classify(r.status_code, body if isinstance(body, dict) else None, mark)
        messages, last_id = _sse_messages(r.text)
        for _ in range(3):
            mine = [m for m in messages if m.get("id") == rid and ("result" in m or "error" in m)]
            if mine:
                return classify(r.status_code, mine[-1], mark)
            if not last_id:
                break
            g = await self.http.get(url, headers={**self.headers(), "Last-Event-ID": last_id})
            if g.status_code != 200:
                return classify(g.status_code, None, mark)
            messages, last_id = _sse_messages(g.text)
        return classify(r.status_code, None, mark)

    async def aclose(self) -> None:
        await self.http.aclose()


class Soak:
    """The data dir, the processes, the client load and the per-fault accounting."""

    def __init__(self, settings: Settings, work: Path, stack: contextlib.ExitStack) -> None:
        self.settings, self.work, self.stack = settings, work, stack
        self.home = work / "home"
        self.tokens: dict[tuple[str, str], str] = {}  # (tenant, actor) -> token
        self.webs: dict[str, tuple[int, Proc | None]] = {}
        self.hole: Proc | None = None
        self.gateway: Proc | None = None
        self.url = ""
        self.phase = "setup"
        self.plans: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self.tallies: dict[str, Tally] = {}
        self.loop = asyncio.new_event_loop()
        self.loop_thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.load_stop = threading.Event()
        self.load_future: Future[None] | None = None
        self.mounted = False
        self.seq = 0

    def next_seq(self) -> int:
        """A fresh number for extra clients' names, so no two calls share a nonce."""
        self.seq += 1
        return self.seq

    # --- processes -------------------------------------------------------------------------------
    def start_gateway(self) -> None:
        self.gateway = Proc([sys.executable, "-m", "aegress_cli.main", "serve", "--port", "0"], cli_env(self.home))
        line = self.gateway.wait_for("listening on", timeout=60)
        self.url = line.split("listening on", 1)[1].strip()

    def stop_gateway(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None

    @property
    def base(self) -> str:
        return self.url.rsplit("/mcp", 1)[0]

    def gateway_pid(self) -> int:
        return self.gateway.popen.pid if self.gateway else 0

    def start_web(self, tenant: str, port: int = 0, hang: bool = False) -> tuple[str, Proc]:
        name = "hole" if hang else "web"
        argv = [sys.executable, str(ROOT / "bench" / "soak_upstream.py"), "--port", str(port),
                "--log", str(self.work / f"{tenant}-{name}.log"), *(["--hang"] if hang else [])]
        proc = Proc(argv, dict(os.environ))
        url = proc.wait_for("LISTENING", timeout=30).split("LISTENING", 1)[1].strip()
        return url, proc

    def stdio_pids(self, tenant: str) -> list[int]:
        path = self.work / f"{tenant}-rec.pids"
        return [int(x) for x in path.read_text().split()] if path.exists() else []

    def stop_all(self) -> None:
        self.stop_load()
        self.stop_gateway()
        for tenant, (_, proc) in list(self.webs.items()):
            if proc is not None:
                proc.stop()
            self.webs[tenant] = (self.webs[tenant][0], None)
        if self.hole is not None:
            self.hole.stop()
            self.hole = None
        for tenant in TENANTS:  # stdio upstreams the gateway started exit on stdin EOF; make sure
            for pid in self.stdio_pids(tenant):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.loop_thread.join(5)

    # --- set-up ----------------------------------------------------------------------------------
    def mount_tmpfs(self) -> str:
        """Put the data dir on a small tmpfs so disk-full can fill it; '' or the reason it could not."""
        self.home.mkdir(parents=True)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.settings.tmpfs_mb}m", "tmpfs",
                               str(self.home)], capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            return (proc.stderr or proc.stdout).strip() or f"mount exited {proc.returncode}"
        self.mounted = True
        return ""

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.home)], capture_output=True, timeout=30)
            self.mounted = False

    def setup(self) -> None:
        policy = self.work / "allow.toml"
        policy.write_text(ALLOW_ALL_POLICY)
        for tenant in TENANTS:
            aegress(self.home, "tenant", "create", tenant)
            for actor in ("runner", "idler"):  # the load, and the actor that abandons sessions
                aegress(self.home, "actor", "add", "--tenant", tenant, actor)
                self.tokens[tenant, actor] = str(aegress_json(self.home, "token", "issue", "--tenant", tenant,
                                                              "--actor", actor)["token"])
            aegress(self.home, "policy", "apply", str(policy), "--tenant", tenant, "--yes")
            (self.work / f"{tenant}-rec.log").touch()
            aegress(self.home, "upstream", "add", "--tenant", tenant, "rec", "--command", sys.executable,
                    "--command", str(ROOT / "bench" / "soak_stdio.py"),
                    "--env", f"REC_LOG={self.work}/{tenant}-rec.log",
                    "--env", f"REC_PIDS={self.work}/{tenant}-rec.pids", "--cwd", str(self.work), "--no-probe")
            url, proc = self.start_web(tenant)
            self.webs[tenant] = (int(url.rsplit(":", 1)[1].split("/")[0]), proc)
            aegress(self.home, "upstream", "add", "--tenant", tenant, "web", "--url", url, "--allow-private",
                    "--no-probe")
            self.plans[tenant] = [("rec__record", {}), ("web__record", {})]
        url, self.hole = self.start_web(TENANTS[0], hang=True)
        aegress(self.home, "upstream", "add", "--tenant", TENANTS[0], "hole", "--url", url, "--allow-private",
                "--no-probe")
        self.start_gateway()
        self.loop_thread.start()

    # --- load ------------------------------------------------------------------------------------
    def tally(self, phase: str) -> Tally:
        return self.tallies.setdefault(phase, Tally())

    def count(self, phase: str, outcome: tuple[str, str]) -> None:
        t = self.tally(phase)
        t.tried += 1
        category, detail = outcome
        setattr(t, category, getattr(t, category) + 1)
        if category == "refused":
            t.refusals[detail] += 1
        elif category == "unclear":
            t.unclears[detail] += 1

    async def one_call(self, client: Client, tool: str, args: dict[str, Any], timeout: float) -> tuple[str, str]:
        phase = self.phase
        mark = f"{phase}.{client.tenant[-1]}.{client.name}.{letters(client.ids + 1)}"
        try:
            outcome = await asyncio.wait_for(client.call(tool, args, mark), timeout)
        except TimeoutError:
            client.session = None
            outcome = ("unclear", "client-timeout")
        except Exception as exc:  # whatever the transport raised, it is an unclear answer
            client.session = None
            outcome = ("unclear", type(exc).__name__)
            await asyncio.sleep(0.2)  # the gateway is away: do not spin
        self.count(phase, outcome)
        return outcome

    async def client_loop(self, index: int) -> None:
        tenant = TENANTS[index % len(TENANTS)]
        client = Client(self, tenant, letters(index))
        try:
            for i in range(10_000_000):
                if self.load_stop.is_set():
                    return
                plan = self.plans[tenant]
                tool, args = plan[i % len(plan)]
                await self.one_call(client, tool, args, self.settings.call_timeout_s)
        finally:
            await client.aclose()

    def start_load(self, clients: int) -> None:
        self.load_stop.clear()

        async def load() -> None:
            await asyncio.gather(*(self.client_loop(i) for i in range(clients)))

        self.load_future = asyncio.run_coroutine_threadsafe(load(), self.loop)

    def stop_load(self) -> None:
        self.load_stop.set()
        if self.load_future is not None:
            with contextlib.suppress(Exception):
                self.load_future.result(timeout=self.settings.call_timeout_s + 10)
            self.load_future = None

    def side_calls(self, tenant: str, tool: str, args: dict[str, Any], n: int, timeout: float) -> Future[Any]:
        """n concurrent extra calls (hostile tools) on their own clients, alongside the load."""

        async def run() -> list[tuple[str, str]]:
            clients = [Client(self, tenant, "side" + letters(self.next_seq())) for _ in range(n)]
            try:
                return list(await asyncio.gather(*(self.one_call(c, tool, args, timeout) for c in clients)))
            finally:
                for c in clients:
                    await c.aclose()

        return asyncio.run_coroutine_threadsafe(run(), self.loop)

    def in_loop(self, coro: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    # --- accounting ------------------------------------------------------------------------------
    def evidence(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for tenant in TENANTS:
            out = aegress(self.home, "audit", "query", "--tenant", tenant, "--limit", "10000000", "--json",
                          timeout=120, check=False)
            if out.returncode == 0:
                rows += json.loads(out.stdout)
        return rows

    def executed(self) -> set[str]:
        marks: set[str] = set()
        for path in self.work.glob("*.log"):
            marks.update(x for x in path.read_text().split() if x)
        return marks

    def lost(self, fault: str) -> dict[str, Any]:
        """Nonces of this fault executed without an intent, and its intents without exactly one final record."""
        executed = self.executed()  # before the evidence: an executed call's intent was committed before it ran
        rows = self.evidence()
        intents: dict[str, tuple[str, int]] = {}
        finals: Counter[tuple[str, int]] = Counter()
        for row in rows:
            body = row["record"].get("body", {})
            if row["kind"] == "intent":
                found = MARK_RE.search(str(body.get("args_preview", "")))
                if found:
                    intents[found.group()] = (row["origin"], row["seq"])
            elif row["kind"] in FINAL_KINDS:
                finals[(row["origin"], body.get("intent_seq", row.get("intent_seq")))] += 1
        mine = {m for m in executed if m.split(".")[0].split("+")[0] == fault}
        no_intent = sorted(m for m in mine if m not in intents)
        ours = {m: key for m, key in intents.items() if m.split(".")[0].split("+")[0] == fault}
        open_ = sorted(m for m, key in ours.items() if finals[key] == 0)
        doubled = sorted(m for m, key in ours.items() if finals[key] > 1)
        return {"executed": len(mine), "intents": len(ours), "executed_without_intent": len(no_intent),
                "intent_without_final": len(open_), "intent_with_several_finals": len(doubled),
                "lost": len(no_intent) + len(open_) + len(doubled), "examples": (no_intent + open_ + doubled)[:3]}

    def settle(self, fault: str) -> dict[str, Any]:
        """Poll the evidence until this fault's calls are all accounted for, or settle_s passes."""
        deadline = time.monotonic() + self.settings.settle_s
        for _ in range(200):
            result = self.lost(fault)
            if result["lost"] == 0 or time.monotonic() > deadline:
                return result
            time.sleep(2.0)
        return result

    def verify(self) -> dict[str, Any]:
        out = aegress(self.home, "audit", "verify", "--all", "--json", timeout=300, check=False)
        try:
            body = json.loads(out.stdout)
        except ValueError:
            return {"ok": False, "exit": out.returncode, "problem": (out.stderr or out.stdout).strip()[-300:]}
        bad = [r for r in body.get("logs", []) if not r.get("ok")]
        finding = bad[0].get("finding", {}) if bad else {}
        return {"ok": out.returncode == 0, "exit": out.returncode,
                "problem": f"{finding.get('problem')}: {finding.get('message')}" if bad else ""}

    def unhealthy(self) -> str:
        """Why the gateway cannot serve (exited, /health not 200, a fresh session per tenant cannot call each
        of its upstreams), or '' when it can."""
        if self.gateway is None or self.gateway.popen.poll() is not None:
            return f"gateway exited ({self.gateway.popen.returncode if self.gateway else 'not running'})"
        try:
            status = httpx2.get(self.base + "/health", timeout=10).status_code
        except httpx2.HTTPError as exc:
            return f"/health: {type(exc).__name__}"
        if status != 200:
            return f"/health answered {status}"

        async def probe() -> list[str]:
            tools = ("rec__record", "web__record")
            calls = [(t, tool, Client(self, t, "probe" + letters(self.next_seq()))) for t in TENANTS for tool in tools]
            try:
                results = await asyncio.gather(*(self.one_call(c, tool, {}, 15) for _, tool, c in calls))
                return [f"{t} {tool}: {r[0]} {r[1]}".strip() for (t, tool, _), r in zip(calls, results, strict=True)
                        if r[0] != "ok"]
            finally:
                for _, _, c in calls:
                    await c.aclose()

        return "; ".join(self.in_loop(probe(), 30)[:3])

    def run_fault(self, name: str, action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Load, the fault, a clean interval; then, with the load stopped (so every call is accounted for and
        verify reads a quiet log): the health probe, the evidence accounting and verify."""
        print(f"fault {name} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        self.phase = name
        self.plans_default()
        self.start_load(self.settings.clients)
        time.sleep(1.0)
        hwm_before = proc_kb(self.gateway_pid(), "VmHWM")
        notes = action()
        self.plans_default()
        self.phase = name + "+after"
        time.sleep(self.settings.clean_s)
        self.stop_load()
        self.phase = "probe"
        restart_reason = self.unhealthy()
        if restart_reason:
            self.stop_gateway()
            self.start_gateway()
        accounting = self.settle(name)
        verify = self.verify()
        during, after = self.tally(name), self.tally(name + "+after")
        row = {"fault": name, **during.as_dict(), "after": after.as_dict(), **accounting, "verify": verify,
               "restart_needed": bool(restart_reason), "restart_reason": restart_reason,
               "seconds": round(time.monotonic() - started, 1), "notes": notes}
        if hwm_before and name == "big-answer":
            row["notes"]["gateway_hwm_mb_before"] = round(hwm_before / 1024, 1)
        return row

    def plans_default(self) -> None:
        for tenant in TENANTS:
            self.plans[tenant] = [("rec__record", {}), ("web__record", {})]

    # --- faults ----------------------------------------------------------------------------------
    def fault_upstream_restart(self) -> dict[str, Any]:
        """The first tenant's HTTP upstream is SIGKILLed, stays away, and comes back on the same port."""
        tenant = TENANTS[0]
        port, proc = self.webs[tenant]
        time.sleep(1.0)
        if proc is not None:
            proc.popen.kill()
            proc.stop()
        time.sleep(self.settings.outage_s)
        _, proc = self.start_web(tenant, port=port)
        self.webs[tenant] = (port, proc)
        time.sleep(1.0)
        return {"outage_s": self.settings.outage_s}

    def fault_blackhole(self) -> dict[str, Any]:
        """Calls to an upstream that accepts and never answers; the client gives up, then the hole closes."""
        give_up = min(10.0, self.settings.call_timeout_s)
        side = self.side_calls(TENANTS[0], "hole__record", {}, self.settings.clients, give_up)
        results = side.result(give_up + 30)
        assert self.hole is not None
        self.hole.popen.kill()
        self.hole.stop()
        self.hole = None
        return {"hole_calls": dict(Counter(f"{c}:{d}" if d else c for c, d in results)), "client_gave_up_s": give_up}

    def fault_stdio_kill(self) -> dict[str, Any]:
        """The first tenant's stdio upstream is SIGKILLed twice while slow calls are in flight."""
        tenant = TENANTS[0]
        self.plans[tenant] = [("rec__slow_record", {"seconds": 0.5})]
        killed = 0
        for _ in range(2):
            time.sleep(1.5)
            for pid in self.stdio_pids(tenant):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
        time.sleep(1.0)
        return {"processes_killed": killed}

    def fault_big_answer(self) -> dict[str, Any]:
        """A 200 MB answer, once as JSON and once as one SSE event; the gateway's peak RSS is read."""
        pid = self.gateway_pid()
        out: dict[str, Any] = {}
        for sse in (False, True):
            fut = self.side_calls(TENANTS[0], "web__big", {"mb": self.settings.big_mb, "sse": sse}, 1, 120)
            with contextlib.suppress(Exception):
                category, detail = fut.result(150)[0]
                out["sse" if sse else "json"] = f"{category}:{detail}" if detail else category
        out["big_mb"] = self.settings.big_mb
        out["gateway_hwm_mb_after"] = round(proc_kb(pid, "VmHWM") / 1024, 1)
        out["gateway_rss_mb_after"] = round(proc_kb(pid, "VmRSS") / 1024, 1)
        return out

    def fault_sqlite_lock(self) -> dict[str, Any]:
        """Another process holds the SQLite write lock (BEGIN EXCLUSIVE) while calls go on."""
        code = ("import sqlite3, sys, time\n"
                "c = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)\n"
                "c.execute('BEGIN EXCLUSIVE')\nprint('LOCKED', flush=True)\n"
                "time.sleep(float(sys.argv[2]))\nc.execute('ROLLBACK')\n")
        holder = Proc([sys.executable, "-c", code, str(self.home / "aegress.db"), str(self.settings.lock_s)],
                      dict(os.environ))
        try:
            holder.wait_for("LOCKED", timeout=40)
            holder.popen.wait(self.settings.lock_s + 30)
        finally:
            holder.stop()
        return {"lock_s": self.settings.lock_s}

    def fault_disk_full(self) -> dict[str, Any]:
        """The data dir's filesystem fills up for a while, then the filler is removed."""
        if not self.mounted:
            return {"not_run": "needs root/mount"}
        filler = self.home / "filler.bin"
        written = 0
        chunk = b"\0" * (8 << 20)
        with open(filler, "wb") as handle:
            for _ in range(self.settings.tmpfs_mb // 8 + 2):
                try:
                    handle.write(chunk)
                    handle.flush()
                    written += len(chunk)
                except OSError:
                    break
        time.sleep(self.settings.outage_s)
        filler.unlink()
        time.sleep(1.0)
        return {"filled_mb": written >> 20, "full_s": self.settings.outage_s}

    def fault_sigkill(self) -> dict[str, Any]:
        """The gateway is SIGKILLed under load and started again (the only expected restart)."""
        time.sleep(1.0)
        assert self.gateway is not None
        self.gateway.popen.kill()
        self.stop_gateway()
        time.sleep(0.5)
        self.start_gateway()
        time.sleep(1.0)
        return {}

    def fault_sigterm(self) -> dict[str, Any]:
        """SIGTERM while slow calls are in flight; the gateway must finish or record them, then restarts."""
        for tenant in TENANTS:
            self.plans[tenant] = [("rec__slow_record", {"seconds": 1.0}), ("web__slow_record", {"seconds": 1.0})]
        time.sleep(1.5)
        assert self.gateway is not None
        started = time.monotonic()
        self.gateway.popen.terminate()
        try:
            self.gateway.popen.wait(30)
            exited = True
        except subprocess.TimeoutExpired:
            exited = False
        took = round(time.monotonic() - started, 2)
        code = self.gateway.popen.returncode
        self.stop_gateway()
        self.start_gateway()
        time.sleep(1.0)
        return {"exited_within_30s": exited, "exit_s": took, "exit_code": code}

    def fault_garbage(self) -> dict[str, Any]:
        """Raw sockets send garbage, truncated bodies and huge lengths; other clients drop mid-call."""
        host, port = self.base.split("//", 1)[1].rsplit(":", 1)
        payloads = [
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64),
            b"GARBAGE / HTTP/9.9\r\n\r\n",
            b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 999999\r\n\r\n{\"js",
            b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\n{{{{{",
            b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-A: " + b"a" * 70000 + b"\r\n\r\n",
        ]
        sent = 0
        for i in range(self.settings.garbage_conns):
            with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=2) as sock:
                sock.sendall(payloads[i % len(payloads)])
                sent += 1
                if i % 3 == 0:
                    with contextlib.suppress(OSError):
                        sock.recv(256)

        async def drop(tenant: str) -> None:  # a real call whose client goes away mid-call
            client = Client(self, tenant, "drop" + letters(self.next_seq()))
            try:
                await asyncio.wait_for(client.call("rec__slow_record", {"seconds": 2.0},
                                                   f"{self.phase}.{tenant[-1]}.{client.name}.b"), 0.5)
            except Exception:  # dropping is the point
                pass
            finally:
                await client.aclose()

        async def drops() -> None:
            await asyncio.gather(*(drop(TENANTS[i % len(TENANTS)]) for i in range(self.settings.clients * 2)))

        self.in_loop(drops(), 60)
        return {"garbage_connections": sent, "dropped_calls": self.settings.clients * 2,
                "gateway_alive": self.gateway is not None and self.gateway.popen.poll() is None}

    def fault_sessions(self) -> dict[str, Any]:
        """Many sessions opened (initialize) and abandoned without DELETE, by one actor per tenant (`idler`):
        its caps refuse the excess, and nobody else (the load, the health probe) may notice."""
        pid = self.gateway_pid()
        before = proc_kb(pid, "VmRSS")

        async def opened() -> int:
            sem = asyncio.Semaphore(16)
            count = 0

            async def one(i: int) -> None:
                nonlocal count
                async with sem:
                    client = Client(self, TENANTS[i % len(TENANTS)], "sess" + letters(i), actor="idler")
                    try:
                        await asyncio.wait_for(client.ensure_session(), 15)
                        count += 1
                    except (TimeoutError, httpx2.HTTPError, RuntimeError):
                        pass  # refused by the actor's session cap (429), as it should be
                    finally:
                        await client.aclose()

            await asyncio.gather(*(one(i) for i in range(self.settings.sessions)))
            return count

        n = self.in_loop(opened(), 300)
        after = proc_kb(pid, "VmRSS")
        return {"sessions_opened": n, "of": self.settings.sessions, "gateway_rss_mb_before": round(before / 1024, 1),
                "gateway_rss_mb_after": round(after / 1024, 1)}

    def clean_soak(self, minutes: int) -> dict[str, Any]:
        """16 clients, no fault; the gateway RSS each minute and its least-squares slope."""
        self.phase = "clean"
        self.start_load(16)
        samples = [(0.0, proc_kb(self.gateway_pid(), "VmRSS") / 1024)]
        for minute in range(1, minutes + 1):
            time.sleep(60)
            samples.append((float(minute), proc_kb(self.gateway_pid(), "VmRSS") / 1024))
        self.stop_load()
        accounting = self.settle("clean")
        return {"minutes": minutes, "clients": 16, **self.tally("clean").as_dict(), **accounting,
                "rss_mb": [round(y, 1) for _, y in samples], "slope_mb_per_min": round(slope_per_minute(samples), 3),
                "verify": self.verify()}


FAULTS: dict[str, Callable[[Soak], dict[str, Any]]] = {
    "upstream-restart": Soak.fault_upstream_restart, "blackhole": Soak.fault_blackhole,
    "stdio-kill": Soak.fault_stdio_kill, "big-answer": Soak.fault_big_answer, "sqlite-lock": Soak.fault_sqlite_lock,
    "disk-full": Soak.fault_disk_full, "sigkill": Soak.fault_sigkill, "sigterm": Soak.fault_sigterm,
    "garbage": Soak.fault_garbage, "sessions": Soak.fault_sessions,
}


def table(rows: list[dict[str, Any]]) -> str:
    head = ("fault", "tried", "ok", "refused", "unclear", "wrong", "lost", "verify", "restart", "after ok/tried")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        if "not_run" in r:
            lines.append(f"{r['fault']} | not run: {r['not_run']}" + " |" * (len(head) - 2))
            continue
        lost = f"{r['lost']} ({r['executed_without_intent']} no intent, {r['intent_without_final']} open, " \
               f"{r['intent_with_several_finals']} doubled)"
        verify = "pass" if r["verify"]["ok"] else f"FAIL {r['verify']['problem'][:100]}"
        lines.append(" | ".join(str(x) for x in (
            r["fault"], r["tried"], r["ok"], r["refused"], r["unclear"], r["wrong"], lost, verify,
            "NEEDED" if r["restart_needed"] else "no", f"{r['after']['ok']}/{r['after']['tried']}")))
    return "\n".join(lines)


def details(rows: list[dict[str, Any]]) -> str:
    out = []
    for r in rows:
        if "not_run" in r:
            continue
        after = r["after"]
        out.append(f"- {r['fault']}: refusals {r['refusals']}, unclear {r['unclears']}; after: refusals "
                   f"{after['refusals']}, unclear {after['unclears']}; notes {r['notes']}"
                   + (f"; restart because: {r['restart_reason']}" if r["restart_needed"] else "")
                   + (f", e.g. {r['examples']}" if r["examples"] else ""))
    return "\n".join(out)


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings.short() if args.short else Settings()
    faults = [f.strip() for f in args.faults.split(",") if f.strip()] if args.faults else list(ALL_FAULTS)
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        raise SystemExit(f"unknown fault(s): {', '.join(unknown)}; choose from {', '.join(ALL_FAULTS)}")
    clean_minutes = args.clean_minutes if args.clean_minutes is not None else (0 if args.short else 10)
    results: dict[str, Any] = {"short": args.short, "clients": settings.clients, "faults": []}
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aegress-soak-")))
        soak = Soak(settings, work, stack)
        stack.callback(soak.unmount)
        stack.callback(soak.stop_all)
        mount_problem = soak.mount_tmpfs() if "disk-full" in faults else "not requested"
        soak.setup()
        for name in faults:
            if name == "disk-full" and mount_problem:
                results["faults"].append({"fault": name, "not_run": f"needs root/mount ({mount_problem})"})
                continue
            results["faults"].append(soak.run_fault(name, lambda f=FAULTS[name]: f(soak)))
        if clean_minutes > 0:
            results["clean"] = soak.clean_soak(clean_minutes)
        soak.stop_load()
    return results


def _interrupt(*_: Any) -> None:
    """SIGTERM ends the soak like Ctrl-C, so every process it started is stopped."""
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="the suite's version: 3 clients, short intervals")
    parser.add_argument("--faults", default="", help=f"comma-separated subset (default all): {','.join(ALL_FAULTS)}")
    parser.add_argument("--clean-minutes", type=int, default=None,
                        help="clean soak at 16 clients afterwards (default 10, 0 with --short)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)
    results = run(args)
    rows = results["faults"]
    print(table(rows))
    print(details(rows))
    if "clean" in results:
        c = results["clean"]
        verdict = "pass" if c["verify"]["ok"] else "FAIL"
        print(f"clean soak: {c['minutes']} min at {c['clients']} clients: {c['ok']}/{c['tried']} ok, "
              f"lost {c['lost']}, RSS MB {c['rss_mb']}, slope {c['slope_mb_per_min']} MB/min, verify {verdict}")
    text = json.dumps(results, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    bad = [r for r in rows if "not_run" not in r and (r["lost"] or not r["verify"]["ok"])]
    if "clean" in results and (results["clean"]["lost"] or not results["clean"]["verify"]["ok"]):
        bad.append(results["clean"])
    sys.exit(3 if bad else 0)


if __name__ == "__main__":
    main()
