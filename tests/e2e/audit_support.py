"""Helpers for the sealed-evidence end-to-end tests: a recording upstream, a raw HTTP client, policies."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests.procs import ROOT, aegress

RECORDING_SERVER = '''
import os
from mcp.server import MCPServer
from mcp_types import ToolAnnotations

server = MCPServer("rec")
LOG = os.environ["REC_LOG"]


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def record(nonce: str) -> str:
    """Append the nonce to the call log (fsynced), then answer."""
    with open(LOG, "a") as handle:
        handle.write(nonce + "\\n")
        handle.flush()
        os.fsync(handle.fileno())
    return "ok " + nonce


@server.tool()
def echo(text: str) -> str:
    """Return the text."""
    return text


@server.tool()
def fail(message: str) -> str:
    """Always raise."""
    raise ValueError(message)


@server.resource("rec://info", mime_type="text/plain")
def info() -> str:
    """Static text."""
    return "info from rec"


server.run("stdio")
'''

ALLOW_ALL = """
version = 1
default = "allow"

[builtin]
destructive = "off"
trusted_read_only = "allow"

[[rules]]
id = "no-forbidden"
name = "echo"
verdict = "block"
reason = "not this text"
[rules.args]
text = { equals = "forbidden" }

[[rules]]
id = "client-requests"
kind = "client_request"
verdict = "allow"
"""


def add_recording_upstream(home: Path, tenant: str, workdir: Path, name: str = "rec") -> Path:
    """Register the recording server as a stdio upstream; returns the file it logs received calls to."""
    script = workdir / "recording_server.py"
    script.write_text(RECORDING_SERVER)
    calls = workdir / f"{name}-calls.log"
    calls.touch()
    aegress(home, "upstream", "add", "--tenant", tenant, name, "--command", sys.executable, "--command", str(script),
            "--env", f"REC_LOG={calls}", "--env", f"PYTHONPATH={ROOT}", "--cwd", str(workdir))
    return calls


def allow_all(home: Path, tenant: str, workdir: Path) -> None:
    policy = workdir / "allow.toml"
    policy.write_text(ALLOW_ALL)
    aegress(home, "policy", "apply", str(policy), "--tenant", tenant, "--yes")


class RawClient:
    """initialize + requests over plain HTTP, so a test sees status codes and headers as sent."""

    def __init__(self, url: str, token: str, headers: dict[str, str] | None = None) -> None:
        import httpx2

        self.url = url
        self.http = httpx2.Client(timeout=30, headers={
            "Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json", **(headers or {})})
        self.ids = 0

    def start(self) -> RawClient:
        r = self.post("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                     "clientInfo": {"name": "audit-test", "version": "1.2.3"}})
        assert r.status_code == 200, r.text
        self.http.headers["mcp-session-id"] = r.headers["mcp-session-id"]
        self.http.headers["mcp-protocol-version"] = "2025-11-25"
        self.http.post(self.url, content=json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        return self

    def post(self, method: str, params: dict[str, Any]) -> Any:
        self.ids += 1
        return self.http.post(self.url, content=json.dumps(
            {"jsonrpc": "2.0", "id": self.ids, "method": method, "params": params}))

    def call(self, tool: str, arguments: dict[str, Any]) -> Any:
        return self.post("tools/call", {"name": tool, "arguments": arguments})

    @staticmethod
    def body(response: Any) -> dict[str, Any]:
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            for line in response.text.splitlines():
                if line.startswith("data:") and line[5:].strip():  # priming events carry no data
                    msg = json.loads(line[5:])
                    if "id" in msg and ("result" in msg or "error" in msg):
                        return dict(msg)
            raise AssertionError("no response in the stream")
        return dict(response.json())

    def close(self) -> None:
        self.http.close()


def evidence_rows(home: Path, *args: str) -> list[dict[str, Any]]:
    return list(json.loads(aegress(home, "audit", "query", "--limit", "100000", *args, "--json").stdout))
