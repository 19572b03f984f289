"""A harmless stdio MCP server for the demo tenant: every verdict of the policy gate can be shown on it.

Tools: echo, add, get_time (read-only); write_note (writes, not destructive); delete_note
(destructive); shell_preview (only prints what a shell command would be; the demo policy blocks it).
Notes live in memory and vanish when the process ends.
"""

from __future__ import annotations

from datetime import UTC, datetime

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


if __name__ == "__main__":
    server.run("stdio")
