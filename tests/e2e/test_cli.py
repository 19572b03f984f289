"""The operator CLI as a user runs it: real `aegress` processes against a throw-away data dir."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.procs import ROOT, aegress, aegress_json, cli_env


def test_tenant_actor_token_lifecycle(aegress_home: Path) -> None:
    assert aegress_json(aegress_home, "tenant", "list") == []
    aegress(aegress_home, "tenant", "create", "acme")
    assert [t["id"] for t in aegress_json(aegress_home, "tenant", "list")] == ["acme"]
    aegress(aegress_home, "actor", "add", "--tenant", "acme", "alice@example.com")
    assert [a["id"] for a in aegress_json(aegress_home, "actor", "list", "--tenant", "acme")] == ["alice@example.com"]

    issued = aegress_json(aegress_home, "token", "issue", "--tenant", "acme", "--actor", "alice@example.com")
    token = issued["token"]
    assert token.startswith("aeg_") and len(token) == 44
    # kept for client setup in the 0600 fallback file (no keyring here), never in the database
    creds = aegress_home / "secrets" / "credentials.json"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert token in creds.read_text()
    db = (aegress_home / "aegress.db").read_bytes()
    assert token.encode() not in db
    for wal in aegress_home.glob("aegress.db-*"):
        assert token.encode() not in wal.read_bytes()

    listed = aegress_json(aegress_home, "token", "list", "--tenant", "acme")
    assert listed[0]["id"] == issued["id"] and listed[0]["active"] is True
    assert token not in json.dumps(listed)
    aegress(aegress_home, "token", "revoke", issued["id"], "--yes")
    assert aegress_json(aegress_home, "token", "list")[0]["active"] is False

    shown = aegress_json(aegress_home, "tenant", "show", "acme")
    assert shown["actors"] == ["alice@example.com"] and shown["tokens_revoked"] == 1

    aegress(aegress_home, "actor", "remove", "--tenant", "acme", "alice@example.com", "--yes")
    aegress(aegress_home, "tenant", "delete", "acme", "--yes")
    assert aegress_json(aegress_home, "tenant", "list") == []


def test_plain_token_issue_prints_only_the_token_on_stdout(aegress_home: Path) -> None:
    aegress(aegress_home, "tenant", "create", "acme")
    aegress(aegress_home, "actor", "add", "--tenant", "acme", "bob")
    out = aegress(aegress_home, "token", "issue", "--tenant", "acme", "--actor", "bob")
    assert out.stdout.strip().startswith("aeg_") and len(out.stdout.strip().splitlines()) == 1
    assert "only time" in out.stderr
    assert "no usable keyring" in out.stderr
    again = aegress(aegress_home, "token", "issue", "--tenant", "acme", "--actor", "bob")
    assert "no usable keyring" not in again.stderr  # said once


def test_errors_say_what_and_what_to_do(aegress_home: Path) -> None:
    r = aegress(aegress_home, "actor", "add", "--tenant", "nope", "alice", check=False)
    assert r.returncode == 1
    assert r.stderr.startswith("Error: No tenant 'nope'.") and "Hint:" in r.stderr
    assert r.stdout == ""
    r = aegress(aegress_home, "tenant", "create", "bad name!", check=False)
    assert r.returncode == 1 and "Invalid tenant id" in r.stderr
    aegress(aegress_home, "tenant", "create", "acme")
    r = aegress(aegress_home, "tenant", "create", "acme", check=False)
    assert r.returncode == 1 and "already exists" in r.stderr
    r = aegress(aegress_home, "token", "revoke", "tok_missing", check=False)
    assert r.returncode == 1 and "No token" in r.stderr
    r = aegress(aegress_home, "tenant", "delete", "acme", check=False)  # no --yes and no terminal
    assert r.returncode == 2 and "--yes" in r.stderr
    assert [t["id"] for t in aegress_json(aegress_home, "tenant", "list")] == ["acme"]
    r = aegress(aegress_home, "tenant", "frobnicate", check=False)
    assert r.returncode == 2


def test_upstream_url_rules(aegress_home: Path) -> None:
    aegress(aegress_home, "tenant", "create", "acme")
    for url, words in [
        ("http://127.0.0.1:9/mcp", "loopback or private"),
        ("http://10.1.2.3/mcp", "loopback or private"),
        ("http://[::1]:8080/mcp", "loopback or private"),
        ("http://169.254.169.254/latest", "loopback or private"),
        ("file:///etc/passwd", "scheme"),
        ("ftp://example.com/x", "scheme"),
        ("https://user:pw@example.com/mcp", "credentials"),
    ]:
        r = aegress(aegress_home, "upstream", "add", "--tenant", "acme", "x", "--url", url, "--no-probe", check=False)
        assert r.returncode == 1, url
        assert words in r.stderr, (url, r.stderr)
    r = aegress(aegress_home, "upstream", "add", "--tenant", "acme", "x", "--url", "http://127.0.0.1:9/mcp",
                "--allow-private", "--no-probe", "--json")
    assert json.loads(r.stdout)["url"] == "http://127.0.0.1:9/mcp"
    r = aegress(aegress_home, "upstream", "add", "--tenant", "acme", "Bad_Name", "--command", "true", check=False)
    assert r.returncode == 1 and "Invalid upstream name" in r.stderr
    r = aegress(aegress_home, "upstream", "add", "--tenant", "acme", "y", check=False)
    assert r.returncode == 1 and "exactly one of --command or --url" in r.stderr


def test_stdio_upstream_add_test_and_collisions(aegress_home: Path) -> None:
    aegress(aegress_home, "tenant", "create", "acme")
    fixture = ["--command", sys.executable, "--command", "-m", "--command", "tests.servers.fixture_server",
               "--env", f"PYTHONPATH={ROOT}", "--cwd", str(ROOT)]
    added = aegress_json(aegress_home, "upstream", "add", "--tenant", "acme", "one", *fixture, "--no-prefix")
    assert "echo" in added["tools"] and added["prefix"] is False
    # a second unprefixed upstream with the same tool names collides and is refused
    r = aegress(aegress_home, "upstream", "add", "--tenant", "acme", "two", *fixture, "--no-prefix", check=False)
    assert r.returncode == 1 and "collide" in r.stderr and "echo" in r.stderr
    # prefixed, it is fine
    aegress(aegress_home, "upstream", "add", "--tenant", "acme", "two", *fixture)
    tested = aegress_json(aegress_home, "upstream", "test", "--tenant", "acme", "two")
    assert tested["server"] == "fixture" and any(t["name"] == "whoami" for t in tested["tools"])
    listed = aegress_json(aegress_home, "upstream", "list", "--tenant", "acme")
    assert [u["name"] for u in listed] == ["one", "two"]
    aegress(aegress_home, "upstream", "remove", "--tenant", "acme", "one", "--yes")
    r = aegress(aegress_home, "upstream", "test", "--tenant", "acme", "missing", check=False)
    assert r.returncode == 1 and "No upstream" in r.stderr


def test_upstream_that_cannot_start_is_reported(aegress_home: Path) -> None:
    aegress(aegress_home, "tenant", "create", "acme")
    r = aegress(aegress_home, "upstream", "add", "--tenant", "acme", "ghost", "--command", "/nonexistent/server",
                check=False)
    assert r.returncode == 1 and "Cannot start upstream 'ghost'" in r.stderr
    assert aegress_json(aegress_home, "upstream", "list", "--tenant", "acme") == []


def test_http_upstream_headers_are_never_listed_in_clear(aegress_home: Path) -> None:
    aegress(aegress_home, "tenant", "create", "acme")
    aegress(aegress_home, "upstream", "add", "--tenant", "acme", "api", "--url", "http://127.0.0.1:9/mcp",
            "--allow-private", "--no-probe", "--header", "Authorization=Bearer sekret-value",
            "--header", "X-Key=keyring:api-key")
    out = aegress(aegress_home, "upstream", "list", "--tenant", "acme", "--json").stdout
    assert "sekret-value" not in out
    assert json.loads(out)[0]["headers"] == {"Authorization": "<set>", "X-Key": "<from keyring>"}


SERVER_STACK = ("mcp", "mcp_types", "starlette", "uvicorn", "httpx2")
"""Top-level packages no command but `serve` and `bridge` may import: they cost seconds of start-up."""

# (arguments, extra modules it must not import). `pydantic`: Typer converts option values through it, which
# aegress_cli.main and aegress_cli._coerce avoid for plain types (str, int, float, Literal, Path, list[str]).
# `cryptography` & co.: the evidence stack, loaded by commands that seal or verify, not by read-only ones.
FAST_COMMANDS: list[tuple[list[str], tuple[str, ...]]] = [
    (["--help"], ("pydantic",)),
    (["tenant", "--help"], ("pydantic",)),
    (["audit", "query", "--help"], ("pydantic",)),
    (["client", "--help"], ("pydantic",)),
    (["serve", "--help"], ("pydantic", "gateway.server", "gateway.pipeline")),
    (["tenant", "list"], ("pydantic", "sqlite_utils", "keyring", "cryptography", "gateway.evidence",
                          "gateway.server", "gateway.pipeline")),
    (["actor", "list", "-t", "acme"], ("pydantic", "cryptography", "gateway.evidence")),
    (["token", "list"], ("pydantic", "cryptography", "gateway.evidence")),
    (["upstream", "list", "-t", "acme"], ("pydantic", "cryptography", "gateway.evidence")),
    (["policy", "show", "-t", "acme"], ("pydantic",)),
    (["review", "list"], ("pydantic",)),
    (["audit", "query", "-t", "acme", "--limit", "5", "--verdict", "allow"], ("pydantic",)),
    (["audit", "verify", "-t", "acme"], ("pydantic", "rich.progress")),  # no progress display off a terminal
    (["deploy", "list", "--json"], ("sqlite_utils", "keyring", "cryptography", "gateway.evidence", "gateway.store")),
]


_RUN_AND_LIST_MODULES = """
import runpy, sys
sys.argv = ["aegress", *sys.argv[1:]]
try:
    runpy.run_module("aegress_cli.main", run_name="__main__")
except SystemExit as exc:
    assert exc.code in (None, 0), exc.code
sys.stderr.write("\\nMODULES " + " ".join(sorted(sys.modules)) + "\\n")
"""


def imported_modules(home: Path, *args: str) -> set[str]:
    """Every module `aegress ARGS` imported (it must succeed): sys.modules at its end."""
    r = subprocess.run([sys.executable, "-c", _RUN_AND_LIST_MODULES, *args], capture_output=True, text=True,
                       env=cli_env(home), cwd=ROOT, timeout=60)
    assert r.returncode == 0 and "\nMODULES " in r.stderr, (args, r.stdout, r.stderr[-3000:])
    return set(r.stderr.rsplit("\nMODULES ", 1)[1].split())


def test_fast_commands_do_not_import_the_sdk_or_server(aegress_home: Path) -> None:
    aegress(aegress_home, "tenant", "create", "acme")  # the first run also creates and migrates the database
    aegress(aegress_home, "actor", "add", "-t", "acme", "alice")
    aegress(aegress_home, "upstream", "add", "-t", "acme", "api", "--url", "http://127.0.0.1:9/mcp", "--allow-private",
            "--no-probe")
    problems = {}
    for args, also_not in FAST_COMMANDS:
        modules = imported_modules(aegress_home, *args)
        bad = sorted(m for m in modules if m.split(".")[0] in SERVER_STACK or m in also_not
                     or m.split(".")[0] in also_not)
        if bad:
            problems[" ".join(args)] = bad
    assert problems == {}


def test_a_command_loads_only_its_own_group(aegress_home: Path) -> None:
    modules = imported_modules(aegress_home, "tenant", "list")
    assert sorted(m for m in modules if m.startswith("aegress_cli")) == [
        "aegress_cli", "aegress_cli._coerce", "aegress_cli._common", "aegress_cli._help", "aegress_cli.tenant"]


def test_mistyped_commands_get_suggestions(aegress_home: Path) -> None:
    r = aegress(aegress_home, "tenat", check=False)  # the root's groups are known before any is loaded
    assert r.returncode == 2 and "No such command 'tenat'. Did you mean 'tenant', 'token'?" in r.stderr
    r = aegress(aegress_home, "audit", "verfy", check=False)
    assert r.returncode == 2 and "Did you mean 'verify', 'query'?" in r.stderr


def test_data_dir_option_moves_all_state(aegress_home: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-home"
    aegress(aegress_home, "--data-dir", str(other), "tenant", "create", "elsewhere")
    assert (other / "aegress.db").exists()
    assert aegress_json(aegress_home, "tenant", "list") == []
    listed = json.loads(aegress(aegress_home, "--data-dir", str(other), "tenant", "list", "--json").stdout)
    assert [t["id"] for t in listed] == ["elsewhere"]
    r = aegress(aegress_home, "--data-dir", check=False)
    assert r.returncode == 2 and "Option '--data-dir' requires an argument." in r.stderr


def test_help_explains_every_group() -> None:
    r = subprocess.run([sys.executable, "-m", "aegress_cli.main", "--help"], capture_output=True, text=True,
                       cwd=ROOT, timeout=60, env=cli_env(Path(os.environ["AEGRESS_HOME"])))
    assert r.returncode == 0
    for group in ("serve", "tenant", "actor", "token", "upstream"):
        assert group in r.stdout


def test_serve_refuses_a_public_bind(aegress_home: Path) -> None:
    r = aegress(aegress_home, "serve", "--host", "0.0.0.0", "--port", "0", check=False)
    assert r.returncode == 1 and "--allow-public-bind" in r.stderr
