"""What the recipe tests share: the pinned linters' venv, a private Docker engine, file parsing helpers.

The linters live in `.cache/lint-venv` (tests/requirements-lint.txt) and the Debian packages and the
debootstrap base in what `scripts/install-test-deps.sh` installs; a missing one fails the test with that
command as the hint, never a skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
LINT_BIN = ROOT / ".cache" / "lint-venv" / "bin"
CACHE = Path(os.environ.get("AEGRESS_TEST_CACHE", ROOT / ".cache" / "test-deps"))
BASE_TAR = CACHE / "debian-bookworm-minbase.tar"
INSTALL_HINT = "run scripts/install-test-deps.sh"


def tool(name: str) -> str:
    """A linter from the lint venv, or a Debian binary the install script puts on the machine."""
    path = LINT_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found is None:
        pytest.fail(f"{name} is not installed ({INSTALL_HINT})")
    return found


def run(argv: list[str], *, timeout: float = 300, check: bool = False,
        **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv[:4])} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


def lint_python(code: str, *args: str) -> Any:
    """Run `code` in the lint venv's Python (it has PyYAML and pycep) and return the JSON it prints."""
    proc = run([tool("python"), "-c", code, *args], check=True, timeout=120)
    return json.loads(proc.stdout)


def free_port() -> int:
    """A free loopback port for a program that cannot report the one it bound (Caddy, dockerd's containers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    """Pure: the Dockerfile's instructions (continuations joined, comments dropped), split at each FROM."""
    stages: list[list[tuple[str, str]]] = []
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        logical += (" " if logical else "") + line.rstrip("\\").strip()
        if line.endswith("\\"):
            continue
        word, _, rest = logical.partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((word.upper(), rest.strip()))
        logical = ""
    return stages


SECRET_PATTERNS: dict[str, re.Pattern[str]] = {
    "aegress token": re.compile(r"aeg_[A-Za-z0-9]{40}"),
    "64 hex characters (a master key)": re.compile(r"(?<![0-9a-fA-F:])[0-9a-fA-F]{64}(?![0-9a-fA-F])"),
    "private key block": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "signing key": re.compile(r"PRIVATE\+KEY\+[^\s+]+\+[0-9a-f]{8}\+"),
    # a ${VARIABLE} or a <placeholder> is not a value
    "password in a database URL": re.compile(r"postgres(?:ql)?://[^:/@\s]+:(?![$<])[^@\s]+@"),
    "password in a Redis URL": re.compile(r"rediss?://[^@\s]*:(?![$<])[^@\s/]+@"),
    "password assignment": re.compile(
        r"(?i)\b(?:password|passwd|secret|token)\b\s*[:=]\s*['\"]?(?![$<{])[A-Za-z0-9+/]{12,}"),
    "cloud access key": re.compile(r"\b(?:AKIA[0-9A-Z]{16}|AccountKey=[A-Za-z0-9+/=]{20,})"),
}


def secret_findings(text: str) -> list[str]:
    """Pure: which secret-looking literals `text` holds (the names of the patterns, never the values)."""
    return [name for name, pattern in SECRET_PATTERNS.items() if pattern.search(text)]


@dataclass
class Docker:
    """A Docker engine of this test run: own data root, socket and no host networking changes."""

    host: str
    client: str = "/usr/bin/docker"

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "1"}

    def __call__(self, *args: str, timeout: float = 120, check: bool = True,
                 input: str | None = None) -> subprocess.CompletedProcess[str]:
        return run([self.client, *args], timeout=timeout, check=check, env=self.env(), input=input)


@contextlib.contextmanager
def private_dockerd() -> Iterator[Docker]:
    """Start Debian's dockerd on a socket of its own (no bridge, no iptables: containers use the host's
    loopback) and stop it (by its pid) afterwards; its data root is removed."""
    if os.geteuid() != 0:
        pytest.fail("the image test starts a Docker engine, which needs root (as on the project's machines)")
    dockerd = tool("dockerd")
    root = Path(tempfile.mkdtemp(prefix="aeg-dk-"))
    sock = root / "docker.sock"
    log = (root / "dockerd.log").open("w")
    proc = subprocess.Popen(
        [dockerd, "--data-root", str(root / "data"), "--exec-root", str(root / "x"), "--pidfile",
         str(root / "dockerd.pid"), "-H", f"unix://{sock}", "--bridge=none", "--iptables=false",
         "--ip6tables=false", "--ip-masq=false", "--storage-driver=overlay2", "--log-level=warn"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    docker = Docker(f"unix://{sock}")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if sock.exists() and docker("version", check=False, timeout=10).returncode == 0:
                break
            time.sleep(0.5)
        else:
            raise AssertionError("dockerd did not answer within 60 s")
        if proc.poll() is not None:
            raise AssertionError(f"dockerd exited ({proc.returncode}):\n{(root / 'dockerd.log').read_text()[-3000:]}")
        yield docker
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()
        _unmount_under(root)  # dockerd leaves its default network namespace mounted
        shutil.rmtree(root, ignore_errors=True)


def _unmount_under(root: Path) -> None:
    with open("/proc/self/mounts") as mounts:
        targets = [line.split()[1] for line in mounts if line.split()[1].startswith(f"{root}/")]
    for target in sorted(targets, key=len, reverse=True):  # deepest first
        subprocess.run(["umount", "-l", target], capture_output=True, timeout=30)
