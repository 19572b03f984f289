"""The configs `aegress client setup` writes, accepted and used by the real clients (pinned in
tests/package.json): Claude Code, Codex and Gemini CLI connect to a real gateway through them.

Every client runs with a throw-away HOME, talks to 127.0.0.1 only, and is bounded by a timeout.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.clients_support import NODE_BIN, World, user_dirs, world_fixture
from tests.procs import aegress

pytestmark = pytest.mark.npm


@pytest.fixture(autouse=True)
def _clients_installed() -> None:
    """The test command installs the real clients: missing, these tests fail rather than skip."""
    assert NODE_BIN.is_dir(), "tests/node_modules is absent: run scripts/install-test-deps.sh"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    yield from world_fixture(tmp_path_factory)


def run_client(world: World, home: Path, argv: list[str], cwd: Path, timeout: float = 120,
               **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(NODE_BIN / argv[0]), *argv[1:]], cwd=cwd, env=world.env(home, **env),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


# ---- Claude Code ----------------------------------------------------------------------------------------


def claude_get(world: World, home: Path, project: Path, **env: str) -> str:
    proc = run_client(world, home, ["claude", "mcp", "get", "aegress"], project, **env)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # 0 whether or not it connected
    return proc.stdout + proc.stderr


def test_claude_code_user_scope_connects_through_the_headers_helper(world: World, tmp_path: Path) -> None:
    home, project = user_dirs(tmp_path)
    world.cli(home, "client", "setup", "claude-code", "-t", "acme", "-a", "alice")
    out = claude_get(world, home, project)
    assert "User config" in out and "✔ Connected" in out, out
    assert world.token("acme", "alice") not in (home / ".claude.json").read_text()


def test_claude_code_project_scope_connects_with_the_env_token(world: World, tmp_path: Path) -> None:
    home, project = user_dirs(tmp_path)
    (home / ".claude").mkdir()
    (home / ".claude" / "settings.json").write_text(json.dumps({"enableAllProjectMcpServers": True}))
    world.cli(home, "client", "setup", "claude-code", "-t", "acme", "-a", "alice", "--scope", "project",
              "--project-dir", str(project))
    assert (project / ".mcp.json").exists()
    out = claude_get(world, home, project, AEGRESS_MCP_GATEWAY_TOKEN=world.token("acme", "alice"))
    assert "Project config" in out and "✔ Connected" in out, out
    out = claude_get(world, home, project)  # the variable unset: sent literally, refused
    assert "Connected" not in out and "Failed to connect" in out and "401" in out, out


def test_claude_code_reports_a_revoked_token(world: World, tmp_path: Path) -> None:
    home, project = user_dirs(tmp_path)
    actor, _, token_id = world.new_actor()
    world.cli(home, "client", "setup", "claude-code", "-t", "acme", "-a", actor)
    assert "✔ Connected" in claude_get(world, home, project)
    aegress(world.home, "token", "revoke", token_id, "--yes")
    out = claude_get(world, home, project)
    assert "Connected" not in out and "Failed to connect" in out, out


# ---- Codex ------------------------------------------------------------------------------------------------


def test_codex_accepts_the_config_strictly(world: World, tmp_path: Path) -> None:
    home, project = user_dirs(tmp_path)
    (home / ".codex").mkdir(mode=0o700)
    (home / ".codex" / "config.toml").write_text('# my settings\nmodel = "o3"\n\n[mcp_servers.other]\ncommand = "x"\n')
    world.cli(home, "client", "setup", "codex", "-t", "acme", "-a", "alice")
    ok = run_client(world, home, ["codex", "app-server", "--strict-config", "--print-startup-config"], project)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout.strip().splitlines()[-1])["appServerVersion"]
    # the check is real: the same run refuses a key Codex does not know
    with (home / ".codex" / "config.toml").open("a") as fh:
        fh.write("not_a_codex_key = 1\n")
    bad = run_client(world, home, ["codex", "app-server", "--strict-config", "--print-startup-config"], project)
    assert bad.returncode != 0 and "not_a_codex_key" in bad.stdout + bad.stderr


class AppServer:
    """`codex app-server` over stdio: newline-delimited JSON-RPC."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env, cwd=cwd, start_new_session=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.readers = [threading.Thread(target=self._read, daemon=True),
                        threading.Thread(target=self._drain_stderr, daemon=True)]
        for reader in self.readers:
            reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for _ in self.proc.stderr:
            pass

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def request(self, msg_id: int, method: str, params: dict[str, Any], timeout: float = 90) -> dict[str, Any]:
        self.send({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                message = json.loads(self.lines.get(timeout=0.5))
            except queue.Empty:
                assert self.proc.poll() is None, f"codex app-server exited ({self.proc.returncode})"
                continue
            if message.get("id") == msg_id and "method" not in message:
                assert "error" not in message, message
                return dict(message["result"])
        raise AssertionError(f"no answer to {method} within {timeout}s")

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        for reader in self.readers:
            reader.join(timeout=5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe:
                pipe.close()


def test_codex_app_server_lists_the_actors_tools(world: World, tmp_path: Path) -> None:
    home, project = user_dirs(tmp_path)
    world.cli(home, "client", "setup", "codex", "-t", "acme", "-a", "alice")
    env = world.env(home, AEGRESS_MCP_GATEWAY_TOKEN=world.token("acme", "alice"))
    server = AppServer([str(NODE_BIN / "codex"), "app-server", "--strict-config"], env, project)
    try:
        server.request(1, "initialize", {"clientInfo": {"name": "aegress-tests", "version": "0"}})
        server.send({"jsonrpc": "2.0", "method": "initialized"})
        status = server.request(2, "mcpServerStatus/list", {"serverName": "aegress"})
    finally:
        server.stop()
    (entry,) = [s for s in status["data"] if s["name"] == "aegress"]
    assert entry.get("toolsError") is None, entry
    assert entry["serverInfo"]["name"] == "aegress"
    tools = set(entry["tools"])
    assert {"files__echo", "files__whoami"} <= tools, tools
    assert not any(t.startswith("vault__") for t in tools)  # tenant beta's upstream


# ---- Gemini CLI ------------------------------------------------------------------------------------------


def test_gemini_lists_the_server_as_connected(world: World, tmp_path: Path) -> None:
    home, project = user_dirs(tmp_path)
    world.cli(home, "client", "setup", "gemini", "-t", "acme", "-a", "alice")
    env = {"GEMINI_CLI_TRUST_WORKSPACE": "true"}
    proc = run_client(world, home, ["gemini", "mcp", "list"], project,
                      AEGRESS_MCP_GATEWAY_TOKEN=world.token("acme", "alice"), **env)
    out = proc.stdout + proc.stderr  # gemini writes the list to stderr
    assert "aegress" in out and "- Connected" in out, out
    proc = run_client(world, home, ["gemini", "mcp", "list"], project, AEGRESS_MCP_GATEWAY_TOKEN="aeg_wrong", **env)
    out = proc.stdout + proc.stderr
    assert "- Disconnected" in out and "- Connected" not in out, out
