"""Gateway overhead, measured against a direct call in the same run (issue 2's benchmark).

Starts a fixture upstream (the SDK's MCPServer over Streamable HTTP) and a real `aegress serve`
in front of it, then drives `tools/call echo` with one lean JSON-RPC client (httpx2, the stack the
SDK brings), interleaving direct and gateway rounds so machine noise hits both alike:
  - latency at concurrency 1 (p50, p99), interleaved call by call
  - throughput at 16 and 64 in flight (calls/s), alternating rounds, median of rounds
  - gateway RSS when idle and after the load
Only loopback addresses are used; every loop is bounded; every process is stopped.

    .venv/bin/python bench/gateway_bench.py [--calls 2000] [--rounds 3] [--json bench/results/gateway.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.procs import (  # noqa: E402
    add_stdio_fixture,
    aegress,
    allow_all,
    run_gateway,
    run_http_upstream,
    setup_tenant,
)


class RawClient:
    """A minimal MCP client: initialize once, then POST tools/call; parses JSON or SSE answers."""

    def __init__(self, url: str, headers: dict[str, str], concurrency: int) -> None:
        self.url = url
        self.http = httpx2.AsyncClient(
            headers={"Accept": "application/json, text/event-stream", "Content-Type": "application/json", **headers},
            timeout=30,
            limits=httpx2.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4),
        )
        self.ids = 0

    async def _post(self, body: dict) -> dict:
        r = await self.http.post(self.url, content=json.dumps(body))
        r.raise_for_status()
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            for line in r.text.splitlines():
                if line.startswith("data:") and line[5:].strip():  # skip priming events (empty data)
                    msg = json.loads(line[5:])
                    if "id" in msg and msg.get("id") == body.get("id"):
                        return msg
            raise RuntimeError("no response in stream")
        return r.json() if r.content else {}

    async def start(self) -> None:
        r = await self.http.post(self.url, content=json.dumps({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "bench", "version": "0"}},
        }))
        r.raise_for_status()
        sid = r.headers.get("mcp-session-id")
        if sid:
            self.http.headers["mcp-session-id"] = sid
        self.http.headers["mcp-protocol-version"] = "2025-11-25"
        await self.http.post(self.url, content=json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))

    async def call(self, tool: str) -> float:
        self.ids += 1
        t = time.perf_counter()
        msg = await self._post({"jsonrpc": "2.0", "id": self.ids, "method": "tools/call",
                                "params": {"name": tool, "arguments": {"text": "hello"}}})
        dt = time.perf_counter() - t
        if msg.get("result", {}).get("content", [{}])[0].get("text") != "hello":
            raise RuntimeError(f"bad answer: {msg}")
        return dt

    async def close(self) -> None:
        await self.http.aclose()


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


async def throughput(client: RawClient, tool: str, inflight: int, calls: int) -> float:
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await client.call(tool)

    t = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(inflight))), 300)
    return calls / (time.perf_counter() - t)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def measure(targets: dict[str, tuple[str, dict[str, str], str]], calls: int, rounds: int,
                  gateway_pid: int) -> dict:
    out: dict = {"latency_c1_ms": {}, "throughput": {}}
    clients = {}
    for name, (url, headers, _tool) in targets.items():
        clients[name] = RawClient(url, headers, 64)
        await clients[name].start()
    for name, c in clients.items():  # warm up both paths
        for _ in range(50):
            await c.call(targets[name][2])
    out["gateway_rss_idle_mb"] = round(rss_mb(gateway_pid), 1)
    lat: dict[str, list[float]] = {n: [] for n in targets}
    for _ in range(min(calls, 1000)):
        for name, c in clients.items():
            lat[name].append(await c.call(targets[name][2]))
    for name, values in lat.items():
        out["latency_c1_ms"][name] = {"p50": round(pct(values, 50) * 1000, 3), "p99": round(pct(values, 99) * 1000, 3)}
    for inflight in (16, 64):
        per: dict[str, list[float]] = {n: [] for n in targets}
        for _ in range(rounds):
            for name, c in clients.items():
                per[name].append(await throughput(c, targets[name][2], inflight, calls))
        out["throughput"][str(inflight)] = {n: round(statistics.median(v), 1) for n, v in per.items()}
    out["gateway_rss_after_load_mb"] = round(rss_mb(gateway_pid), 1)
    for c in clients.values():
        await c.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="calls per throughput round (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per mode (default 3)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--audit", choices=("on", "off"), default="on",
                        help="off: the record stage writes nothing (serve --no-evidence), to see what sealing costs")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="aegress-bench-")) / "home"
    os.environ["AEGRESS_HOME"] = str(home)
    os.environ["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
    token = setup_tenant(home, "bench", "runner")
    allow_all(home, "bench")
    with run_http_upstream("bench") as (up_url, _):
        aegress(home, "upstream", "add", "--tenant", "bench", "http", "--url", up_url, "--allow-private")
        add_stdio_fixture(home, "bench", "stdio")
        # one actor on one address drives up to 64 calls at once: lift the fair-share caps, not measured here
        caps = ["--max-calls-per-actor", "256", "--max-calls-per-tenant", "256",
                "--max-connections-per-address", "1000"]
        with run_gateway(home, *caps, *(["--no-evidence"] if args.audit == "off" else [])) as gw:
            auth = {"Authorization": f"Bearer {token}"}
            targets = {
                "direct": (up_url, {}, "echo"),
                "gateway_http_upstream": (gw.url, auth, "http__echo"),
                "gateway_stdio_upstream": (gw.url, auth, "stdio__echo"),
            }
            results = asyncio.run(measure(targets, args.calls, args.rounds, gw.proc.popen.pid))
    d = results["latency_c1_ms"]["direct"]["p50"]
    results["added_p50_ms"] = {k: round(v["p50"] - d, 3) for k, v in results["latency_c1_ms"].items() if k != "direct"}
    results["throughput_ratio"] = {
        n: {k: round(v / t["direct"], 3) for k, v in t.items() if k != "direct"}
        for n, t in results["throughput"].items()
    }
    results["audit"] = args.audit
    results["targets"] = {"added_p50_ms_max": 2.0, "throughput_ratio_16_min": 0.5, "idle_rss_mb_max": 120}
    emit(results, args.json)


def emit(results: dict, path: Path | None) -> None:
    """Print the results as JSON and, with --json PATH, keep them there too."""
    text = json.dumps(results, indent=2)
    print(text)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


if __name__ == "__main__":
    main()
