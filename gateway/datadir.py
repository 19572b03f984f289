"""One gateway per data dir: an OS lock on `<data dir>/aegress.lock`, held for the process's lifetime.

Two gateways on one data dir would each run start-up recovery over the other's calls in flight (marking
them `outcome_unknown` while they are still running, so their real outcomes later answer an intent that
is already answered: a chain that fails verification). `fcntl.flock` is released by the kernel when the
process dies, SIGKILL included, so a crashed gateway never leaves a stale lock. The file holds the
holder's pid, when it started and, once bound, its URL, so a refused start can say who holds the dir; a
serving gateway adds the facts `aegress status` shows (`describe`: version, ingress, binding mode, public
URL; never a secret). The file is emptied on release; after a crash it keeps the dead holder's facts, so
readers check the pid (gateway.status).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

from gateway.errors import ConfigError

LOCK_FILE = "aegress.lock"
ENV_HOME = "AEGRESS_HOME"


def home_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The one data dir: `--data-dir`, else `AEGRESS_HOME`, else `~/.aegress`. (Here, not in
    `gateway.config`: every CLI command reads it, few need the limits.)"""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".aegress"


def _holder(fd: int) -> str:
    """'pid 123 at http://...' from the lock file's contents, as far as they can be read."""
    try:
        raw = os.pread(fd, 4096, 0)
        info = json.loads(raw.decode() or "{}")
    except (OSError, ValueError):
        info = {}
    pid = info.get("pid") if isinstance(info, dict) else None
    url = info.get("url") if isinstance(info, dict) else None
    text = f"pid {pid}" if isinstance(pid, int) else "another process"
    if isinstance(url, str) and url:
        text += f" at {url}"
    return text


class DataDirLock:
    """The held lock. `set_url` records where the gateway listens; `release` (or process exit) frees it."""

    def __init__(self, path: Path, fd: int, purpose: str) -> None:
        self.path = path
        self._fd: int | None = fd
        self._purpose = purpose
        self._url: str | None = None
        self._facts: dict[str, object] = {}
        self._started = time.time()
        self._write()

    def _write(self) -> None:
        if self._fd is None:
            return
        data = json.dumps({**self._facts, "pid": os.getpid(), "purpose": self._purpose, "url": self._url,
                           "started_at": self._started}).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def set_url(self, url: str) -> None:
        self._url = url
        self._write()

    def describe(self, facts: Mapping[str, object]) -> None:
        """Record facts about the serving gateway for `aegress status` (JSON values, never secrets)."""
        self._facts.update(facts)
        self._write()

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None


def hold(home: Path, purpose: str = "serve") -> DataDirLock:
    """Take the data dir's lock or refuse (ConfigError `data-dir-in-use`, naming the holder) at once.

    Call it before anything reads or writes records: start-up recovery assumes nobody else is appending.
    """
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = home / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise ConfigError(
            f"The data dir {home} is in use by a running gateway ({holder}).",
            hint="Stop that gateway first, or use another data dir (--data-dir or AEGRESS_HOME). One data dir "
                 "serves one gateway.",
            code="data-dir-in-use",
        ) from None
    except OSError:
        os.close(fd)
        raise
    return DataDirLock(path, fd, purpose)
