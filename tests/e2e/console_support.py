"""Shared by the `aegress status` and console tests: a tenant whose policy allows, blocks and holds, real calls
through a real gateway (official SDK client, stdio fixture upstream), a headless Chromium, and a PNG reader for
screenshots (standard library only)."""

from __future__ import annotations

import json
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.procs import Gateway, add_stdio_fixture, aegress, mcp_client, run, setup_tenant

POLICY = """
version = 1
default = "block"

[review]
mode = "approve"
hold_timeout_seconds = 1
approval_lifetime_seconds = 60

[builtin]
destructive = "off"

[[rules]]
id = "basics"
upstream = "tools"
name = ["echo", "whoami", "slow"]
verdict = "allow"

[[rules]]
id = "slow-needs-review"
upstream = "tools"
name = "slow"
verdict = "review"
reason = "slow calls need an operator"

[[rules]]
id = "no-bad-echo"
upstream = "tools"
name = "echo"
verdict = "block"
reason = "bad- texts are refused"
[rules.args]
text = { prefix = "bad-" }

[[rules]]
id = "no-fail"
upstream = "tools"
name = "fail"
verdict = "block"
"""

GATEWAY_ENV = {"AEGRESS_CHECKPOINT_INTERVAL": "0.5"}
"""Checkpoints signed within a second, so shown records verify without waiting long."""

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-default-apps", "--disable-extensions", "--disable-sync",
                 "--no-first-run", "--disable-dev-shm-usage", "--metrics-recording-only"]


def seed(home: Path) -> dict[tuple[str, str], str]:
    """Tenants acme (alice, with the policy and the fixture upstream `tools`) and beta (bob, nothing else)."""
    tokens = {("acme", "alice"): setup_tenant(home, "acme", "alice"),
              ("beta", "bob"): setup_tenant(home, "beta", "bob")}
    add_stdio_fixture(home, "acme", "tools")
    path = home.parent / "console-policy.toml"
    path.write_text(POLICY)
    aegress(home, "policy", "apply", str(path), "--tenant", "acme", "--yes", "--as", "setup")
    return tokens


@dataclass
class Calls:
    receipts: list[dict[str, Any]] = field(default_factory=list)
    blocked: str = ""
    hidden: str = ""
    held: str = ""


def make_calls(gw: Gateway, token: str) -> Calls:
    """Three allowed echoes (their receipts kept), one blocked echo, one call to a hidden tool, one call held for
    review (still pending when its 1 s hold ends)."""
    from mcp.shared.exceptions import MCPError

    out = Calls()

    async def go() -> None:
        async with mcp_client(gw.url, token) as client:
            for i in range(3):
                result = await client.call_tool("tools__echo", {"text": f"hello {i}"})
                out.receipts.append(result.meta["aegress"])
            out.blocked = (await client.call_tool("tools__echo", {"text": "bad-1"})).content[0].text
            try:
                await client.call_tool("tools__fail", {"message": "x"})
            except MCPError as exc:
                out.hidden = str(exc)
            out.held = (await client.call_tool("tools__slow", {"seconds": 0})).content[0].text

    run(go())
    return out


def status_json(home: Path, *args: str) -> dict[str, Any]:
    return json.loads(aegress(home, "status", "--json", *args).stdout)


def wait_for_checkpoints(home: Path, timeout: float = 30.0) -> dict[str, Any]:
    """`aegress status --json` once every record is under a signed checkpoint (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        status = status_json(home)
        if status["evidence"]["awaiting_checkpoint"] == 0 and status["evidence"]["last_checkpoint"]:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"records still await a checkpoint: {status['evidence']}")
        time.sleep(0.3)


# -- screenshots -----------------------------------------------------------------------------------------------
def read_png(data: bytes) -> tuple[int, int, list[list[tuple[int, ...]]]]:
    """(width, height, rows of pixels) of an 8-bit RGB or RGBA, non-interlaced PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    channels = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), width * channels
    rows: list[list[tuple[int, ...]]] = []
    previous = bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            left = line[x - channels] if x >= channels else 0
            up = previous[x]
            corner = previous[x - channels] if x >= channels else 0
            if kind == 1:
                line[x] = (line[x] + left) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + up) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[x] = (line[x] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        rows.append([tuple(line[i:i + 3]) for i in range(0, stride, channels)])
        previous = line
    return width, height, rows


def overlap(a: dict[str, float], b: dict[str, float]) -> float:
    """Area two bounding boxes share."""
    w = min(a["x"] + a["width"], b["x"] + b["width"]) - max(a["x"], b["x"])
    h = min(a["y"] + a["height"], b["y"] + b["height"]) - max(a["y"], b["y"])
    return max(0.0, w) * max(0.0, h)
