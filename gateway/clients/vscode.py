"""VS Code: `<project>/.vscode/mcp.json` or the user profile's `mcp.json`; top-level `servers`,
`"type": "http"`. The file is JSONC (comments and trailing commas), which we keep.

The token is referenced as `${env:AEGRESS_MCP_GATEWAY_TOKEN}` rather than an `inputs` prompt so
that one `eval "$(aegress client env ...)"` serves every client. No VS Code runs here: this format
is validated by golden files against VS Code's docs only.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from gateway.clients import _jsonc
from gateway.clients._http_entry import entry_from_headers
from gateway.clients._json_config import JsonClient
from gateway.clients._paths import app_config_dir
from gateway.clients.headers import entry_headers, env_ref
from gateway.clients.model import Entry, EntryRequest, Host, Scope


class VSCode(JsonClient):
    name = "vscode"
    title = "VS Code"
    container = "servers"
    dialect = _jsonc.Dialect(comments=True, trailing_commas=True)

    def paths(self, host: Host) -> dict[Scope, PurePath]:
        return {
            "user": app_config_dir(host) / "Code" / "User" / "mcp.json",
            "project": host.project / ".vscode" / "mcp.json",
        }

    def render_entry(self, request: EntryRequest, scope: Scope) -> dict[str, Any]:
        return {
            "type": "http",
            "url": request.url,
            "headers": entry_headers(request.tenant, request.actor, env_ref("env"), request.oauth),
        }

    def entry_from(self, name: str, data: dict[str, Any]) -> Entry | None:
        return entry_from_headers(name, data, url_key="url", ref_prefix="${env:")


CLIENT = VSCode()
