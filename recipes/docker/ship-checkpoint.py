#!/usr/bin/env python3
"""Checkpoint hook (AEGRESS_CHECKPOINT_HOOK): send each signed checkpoint to the operator's control plane.

The gateway runs it with the signed note on stdin and AEGRESS_CHECKPOINT_ORIGIN / AEGRESS_CHECKPOINT_SIZE
set; it POSTs the note to AEGRESS_CONTROL_PLANE_URL (HTTPS; plain HTTP only to a loopback address) with
the bearer token in AEGRESS_CONTROL_PLANE_TOKEN_FILE (or AEGRESS_CONTROL_PLANE_TOKEN). Exit 0 when the
control plane answered 2xx, else 1 with one line on stderr (never the token); the gateway logs the failure
and ships the next checkpoint, which covers this one. Standard library only: it runs in the image's python3.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from urllib.parse import urlsplit

TIMEOUT_S = 8.0
MAX_NOTE_BYTES = 64 * 1024


def _token() -> str:
    path = os.environ.get("AEGRESS_CONTROL_PLANE_TOKEN_FILE", "").strip()
    if path:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    return os.environ.get("AEGRESS_CONTROL_PLANE_TOKEN", "").strip()


def main() -> int:
    url = os.environ.get("AEGRESS_CONTROL_PLANE_URL", "").strip()
    parts = urlsplit(url)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        print("ship-checkpoint: AEGRESS_CONTROL_PLANE_URL must be an https:// URL", file=sys.stderr)
        return 1
    note = sys.stdin.buffer.read(MAX_NOTE_BYTES + 1)
    if not note or len(note) > MAX_NOTE_BYTES:
        print("ship-checkpoint: no checkpoint note (or an oversized one) on stdin", file=sys.stderr)
        return 1
    try:
        token = _token()
    except OSError as exc:
        print(f"ship-checkpoint: cannot read the control plane token file: {exc.strerror}", file=sys.stderr)
        return 1
    headers = {
        "Content-Type": "text/plain; charset=utf-8",
        "Aegress-Checkpoint-Origin": os.environ.get("AEGRESS_CHECKPOINT_ORIGIN", ""),
        "Aegress-Checkpoint-Size": os.environ.get("AEGRESS_CHECKPOINT_SIZE", ""),
    }
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=note, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # the scheme is checked above
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        print(f"ship-checkpoint: control plane unreachable: {type(exc).__name__}", file=sys.stderr)
        return 1
    if not 200 <= status < 300:
        print(f"ship-checkpoint: control plane answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
