"""Server-sent events parsed from bytes as they arrive (https://html.spec.whatwg.org/#event-stream-interpretation).

Why our own and not httpx2's `_sse` (derived from httpx-sse): that one is private API, works on
decoded text, and measured 2-6x slower on the same input (docs/benchmarks.md, `bench/sse_bench.py`).
This one stays on bytes (orjson parses them as they are), is linear in the bytes received however
they are split (each byte is copied a bounded number of times; an unfinished line is kept as a list
of pieces, never re-joined per chunk), accepts CR, LF and CRLF line ends, including a CRLF split
across chunks, and bounds one event (with its unfinished line) to `max_event_bytes`.
"""

from __future__ import annotations

Event = tuple[str, int | None, bytes]  # (id field of this event or "", retry field or None, data)

_BOM = b"\xef\xbb\xbf"


class EventTooLarge(Exception):
    """One event (or one unfinished line) grew past the parser's bound; the stream cannot continue."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a server-sent event exceeded {limit} bytes")
        self.limit = limit


class SseParser:
    """Feed chunks, get complete events; an event cut off by the end of the stream is discarded (spec)."""

    __slots__ = ("_cr", "_data", "_id", "_limit", "_retry", "_seen", "_size", "_started", "_tail", "_tail_size")

    def __init__(self, max_event_bytes: int | None = None) -> None:
        self._limit = max_event_bytes
        self._cr = False  # the last chunk ended with CR: a LF opening the next one ends no line
        self._started = False
        self._tail: list[bytes] = []  # the unfinished line, in pieces
        self._tail_size = 0
        self._data: list[bytes] = []
        self._size = 0  # bytes of the event's data so far
        self._id = ""
        self._retry: int | None = None
        self._seen = False  # a field of the event was seen: a blank line dispatches it

    def feed(self, chunk: bytes) -> list[Event]:
        if self._cr:
            self._cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if not self._started and chunk:
            self._started = True
            if chunk.startswith(_BOM):
                chunk = chunk[3:]
        if b"\r" in chunk:
            self._cr = chunk[-1:] == b"\r"
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if b"\n" not in chunk:
            if chunk:
                self._tail.append(chunk)
                self._tail_size += len(chunk)
                self._check(self._tail_size)
            return []
        lines = chunk.split(b"\n")
        if self._tail:
            self._tail.append(lines[0])
            lines[0] = b"".join(self._tail)
            self._tail = []
        last = lines.pop()
        self._tail_size = 0
        events: list[Event] = []
        for line in lines:
            self._line(line, events)
        if last:
            self._tail.append(last)
            self._tail_size = len(last)
            self._check(self._tail_size)
        return events

    def _line(self, line: bytes, events: list[Event]) -> None:
        if not line:
            if self._seen:
                events.append((self._id, self._retry, b"\n".join(self._data)))
            self._data, self._size, self._id, self._retry, self._seen = [], 0, "", None, False
            return
        if line[:1] == b":":
            return
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
            self._size += len(value) + 1
            self._seen = True
            self._check(0)
        elif name == b"id":
            if b"\0" not in value:
                self._id = value.decode(errors="replace")
                self._seen = True
        elif name == b"retry":
            if value.isdigit() and len(value) < 10:
                self._retry = int(value)
                self._seen = True
        elif name == b"event":
            self._seen = True

    def _check(self, pending: int) -> None:
        if self._limit is not None and self._size + pending > self._limit:
            raise EventTooLarge(self._limit)
