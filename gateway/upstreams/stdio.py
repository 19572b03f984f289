"""Stdio upstream: a child process speaking newline-delimited JSON-RPC.

The command is an argument list, never a shell. The child gets an explicit environment: a few
harmless variables from the gateway's own (so it can find programs) plus what the operator
registered, never the gateway's secrets or database URL.

Output is read in bounded chunks: a line longer than the upstream's `max_message_bytes` is dropped
as it streams past (only its first and last bytes are kept, to find which call it answered), so a
hostile child cannot make the gateway hold more than about one limit's worth of its output.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from gateway.errors import UpstreamError
from gateway.jsonrpc import JSON
from gateway.upstreams.base import Pending, UpstreamConnection

log = logging.getLogger("aegress.upstream.stdio")

INHERITED_ENV = ("HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
_CHUNK = 64 * 1024
_KEEP = 256  # bytes kept of each end of an oversized line, to find its id
_STDERR_LINE = 4096
_STDERR_TAIL = 20  # lines of the child's stderr kept, to show why it did not start
_STDERR_GRACE_S = 0.5  # how long a child that never initialized may take to finish writing its stderr
_ID_HEAD = re.compile(rb'^\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"id"\s*:\s*(\d{1,18})\s*[,}]')
_METHOD_HEAD = re.compile(rb'^\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?(?:"id"\s*:\s*[^,{}]{1,40},\s*)?"method"\s*:')
_ID_TAIL = re.compile(rb',\s*"id"\s*:\s*(\d{1,18})\s*(?:,\s*"jsonrpc"\s*:\s*"2\.0"\s*)?\}\s*$')


@dataclass(frozen=True, slots=True)
class Oversize:
    """A line over the limit, of which only the ends were kept."""

    head: bytes
    tail: bytes

    def is_request(self) -> bool:
        """Pure: the line visibly starts a request or notification (not an answer to any call of ours)."""
        return _METHOD_HEAD.match(self.head) is not None

    def id_hint(self) -> int | None:
        """Pure: the top-level id of the JSON-RPC message, when its first or last bytes show it."""
        match = _ID_HEAD.match(self.head) or _ID_TAIL.search(self.tail)
        return int(match.group(1)) if match else None


class LineSplitter:
    """Pure: cut a byte stream into lines of at most `limit` bytes; a longer line comes out as an
    `Oversize` and is never held whole (at most `limit` plus one chunk is buffered)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._discarding = False
        self._head = b""
        self._tail = b""

    def feed(self, chunk: bytes) -> list[bytes | Oversize]:
        out: list[bytes | Oversize] = []
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            piece = chunk[start: nl if nl >= 0 else len(chunk)]
            if self._discarding:
                self._tail = (self._tail + piece)[-_KEEP:]
            else:
                self._buf += piece
                if len(self._buf) > self.limit:
                    self._discarding = True
                    self._head, self._tail = bytes(self._buf[:_KEEP]), bytes(self._buf[-_KEEP:])
                    self._buf = bytearray()
            if nl < 0:
                return out
            if self._discarding:
                out.append(Oversize(self._head, self._tail))
                self._discarding, self._head, self._tail = False, b"", b""
            else:
                out.append(bytes(self._buf))
                self._buf = bytearray()
            start = nl + 1


def child_env(registered: dict[str, str], parent: dict[str, str]) -> dict[str, str]:
    """Pure: the exact environment a stdio upstream starts with."""
    env = {k: parent[k] for k in INHERITED_ENV if k in parent}
    env.update(registered)
    return env


class StdioConnection(UpstreamConnection):
    _proc: asyncio.subprocess.Process | None = None
    _reader: asyncio.Task[None] | None = None
    _stderr: asyncio.Task[None] | None = None
    on_stderr: Callable[[str], None] | None = None
    """Called with each line of the child's stderr (scrubbed): `aegress upstream add` shows a slow start."""

    @property
    def stderr_tail(self) -> list[str]:
        """The last lines of the child's stderr (scrubbed), to say why it failed to start."""
        return list(getattr(self, "_stderr_tail", ()))

    @property
    def exit_status(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    async def wait_exited(self, timeout: float = 3.0) -> None:
        """After close: wait (bounded) until the child has exited and its stderr has been read, even when the
        close was started elsewhere (the reader closes on EOF), so a failed start can be explained."""
        waits: list[asyncio.Future[object]] = []
        if self._proc is not None:
            waits.append(asyncio.ensure_future(self._proc.wait()))
        if self._stderr is not None:
            waits.append(self._stderr)  # type: ignore[arg-type]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=timeout)
            for future in pending:
                if future is not self._stderr:
                    future.cancel()

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
                start_new_session=True,
            )
        except OSError as exc:
            raise UpstreamError(
                f"Cannot start upstream {self.name!r}: {exc.strerror or exc}.",
                hint="Check the command with `aegress upstream test`.",
            ) from exc
        self._stderr_tail: deque[str] = deque(maxlen=_STDERR_TAIL)
        self._reader = asyncio.create_task(self._read_loop())
        self._stderr = asyncio.create_task(self._drain_stderr())

    async def _read_loop(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        stdout = self._proc.stdout
        lines = LineSplitter(self.spec.limits.max_message_bytes)
        try:
            while chunk := await stdout.read(_CHUNK):
                for line in lines.feed(chunk):
                    await self._line(line)
        except (ValueError, ConnectionError):
            log.warning("upstream %s: broken stdout", self.name)
        finally:
            if not self.closed:
                log.warning("upstream %s exited", self.name)
                asyncio.get_running_loop().create_task(self.close())

    async def _line(self, line: bytes | Oversize) -> None:
        if isinstance(line, Oversize):
            if line.is_request():  # a huge notification or request: nobody's answer, so nobody's failure
                log.warning("upstream %s sent a message over %d bytes that is no answer; discarded", self.name,
                            self.spec.limits.max_message_bytes)
            else:
                self.fail_oversize(line.id_hint())
            return
        if not line.strip():
            return
        try:
            msg = orjson.loads(line)
        except orjson.JSONDecodeError:
            log.warning("upstream %s wrote a line that is not JSON; ignored", self.name)
            return
        if isinstance(msg, dict):
            try:
                await self._dispatch(msg)
            except Exception:
                log.exception("error routing a message from upstream %s", self.name)

    async def _drain_stderr(self) -> None:
        """Keep the child's stderr flowing (a full pipe would stall it); lines go to the debug log."""
        assert self._proc is not None and self._proc.stderr is not None
        lines = LineSplitter(_STDERR_LINE)
        with contextlib.suppress(Exception):
            while chunk := await self._proc.stderr.read(_CHUNK):
                for line in lines.feed(chunk):
                    text = "(a long line, dropped)" if isinstance(line, Oversize) else line[:500].decode(
                        errors="replace").rstrip()
                    text = self.scrub(text)
                    log.debug("upstream %s stderr: %s", self.name, text)
                    self._stderr_tail.append(text)
                    if self.on_stderr is not None:
                        with contextlib.suppress(Exception):  # a display's problem must not stall the pipe
                            self.on_stderr(text)

    async def _send(self, message: JSON, pending: Pending | None) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            raise UpstreamError(f"Upstream {self.name!r} is not running.", code="upstream-not-connected")
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
        if not self.init_result and self._stderr is not None and self._stderr is not asyncio.current_task():
            # It never started: let the reader take what it wrote last, which says why (not waiting for a
            # grandchild that keeps the pipe open).
            await asyncio.wait({self._stderr}, timeout=_STDERR_GRACE_S)
        for task in (self._reader, self._stderr):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
