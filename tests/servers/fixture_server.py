"""A test upstream MCP server built on the official SDK; stdio by default, Streamable HTTP with --http.

Tools exercise what a gateway must relay: progress with nonces, sampling and elicitation round
trips, logs, errors, slow calls. In HTTP mode every request's headers are recorded and exposed by
the `seen_headers` tool, so tests can prove no client credential ever reaches an upstream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp_types import EmptyResult, SamplingMessage, SetLevelRequestParams, TextContent, ToolAnnotations
from pydantic import BaseModel

NAME = os.environ.get("FIXTURE_NAME", "fixture")
server = MCPServer(NAME, instructions=f"Fixture upstream {NAME}.")
SEEN_HEADERS: list[dict[str, str]] = []


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool()
def whoami() -> str:
    """Which fixture server answered (tests tell upstreams apart by it)."""
    return NAME


@server.tool()
async def nonce_echo(nonce: str, steps: int, ctx: Context) -> str:
    """Report `steps` progress notifications carrying the nonce, then return it."""
    for i in range(1, max(0, min(steps, 50)) + 1):
        await ctx.report_progress(i, steps, f"{NAME}:{nonce}:{i}")
        await asyncio.sleep(0)
    return f"{NAME}:{nonce}"


@server.tool()
async def log_and_echo(text: str, ctx: Context) -> str:
    """Send an info log message related to this call, then echo."""
    await ctx.info(f"log:{text}")
    return text


@server.tool()
async def ask_model(prompt: str, ctx: Context) -> str:
    """Ask the client to sample a completion (server -> client request)."""
    result = await ctx.session.create_message(
        messages=[SamplingMessage(role="user", content=TextContent(type="text", text=prompt))], max_tokens=50
    )
    content = result.content
    return f"model said: {getattr(content, 'text', content)}"


class Answer(BaseModel):
    answer: str


@server.tool()
async def ask_user(question: str, ctx: Context) -> str:
    """Ask the client's user through elicitation (form mode)."""
    result = await ctx.elicit(message=question, schema=Answer)
    if result.action == "accept" and result.data is not None:
        return f"user said: {result.data.answer}"
    return f"user {result.action}"


@server.tool()
async def slow_steps(steps: int, seconds: float, ctx: Context) -> str:
    """Report `steps` (at most 50) progress notifications over `seconds` (at most 30), then answer."""
    steps = max(1, min(steps, 50))
    for i in range(1, steps + 1):
        await ctx.report_progress(i, steps, f"step {i}")
        await asyncio.sleep(min(max(seconds, 0.0), 30.0) / steps)
    return f"{steps} steps"


LATER: set[asyncio.Task[None]] = set()


@server.tool()
async def later_list_changed(delay: float, ctx: Context) -> str:
    """Answer at once, then announce tools/list_changed `delay` (at most 10) seconds later: a message no
    call caused, which a gateway sends on its clients' GET streams."""
    session = ctx.session

    async def later() -> None:
        await asyncio.sleep(min(max(delay, 0.0), 10.0))
        await session.send_tool_list_changed()

    task = asyncio.ensure_future(later())
    LATER.add(task)
    task.add_done_callback(LATER.discard)
    return "scheduled"


CANCELLED: list[float] = []


@server.tool()
async def slow(seconds: float) -> str:
    """Sleep (at most 30 s) then answer; a cancellation is counted (see `cancellations`)."""
    try:
        await asyncio.sleep(min(seconds, 30))
    except asyncio.CancelledError:
        CANCELLED.append(seconds)
        raise
    return "done"


@server.tool()
def cancellations() -> str:
    """How many `slow` calls were cancelled."""
    return str(len(CANCELLED))


@server.tool()
def fail(message: str) -> str:
    """Always raise an error."""
    raise ValueError(message)


@server.tool()
def seen_headers() -> str:
    """Every request header this server has received (HTTP mode), as JSON."""
    return json.dumps(SEEN_HEADERS)


@server.tool()
def env_keys() -> str:
    """The names of the environment variables this process got."""
    return json.dumps(sorted(os.environ))


@server.resource("fixture://info", mime_type="text/plain")
def info() -> str:
    """Static text naming the server."""
    return f"info from {NAME}"


@server.resource("fixture://other", mime_type="text/plain")
def other() -> str:
    """A second resource, so filters have something to keep."""
    return f"other from {NAME}"


@server.prompt()
def greet(name: str) -> str:
    """A greeting prompt."""
    return f"Hello {name} from {NAME}"


SET_LEVEL = os.environ.get("FIXTURE_SET_LEVEL", "")
"""`ok` or `hang`: serve `logging/setLevel` (and so advertise logging), answering at once or never (a fan-out's
failing upstream, for tests); unset, the server has no logging capability."""


async def _set_level(ctx: object, params: SetLevelRequestParams) -> EmptyResult:
    if SET_LEVEL == "hang":
        await asyncio.Event().wait()
    return EmptyResult()


if SET_LEVEL in ("ok", "hang"):
    server._lowlevel_server.add_request_handler("logging/setLevel", SetLevelRequestParams, _set_level)


class RecordHeaders:
    def __init__(self, app) -> None:  # type: ignore[no-untyped-def]
        self.app = app

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "http":
            SEEN_HEADERS.append({k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]})
            del SEEN_HEADERS[:-500]
        await self.app(scope, receive, send)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", action="store_true")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if not args.http:
        server.run("stdio")
        return
    import uvicorn

    app = RecordHeaders(server.streamable_http_app())
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart on the same --port
    sock.bind(("127.0.0.1", args.port))
    sock.listen(512)
    print(f"LISTENING http://127.0.0.1:{sock.getsockname()[1]}/mcp", flush=True)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    sys.exit(main())
