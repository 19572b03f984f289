"""Shared inputs for the client-config tests: one request, a canary token, golden-file helpers."""

from __future__ import annotations

import os
from pathlib import Path

from gateway.clients import EntryRequest

GOLDEN = Path(__file__).parent / "golden"
CANARY = "aeg_canary_7f3c0d1e9b2a4c68"  # must never appear in anything we render or write
REQUEST = EntryRequest(url="http://127.0.0.1:8765/mcp", tenant="acme", actor="alice")


def check_golden(path: Path, actual: str) -> None:
    """Compare with a golden file; AEGRESS_UPDATE_GOLDEN=1 rewrites it (review the diff!)."""
    if os.environ.get("AEGRESS_UPDATE_GOLDEN") == "1":
        path.write_bytes(actual.encode("utf-8"))
    assert path.exists(), f"missing golden file {path}; run with AEGRESS_UPDATE_GOLDEN=1"
    assert actual == path.read_bytes().decode("utf-8")
