"""The peers the gateway bench measures Aegress against (issue 10): their venv and their processes.

The peers run from a venv of their own, `.cache/bench-peers/venv`, which `ensure_venv` makes with
`python -m venv` and fills from `bench/peers/requirements.txt` (exact versions of everything, so a
run is reproducible); it is reused while that file is unchanged. The same venv brings py-spy for
`--profile`.

- **mcp-proxy** (sparfenyuk's, the PyPI package `mcp-proxy`). It has two modes: server mode runs
  a stdio MCP server as a child and serves it over SSE and Streamable HTTP; client mode connects
  to an HTTP MCP server and serves it on its own stdio. It has no HTTP-to-HTTP mode.
  - in front of the stdio fixture: server mode with the fixture command the gateway's stdio
    upstream runs (`tests.procs.FIXTURE_SERVER`, same env and cwd).
  - in front of the HTTP fixture: server mode whose stdio command is mcp-proxy's own client mode
    (`mcp-proxy --transport streamablehttp URL`), so two mcp-proxy processes and one stdio pipe
    sit between the client and the upstream. This is how its README chains the two modes and the
    only way it can put Streamable HTTP in front of an HTTP server; the cost of the extra hop is
    part of what a user of mcp-proxy pays for that setup.
  Both are served with `--stateless` (the SDK's stateless Streamable HTTP; mcp-proxy always
  answers JSON, not SSE) and `--log-level WARNING`: at its default level uvicorn writes an access
  line per request, which a user can turn off, so the peer is measured at its best. Its server
  mode cannot report a port it picked, so the bench picks a free loopback port and polls it.
- **a bare hop** (`bench/peers/bare_hop.py`, aiohttp): forwards each request to the HTTP fixture
  and streams the answer back, nothing else. The floor for "one more hop on the path".
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from bench.proc_stats import descendants, start_ticks
from tests.procs import FIXTURE_SERVER, ROOT, Proc

VENV = ROOT / ".cache" / "bench-peers" / "venv"
REQUIREMENTS = Path(__file__).with_name("requirements.txt")
BARE_HOP = Path(__file__).with_name("bare_hop.py")
_STAMP = ".bench-requirements.txt"


def ensure_venv(venv: Path = VENV) -> Path:
    """The peer venv with exactly the pinned versions, made (or remade) when missing or stale."""
    wanted = REQUIREMENTS.read_text()
    stamp = venv / _STAMP
    if stamp.is_file() and stamp.read_text() == wanted and (venv / "bin" / "mcp-proxy").is_file():
        return venv
    print(f"bench: building the peer venv at {venv} (pinned in {REQUIREMENTS.relative_to(ROOT)})", file=sys.stderr)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
    try:
        pip = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--timeout", "30", "--retries", "2",
             "-r", str(REQUIREMENTS)],
            capture_output=True, text=True, timeout=900,
        )
    except subprocess.TimeoutExpired:
        raise SystemExit("Error: installing the peers (mcp-proxy, aiohttp, py-spy) timed out after 15 minutes.\n"
                         "Hint: the peer mode needs the package registry; run without --peers/--profile.") from None
    if pip.returncode != 0:
        said = "\n".join(line for line in (pip.stdout + pip.stderr).splitlines() if "is ignored" not in line)
        raise SystemExit(
            f"Error: could not install the peers into {venv} (pip exit {pip.returncode}):\n{said[-2000:]}\n"
            "Hint: the peer mode needs the package registry (PyPI) to be reachable; run without --peers/--profile."
        )
    stamp.write_text(wanted)
    return venv


def _peer_env() -> dict[str, str]:
    """The bench's environment without what points at the project's venv or source."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(proc: Proc, port: int, timeout: float = 60.0) -> bool:
    """True once 127.0.0.1:port accepts; False if the process exits first (e.g. the port was taken)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        time.sleep(0.1)
    output = "".join(proc.output)[-3000:]
    raise AssertionError(f"{proc.argv[:3]} did not listen on {port} within {timeout} s:\n{output}")


def stop_tree(proc: Proc) -> None:
    """Stop a process we started, then any of its descendants still alive (the same processes, not reused pids)."""
    left = [(p, start_ticks(p)) for p in descendants(proc.popen.pid)]
    proc.stop()
    deadline = time.monotonic() + 5
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [p for p, t in left if t is not None and start_ticks(p) == t]
        for p in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
        while alive and time.monotonic() < deadline:
            time.sleep(0.05)
            alive = [p for p, t in left if t is not None and start_ticks(p) == t]
        if not alive:
            return
        deadline = time.monotonic() + 5


@contextlib.contextmanager
def run_mcp_proxy(venv: Path, *stdio_command: str, extra: tuple[str, ...] = ()) -> Iterator[tuple[str, Proc]]:
    """mcp-proxy in server mode (stateless Streamable HTTP on 127.0.0.1) in front of a stdio command."""
    for _attempt in range(3):
        port = _free_port()
        proc = Proc([str(venv / "bin" / "mcp-proxy"), "--host", "127.0.0.1", "--port", str(port), "--stateless",
                     "--log-level", "WARNING", *extra, "--", *stdio_command], _peer_env())
        try:
            if _wait_listening(proc, port):
                yield f"http://127.0.0.1:{port}/mcp", proc
                return
        finally:
            stop_tree(proc)
    raise AssertionError(f"mcp-proxy did not start:\n{''.join(proc.output)[-3000:]}")


def run_mcp_proxy_stdio(venv: Path) -> contextlib.AbstractContextManager[tuple[str, Proc]]:
    """mcp-proxy in front of the stdio fixture, started as the gateway's stdio upstream is."""
    return run_mcp_proxy(venv, *FIXTURE_SERVER,
                         extra=("--cwd", str(ROOT), "-e", "FIXTURE_NAME", "stdio", "-e", "PYTHONPATH", str(ROOT)))


def run_mcp_proxy_http(venv: Path, upstream_url: str) -> contextlib.AbstractContextManager[tuple[str, Proc]]:
    """mcp-proxy in front of the HTTP fixture: its client mode as the stdio command of its server mode."""
    return run_mcp_proxy(venv, str(venv / "bin" / "mcp-proxy"), "--transport", "streamablehttp",
                         "--log-level", "WARNING", upstream_url)


@contextlib.contextmanager
def run_bare_hop(venv: Path, upstream_url: str) -> Iterator[tuple[str, Proc]]:
    """The bare aiohttp hop in front of an HTTP upstream."""
    proc = Proc([str(venv / "bin" / "python"), str(BARE_HOP), upstream_url], _peer_env())
    try:
        line = proc.wait_for("LISTENING", timeout=60)
        yield line.split("LISTENING", 1)[1].strip(), proc
    finally:
        stop_tree(proc)
