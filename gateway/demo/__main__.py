"""A harmless stdio MCP server for the demo tenant: every verdict of the policy gate can be shown on it.

Tools: echo, add, get_time (read-only); write_note (writes, not destructive); delete_note
(destructive); shell_preview (only prints what a shell command would be; the demo policy blocks it).
Notes live in memory and vanish when the process ends.

`python -m gateway.demo` speaks stdio. `python -m gateway.demo --http [--port N]` serves the same tools
over Streamable HTTP on 127.0.0.1 to callers that send `Authorization: Bearer $AEGRESS_DEMO_TOKEN`: an
upstream that needs a secret, as in docs/quickstart.md.
"""

from __future__ import annotations

import hmac
import os
import sys
from datetime import UTC, datetime
from typing import Any

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp_types import ToolAnnotations

server = MCPServer("aegress-demo", instructions="Demo tools for trying out the Aegress gateway.")
_notes: dict[str, str] = {}

READ_ONLY = ToolAnnotations(readOnlyHint=True, destructiveHint=False, idempotentHint=True, openWorldHint=False)


@server.tool(annotations=READ_ONLY)
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool(annotations=READ_ONLY)
def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


@server.tool(annotations=READ_ONLY)
def get_time() -> str:
    """The current UTC time (ISO 8601)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@server.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=False, openWorldHint=False))
def write_note(name: str, text: str) -> str:
    """Store a note in memory under a name."""
    _notes[name] = text
    return f"saved note {name!r} ({len(text)} characters)"


@server.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=True, openWorldHint=False))
def delete_note(name: str) -> str:
    """Delete a note (destructive)."""
    if _notes.pop(name, None) is None:
        return f"no note {name!r}"
    return f"deleted note {name!r}"


@server.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=True, openWorldHint=True))
def shell_preview(command: str) -> str:
    """Show what would run in a shell. It never runs anything; the demo policy blocks it anyway."""
    return f"would run: {command}"


@server.tool(annotations=READ_ONLY)
async def count_slowly(n: int, ctx: Context) -> str:
    """Count to n (at most 20), reporting progress at each step."""
    n = max(0, min(n, 20))
    for i in range(1, n + 1):
        await ctx.report_progress(i, n, f"step {i}")
    return f"counted to {n}"


@server.resource("demo://notes", mime_type="application/json")
def notes() -> dict[str, str]:
    """All notes, as JSON."""
    return dict(_notes)


@server.prompt()
def summarize_notes(style: str = "short") -> str:
    """Ask the model to summarise the notes."""
    return f"Summarise these notes in a {style} style: {sorted(_notes)}"


TOKEN_ENV = "AEGRESS_DEMO_TOKEN"
"""With --http: the bearer token callers must send (an HTTP upstream that needs a secret, for the quickstart)."""


def _require_bearer(app: Any, token: str) -> Any:
    """ASGI: refuse (401) any HTTP request without `Authorization: Bearer <token>`."""
    expected = f"Bearer {token}".encode()

    async def guarded(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not hmac.compare_digest(dict(scope["headers"]).get(b"authorization", b""),
                                                               expected):
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")]})
            await send({"type": "http.response.body", "body": b"a bearer token is required\n"})
            return
        await app(scope, receive, send)

    return guarded


def serve_http(port: int) -> None:
    """Serve the demo over Streamable HTTP on 127.0.0.1:`port` (0: any free port), for callers that send the
    bearer token in AEGRESS_DEMO_TOKEN; prints `listening on URL` once it accepts connections."""
    import socket

    import uvicorn

    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        sys.exit(f"Set {TOKEN_ENV} to the bearer token callers must send.")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    app = _require_bearer(server.streamable_http_app(), token)
    print(f"Demo MCP server listening on http://127.0.0.1:{sock.getsockname()[1]}/mcp", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


def main(argv: list[str]) -> None:
    if "--http" not in argv:
        server.run("stdio")
        return
    port = int(argv[argv.index("--port") + 1]) if "--port" in argv else 0
    serve_http(port)


if __name__ == "__main__":
    main(sys.argv[1:])
