"""Redis for tests: the machine's server (127.0.0.1:6379) for normal tests, and a PRIVATE redis-server the
test starts and stops (by its own pid) for the tests where Redis goes away.

Nothing here flushes, stops or configures the machine's server. Tests keep apart on it by key prefix:
every key and channel Aegress uses carries the fleet id, which comes from the per-run database (or is
random), so runs never see each other's state.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

REDIS_URL = os.environ.get("AEGRESS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def reachable(url: str = REDIS_URL) -> str | None:
    """None when the server answers PING, else why not."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
        return None
    except Exception as exc:
        return f"no Redis for tests at {url}: {type(exc).__name__}"
    finally:
        client.close()


def fleet() -> str:
    """A fleet id of its own for one test (keys and channels of other runs never meet it)."""
    return "t" + secrets.token_hex(6)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server on a loopback port of its own, no persistence; `stop()` and `start()` again (same port)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--protected-mode", "yes", "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server exited: {(self.dir / 'redis.log').read_text()[-2000:]}")
            if reachable(self.url) is None:
                return
            time.sleep(0.05)
        raise AssertionError(f"redis-server on port {self.port} did not answer within {timeout:g} s")

    def stop(self) -> None:
        """Stop OUR server (by its pid): clients see connections refused from now on."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@contextlib.contextmanager
def private_redis(workdir: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
