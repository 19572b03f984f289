"""docs/quickstart.md, followed as written: its shell blocks run in order, in bash, from a checkout.

The checkout is a scratch directory holding `.venv` (this repository's), as `./scripts/demo` leaves a
fresh clone; the commands run there exactly as the page writes them, with the same environment a
terminal would carry from one block to the next (exported variables, `eval`). Only the ports change:
the page's 8799 (the gateway) and 8798 (the HTTP upstream) become free ones, so runs never collide.

Two blocks are not run as written. `PORT=8799 ./scripts/demo` installs Aegress into `.venv` when its
stamp is stale (a test must not install into the shared venv) and then execs `aegress serve --demo
--port "$PORT"`: that last line is checked in the script and run here as it would run. `./scripts/test`
is this suite. A command ending in `&` (a server the page starts in the background) is started here
and waited for until it prints `listening on`, as the page says.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

from tests.procs import ROOT, Proc

QUICKSTART = ROOT / "docs" / "quickstart.md"
GATEWAY_PORT, UPSTREAM_PORT = "8799", "8798"
_BACKGROUND = re.compile(r"^(?P<command>.*\S)\s+&\s*(#.*)?$")


def shell_blocks(text: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^```sh\n(.*?)^```", text, flags=re.S | re.M)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Terminal:
    """A terminal session in the checkout: blocks run in bash with the environment the previous ones left."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd = cwd
        self.env = env
        self.background: list[Proc] = []
        self.outputs: list[str] = []

    def run(self, script: str, timeout: float = 300) -> str:
        dump = self.cwd.parent / "env.json"
        wrapped = (f"set -euo pipefail\n{script}\n"
                   f"{self.env['_PYTHON']} -c 'import json, os, sys; json.dump(dict(os.environ), "
                   f"open(sys.argv[1], \"w\"))' {dump}\n")
        proc = subprocess.run(["bash", "-c", wrapped], cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        assert proc.returncode == 0, f"quickstart block failed ({proc.returncode}):\n{script}\n--- stdout\n" \
                                     f"{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
        self.env = {k: v for k, v in json.loads(dump.read_text()).items() if k not in ("PWD", "OLDPWD", "SHLVL", "_")}
        self.outputs.append(proc.stdout)
        return proc.stdout + proc.stderr

    def start(self, command: str) -> Proc:
        proc = Proc(["bash", "-c", f"exec env {command}"], self.env, cwd=self.cwd)  # env: VAR=x prefixes too
        self.background.append(proc)
        proc.wait_for("listening on", timeout=120)
        return proc

    def block(self, text: str) -> str:
        """Run one block: its commands in order, a trailing-`&` command as a background server."""
        out, pending = [], []
        for line in text.splitlines():
            background = _BACKGROUND.match(line)
            if background is None:
                pending.append(line)
                continue
            if pending:
                out.append(self.run("\n".join(pending)))
                pending = []
            self.start(background.group("command"))
        if pending:
            out.append(self.run("\n".join(pending)))
        return "".join(out)

    def close(self) -> None:
        for proc in reversed(self.background):
            proc.stop()


def test_the_quickstart_runs_as_written(tmp_path: Path) -> None:
    text = QUICKSTART.read_text()
    assert GATEWAY_PORT in text and "8765" in text  # a port other than the default, and the default named
    blocks = shell_blocks(text)
    assert blocks[0].strip() == f"PORT={GATEWAY_PORT} ./scripts/demo" and blocks[-1].strip() == "./scripts/test"
    demo_script = (ROOT / "scripts" / "demo").read_text()
    assert 'exec "$VENV/bin/aegress" serve --demo --port "${PORT:-8765}" "$@"' in demo_script

    gateway_port, upstream_port = str(_free_port()), str(_free_port())
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / ".venv").symlink_to(ROOT / ".venv")
    user = tmp_path / "user"
    user.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AEGRESS_", "MCP_"))}
    env.update({"HOME": str(user), "AEGRESS_HOME": str(tmp_path / "aegress-home"), "PYTHONPATH": str(ROOT),
                "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring", "NO_COLOR": "1", "COLUMNS": "200",
                "_PYTHON": str(ROOT / ".venv" / "bin" / "python")})
    terminal = Terminal(checkout, env)
    try:
        # 1. what ./scripts/demo runs once Aegress is installed in .venv
        terminal.start(f".venv/bin/aegress serve --demo --port {gateway_port}")
        ported = [b.replace(GATEWAY_PORT, gateway_port).replace(UPSTREAM_PORT, upstream_port) for b in blocks[1:-1]]
        connect, own, *rest = ported

        # 2. a client set up and checked, a tool called with curl, the call in the evidence
        out = terminal.block(connect)
        assert '"text":"hello"' in out.replace(" ", "") or '"text": "hello"' in out, out
        assert "ok   gateway:" in out, out
        assert "demo__echo" in terminal.outputs[-1]
        assert (user / ".claude.json").exists()

        # 3. the tenant, a stdio and an HTTP upstream (its token set with `upstream secret set`), a policy
        out = terminal.block(own)
        assert "Added upstream notes to tenant acme: 7 tools" in out, out
        assert "Added upstream tracker to tenant acme: 7 tools" in out, out
        assert "Connected to tracker" in out, out
        assert "demo-secret-4711" not in (tmp_path / "aegress-home" / "aegress.db").read_bytes().decode("latin-1")
        policy, call = rest
        terminal.block(policy)
        out = terminal.block(call)
        assert '"text":"42' in out.replace(" ", ""), out
        assert "tracker__add" in terminal.outputs[-1]
        assert (checkout / "acme-policy.toml").exists()
    finally:
        terminal.close()
