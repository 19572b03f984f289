"""`aegress bridge`: a stdio MCP server that relays every message to the gateway over Streamable HTTP.

For clients that start stdio servers only (Claude Desktop). The token comes from the keyring (or the
data dir's 0600 file), else from AEGRESS_MCP_GATEWAY_TOKEN; it never appears in the client's config.
stdout carries only MCP messages; logs go to stderr.
"""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from aegress_cli._common import ActorOpt, TenantOpt, handle_errors

DEFAULT_URL = "http://127.0.0.1:8765/mcp"


@handle_errors
def bridge(
    tenant: TenantOpt,
    actor: ActorOpt,
    url: Annotated[str, typer.Option("--url", envvar="AEGRESS_URL", help="The gateway's MCP endpoint.")] = DEFAULT_URL,
    listen: Annotated[bool, typer.Option("--listen/--no-listen", help="Open the optional GET stream for "
                                         "server messages that no request caused.")] = True,
    request_timeout: Annotated[float, typer.Option("--request-timeout", help="Seconds to wait for one "
                                                   "answer (long tool calls need more).")] = 600.0,
    log_level: Annotated[Literal["debug", "info", "warning", "error"], typer.Option(
        envvar="AEGRESS_LOG_LEVEL", case_sensitive=False, help="How much it logs (to stderr).")] = "warning",
) -> None:
    """Run a stdio MCP server that forwards everything to the gateway (for Claude Desktop)."""
    import asyncio
    import contextlib
    import logging
    import sys

    from aegress_cli.client import resolve_token
    from gateway.bridge import run_stdio
    from gateway.clients import EntryRequest, gateway_headers
    from gateway.errors import NotFound

    EntryRequest(url=url, tenant=tenant, actor=actor)  # the same checks setup applies
    logging.basicConfig(stream=sys.stderr, level=log_level.upper(), format="aegress bridge: %(levelname)s %(message)s")
    if log_level.lower() != "debug":
        logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line per request is noise
    token = resolve_token(tenant, actor)
    if token is None:
        raise NotFound(
            f"no token for actor {actor!r} in tenant {tenant!r} in the keyring or AEGRESS_MCP_GATEWAY_TOKEN",
            hint="Run `aegress token issue --tenant T --actor A` on this machine.",
        )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_stdio(url, gateway_headers(token, tenant, actor), stdin=sys.stdin.buffer,
                              stdout=sys.stdout.buffer, listen=listen, request_timeout=request_timeout))
