"""Cursor: `~/.cursor/mcp.json` or `<project>/.cursor/mcp.json`, `mcpServers` -> `url`, `headers`.

The token is referenced as `${env:AEGRESS_MCP_GATEWAY_TOKEN}` (Cursor's interpolation syntax).
No Cursor binary runs here: this format is validated by golden files against Cursor's docs only.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from gateway.clients._http_entry import entry_from_headers
from gateway.clients._json_config import JsonClient
from gateway.clients.headers import entry_headers, env_ref
from gateway.clients.model import Entry, EntryRequest, Host, Scope


class Cursor(JsonClient):
    name = "cursor"
    title = "Cursor"

    def paths(self, host: Host) -> dict[Scope, PurePath]:
        return {
            "user": host.home / ".cursor" / "mcp.json",
            "project": host.project / ".cursor" / "mcp.json",
        }

    def render_entry(self, request: EntryRequest, scope: Scope) -> dict[str, Any]:
        return {
            "url": request.url,
            "headers": entry_headers(request.tenant, request.actor, env_ref("env"), request.oauth),
        }

    def entry_from(self, name: str, data: dict[str, Any]) -> Entry | None:
        return entry_from_headers(name, data, url_key="url", ref_prefix="${env:")


CLIENT = Cursor()
