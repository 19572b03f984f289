"""`aegress client ...` and `aegress bridge` against a real gateway, with a throw-away HOME per test.

Real third-party clients (Claude Code, Codex, Gemini CLI) are in test_clients_real.py.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.clients_support import World, doctor_json, failed, user_dirs, world_fixture
from tests.procs import ROOT, aegress, cli_env, run

FILE_CLIENTS = [
    ("claude-code", "user"), ("claude-code", "project"), ("codex", "user"), ("cursor", "user"),
    ("cursor", "project"), ("vscode", "user"), ("vscode", "project"), ("gemini", "user"), ("gemini", "project"),
    ("windsurf", "user"), ("claude-desktop", "user"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    yield from world_fixture(tmp_path_factory)


@pytest.mark.parametrize(("client", "scope"), FILE_CLIENTS)
def test_setup_list_remove_round_trip(world: World, tmp_path: Path, client: str, scope: str) -> None:
    home, project = user_dirs(tmp_path)
    args = ("--scope", scope, "--project-dir", str(project))
    made = json.loads(world.cli(home, "client", "setup", client, "-t", "acme", "-a", "alice", *args, "--json").stdout)
    path = Path(made["path"])
    assert made["changed"] and made["created"]
    assert path.is_relative_to(project if scope == "project" else home)
    text = path.read_text()
    assert world.token("acme", "alice") not in text
    assert stat.S_IMODE(path.stat().st_mode) == (0o600 if scope == "user" else 0o644)

    again = json.loads(world.cli(home, "client", "setup", client, "-t", "acme", "-a", "alice", *args, "--json").stdout)
    assert again["changed"] is False
    assert path.read_text() == text

    listed = json.loads(world.cli(home, "client", "list", "--project-dir", str(project), "--json").stdout)
    assert [(e["client"], e["scope"], e["tenant"], e["actor"], e["url"].split("?")[0]) for e in listed] == [
        (client, scope, "acme", "alice", world.url)
    ]

    removed = world.cli(home, "client", "remove", client, *args, "--yes")
    assert "Removed 'aegress'" in removed.stdout
    assert json.loads(world.cli(home, "client", "list", "--project-dir", str(project), "--json").stdout) == []


def test_setup_merges_into_an_existing_file_and_keeps_a_backup(world: World, tmp_path: Path) -> None:
    home, _ = user_dirs(tmp_path)
    secret = "sk-live-0123456789abcdefghijklmnop"
    original = ('{\n  "theme": "dark",\n  "mcpServers": {\n'
                f'    "other": {{"command": "x", "args": ["--api-key", "{secret}"]}}\n  }}\n}}\n')
    path = home / ".claude.json"
    path.write_text(original)
    path.chmod(0o640)
    dry = world.cli(home, "client", "setup", "claude-code", "-t", "acme", "-a", "alice", "--dry-run")
    assert '+    "aegress": {' in dry.stdout
    assert secret not in dry.stdout  # other servers' secrets are masked in the preview
    assert path.read_text() == original
    world.cli(home, "client", "setup", "claude-code", "-t", "acme", "-a", "alice")
    data = json.loads(path.read_text())
    assert data["theme"] == "dark"
    assert data["mcpServers"]["other"] == {"command": "x", "args": ["--api-key", secret]}
    assert data["mcpServers"]["aegress"]["type"] == "http"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert (home / ".claude.json.aegress-bak").read_text() == original


def test_setup_refuses_a_file_it_cannot_parse(world: World, tmp_path: Path) -> None:
    home, _ = user_dirs(tmp_path)
    path = home / ".claude.json"
    path.write_text('{"mcpServers": {"other": {"url": "x"},}')
    proc = world.cli(home, "client", "setup", "claude-code", "-t", "acme", "-a", "alice", check=False)
    assert proc.returncode == 1
    assert "cannot be edited safely" in proc.stderr and "Hint:" in proc.stderr
    assert path.read_text() == '{"mcpServers": {"other": {"url": "x"},}'
    listed = json.loads(world.cli(home, "client", "list", "--json").stdout)
    assert listed[0]["client"] == "claude-code" and "cannot be edited safely" in listed[0]["error"]


def test_repointing_an_entry_asks_first(world: World, tmp_path: Path) -> None:
    home, _ = user_dirs(tmp_path)
    world.cli(home, "client", "setup", "gemini", "-t", "acme", "-a", "alice")
    proc = world.cli(home, "client", "setup", "gemini", "-t", "beta", "-a", "bob", check=False)
    assert proc.returncode == 2 and "--yes" in proc.stderr
    world.cli(home, "client", "setup", "gemini", "-t", "beta", "-a", "bob", "--yes")
    listed = json.loads(world.cli(home, "client", "list", "--json").stdout)
    assert [(e["tenant"], e["actor"]) for e in listed] == [("beta", "bob")]


def test_setup_needs_a_stored_token(world: World, tmp_path: Path) -> None:
    home, _ = user_dirs(tmp_path)
    aegress(world.home, "actor", "add", "--tenant", "acme", "nokey")
    proc = world.cli(home, "client", "setup", "codex", "-t", "acme", "-a", "nokey", check=False)
    assert proc.returncode == 1
    assert "no token is stored" in proc.stderr
    assert "aegress token issue --tenant acme --actor nokey" in proc.stderr
    assert not (home / ".codex").exists()


def test_unknown_client_and_scope_are_usage_errors(world: World, tmp_path: Path) -> None:
    home, _ = user_dirs(tmp_path)
    proc = world.cli(home, "client", "setup", "emacs", "-t", "acme", "-a", "alice", check=False)
    assert proc.returncode == 2 and "'emacs' is not one of" in proc.stderr  # the parser checks the choice
    proc = world.cli(home, "client", "setup", "codex", "-t", "acme", "-a", "alice", "--scope", "project", check=False)
    assert proc.returncode == 2 and "no project-scope config" in proc.stderr


def test_env_exports_and_headers(world: World, tmp_path: Path) -> None:
    home, _ = user_dirs(tmp_path)
    exports = world.cli(home, "client", "env", "-t", "acme", "-a", "alice").stdout
    shown = subprocess.run(
        ["bash", "-c", f'eval {shlex.quote(exports)}; printf "%s|%s|%s" "$AEGRESS_MCP_GATEWAY_TOKEN" '
         '"$AEGRESS_TENANT_ID" "$AEGRESS_ACTOR_ID"'],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    assert shown == f"{world.token('acme', 'alice')}|acme|alice"
    headers = json.loads(world.cli(home, "client", "headers", "-t", "acme", "-a", "alice").stdout)
    assert headers == {"Authorization": f"Bearer {world.token('acme', 'alice')}", "X-Aegress-Tenant-Id": "acme",
                       "X-Aegress-Actor-Id": "alice"}
    missing = world.cli(home, "client", "env", "-t", "acme", "-a", "ghost", check=False)
    assert missing.returncode == 1 and "aegress token issue" in missing.stderr and missing.stdout == ""


def test_generic_prints_a_snippet_and_a_curl_check_that_works(world: World, tmp_path: Path) -> None:
    home, _ = user_dirs(tmp_path)
    out = world.cli(home, "client", "setup", "generic", "-t", "acme", "-a", "alice").stdout
    assert world.token("acme", "alice") not in out
    assert '"url": "' + world.url in out
    curl = out[out.index("curl "):]
    proc = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "AEGRESS_MCP_GATEWAY_TOKEN": world.token("acme", "alice")})
    assert json.loads(proc.stdout)["result"]["serverInfo"]["name"] == "aegress", proc.stdout + proc.stderr
    assert list(home.iterdir()) == []


# ---- doctor ------------------------------------------------------------------------------------------


def test_doctor_on_working_setups(world: World, tmp_path: Path) -> None:
    home, project = user_dirs(tmp_path)
    token_env = {"AEGRESS_MCP_GATEWAY_TOKEN": world.token("acme", "alice")}
    for client, scope in (("claude-code", "user"), ("claude-code", "project"), ("codex", "user"),
                          ("gemini", "user"), ("cursor", "project"), ("vscode", "user"), ("windsurf", "user"),
                          ("claude-desktop", "user")):
        args = ("--scope", scope, "--project-dir", str(project))
        world.cli(home, "client", "setup", client, "-t", "acme", "-a", "alice", *args)
        code, report = doctor_json(world, home, client, *args, **token_env)
        assert code == 0, report
        assert report["ok"] and {"files__echo", "files__whoami"} <= set(report["tools"]), report
        assert not any(name.startswith("vault__") for name in report["tools"])  # beta's upstream
    human = world.cli(home, "client", "doctor", "claude-code")
    assert "files__echo" in human.stdout and "visible to actor 'alice' in tenant 'acme'" in human.stdout


def test_doctor_gateway_down(world: World, tmp_path: Path) -> None:
    home, _ = user_dirs(tmp_path)
    world.cli(home, "client", "setup", "claude-code", "-t", "acme", "-a", "alice", "--url", "http://127.0.0.1:9/mcp")
    code, report = doctor_json(world, home, "claude-code")
    assert code == 3
    assert failed(report)["code"] == "gateway-down"
    human = world.cli(home, "client", "doctor", "claude-code", check=False)
    assert human.returncode == 3 and "gateway down" in human.stdout and "aegress serve" in human.stdout


def test_doctor_token_missing_from_the_environment(world: World, tmp_path: Path) -> None:
    home, _ = user_dirs(tmp_path)
    world.cli(home, "client", "setup", "codex", "-t", "acme", "-a", "alice")
    code, report = doctor_json(world, home, "codex")
    assert code == 3
    problem = failed(report)
    assert problem["code"] == "token-missing" and "AEGRESS_MCP_GATEWAY_TOKEN" in problem["detail"]
    assert 'eval "$(aegress client env --tenant acme --actor alice)"' in problem["hint"]


def test_doctor_revoked_token(world: World, tmp_path: Path) -> None:
    home, _ = user_dirs(tmp_path)
    actor, token, token_id = world.new_actor()
    world.cli(home, "client", "setup", "claude-code", "-t", "acme", "-a", actor)
    world.cli(home, "client", "setup", "gemini", "-t", "acme", "-a", actor)
    assert doctor_json(world, home, "claude-code")[0] == 0
    aegress(world.home, "token", "revoke", token_id, "--yes")
    for client, env in (("claude-code", {}), ("gemini", {"AEGRESS_MCP_GATEWAY_TOKEN": token})):
        code, report = doctor_json(world, home, client, **env)
        assert code == 3
        problem = failed(report)
        assert problem["code"] == "token-revoked" and "revoked" in problem["detail"]
        assert f"aegress token issue --tenant acme --actor {actor}" in problem["hint"]


def test_doctor_tenant_mismatch(world: World, tmp_path: Path) -> None:
    home, _ = user_dirs(tmp_path)
    world.cli(home, "client", "setup", "gemini", "-t", "acme", "-a", "alice")
    world.cli(home, "client", "setup", "codex", "-t", "acme", "-a", "alice")
    for client in ("gemini", "codex"):  # headers / query parameters
        code, report = doctor_json(world, home, client, AEGRESS_MCP_GATEWAY_TOKEN=world.token("beta", "bob"))
        assert code == 3
        problem = failed(report)
        assert problem["code"] == "tenant-mismatch" and "tenant mismatch" in problem["detail"]
        assert "bob" not in json.dumps(report) and "beta" not in json.dumps(report)  # nothing about the other tenant


def test_doctor_without_an_entry(world: World, tmp_path: Path) -> None:
    home, _ = user_dirs(tmp_path)
    code, report = doctor_json(world, home, "cursor")
    assert code == 3 and failed(report)["code"] == "no-config"
    (home / ".cursor").mkdir()
    (home / ".cursor" / "mcp.json").write_text('{"mcpServers": {}}')
    code, report = doctor_json(world, home, "cursor")
    assert code == 3 and failed(report)["code"] == "no-entry"


# ---- the bridge (Claude Desktop's path) ---------------------------------------------------------------


def bridge_params(world: World, actor: str = "alice", tenant: str = "acme", **env: str):  # type: ignore[no-untyped-def]
    from mcp import StdioServerParameters

    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "aegress_cli.main", "--data-dir", str(world.home), "bridge", "--url", world.url,
              "--tenant", tenant, "--actor", actor],
        env={"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring", "PYTHONPATH": str(ROOT), **env},
        cwd=str(ROOT),
    )


def test_bridge_serves_the_actors_tools_over_stdio(world: World, tmp_path: Path) -> None:
    from mcp import Client
    from mcp.client.stdio import stdio_client
    from mcp_types import CreateMessageResult, TextContent

    async def sampling(ctx, params):  # type: ignore[no-untyped-def]
        return CreateMessageResult(role="assistant", model="m",
                                   content=TextContent(type="text", text=f"echo {params.messages[0].content.text}"))

    async def go() -> None:
        async with Client(stdio_client(bridge_params(world)), mode="legacy", sampling_callback=sampling) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert {"files__echo", "files__whoami", "files__ask_model"} <= names
            assert not any(n.startswith("vault__") for n in names)
            assert (await c.call_tool("files__echo", {"text": 'héllo "x"'})).content[0].text == 'héllo "x"'
            progress: list[float] = []

            async def on_progress(p, total, message):  # type: ignore[no-untyped-def]
                progress.append(p)

            r = await c.call_tool("files__nonce_echo", {"nonce": "n", "steps": 2}, progress_callback=on_progress)
            assert r.content[0].text == "files:n" and progress == [1.0, 2.0]
            # a server -> client request (sampling) relayed on the call's stream and answered back
            r = await c.call_tool("files__ask_model", {"prompt": "ping"})
            assert r.content[0].text == "model said: echo ping"

    run(go())


def test_bridge_reports_a_revoked_token_as_a_jsonrpc_error(world: World) -> None:
    actor, _, token_id = world.new_actor()
    aegress(world.home, "token", "revoke", token_id, "--yes")
    params = bridge_params(world, actor)
    proc = subprocess.run(
        [params.command, *params.args], cwd=params.cwd, env=cli_env(world.home), capture_output=True, text=True,
        timeout=60,
        input=json.dumps({"jsonrpc": "2.0", "id": 7, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}) + "\n",
    )
    answer = json.loads(proc.stdout)
    assert answer["id"] == 7 and answer["error"]["code"] == -32001
    assert "invalid or revoked" in answer["error"]["message"]
    assert "revoked" in proc.stderr  # logged on stderr; stdout held only the protocol message


def test_bridge_without_a_token_fails_before_starting(world: World) -> None:
    proc = aegress(world.home, "bridge", "--url", world.url, "--tenant", "acme", "--actor", "ghost", check=False,
                   input="")
    assert proc.returncode == 1 and proc.stdout == ""
    assert "no token" in proc.stderr and "aegress token issue" in proc.stderr
