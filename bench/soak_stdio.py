"""A recording stdio MCP upstream for the fault soak (stdlib only, starts in milliseconds).

Each `tools/call` appends its `mark` argument (a nonce; not called `nonce`, a name evidence previews
redact) to `$REC_LOG` (fsynced) before it answers, so the soak can compare what ran upstream with what
the gateway recorded. On start it appends its pid to
`$REC_PIDS`, so the soak can kill it mid-call. Calls run on threads: several can be in flight.

Tools: `record(mark)`, `slow_record(mark, seconds)` (at most 30 s); a call that asks for progress
(`_meta.progressToken`) first gets one progress notification whose message names its nonce.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

_LOCK = threading.Lock()
TOOLS = [
    {"name": "record", "description": "Log the nonce, then answer.",
     "inputSchema": {"type": "object", "properties": {"mark": {"type": "string"}}, "required": ["mark"]}},
    {"name": "slow_record", "description": "Log the nonce, wait, then answer.",
     "inputSchema": {"type": "object", "properties": {"mark": {"type": "string"}, "seconds": {"type": "number"}},
                     "required": ["mark"]}},
]


def _write(message: dict[str, Any]) -> None:
    line = json.dumps(message) + "\n"
    with _LOCK:
        sys.stdout.write(line)
        sys.stdout.flush()


def _append(path: str, text: str) -> None:
    with open(path, "a") as handle:
        handle.write(text + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _call(msg: dict[str, Any]) -> None:
    params = msg.get("params") or {}
    args = params.get("arguments") or {}
    nonce = str(args.get("mark", ""))
    _append(os.environ["REC_LOG"], nonce)
    token = (params.get("_meta") or {}).get("progressToken")
    if token is not None:  # one notification naming the nonce (the soak checks no other tenant sees it)
        _write({"jsonrpc": "2.0", "method": "notifications/progress",
                "params": {"progressToken": token, "progress": 1, "total": 2, "message": "progress " + nonce}})
    if params.get("name") == "slow_record":
        time.sleep(min(float(args.get("seconds", 1.0)), 30.0))
    result = {"content": [{"type": "text", "text": "ok " + nonce}], "isError": False}
    _write({"jsonrpc": "2.0", "id": msg["id"], "result": result})


def main() -> None:
    _append(os.environ["REC_PIDS"], str(os.getpid()))
    for line in sys.stdin:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        method = msg.get("method")
        if "id" not in msg or method is None:
            continue
        if method == "initialize":
            wanted = (msg.get("params") or {}).get("protocolVersion") or "2025-11-25"
            _write({"jsonrpc": "2.0", "id": msg["id"], "result": {
                "protocolVersion": wanted if wanted in ("2025-06-18", "2025-11-25") else "2025-11-25",
                "capabilities": {"tools": {}}, "serverInfo": {"name": "soak-stdio", "version": "1"}}})
        elif method == "tools/list":
            _write({"jsonrpc": "2.0", "id": msg["id"], "result": {"tools": TOOLS}})
        elif method == "tools/call":
            threading.Thread(target=_call, args=(msg,), daemon=True).start()
        elif method == "ping":
            _write({"jsonrpc": "2.0", "id": msg["id"], "result": {}})
        else:
            _write({"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32601, "message": "method not found"}})


if __name__ == "__main__":
    main()
