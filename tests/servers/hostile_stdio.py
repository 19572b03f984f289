"""A hostile stdio MCP upstream, raw newline-delimited JSON-RPC (no SDK, so it can break the rules).

Tools: `huge` answers with one line of `kib` KiB; `pid` names the process (tests prove it survived);
`wrong_id` answers under an id it was never sent; `fail` answers with a long error message and a `data`
holding a stack trace and an internal host name; `env` echoes an environment variable back; `slow`
sleeps before answering; `leak` answers with an error (code -32042, whose data always passes) whose
message and data quote the environment variable `name` (an injected credential).
With `--never-init` it reads everything and answers nothing (a black hole);
with `--silent-after-init` it answers the handshake and then nothing (a black hole that looks alive).
It exits when its stdin closes.
"""

from __future__ import annotations

import json
import os
import sys
import time

TOOLS = ["huge", "pid", "wrong_id", "fail", "env", "slow", "echo", "leak"]
INTERNAL = "db-7.internal.corp:5432"


def _write(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _text(msg_id: int, text: str) -> None:
    _write({"jsonrpc": "2.0", "id": msg_id, "result": {"content": [{"type": "text", "text": text}]}})


def _huge(msg_id: int, kib: int) -> None:
    """One line of `kib` KiB, written in pieces so this process never holds it whole either."""
    out = sys.stdout.buffer
    out.write(b'{"jsonrpc":"2.0","id":%d,"result":{"content":[{"type":"text","text":"' % msg_id)
    piece = b"x" * 1024
    for _ in range(kib):
        out.write(piece)
    out.write(b'"}]}}\n')
    out.flush()


def _call(msg_id: int, name: str, args: dict) -> None:
    if name == "huge":
        _huge(msg_id, int(args.get("kib", 1024)))
    elif name == "pid":
        _text(msg_id, str(os.getpid()))
    elif name == "wrong_id":
        _text(msg_id + 1000, "for nobody")
    elif name == "fail":
        _write({"jsonrpc": "2.0", "id": msg_id, "error": {
            "code": -32050, "message": "E" * 5000,
            "data": {"trace": f"Traceback (most recent call last): connect to {INTERNAL} refused"}}})
    elif name == "env":
        _text(msg_id, f"{args.get('name')}={os.environ.get(str(args.get('name')), '')}")
    elif name == "leak":
        value = os.environ.get(str(args.get("name")), "")
        _write({"jsonrpc": "2.0", "id": msg_id, "error": {
            "code": -32042, "message": f"rejected credential {value} for this call",
            "data": {"sent": value, "nested": [{f"key-{value}": value}]}}})
    elif name == "slow":
        time.sleep(float(args.get("seconds", 3)))
        _text(msg_id, "slept")
    else:
        _text(msg_id, str(args.get("text", "")))


def main() -> None:
    never_init = "--never-init" in sys.argv
    silent_after_init = "--silent-after-init" in sys.argv
    for line in sys.stdin:
        if never_init or not line.strip():
            continue
        msg = json.loads(line)
        method, msg_id = msg.get("method"), msg.get("id")
        if msg_id is None or (silent_after_init and method != "initialize"):
            continue  # notifications; or playing dead after the handshake
        if method == "initialize":
            _write({"jsonrpc": "2.0", "id": msg_id, "result": {
                "protocolVersion": msg["params"]["protocolVersion"], "capabilities": {"tools": {}},
                "serverInfo": {"name": "hostile", "version": "1"}}})
        elif method == "tools/list":
            schema = {"type": "object", "additionalProperties": True}
            _write({"jsonrpc": "2.0", "id": msg_id, "result": {"tools": [
                {"name": n, "description": f"hostile {n}", "inputSchema": schema} for n in TOOLS]}})
        elif method == "tools/call":
            params = msg.get("params") or {}
            _call(msg_id, str(params.get("name")), params.get("arguments") or {})
        elif method == "ping":
            _write({"jsonrpc": "2.0", "id": msg_id, "result": {}})
        else:
            _write({"jsonrpc": "2.0", "id": msg_id, "error": {"code": -32601, "message": "Method not found"}})


if __name__ == "__main__":
    main()
