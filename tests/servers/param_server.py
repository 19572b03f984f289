"""A stdio upstream whose one tool declares an `x-mcp-header` argument (2026-07-28 `Mcp-Param-Region`)."""

from __future__ import annotations

from typing import Annotated

from mcp.server import MCPServer
from pydantic import Field

server = MCPServer("params")


@server.tool()
def route(region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})], text: str) -> str:
    """Answer with the region the call was routed on and the text."""
    return f"{region}:{text}"


if __name__ == "__main__":
    server.run("stdio")
