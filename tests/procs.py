"""Real processes for end-to-end tests: the `aegress` CLI, the gateway, fixture upstreams.

Every process is started on a loopback port 0 and stopped (terminate, wait, kill) by its fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_SERVER = [sys.executable, "-m", "tests.servers.fixture_server"]


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "AEGRESS_HOME": str(home),
            "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
            "PYTHONPATH": str(ROOT),
            "COLUMNS": "200",
            "NO_COLOR": "1",
        }
    )
    env.update(extra)
    return env


def aegress(home: Path, *args: str, check: bool = True, input: str | None = None,
            timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "aegress_cli.main", *args],
        capture_output=True, text=True, env=cli_env(home, **env), cwd=ROOT, timeout=timeout, input=input,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"aegress {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def aegress_json(home: Path, *args: str) -> Any:
    return json.loads(aegress(home, *args, "--json").stdout)


class Proc:
    """A child process whose stdout lines are collected on a thread (so reads can time out)."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path = ROOT) -> None:
        self.argv = argv
        self.popen = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd,
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.output.append(line)
            self.lines.put(line)

    def wait_for(self, marker: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.popen.poll() is not None:
                    break
                continue
            if marker in line:
                return line
        raise AssertionError(f"{self.argv[:4]} never printed {marker!r}; output:\n{''.join(self.output)[-4000:]}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._reader.join(timeout=5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


@dataclass
class Gateway:
    home: Path
    proc: Proc
    url: str
    tokens: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return self.url.rsplit("/mcp", 1)[0]


@contextlib.contextmanager
def run_gateway(home: Path, *extra: str, env: dict[str, str] | None = None) -> Iterator[Gateway]:
    proc = Proc([sys.executable, "-m", "aegress_cli.main", "serve", "--port", "0", *extra],
                cli_env(home, **(env or {})))
    try:
        line = proc.wait_for("listening on", timeout=60)
        yield Gateway(home, proc, line.split("listening on", 1)[1].strip())
    finally:
        proc.stop()


@contextlib.contextmanager
def run_http_upstream(name: str) -> Iterator[tuple[str, Proc]]:
    env = dict(os.environ, FIXTURE_NAME=name, PYTHONPATH=str(ROOT))
    proc = Proc([*FIXTURE_SERVER, "--http"], env)
    try:
        line = proc.wait_for("LISTENING", timeout=60)
        yield line.split("LISTENING", 1)[1].strip(), proc
    finally:
        proc.stop()


def setup_tenant(home: Path, tenant: str, actor: str) -> str:
    """Create tenant and actor through the CLI and return a fresh token."""
    if tenant not in [t["id"] for t in aegress_json(home, "tenant", "list")]:
        aegress(home, "tenant", "create", tenant)
    aegress(home, "actor", "add", "--tenant", tenant, actor)
    return str(aegress_json(home, "token", "issue", "--tenant", tenant, "--actor", actor)["token"])


def add_stdio_fixture(home: Path, tenant: str, name: str, *flags: str, label: str | None = None) -> None:
    """Register the fixture server as a stdio upstream; `whoami` answers `label` (default: the name)."""
    aegress(home, "upstream", "add", "--tenant", tenant, name, *[x for a in FIXTURE_SERVER for x in ("--command", a)],
            "--env", f"FIXTURE_NAME={label or name}", "--env", f"PYTHONPATH={ROOT}", "--cwd", str(ROOT), *flags)


@contextlib.asynccontextmanager
async def mcp_client(url: str, token: str | None, *, mode: str = "legacy", headers: dict[str, str] | None = None,
                     **client_kwargs: Any) -> AsyncIterator[Any]:
    """The official SDK client over Streamable HTTP, with our bearer token."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    hdrs = dict(headers or {})
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    async with (
        httpx2.AsyncClient(headers=hdrs, timeout=httpx2.Timeout(30.0, read=60.0)) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode, **client_kwargs) as client,
    ):
        yield client


def run(coro: Any, timeout: float = 90.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


ALLOW_ALL_POLICY = """\
# Test policy: every tool, resource, prompt and client request allowed (the gate itself is tested elsewhere).
version = 1
default = "allow"

[builtin]
destructive = "off"

[[rules]]
id = "tests-allow-all"
verdict = "allow"

[[rules]]
id = "tests-allow-client-requests"
kind = "client_request"
verdict = "allow"
"""


def allow_all(home: Path, tenant: str) -> None:
    """Apply a policy that allows everything, so tests of forwarding are not held for review."""
    path = home.parent / f"allow-all-{tenant}.toml"
    path.write_text(ALLOW_ALL_POLICY)
    aegress(home, "policy", "apply", str(path), "--tenant", tenant, "--yes")


def answer(response: Any) -> Any:
    """The JSON-RPC message in an HTTP answer, whether sent as JSON or as the last SSE event."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        datas = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        return json.loads([d for d in datas if d][-1])
    return response.json()


@contextlib.contextmanager
def gateway_with_fixture(home: Path, tenant: str = "acme", actor: str = "alice",
                         upstream: str = "tools") -> Iterator[Gateway]:
    """A running gateway: one tenant with an allow-all policy, one actor with a token, the stdio fixture."""
    token = setup_tenant(home, tenant, actor)
    allow_all(home, tenant)
    add_stdio_fixture(home, tenant, upstream)
    with run_gateway(home) as gw:
        gw.tokens[(tenant, actor)] = token
        yield gw
