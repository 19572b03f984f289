"""Several real `aegress serve` replicas on one Postgres database (one master key, one data dir each), and
the small raw-HTTP client the replica tests drive them with (2026-07-28 calls, handshake sessions, GET
streams), timing what they see."""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

from tests.procs import FIXTURE_SERVER, ROOT, Proc, aegress, answer, cli_env

META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
LEGACY = "2025-06-18"


@dataclass
class Replica:
    home: Path
    proc: Proc
    url: str

    @property
    def base(self) -> str:
        return self.url.rsplit("/mcp", 1)[0]


@dataclass
class Fleet:
    env: dict[str, str]
    replicas: list[Replica] = field(default_factory=list)
    store: Any = None
    master: bytes = b""

    def cli(self, *args: str, i: int = 0, check: bool = True) -> Any:
        """An `aegress` command from replica i's data dir (any machine of the fleet would do)."""
        return aegress(self.replicas[i].home, *args, check=check, **self.env)

    def changed_at(self, tenant: str, kind: str) -> float:
        """When the tenant's latest `kind` record was sealed (epoch seconds): a change's commit, to within
        the commit's own few milliseconds. Latencies are measured from there, not from the command's exit
        (the command announces before it prints and exits, so replicas often see a change first)."""
        from datetime import datetime

        from gateway.store.base import EvidenceFilter

        rows = self.store.query_evidence(EvidenceFilter(tenant=tenant, kind=kind), limit=1000)
        latest = max(rows, key=lambda r: r.id)
        return datetime.fromisoformat(latest.time.replace("Z", "+00:00")).timestamp()

    def tenant(self, tenant: str, actors: tuple[str, ...] = ("alice",), policy: str | None = None,
               fixture: bool = True) -> dict[str, str]:
        """A tenant, its actors with a token each, a policy and the stdio fixture (through the library: set-up
        only; what a test measures goes through the CLI). Returns actor -> token."""
        from gateway import admin, policy_admin

        admin.create_tenant(self.store, tenant, "now", "tests")
        tokens = {}
        for actor in actors:
            admin.add_actor(self.store, tenant, actor, "now", "tests")
            tokens[actor] = admin.issue_token(self.store, self.master, tenant, actor, "now", by="tests")[1]
        if policy is not None:
            policy_admin.apply_policy(self.store, tenant, policy, "test.toml", "now", "tests")
        if fixture:
            spec = admin.make_upstream_spec(
                tenant, "tools", command=list(FIXTURE_SERVER), url=None, headers={},
                env={"FIXTURE_NAME": "tools", "PYTHONPATH": str(ROOT)}, cwd=str(ROOT), prefix=True,
                allow_private=False, now="now")
            admin.add_upstream(self.store, spec, None)
        return tokens


def write_master_key(home: Path, key: bytes) -> None:
    from gateway.secrets import write_private_file

    write_private_file(home / "secrets" / "master.key", key.hex().encode())


@contextlib.contextmanager
def fleet(tmp: Path, database_url: str, n: int, *, redis_url: str | None = None,
          env: dict[str, str] | None = None) -> Iterator[Fleet]:
    """`n` replicas (AEGRESS_REPLICA_ID r0..r{n-1}) sharing `database_url` and the same master key."""
    import secrets

    from gateway.store import open_store

    shared = {"AEGRESS_DATABASE_URL": database_url, **(env or {})}
    if redis_url:
        shared["AEGRESS_REDIS_URL"] = redis_url
    key = secrets.token_bytes(32)
    homes = [tmp / f"replica{i}" for i in range(n)]
    for home in homes:
        write_master_key(home, key)
    out = Fleet(shared, store=open_store(homes[0], database_url, replica_id="tests"), master=key)
    procs: list[Proc] = []
    try:
        for i, home in enumerate(homes):
            procs.append(Proc([sys.executable, "-m", "aegress_cli.main", "serve", "--port", "0"],
                              cli_env(home, **shared, AEGRESS_REPLICA_ID=f"r{i}")))
        for home, proc in zip(homes, procs, strict=True):
            line = proc.wait_for("listening on", timeout=90)
            out.replicas.append(Replica(home, proc, line.split("listening on", 1)[1].strip()))
        yield out
    finally:
        for proc in procs:
            proc.stop()
        out.store.close()


# -- raw HTTP ---------------------------------------------------------------------------------------
def call(url: str, token: str, name: str, arguments: dict[str, Any] | None = None, *,
         timeout: float = 30.0, http: httpx2.Client | None = None) -> tuple[int, dict[str, Any]]:
    """One 2026-07-28 tools/call (no session: any replica answers it). (HTTP status, JSON-RPC message)."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": name, "arguments": arguments or {}, "_meta": META}}
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
               "Content-Type": "application/json", "MCP-Protocol-Version": "2026-07-28",
               "Mcp-Method": "tools/call", "Mcp-Name": name}
    poster = http.post if http is not None else httpx2.post
    r = poster(url, content=json.dumps(body), headers=headers, timeout=timeout)
    return r.status_code, answer(r) if r.content else {}


def list_tools(url: str, token: str, http: httpx2.Client | None = None) -> list[str]:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": META}}
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
               "Content-Type": "application/json", "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/list"}
    poster = http.post if http is not None else httpx2.post
    r = poster(url, content=json.dumps(body), headers=headers, timeout=30)
    return [t["name"] for t in answer(r).get("result", {}).get("tools", [])]


def text_of(message: dict[str, Any]) -> str:
    content = (message.get("result") or {}).get("content") or [{}]
    return str(content[0].get("text", ""))


def blocked(message: dict[str, Any]) -> bool:
    """Refused by policy: blocked, or hidden (a block rule without argument conditions hides the tool)."""
    if "Unknown tool" in str((message.get("error") or {}).get("message", "")):
        return True
    return bool((message.get("result") or {}).get("isError")) and "Blocked by policy" in text_of(message)


def rate_limited(message: dict[str, Any]) -> bool:
    return bool((message.get("result") or {}).get("isError")) and "Rate limit reached" in text_of(message)


def open_session(url: str, token: str) -> dict[str, str]:
    """A handshake-era session on one replica; the headers its later requests carry."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
               "Content-Type": "application/json"}
    r = httpx2.post(url, headers=headers, timeout=30, json={
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": LEGACY, "capabilities": {},
                   "clientInfo": {"name": "replica-test", "version": "1"}}})
    assert r.status_code == 200, r.text
    headers.update({"mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": LEGACY})
    httpx2.post(url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, timeout=30)
    return headers


class GetStream:
    """A session's standalone GET stream read on a thread; `ended` is when (epoch seconds) it was closed."""

    def __init__(self, url: str, headers: dict[str, str], limit_s: float = 60.0) -> None:
        self.opened = threading.Event()
        self.ended: float | None = None
        self.status = 0
        self._thread = threading.Thread(target=self._read, args=(url, headers, limit_s), daemon=True)
        self._thread.start()
        assert self.opened.wait(30), "the GET stream did not open"
        assert self.status == 200

    def _read(self, url: str, headers: dict[str, str], limit_s: float) -> None:
        hdrs = {k: v for k, v in headers.items() if k.lower() != "content-type"}
        hdrs["Accept"] = "text/event-stream"
        try:
            with httpx2.stream("GET", url, headers=hdrs, timeout=httpx2.Timeout(limit_s)) as r:
                self.status = r.status_code
                self.opened.set()
                for _ in r.iter_raw():
                    pass
        finally:
            self.opened.set()
            self.ended = time.time()

    def join(self, timeout: float) -> float:
        self._thread.join(timeout)
        assert self.ended is not None, "the GET stream is still open"
        return self.ended


def in_background(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run `fn` on a thread; the dict gets `value` (or `error`) and `at` (epoch seconds) when it returns."""
    out: dict[str, Any] = {}

    def go() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # reported by the test that reads it
            out["error"] = exc
        out["at"] = time.time()

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, out


def first_time(probe: Callable[[httpx2.Client], bool], limit_s: float = 15.0, every_s: float = 0.03) -> dict[str, Any]:
    """Start polling `probe` on a thread; the dict gets `at`: when (epoch seconds) it first returned True."""
    out: dict[str, Any] = {}

    def go() -> None:
        with httpx2.Client(timeout=30) as http:
            end = time.monotonic() + limit_s
            while time.monotonic() < end:
                try:
                    if probe(http):
                        out["at"] = time.time()
                        return
                except httpx2.HTTPError as exc:
                    out["error"] = exc
                time.sleep(every_s)

    out["thread"] = threading.Thread(target=go, daemon=True)
    out["thread"].start()
    return out


def wait_output(proc: Proc, marker: str, timeout: float = 15.0) -> None:
    """Until the process has printed `marker` (its output so far, then new lines), bounded."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any(marker in line for line in list(proc.output)):
            return
        time.sleep(0.05)
    raise AssertionError(f"never printed {marker!r}:\n{''.join(proc.output)[-3000:]}")
