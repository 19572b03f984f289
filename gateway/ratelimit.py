"""Per-actor call budgets (the policy's `rate_limits`) as a pure token bucket; the edge's caps and auth throttle.

A bucket holds at most `calls` tokens and refills at `calls / per_seconds` tokens per second; a call
takes one. Without Redis the state lives in the gateway process; with Redis the same bucket lives
there, one for the whole fleet (gateway.shared_limits, docs/replicas.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.policy.model import RateLimit


@dataclass(frozen=True, slots=True)
class Bucket:
    tokens: float
    updated: float


def admit(bucket: Bucket | None, limit: RateLimit, now: float) -> tuple[bool, Bucket, float]:
    """Pure: (allowed, the bucket after this call, seconds until a call would be allowed)."""
    rate = limit.calls / limit.per_seconds
    tokens = float(limit.calls) if bucket is None else min(limit.calls, bucket.tokens + (now - bucket.updated) * rate)
    if tokens >= 1.0:
        return True, Bucket(tokens - 1.0, now), 0.0
    return False, Bucket(tokens, now), (1.0 - tokens) / rate


# -- failed authentications per client address (the HTTP edge's throttle) --------------------------------
@dataclass(frozen=True, slots=True)
class FailureWindow:
    """Failures counted since `started` (a fixed window per client address)."""

    count: int
    started: float


def note_failure(window: FailureWindow | None, limit: int, per_seconds: float,
                 now: float) -> tuple[FailureWindow, float | None]:
    """Pure: count one failed authentication; (the window after it, seconds to wait when over `limit`, else None).

    A window older than `per_seconds` starts over. The caller applies this only after a token failed
    to verify, so the holder of a valid token is never throttled by someone else's failures."""
    if window is None or now - window.started >= per_seconds:
        window = FailureWindow(0, now)
    window = FailureWindow(window.count + 1, window.started)
    if window.count > limit:
        return window, max(window.started + per_seconds - now, 1.0)
    return window, None


class FailureTable:
    """Failure windows for at most `max_peers` client addresses (bounded memory under a spray of addresses).

    When full, the address that failed least recently is forgotten, one at a time: a spray of new
    addresses cannot wipe the window of an address that keeps guessing (it stays most recent)."""

    def __init__(self, max_peers: int) -> None:
        self.max_peers = max_peers
        self._windows: dict[str, FailureWindow] = {}  # least recently failed first

    def __len__(self) -> int:
        return len(self._windows)

    def note(self, peer: str, limit: int, per_seconds: float, now: float) -> float | None:
        """Count one failure from `peer`; seconds to wait when over `limit`, else None (see `note_failure`)."""
        window, wait = note_failure(self._windows.pop(peer, None), limit, per_seconds, now)
        while len(self._windows) >= self.max_peers:
            del self._windows[next(iter(self._windows))]
        self._windows[peer] = window
        return wait


def over_cap(actor_open: int, tenant_open: int, per_actor: int, per_tenant: int) -> str | None:
    """Pure: which cap one more session or call would exceed ("actor", "tenant"), or None."""
    if actor_open >= per_actor:
        return "actor"
    if tenant_open >= per_tenant:
        return "tenant"
    return None


def to_reclaim(sessions: Iterable[tuple[str, float, bool]], now: float, min_idle: float, need: int) -> list[str]:
    """Pure: which sessions to close so that `need` more fit under a cap: (id, last seen, busy) in,
    up to `need` ids out, longest idle first. Only sessions idle for `min_idle` seconds with nothing
    in flight qualify: clients killed without DELETE free their slots within a minute, while a
    session in use is never taken from its client."""
    idle = sorted((seen, sid) for sid, seen, busy in sessions if not busy and now - seen >= min_idle)
    return [sid for _, sid in idle[:max(0, need)]]
