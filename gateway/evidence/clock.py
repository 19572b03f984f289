"""The evidence clock: record times as RFC 3339 text, cheap enough for the request path."""

from __future__ import annotations

import time

_SECOND: tuple[int, str] = (0, "")


def now_time() -> str:
    """`format_time(datetime.now(UTC))`, with the seconds part formatted once per second (hot path)."""
    global _SECOND
    sec, usec = divmod(time.time_ns() // 1000, 1_000_000)
    cached = _SECOND
    if cached[0] != sec:
        cached = _SECOND = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{cached[1]}.{usec:06d}Z"
