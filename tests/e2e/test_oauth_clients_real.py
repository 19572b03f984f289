"""Real MCP clients (pinned in tests/package.json) against an OAuth-mode gateway, configured by
`aegress client setup --auth oauth` (no token anywhere):

- Claude Code: `claude mcp list` / `get` report that sign-in is needed (the 401 challenge is well formed;
  a bearer-mode 401 shows as a failed connection instead);
- Codex: `codex mcp login` runs discovery, registration and the authorization request; this test plays
  the person at the sign-in and consent pages and hands the redirect to Codex's own callback listener;
  Codex exchanges the code and then lists the actor's tools through the gateway with its token;
- Codex with client ID metadata documents on (the default): it offers its document at chatgpt.com,
  which this machine cannot reach, so the flow stops at the gateway's error page (no browser needed to
  get that far).
"""

from __future__ import annotations

import queue
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from tests.e2e.clients_support import NODE_BIN, user_dirs
from tests.e2e.oauth_support import Browser
from tests.e2e.test_clients_real import AppServer
from tests.procs import Gateway, add_stdio_fixture, aegress, aegress_json, allow_all, cli_env, run_gateway

pytestmark = pytest.mark.npm
PASSWORD = "alice-password-1"


@pytest.fixture(autouse=True)
def _clients_installed() -> None:
    assert NODE_BIN.is_dir(), "tests/node_modules is absent: run scripts/install-test-deps.sh"


@dataclass
class World:
    gw: Gateway  # documents off: clients register
    cimd: Gateway  # documents on (the default)

    def env(self, user_home: Path, **extra: str) -> dict[str, str]:
        import os
        import sys

        env = cli_env(self.gw.home, HOME=str(user_home))
        env["PATH"] = os.pathsep.join([str(NODE_BIN), str(Path(sys.executable).parent), env.get("PATH", "")])
        for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy",
                    "CLAUDE_CONFIG_DIR", "CODEX_HOME", "XDG_CONFIG_HOME", "AEGRESS_MCP_GATEWAY_TOKEN"):
            env.pop(key, None)
        env.update({"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", "CI": "1",
                    "BROWSER": "true"})
        env.update(extra)
        return env

    def setup(self, gw: Gateway, user_home: Path, *args: str) -> None:
        aegress(gw.home, "client", "setup", *args, "-t", "acme", "--auth", "oauth", "--url", gw.url,
                HOME=str(user_home))


def _home(root: Path, name: str) -> Path:
    home = root / name / "home"
    aegress(home, "tenant", "create", "acme")
    allow_all(home, "acme")
    add_stdio_fixture(home, "acme", "files")
    aegress(home, "actor", "add", "-t", "acme", "alice", "--password", input=PASSWORD + "\n")
    return home


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("oauth-real")
    env = {"MCP_AUTH_MODE": "oauth"}
    with (run_gateway(_home(root, "a"), env={**env, "AEGRESS_OAUTH_METADATA_DOCUMENTS": "off"}) as gw,
          run_gateway(_home(root, "b"), env=env) as cimd):
        yield World(gw, cimd)


def run_client(world: World, home: Path, argv: list[str], cwd: Path, timeout: float = 120,
               **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(NODE_BIN / argv[0]), *argv[1:]], cwd=cwd, env=world.env(home, **env),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


# ---- Claude Code ----------------------------------------------------------------------------------------
def test_claude_code_reports_that_sign_in_is_needed(world: World, tmp_path: Path) -> None:
    home, project = user_dirs(tmp_path)
    world.setup(world.gw, home, "claude-code")
    config = (home / ".claude.json").read_text()
    assert "Authorization" not in config and "headersHelper" not in config
    listed = run_client(world, home, ["claude", "mcp", "list"], project)
    out = listed.stdout + listed.stderr
    assert listed.returncode == 0 and "aegress" in out and "Needs authentication" in out, out
    assert "Failed to connect" not in out, out
    got = run_client(world, home, ["claude", "mcp", "get", "aegress"], project)
    assert "Needs authentication" in got.stdout + got.stderr and "X-Aegress-Tenant-Id: acme" in got.stdout


# ---- Codex ------------------------------------------------------------------------------------------------
class Login:
    """`codex mcp login NAME` running; its stdout lines on a queue."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     text=True, env=env, cwd=cwd, start_new_session=True)
        self.output: list[str] = []
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)

    def authorize_url(self, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.proc.poll() is None, "".join(self.output)
                continue
            found = re.search(r"(http://\S+/oauth/authorize\?\S+)", line)
            if found:
                return found.group(1)
        raise AssertionError("codex printed no authorization URL:\n" + "".join(self.output))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.reader.join(timeout=5)
        if self.proc.stdout:
            self.proc.stdout.close()


def test_codex_mcp_login_registers_signs_in_and_lists_tools(world: World, tmp_path: Path) -> None:
    home, project = user_dirs(tmp_path)
    world.setup(world.gw, home, "codex")
    assert "bearer_token_env_var" not in (home / ".codex" / "config.toml").read_text()
    login = Login([str(NODE_BIN / "codex"), "mcp", "login", "aegress"], world.env(home), project)
    try:
        url = login.authorize_url()
        assert "code_challenge_method=S256" in url and "resource=" in url and "client_id=mcp_" in url
        answer = Browser(world.gw.base).sign_in_and_consent(url, "acme", "alice", PASSWORD)
        callback = answer.headers["location"]
        assert callback.startswith("http://127.0.0.1:") and "code=" in callback
        httpx2.get(callback, timeout=30)  # the browser lands on Codex's own listener
        assert login.proc.wait(60) == 0, "".join(login.output)
    finally:
        login.stop()
    listed = run_client(world, home, ["codex", "mcp", "list"], project)
    row = next(line for line in listed.stdout.splitlines() if line.startswith("aegress"))
    assert "OAuth" in row, listed.stdout
    grants = aegress_json(world.gw.home, "oauth", "grants", "list")
    assert any(g["actor"] == "alice" and g["tenant"] == "acme" for g in grants)
    server = AppServer([str(NODE_BIN / "codex"), "app-server", "--strict-config"], world.env(home), project)
    try:
        server.request(1, "initialize", {"clientInfo": {"name": "aegress-tests", "version": "0"}})
        server.send({"jsonrpc": "2.0", "method": "initialized"})
        status = server.request(2, "mcpServerStatus/list", {"serverName": "aegress"})
    finally:
        server.stop()
    (entry,) = [s for s in status["data"] if s["name"] == "aegress"]
    assert entry.get("toolsError") is None, entry
    assert {"files__echo", "files__whoami"} <= set(entry["tools"]), entry


def test_codex_offers_its_metadata_document_which_this_machine_cannot_fetch(world: World, tmp_path: Path) -> None:
    home, project = user_dirs(tmp_path)
    world.setup(world.cimd, home, "codex")
    login = Login([str(NODE_BIN / "codex"), "mcp", "login", "aegress"], world.env(home), project)
    try:
        url = login.authorize_url()
    finally:
        login.stop()
    assert "client_id=https%3A%2F%2Fchatgpt.com%2F" in url and "code_challenge_method=S256" in url
    page = Browser(world.cimd.base).get(url)  # the document's host does not resolve here
    assert page.status_code == 400 and "location" not in page.headers
    assert aegress_json(world.cimd.home, "oauth", "clients", "list") == []
