"""Windsurf: `~/.codeium/windsurf/mcp_config.json` (user scope only), `mcpServers` -> `serverUrl`
and `headers`; the token as `${env:AEGRESS_MCP_GATEWAY_TOKEN}` (Windsurf's interpolation).

No Windsurf runs here: this format is validated by golden files against Windsurf's docs only.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from gateway.clients._http_entry import entry_from_headers
from gateway.clients._json_config import JsonClient
from gateway.clients.headers import entry_headers, env_ref
from gateway.clients.model import Entry, EntryRequest, Host, Scope


class Windsurf(JsonClient):
    name = "windsurf"
    title = "Windsurf"
    scopes: tuple[Scope, ...] = ("user",)

    def paths(self, host: Host) -> dict[Scope, PurePath]:
        return {"user": host.home / ".codeium" / "windsurf" / "mcp_config.json"}

    def render_entry(self, request: EntryRequest, scope: Scope) -> dict[str, Any]:
        return {
            "serverUrl": request.url,
            "headers": entry_headers(request.tenant, request.actor, env_ref("env"), request.oauth),
        }

    def entry_from(self, name: str, data: dict[str, Any]) -> Entry | None:
        return entry_from_headers(name, data, url_key="serverUrl", ref_prefix="${env:")


CLIENT = Windsurf()
