"""Canonical JSON for hashing: RFC 8785 (JCS), so anyone can recompute a pin or argument digest."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import rfc8785


def canonical_json(value: Any) -> bytes:
    """RFC 8785 bytes; values JCS cannot represent (integers beyond 2**53, NaN) fall back to
    sorted-key compact JSON so a digest always exists and stays deterministic."""
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          default=str).encode("utf-8")


def sha256_digest(value: Any) -> str:
    """`sha256:<hex>` of the canonical JSON of value."""
    return "sha256:" + hashlib.sha256(canonical_json(value)).hexdigest()
