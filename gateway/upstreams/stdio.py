"""Stdio upstream: a child process speaking newline-delimited JSON-RPC.

The command is an argument list, never a shell. The child gets an explicit environment: a few
harmless variables from the gateway's own (so it can find programs) plus what the operator
registered, never the gateway's secrets or database URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import orjson

from gateway.errors import UpstreamError
from gateway.jsonrpc import JSON
from gateway.upstreams.base import Pending, UpstreamConnection

log = logging.getLogger("aegress.upstream.stdio")

INHERITED_ENV = ("HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
_MAX_LINE = 16 * 1024 * 1024


def child_env(registered: dict[str, str], parent: dict[str, str]) -> dict[str, str]:
    """Pure: the exact environment a stdio upstream starts with."""
    env = {k: parent[k] for k in INHERITED_ENV if k in parent}
    env.update(registered)
    return env


class StdioConnection(UpstreamConnection):
    _proc: asyncio.subprocess.Process | None = None
    _reader: asyncio.Task[None] | None = None
    _stderr: asyncio.Task[None] | None = None

    async def _open(self) -> None:
        if not self.spec.command:
            raise UpstreamError(f"Upstream {self.name!r} has no command.")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.spec.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=child_env(self.spec.env, dict(os.environ)),
                cwd=self.spec.cwd or None,
                limit=_MAX_LINE,
                start_new_session=True,
            )
        except OSError as exc:
            raise UpstreamError(
                f"Cannot start upstream {self.name!r}: {exc.strerror or exc}.",
                hint="Check the command with `aegress upstream test`.",
            ) from exc
        self._reader = asyncio.create_task(self._read_loop())
        self._stderr = asyncio.create_task(self._drain_stderr())

    async def _read_loop(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        stdout = self._proc.stdout
        try:
            while True:
                line = await stdout.readline()
                if not line:
                    break
                try:
                    msg = orjson.loads(line)
                except orjson.JSONDecodeError:
                    log.warning("upstream %s wrote a line that is not JSON; ignored", self.name)
                    continue
                if isinstance(msg, dict):
                    try:
                        await self._dispatch(msg)
                    except Exception:
                        log.exception("error routing a message from upstream %s", self.name)
        except (asyncio.IncompleteReadError, ValueError, ConnectionError):
            log.warning("upstream %s: broken stdout", self.name)
        finally:
            if not self.closed:
                log.warning("upstream %s exited", self.name)
                asyncio.get_running_loop().create_task(self.close())

    async def _drain_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        with contextlib.suppress(Exception):
            while line := await self._proc.stderr.readline():
                log.debug("upstream %s stderr: %s", self.name, line[:500].decode(errors="replace").rstrip())

    async def _send(self, message: JSON, pending: Pending | None) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            raise UpstreamError(f"Upstream {self.name!r} is not running.")
        try:
            proc.stdin.write(orjson.dumps(message) + b"\n")
            await proc.stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise UpstreamError(f"Upstream {self.name!r} stopped accepting input.") from exc

    async def _close(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(Exception):
                proc.stdin.close()
        if proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), 2.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 2.0)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
        for task in (self._reader, self._stderr):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
