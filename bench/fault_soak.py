"""Fault soak (issues 9 and 11): does the gateway lose a call, leak one tenant's answer to another, or need
a restart, under hostile conditions?

Sets up 3 tenants, each with a token, an allow-all policy, a stdio recording upstream (`rec-<t>`,
bench/soak_stdio.py) and an HTTP recording upstream (`web-<t>`, bench/soak_upstream.py), `<t>` being the
tenant's last letter (names of their own, so an answer that names another tenant's upstream is seen); the
first tenant also gets `hole-a`, an HTTP upstream that handshakes but never answers a call. Every upstream
appends each executed call's nonce (the `mark` argument) to a file, and sends a progress notification
naming it when the call asks for progress (every other call does). Concurrent raw HTTP clients
(keep-alive, 2025-11-25 sessions resuming dropped streams, or `--revision 2026-07-28` without sessions)
call tools with unique nonces while ONE fault at a time is applied, then a clean interval follows. Per
fault it reports calls tried, succeeded, refused with a clear error (an HTTP status with our JSON error
body, a JSON-RPC error or a tool error), unclear (timeout, reset, no answer), and LOST: a nonce executed
upstream without an intent record, or an intent without exactly one final record (`outcome` or
`outcome_unknown`) once the fault has cleared; LEAKS: every answer a client receives (results, errors,
SSE notifications, initialize results) is searched for other tenants' nonces, upstream names and tenant
ids; whether a restart was needed (a probe after the clean interval failed), and whether
`aegress audit verify --all` passes.

Two set-ups:
- default: one gateway (`aegress serve`) on its own SQLite data dir;
- `--replicas N`: N replicas on one Postgres database with a private Redis behind nginx (tests/cluster.py,
  round-robin, no stickiness); the clients go through nginx, set-up and accounting use replica 0's CLI
  environment. Until a session started on one replica can be used on another, 2025-11-25 calls that land
  on another replica are refused 404 `unknown-session`; the client then initializes again, and those
  refusals are counted and reported on their own (`--strict-sessions` fails the run on any).

Faults (`--faults a,b`): upstream-restart, blackhole, stdio-kill, big-answer, sqlite-lock, disk-full,
sigkill, sigterm, garbage, sessions; with --replicas also replica-kill (one replica SIGKILLed under load and
started again with the same replica id), pg-terminate (`pg_terminate_backend` on every connection to the
cluster's own database, a few times), redis-restart (the private Redis stopped and started). With
--replicas, sigkill and sigterm hit one replica; sqlite-lock and disk-full are not run (the data is in
Postgres). disk-full puts the data dir on a tmpfs it mounts (needs root); when mount is refused it
reports "not run". `--clean-minutes N` ends with a clean soak at 16 clients, sampling the gateway RSS
(all replicas' together) each minute (slope by least squares).

    .venv/bin/python bench/fault_soak.py [--short] [--faults ...] [--clean-minutes 10] [--json OUT]
    .venv/bin/python bench/fault_soak.py --replicas 3 --short --faults replica-kill,pg-terminate,redis-restart

Exit 0: nothing lost, nothing leaked and every verify passed; 3: a fault lost a call, leaked across
tenants or broke the evidence (or, with --strict-sessions, a session was unknown to a replica); 1: the
soak itself failed. Loopback only; every loop and wait is bounded; every process it starts is stopped,
also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.procs import ALLOW_ALL_POLICY, Proc, aegress, cli_env  # noqa: E402

if TYPE_CHECKING:
    from tests.cluster import Cluster

ALL_FAULTS = ("upstream-restart", "blackhole", "stdio-kill", "big-answer", "sqlite-lock", "disk-full",
              "sigkill", "sigterm", "garbage", "sessions")
REPLICA_FAULTS = ("replica-kill", "pg-terminate", "redis-restart")
NOT_WITH_REPLICAS = {
    "sqlite-lock": "the replicas keep their data in Postgres: there is no SQLite write lock to hold "
                   "(pg-terminate is the database fault here)",
    "disk-full": "the replicas' data is in the shared Postgres, not on a data dir the soak can fill",
}
TENANTS = ("soaka", "soakb", "soakc")
LEGACY = "2025-11-25"
MODERN = "2026-07-28"
MARK_RE = re.compile(r"[a-z-]+(?:\+after)?\.[a-z]\.[a-z]+\.[a-z]+")
FINAL_KINDS = ("outcome", "outcome_unknown")
PHASES = (*ALL_FAULTS, *REPLICA_FAULTS, "probe", "clean", "setup")
FOREIGN_RE = re.compile(
    r"(?<![a-z0-9+.-])(?:" + "|".join(re.escape(p) for p in PHASES) + r")(?:\+after)?\.([a-z])\.[a-z]+\.[a-z]+"
    r"|(?<![a-z0-9-])(?:rec|web|hole)-([a-z])(?![a-z0-9])"
    r"|(?<![a-z0-9])soak([a-z])(?![a-z0-9])"
)
"""A nonce (`<phase>.<tenant letter>.<client>.<n>`), an upstream name (`rec-<t>`) or a tenant id (`soak<t>`)."""
SCAN_HEAD, SCAN_TAIL = 1 << 20, 64 << 10
"""Of a huge answer (big-answer's 200 MB of 'a') only its head and tail are searched for other tenants."""


@dataclass(frozen=True)
class Settings:
    """Sizes and durations; --short shrinks them so the suite can run a few faults in about a minute
    (single gateway) or three replica faults in under three (--replicas 3)."""

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
    pg_rounds: int = 4
    ready_s: float = 60.0

    @classmethod
    def short(cls, replicas: int = 0) -> Settings:
        # with replicas, twice the clients: each replica still has calls in flight when one is hit
        return cls(clients=6 if replicas else 3, clean_s=2.0, outage_s=2.0, lock_s=3.0, settle_s=20.0,
                   call_timeout_s=15.0, big_mb=50, sessions=100, garbage_conns=30, pg_rounds=3)


def letters(n: int) -> str:
    """A number as lowercase letters: evidence previews redact values that look random (digits + letters)."""
    out = ""
    for _ in range(16):
        n, r = divmod(n, 26)
        out = chr(97 + r) + out
        if n == 0:
            break
    return out


def tool(tenant: str, upstream: str, name: str) -> str:
    """The gateway's name of upstream `upstream` (rec, web, hole)'s tool for `tenant`."""
    return f"{upstream}-{tenant[-1]}__{name}"


def foreign(text: str, tenant: str) -> list[str]:
    """Pure: what in an answer to `tenant` belongs to another tenant of the soak (nonce, upstream, tenant id)."""
    if len(text) > SCAN_HEAD + SCAN_TAIL:
        text = text[:SCAN_HEAD] + "\n" + text[-SCAN_TAIL:]
    own = tenant[-1]
    others = {t[-1] for t in TENANTS} - {own}
    found = []
    for m in FOREIGN_RE.finditer(text):
        letter = next(g for g in m.groups() if g)
        if letter in others:
            found.append(m.group())
    return found


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
                "wrong": self.wrong, "unknown_session": self.refusals["unknown-session"],
                "refusals": dict(self.refusals.most_common(6)), "unclears": dict(self.unclears.most_common(6))}


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


def _json_body(r: httpx2.Response) -> dict[str, Any] | None:
    try:
        body = r.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


class SessionRefused(Exception):
    """initialize was refused (e.g. 429 too-many-sessions): the call it was for counts as `outcome`."""

    def __init__(self, outcome: tuple[str, str]) -> None:
        super().__init__(f"initialize: {outcome[0]} {outcome[1]}")
        self.outcome = outcome


class Client:
    """One keep-alive MCP client bound to one tenant; re-initializes when its session is gone. `url` pins
    it to one gateway (the probe of each replica); by default it uses the soak's URL (nginx with replicas)."""

    def __init__(self, soak: Soak, tenant: str, name: str, actor: str = "runner", url: str = "") -> None:
        self.soak, self.tenant, self.name, self.actor, self.url = soak, tenant, name, actor, url
        self.http = httpx2.AsyncClient(timeout=httpx2.Timeout(soak.settings.call_timeout_s, connect=5.0),
                                       limits=httpx2.Limits(max_connections=4, max_keepalive_connections=2))
        self.session: tuple[str, str] | None = None  # (url, session id)
        self.ids = 0

    @property
    def modern(self) -> bool:
        return self.soak.revision == MODERN

    def headers(self, method: str = "", name: str = "") -> dict[str, str]:
        h = {"Authorization": f"Bearer {self.soak.tokens[self.tenant, self.actor]}", "Content-Type": "application/json",
             "Accept": "application/json, text/event-stream"}
        if self.modern:  # every request carries the revision and mirrors its method and name
            h["mcp-protocol-version"] = MODERN
            h.update({"mcp-method": method} if method else {})
            h.update({"mcp-name": name} if name else {})
        elif self.session:
            h.update({"mcp-session-id": self.session[1], "mcp-protocol-version": LEGACY})
        return h

    async def send(self, method: str, url: str, headers: dict[str, str], body: dict[str, Any] | None = None
                   ) -> httpx2.Response:
        """One HTTP exchange; whatever comes back is searched for other tenants' nonces and names."""
        r = await self.http.request(method, url, headers=headers,
                                    content=json.dumps(body) if body is not None else None)
        found = foreign(r.text, self.tenant)
        if found:
            self.soak.leaked(self.tenant, found, f"{method} {body.get('method') if body else ''}".strip(), r.text)
        return r

    async def ensure_session(self) -> str:
        url = self.url or self.soak.url
        if self.modern or (self.session and self.session[0] == url):
            return url
        self.session = None
        r = await self.send("POST", url, self.headers(), {
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": LEGACY, "capabilities": {},
                       "clientInfo": {"name": "fault-soak", "version": "1"}}})
        sid = r.headers.get("mcp-session-id")
        if r.status_code != 200 or not sid:
            category, detail = classify(r.status_code, _json_body(r), "")
            raise SessionRefused((category, detail) if category == "refused" else ("unclear", f"initialize-{detail}"))
        self.session = (url, sid)
        await self.send("POST", url, self.headers(), {"jsonrpc": "2.0", "method": "notifications/initialized"})
        return url

    async def call(self, tool_name: str, args: dict[str, Any], mark: str) -> tuple[str, str]:
        """One tools/call; resumes a dropped SSE stream (at most 3 times) like a 2025-11-25 client. Every other
        call asks for progress (the upstreams then send a notification naming the nonce)."""
        url = await self.ensure_session()
        self.ids += 1
        rid = self.ids
        params: dict[str, Any] = {"name": tool_name, "arguments": {"mark": mark, **args}}
        meta: dict[str, Any] = {"progressToken": mark} if rid % 2 == 0 else {}
        if self.modern:
            meta.update({"io.modelcontextprotocol/protocolVersion": MODERN,
                         "io.modelcontextprotocol/clientCapabilities": {},
                         "io.modelcontextprotocol/clientInfo": {"name": "fault-soak", "version": "1"}})
        if meta:
            params["_meta"] = meta
        r = await self.send("POST", url, self.headers("tools/call", tool_name),
                            {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params})
        if r.status_code == 404:
            self.session = None  # unknown to this gateway (restarted, or another replica): initialize again
        if not r.headers.get("content-type", "").startswith("text/event-stream"):
            return classify(r.status_code, _json_body(r), mark)
        messages, last_id = _sse_messages(r.text)
        for _ in range(3):
            self.soak.notified(sum(1 for m in messages if "method" in m and "id" not in m))
            mine = [m for m in messages if m.get("id") == rid and ("result" in m or "error" in m)]
            if mine:
                return classify(r.status_code, mine[-1], mark)
            if not last_id or self.modern:  # 2026-07-28 has no stream to resume
                break
            g = await self.send("GET", url, {**self.headers(), "Last-Event-ID": last_id})
            if g.status_code != 200:
                if g.status_code == 404:
                    self.session = None
                return classify(g.status_code, _json_body(g), mark)
            messages, last_id = _sse_messages(g.text)
        return classify(r.status_code, None, mark)

    async def aclose(self, delete: bool = False) -> None:
        """Close the connections; with `delete`, end the session first (bounded, errors ignored)."""
        if delete and self.session is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.http.delete(self.session[0], headers=self.headers()), 5)
        await self.http.aclose()


class Soak:
    """The data dir or cluster, the processes, the client load and the per-fault accounting."""

    def __init__(self, settings: Settings, work: Path, stack: contextlib.ExitStack, replicas: int = 0,
                 revision: str = LEGACY) -> None:
        self.settings, self.work, self.stack = settings, work, stack
        self.replicas, self.revision = replicas, revision
        self.home = work / "home"
        self.tokens: dict[tuple[str, str], str] = {}  # (tenant, actor) -> token
        self.webs: dict[str, tuple[int, Proc | None]] = {}
        self.hole: Proc | None = None
        self.gateway: Proc | None = None
        self.cluster: Cluster | None = None
        self.cluster_stack = contextlib.ExitStack()
        self.victims = itertools.cycle([*range(1, replicas), 0])  # which replica a replica fault hits next
        self.url = ""
        self.phase = "setup"
        self.plans: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self.tallies: dict[str, Tally] = {}
        self.leaks: list[dict[str, Any]] = []
        self.notifications: Counter[str] = Counter()
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

    def leaked(self, tenant: str, found: list[str], what: str, text: str) -> None:
        """An answer to `tenant` carried another tenant's nonce or name: the worst outcome; kept with an excerpt."""
        at = text.find(found[0])
        self.leaks.append({"phase": self.phase, "tenant": tenant, "request": what, "found": found[:5],
                           "excerpt": text[max(0, at - 150):at + 150]})

    def notified(self, n: int) -> None:
        if n:
            self.notifications[self.phase] += n

    # --- the CLI ---------------------------------------------------------------------------------
    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """An `aegress` command on the soak's data dir, or with replicas on replica 0's host (the shared database)."""
        if self.cluster is not None:
            return self.cluster.aegress(*args, check=check, timeout=timeout)
        return aegress(self.home, *args, check=check, timeout=timeout)

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    # --- processes -------------------------------------------------------------------------------
    def start_gateway(self) -> None:
        if self.replicas:
            from tests.cluster import cluster

            self.cluster = self.cluster_stack.enter_context(cluster(self.replicas, base=self.work / "cluster"))
            self.url = self.cluster.url
            return
        self.gateway = Proc([sys.executable, "-m", "aegress_cli.main", "serve", "--port", "0"], cli_env(self.home))
        line = self.gateway.wait_for("listening on", timeout=60)
        self.url = line.split("listening on", 1)[1].strip()

    def stop_gateway(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None
        self.cluster_stack.close()  # every replica, nginx, the private Redis, the cluster's database
        self.cluster = None

    @property
    def base(self) -> str:
        return self.url.rsplit("/mcp", 1)[0]

    def gateway_pids(self) -> list[int]:
        """The gateway's pid, or every live replica's."""
        if self.cluster is not None:
            return [r.pid for r in self.cluster.replicas if r.pid is not None]
        return [self.gateway.popen.pid] if self.gateway else []

    def gateways_alive(self) -> bool:
        if self.cluster is not None:
            return all(r.pid is not None for r in self.cluster.replicas)
        return self.gateway is not None and self.gateway.popen.poll() is None

    def start_web(self, tenant: str, port: int = 0, hang: bool = False) -> tuple[str, Proc]:
        name = "hole" if hang else "web"
        argv = [sys.executable, str(ROOT / "bench" / "soak_upstream.py"), "--port", str(port),
                "--log", str(self.work / f"{tenant}-{name}.log"), *(["--hang"] if hang else [])]
        proc = Proc(argv, dict(os.environ))
        url = proc.wait_for("LISTENING", timeout=30).split("LISTENING", 1)[1].strip()
        return url, proc

    def stdio_pids(self, tenant: str) -> list[int]:
        """Live stdio upstreams of `tenant` (one per gateway replica). A pid in the file whose process is gone
        is left out, and so is one the kernel has since given to another program: only a process running
        soak_stdio.py in this soak's work dir is ours."""
        path = self.work / f"{tenant}-rec.pids"
        pids = []
        for pid in (int(x) for x in path.read_text().split()) if path.exists() else []:
            with contextlib.suppress(OSError):
                ours = Path(os.readlink(f"/proc/{pid}/cwd")) == self.work.resolve() and \
                    b"soak_stdio.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
                if ours:
                    pids.append(pid)
        return pids

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

    def setup_tenant(self, tenant: str, policy: Path) -> None:
        self.cli("tenant", "create", tenant)
        for actor in ("runner", "idler", "prober"):  # the load, the actor that abandons sessions, the probe
            self.cli("actor", "add", "--tenant", tenant, actor)
            self.tokens[tenant, actor] = str(self.cli_json("token", "issue", "--tenant", tenant,
                                                           "--actor", actor)["token"])
        self.cli("policy", "apply", str(policy), "--tenant", tenant, "--yes")
        (self.work / f"{tenant}-rec.log").touch()
        self.cli("upstream", "add", "--tenant", tenant, f"rec-{tenant[-1]}", "--command", sys.executable,
                 "--command", str(ROOT / "bench" / "soak_stdio.py"),
                 "--env", f"REC_LOG={self.work}/{tenant}-rec.log",
                 "--env", f"REC_PIDS={self.work}/{tenant}-rec.pids", "--cwd", str(self.work), "--no-probe")
        url, proc = self.start_web(tenant)
        self.webs[tenant] = (int(url.rsplit(":", 1)[1].split("/")[0]), proc)
        self.cli("upstream", "add", "--tenant", tenant, f"web-{tenant[-1]}", "--url", url, "--allow-private",
                 "--no-probe")
        if tenant == TENANTS[0]:
            url, self.hole = self.start_web(tenant, hang=True)
            self.cli("upstream", "add", "--tenant", tenant, f"hole-{tenant[-1]}", "--url", url, "--allow-private",
                     "--no-probe")

    def setup(self) -> None:
        """Tenants, tokens, policies, upstreams; then the gateway (single) or, with replicas, the cluster
        first (its database is where the set-up goes) and a wait until every replica serves every upstream."""
        self.loop_thread.start()
        policy = self.work / "allow.toml"
        policy.write_text(ALLOW_ALL_POLICY)
        if self.replicas:
            self.start_gateway()
            with ThreadPoolExecutor(max_workers=len(TENANTS)) as pool:  # Postgres takes them side by side
                for done in [pool.submit(self.setup_tenant, t, policy) for t in TENANTS]:
                    done.result()
        else:
            for tenant in TENANTS:
                self.setup_tenant(tenant, policy)
            self.start_gateway()
        self.plans_default()
        deadline = time.monotonic() + self.settings.ready_s
        why = self.unhealthy()
        while why and time.monotonic() < deadline:  # replicas pick new upstreams up from the database
            time.sleep(1.0)
            why = self.unhealthy()
        if why:
            raise RuntimeError(f"the gateway never served every upstream: {why}")

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

    async def one_call(self, client: Client, tool_name: str, args: dict[str, Any], timeout: float
                       ) -> tuple[str, str]:
        phase = self.phase
        mark = f"{phase}.{client.tenant[-1]}.{client.name}.{letters(client.ids + 1)}"
        try:
            outcome = await asyncio.wait_for(client.call(tool_name, args, mark), timeout)
        except TimeoutError:
            client.session = None
            outcome = ("unclear", "client-timeout")
        except SessionRefused as exc:  # a clear refusal when the gateway said why (its caps, a 503)
            outcome = exc.outcome
            await asyncio.sleep(0.2)
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
                tool_name, args = plan[i % len(plan)]
                await self.one_call(client, tool_name, args, self.settings.call_timeout_s)
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

    def side_calls(self, tenant: str, tool_name: str, args: dict[str, Any], n: int, timeout: float) -> Future[Any]:
        """n concurrent extra calls (hostile tools) on their own clients, alongside the load."""

        async def run() -> list[tuple[str, str]]:
            clients = [Client(self, tenant, "side" + letters(self.next_seq())) for _ in range(n)]
            try:
                return list(await asyncio.gather(*(self.one_call(c, tool_name, args, timeout) for c in clients)))
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
            out = self.cli("audit", "query", "--tenant", tenant, "--limit", "10000000", "--json", timeout=120,
                           check=False)
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
        unknown: set[tuple[str, int]] = set()
        for row in rows:
            body = row["record"].get("body", {})
            if row["kind"] == "intent":
                found = MARK_RE.search(str(body.get("args_preview", "")))
                if found:
                    intents[found.group()] = (row["origin"], row["seq"])
            elif row["kind"] in FINAL_KINDS:
                key = (row["origin"], body.get("intent_seq", row.get("intent_seq")))
                finals[key] += 1
                if row["kind"] == "outcome_unknown":
                    unknown.add(key)
        mine = {m for m in executed if m.split(".")[0].split("+")[0] == fault}
        no_intent = sorted(m for m in mine if m not in intents)
        ours = {m: key for m, key in intents.items() if m.split(".")[0].split("+")[0] == fault}
        open_ = sorted(m for m, key in ours.items() if finals[key] == 0)
        doubled = sorted(m for m, key in ours.items() if finals[key] > 1)
        return {"executed": len(mine), "intents": len(ours), "executed_without_intent": len(no_intent),
                "intent_without_final": len(open_), "intent_with_several_finals": len(doubled),
                "outcome_unknown": sum(1 for key in ours.values() if key in unknown),
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
        out = self.cli("audit", "verify", "--all", "--json", timeout=300, check=False)
        try:
            body = json.loads(out.stdout)
        except ValueError:
            return {"ok": False, "exit": out.returncode, "problem": (out.stderr or out.stdout).strip()[-300:]}
        bad = [r for r in body.get("logs", []) if not r.get("ok")]
        finding = bad[0].get("finding", {}) if bad else {}
        return {"ok": out.returncode == 0, "exit": out.returncode,
                "problem": f"{finding.get('problem')}: {finding.get('message')}" if bad else ""}

    def probe(self, urls: list[str]) -> dict[str, list[str]]:
        """From a fresh session per tenant, one call to each of its upstreams on each gateway URL; the
        failures per URL. An actor of its own (`prober`), which ends its sessions: the load's sessions
        (abandoned ones included) count against the load's actor's caps, not the probe's."""

        async def run() -> dict[str, list[str]]:
            calls = [(url, t, tool(t, up, "record"),
                      Client(self, t, "probe" + letters(self.next_seq()), actor="prober", url=url))
                     for url in urls for t in TENANTS for up in ("rec", "web")]
            try:
                results = await asyncio.gather(*(self.one_call(c, name, {}, 15) for _, _, name, c in calls))
                failed: dict[str, list[str]] = {}
                for (url, _, name, _), (category, detail) in zip(calls, results, strict=True):
                    if category != "ok":
                        failed.setdefault(url, []).append(f"{name}: {category} {detail}".strip())
                return failed
            finally:
                for *_, c in calls:
                    await c.aclose(delete=True)

        return dict(self.in_loop(run(), 40))

    def unhealthy(self) -> str:
        """Why the gateway cannot serve (exited, /health not 200, a fresh session per tenant cannot call each
        of its upstreams), or '' when it can. With replicas each one is asked directly."""
        phase, self.phase = self.phase, "probe"
        try:
            problems = self.problems()
        finally:
            self.phase = phase
        return "; ".join(f"{who}: {why}" for who, why in problems.items())

    def problems(self) -> dict[str, str]:
        """What is wrong, per gateway (replica id, or 'gateway')."""
        if self.cluster is not None:
            gateways = {r.replica_id: (r.base, r.url, r.pid is not None) for r in self.cluster.replicas}
        else:
            alive = self.gateway is not None and self.gateway.popen.poll() is None
            gateways = {"gateway": (self.base, self.url, alive)}
        problems: dict[str, str] = {}
        for who, (base, _, alive) in gateways.items():
            if not alive:
                problems[who] = "exited"
                continue
            try:
                status = httpx2.get(base + "/health", timeout=10).status_code
            except httpx2.HTTPError as exc:
                problems[who] = f"/health: {type(exc).__name__}"
                continue
            if status != 200:
                problems[who] = f"/health answered {status}"
        urls = {url: who for who, (_, url, _) in gateways.items() if who not in problems}
        for url, failures in self.probe(list(urls)).items():
            problems[urls[url]] = "; ".join(failures[:3])
        return problems

    def restart_unhealthy(self) -> None:
        """The restart a failed probe asks for: the gateway, or each replica that failed it."""
        if self.cluster is None:
            self.stop_gateway()
            self.start_gateway()
            return
        for who in self.problems():
            index = [r.replica_id for r in self.cluster.replicas].index(who)
            self.cluster.restart(index)

    def run_fault(self, name: str, action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Load, the fault, a clean interval; then, with the load stopped (so every call is accounted for and
        verify reads a quiet log): the health probe, the evidence accounting and verify."""
        print(f"fault {name} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        self.phase = name
        self.plans_default()
        self.start_load(self.settings.clients)
        time.sleep(1.0)
        hwm_before = max((proc_kb(p, "VmHWM") for p in self.gateway_pids()), default=0)
        notes = action()
        self.plans_default()
        self.phase = name + "+after"
        time.sleep(self.settings.clean_s)
        self.stop_load()
        restart_reason = self.unhealthy()
        if restart_reason:
            self.restart_unhealthy()
        accounting = self.settle(name)
        verify = self.verify()
        during, after = self.tally(name), self.tally(name + "+after")
        phases = (name, name + "+after")
        row = {"fault": name, **during.as_dict(), "after": after.as_dict(), **accounting, "verify": verify,
               "leaks": sum(1 for leak in self.leaks if leak["phase"] in phases),
               "unknown_session": during.refusals["unknown-session"] + after.refusals["unknown-session"],
               "notifications": sum(self.notifications[p] for p in phases),
               "restart_needed": bool(restart_reason), "restart_reason": restart_reason,
               "seconds": round(time.monotonic() - started, 1), "notes": notes}
        if hwm_before and name == "big-answer":
            row["notes"]["gateway_hwm_mb_before"] = round(hwm_before / 1024, 1)
        return row

    def plans_default(self) -> None:
        for tenant in TENANTS:
            self.plans[tenant] = [(tool(tenant, "rec", "record"), {}), (tool(tenant, "web", "record"), {})]

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
        side = self.side_calls(TENANTS[0], tool(TENANTS[0], "hole", "record"), {}, self.settings.clients, give_up)
        results = side.result(give_up + 30)
        assert self.hole is not None
        self.hole.popen.kill()
        self.hole.stop()
        self.hole = None
        return {"hole_calls": dict(Counter(f"{c}:{d}" if d else c for c, d in results)), "client_gave_up_s": give_up}

    def fault_stdio_kill(self) -> dict[str, Any]:
        """The first tenant's stdio upstream (each replica's) is SIGKILLed twice while slow calls are in flight."""
        tenant = TENANTS[0]
        self.plans[tenant] = [(tool(tenant, "rec", "slow_record"), {"seconds": 0.5})]
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
        """A 200 MB answer, once as JSON and once as one SSE event; the gateway's peak RSS is read (with
        replicas, the highest of them)."""
        out: dict[str, Any] = {}
        for sse in (False, True):
            fut = self.side_calls(TENANTS[0], tool(TENANTS[0], "web", "big"), {"mb": self.settings.big_mb, "sse": sse},
                                  1, 120)
            with contextlib.suppress(Exception):
                category, detail = fut.result(150)[0]
                out["sse" if sse else "json"] = f"{category}:{detail}" if detail else category
        out["big_mb"] = self.settings.big_mb
        for key, field_ in (("gateway_hwm_mb_after", "VmHWM"), ("gateway_rss_mb_after", "VmRSS")):
            out[key] = round(max((proc_kb(p, field_) for p in self.gateway_pids()), default=0) / 1024, 1)
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
        """The gateway is SIGKILLed under load and started again (the only expected restart); with replicas,
        one replica (replica-kill)."""
        if self.cluster is not None:
            return self.fault_replica_kill()
        time.sleep(1.0)
        assert self.gateway is not None
        self.gateway.popen.kill()
        self.stop_gateway()
        time.sleep(0.5)
        self.start_gateway()
        time.sleep(1.0)
        return {}

    def fault_sigterm(self) -> dict[str, Any]:
        """SIGTERM while slow calls are in flight; the gateway (with replicas, one replica) must finish or record
        them, then is started again."""
        for tenant in TENANTS:
            self.plans[tenant] = [(tool(tenant, "rec", "slow_record"), {"seconds": 1.0}),
                                  (tool(tenant, "web", "slow_record"), {"seconds": 1.0})]
        time.sleep(1.5)
        if self.cluster is not None:
            index = next(self.victims)
            replica = self.cluster.replicas[index]
            assert replica.proc is not None
            popen = replica.proc.popen
            started = time.monotonic()
            self.cluster.stop(index)  # SIGTERM, 10 s to drain, then the whole tree is killed
            took = round(time.monotonic() - started, 2)
            code = popen.returncode
            self.cluster.restart(index)
            time.sleep(1.0)
            return {"replica": replica.replica_id, "exited_on_sigterm": code is not None and code >= 0,
                    "exit_s": took, "exit_code": code}
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
        """Raw sockets send garbage, truncated bodies and huge lengths (to nginx, with replicas); other clients
        drop mid-call."""
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
                await asyncio.wait_for(client.call(tool(tenant, "rec", "slow_record"), {"seconds": 2.0},
                                                   f"{self.phase}.{tenant[-1]}.{client.name}.b"), 0.5)
            except Exception:  # dropping is the point
                pass
            finally:
                await client.aclose()

        async def drops() -> None:
            await asyncio.gather(*(drop(TENANTS[i % len(TENANTS)]) for i in range(self.settings.clients * 2)))

        self.in_loop(drops(), 60)
        return {"garbage_connections": sent, "dropped_calls": self.settings.clients * 2,
                "gateway_alive": self.gateways_alive()}

    def fault_sessions(self) -> dict[str, Any]:
        """Many sessions opened (initialize) and abandoned without DELETE, by one actor per tenant (`idler`):
        its caps refuse the excess, and nobody else (the load, the health probe) may notice."""
        before = sum(proc_kb(p, "VmRSS") for p in self.gateway_pids())

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
                    except (TimeoutError, httpx2.HTTPError, SessionRefused):
                        pass  # refused by the actor's session cap (429), as it should be
                    finally:
                        await client.aclose()

            await asyncio.gather(*(one(i) for i in range(self.settings.sessions)))
            return count

        n = self.in_loop(opened(), 300)
        after = sum(proc_kb(p, "VmRSS") for p in self.gateway_pids())
        return {"sessions_opened": n, "of": self.settings.sessions, "gateway_rss_mb_before": round(before / 1024, 1),
                "gateway_rss_mb_after": round(after / 1024, 1)}

    def fault_replica_kill(self) -> dict[str, Any]:
        """One replica is SIGKILLed (with its stdio upstreams) under load; the load goes on through nginx for
        the outage; then it starts again with the same replica id, data dir and port, and its own recovery
        closes the intents it left open as outcome_unknown."""
        assert self.cluster is not None
        index = next(self.victims)
        replica = self.cluster.replicas[index]
        time.sleep(1.0)
        pid = replica.pid
        self.cluster.kill(index)
        time.sleep(self.settings.outage_s)
        started = time.monotonic()
        self.cluster.restart(index)
        took = round(time.monotonic() - started, 2)
        time.sleep(1.0)
        return {"replica": replica.replica_id, "killed_pid": pid, "down_s": self.settings.outage_s,
                "restart_s": took}

    def database_name(self) -> str:
        """The cluster's own database (tests.pg made it for this soak alone); anything else is refused."""
        assert self.cluster is not None
        name = urlsplit(self.cluster.database_url).path.lstrip("/")
        if not re.fullmatch(r"aegress_test_[0-9a-f]+", name):
            raise RuntimeError(f"refusing to terminate connections to {name!r}: not a database of this soak")
        return name

    def fault_pg_terminate(self) -> dict[str, Any]:
        """Every connection to the cluster's database is terminated (`pg_terminate_backend`) a few times during
        the fault window, from an admin connection to the machine's Postgres; no other database is touched."""
        import psycopg

        from tests.pg import ADMIN_URL

        name = self.database_name()
        terminated = []
        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            for _ in range(self.settings.pg_rounds):
                time.sleep(self.settings.outage_s / self.settings.pg_rounds + 0.5)
                rows = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                     "WHERE datname = %s AND pid <> pg_backend_pid()", (name,)).fetchall()
                terminated.append(sum(1 for (ok,) in rows if ok))
        time.sleep(1.0)
        return {"database": name, "terminated_per_round": terminated}

    def fault_redis_restart(self) -> dict[str, Any]:
        """The cluster's private Redis is stopped for the outage, then started again on the same port."""
        assert self.cluster is not None
        time.sleep(1.0)
        self.cluster.redis.stop()
        time.sleep(self.settings.outage_s)
        self.cluster.redis.start()
        up = self.cluster.redis.ping()
        time.sleep(2.5)  # the replicas' subscribers reconnect (their back-off tops out at 2 s)
        return {"down_s": self.settings.outage_s, "redis_back": up}

    def clean_soak(self, minutes: int) -> dict[str, Any]:
        """16 clients, no fault; the gateway RSS (all replicas') each minute and its least-squares slope."""
        self.phase = "clean"
        self.start_load(16)

        def rss_mb() -> float:
            return sum(proc_kb(p, "VmRSS") for p in self.gateway_pids()) / 1024

        samples = [(0.0, rss_mb())]
        for minute in range(1, minutes + 1):
            time.sleep(60)
            samples.append((float(minute), rss_mb()))
        self.stop_load()
        accounting = self.settle("clean")
        return {"minutes": minutes, "clients": 16, **self.tally("clean").as_dict(), **accounting,
                "leaks": sum(1 for leak in self.leaks if leak["phase"] == "clean"),
                "rss_mb": [round(y, 1) for _, y in samples], "slope_mb_per_min": round(slope_per_minute(samples), 3),
                "verify": self.verify()}


FAULTS: dict[str, Callable[[Soak], dict[str, Any]]] = {
    "upstream-restart": Soak.fault_upstream_restart, "blackhole": Soak.fault_blackhole,
    "stdio-kill": Soak.fault_stdio_kill, "big-answer": Soak.fault_big_answer, "sqlite-lock": Soak.fault_sqlite_lock,
    "disk-full": Soak.fault_disk_full, "sigkill": Soak.fault_sigkill, "sigterm": Soak.fault_sigterm,
    "garbage": Soak.fault_garbage, "sessions": Soak.fault_sessions, "replica-kill": Soak.fault_replica_kill,
    "pg-terminate": Soak.fault_pg_terminate, "redis-restart": Soak.fault_redis_restart,
}


def table(rows: list[dict[str, Any]]) -> str:
    head = ("fault", "tried", "ok", "refused", "unclear", "wrong", "lost", "leaks", "unknown-session", "verify",
            "restart", "after ok/tried")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        if "not_run" in r:
            lines.append(f"{r['fault']} | not run: {r['not_run']}" + " |" * (len(head) - 2))
            continue
        lost = f"{r['lost']} ({r['executed_without_intent']} no intent, {r['intent_without_final']} open, " \
               f"{r['intent_with_several_finals']} doubled)"
        verify = "pass" if r["verify"]["ok"] else f"FAIL {r['verify']['problem'][:100]}"
        lines.append(" | ".join(str(x) for x in (
            r["fault"], r["tried"], r["ok"], r["refused"], r["unclear"], r["wrong"], lost, r["leaks"],
            r["unknown_session"], verify, "NEEDED" if r["restart_needed"] else "no",
            f"{r['after']['ok']}/{r['after']['tried']}")))
    return "\n".join(lines)


def details(rows: list[dict[str, Any]]) -> str:
    out = []
    for r in rows:
        if "not_run" in r:
            continue
        after = r["after"]
        out.append(f"- {r['fault']}: refusals {r['refusals']}, unclear {r['unclears']}; after: refusals "
                   f"{after['refusals']}, unclear {after['unclears']}; executed {r['executed']}, "
                   f"closed as outcome_unknown {r['outcome_unknown']}, notifications seen {r['notifications']}; "
                   f"notes {r['notes']}"
                   + (f"; restart because: {r['restart_reason']}" if r["restart_needed"] else "")
                   + (f", e.g. {r['examples']}" if r["examples"] else ""))
    return "\n".join(out)


def choose_faults(args: argparse.Namespace) -> list[str]:
    """The faults asked for (default: all that exist in this set-up); unknown or replica-only ones are refused."""
    known = (*ALL_FAULTS, *REPLICA_FAULTS) if args.replicas else ALL_FAULTS
    faults = [f.strip() for f in args.faults.split(",") if f.strip()] if args.faults else list(known)
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        raise SystemExit(f"unknown fault(s): {', '.join(unknown)}; choose from {', '.join(known)}")
    replica_only = [f for f in faults if f in REPLICA_FAULTS and not args.replicas]
    if replica_only:
        raise SystemExit(f"{', '.join(replica_only)} need several gateways: add --replicas 3")
    return faults


def not_run_reason(name: str, args: argparse.Namespace, mount_problem: str) -> str:
    if args.replicas and name in NOT_WITH_REPLICAS:
        return NOT_WITH_REPLICAS[name]
    if name == "disk-full" and mount_problem:
        return f"needs root/mount ({mount_problem})"
    if name == "sessions" and args.revision == MODERN:
        return "2026-07-28 has no sessions"
    return ""


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings.short(args.replicas) if args.short else Settings()
    faults = choose_faults(args)
    clean_minutes = args.clean_minutes if args.clean_minutes is not None else (0 if args.short else 10)
    results: dict[str, Any] = {"short": args.short, "clients": settings.clients, "replicas": args.replicas,
                               "revision": args.revision, "faults": []}
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aegress-soak-")))
        soak = Soak(settings, work, stack, replicas=args.replicas, revision=args.revision)
        stack.callback(soak.unmount)
        stack.callback(soak.stop_all)
        wants_mount = "disk-full" in faults and not args.replicas
        mount_problem = soak.mount_tmpfs() if wants_mount else "not requested"
        soak.setup()
        for name in faults:
            why = not_run_reason(name, args, mount_problem)
            if why:
                results["faults"].append({"fault": name, "not_run": why})
                continue
            results["faults"].append(soak.run_fault(name, lambda f=FAULTS[name]: f(soak)))
        if clean_minutes > 0:
            results["clean"] = soak.clean_soak(clean_minutes)
        soak.stop_load()
        results["leaks"] = len(soak.leaks)
        results["leak_examples"] = soak.leaks[:5]
        results["unknown_session"] = sum(t.refusals["unknown-session"] for t in soak.tallies.values())
        results["notifications"] = sum(soak.notifications.values())
        if soak.cluster is not None:
            results["spread"] = dict(soak.cluster.spread())
    return results


def _interrupt(*_: Any) -> None:
    """SIGTERM ends the soak like Ctrl-C, so every process it started is stopped."""
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true",
                        help="the suite's version: 3 clients (6 with --replicas), short intervals")
    parser.add_argument("--faults", default="", help="comma-separated subset (default all): "
                        f"{','.join(ALL_FAULTS)}; with --replicas also {','.join(REPLICA_FAULTS)}")
    parser.add_argument("--replicas", type=int, default=0,
                        help="N gateway replicas on Postgres behind nginx (tests/cluster.py) instead of one on SQLite")
    parser.add_argument("--revision", choices=(LEGACY, MODERN), default=LEGACY,
                        help="the clients' protocol revision (2026-07-28 has no sessions)")
    parser.add_argument("--strict-sessions", action="store_true",
                        help="fail (exit 3) when any call was refused 404 unknown-session")
    parser.add_argument("--clean-minutes", type=int, default=None,
                        help="clean soak at 16 clients afterwards (default 10, 0 with --short)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.replicas < 0:
        raise SystemExit("--replicas must be 0 (one gateway on SQLite) or more")
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
    print(f"leaks: {results['leaks']} (answers carrying another tenant's nonce, upstream or tenant id; "
          f"{results['notifications']} notifications seen)"
          + (f", e.g. {results['leak_examples'][:2]}" if results["leaks"] else ""))
    print(f"unknown-session refusals: {results['unknown_session']}"
          + (f"; requests per replica: {results['spread']}" if "spread" in results else ""))
    text = json.dumps(results, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    bad = [r for r in rows if "not_run" not in r and (r["lost"] or not r["verify"]["ok"])]
    if "clean" in results and (results["clean"]["lost"] or not results["clean"]["verify"]["ok"]):
        bad.append(results["clean"])
    if results["leaks"] or (args.strict_sessions and results["unknown_session"]):
        bad.append(results)
    sys.exit(3 if bad else 0)


if __name__ == "__main__":
    main()
