"""Per-actor call budgets (the policy's `rate_limits`), as a pure token bucket.

A bucket holds at most `calls` tokens and refills at `calls / per_seconds` tokens per second; a call
takes one. State lives in the gateway process: with several replicas each enforces its own budget
(a shared Redis budget is future work, see docs/policy.md).
"""

from __future__ import annotations

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
