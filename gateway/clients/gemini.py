"""Gemini CLI: `~/.gemini/settings.json` or `<project>/.gemini/settings.json`, `mcpServers` with
`"type": "http"`, `url`, `headers`.

Gemini strips comments from settings.json (kept by us) but rejects trailing commas. It expands
`$VAR` and `${VAR}` in settings values; we write `${AEGRESS_MCP_GATEWAY_TOKEN}`.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from gateway.clients import _jsonc
from gateway.clients._http_entry import entry_from_headers
from gateway.clients._json_config import JsonClient
from gateway.clients.headers import entry_headers, env_ref
from gateway.clients.model import Entry, EntryRequest, Host, Scope


class Gemini(JsonClient):
    name = "gemini"
    title = "Gemini CLI"
    dialect = _jsonc.Dialect(comments=True)

    def paths(self, host: Host) -> dict[Scope, PurePath]:
        return {
            "user": host.home / ".gemini" / "settings.json",
            "project": host.project / ".gemini" / "settings.json",
        }

    def render_entry(self, request: EntryRequest, scope: Scope) -> dict[str, Any]:
        return {
            "type": "http",
            "url": request.url,
            "headers": entry_headers(request.tenant, request.actor, env_ref("plain"), request.oauth),
        }

    def entry_from(self, name: str, data: dict[str, Any]) -> Entry | None:
        url_key = "url" if "url" in data else "httpUrl"
        return entry_from_headers(name, data, url_key=url_key, ref_prefix="${")


CLIENT = Gemini()
