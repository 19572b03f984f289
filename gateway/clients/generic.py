"""Any other MCP client: print a Streamable HTTP config snippet and a curl check; write no file.

The token appears only as `$AEGRESS_MCP_GATEWAY_TOKEN` (curl, expanded by the user's shell) or
`${AEGRESS_MCP_GATEWAY_TOKEN}` (the snippet, to adapt to the client's own env syntax).
"""

from __future__ import annotations

import json
import shlex
from pathlib import PurePath
from typing import Any

from gateway.clients.headers import entry_headers, env_ref
from gateway.clients.model import (
    ACTOR_HEADER,
    TENANT_HEADER,
    TOKEN_ENV,
    Entry,
    EntryRequest,
    Host,
    Scope,
    check_scope,
)

# `initialize` works on stateful and stateless servers alike (a bare `ping` may need a session).
_INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "curl", "version": "0"},
    },
}


def curl_command(request: EntryRequest) -> str:
    """A shell command that proves the gateway answers for this tenant and actor."""
    auth = f'-H "Authorization: Bearer ${TOKEN_ENV}"'  # double quotes: the shell expands it
    parts = [
        "curl -sS -X POST",
        shlex.quote(request.url),
        auth,
        "-H " + shlex.quote(f"{TENANT_HEADER}: {request.tenant}"),
        "-H " + shlex.quote(f"{ACTOR_HEADER}: {request.actor}"),
        "-H 'Content-Type: application/json'",
        "-H 'Accept: application/json, text/event-stream'",
        "--data " + shlex.quote(json.dumps(_INITIALIZE, separators=(",", ":"))),
    ]
    return " \\\n  ".join(parts)


class Generic:
    name = "generic"
    title = "Any Streamable HTTP client"
    scopes: tuple[Scope, ...] = ()

    def config_path(self, host: Host, scope: Scope) -> PurePath:
        check_scope(self, scope)
        raise AssertionError("unreachable")  # pragma: no cover

    def new_file_mode(self, scope: Scope) -> int:
        return 0o600

    def render_entry(self, request: EntryRequest, scope: Scope) -> dict[str, Any]:
        return {
            "type": "http",
            "url": request.url,
            "headers": entry_headers(request.tenant, request.actor, env_ref("plain"), request.oauth),
        }

    def snippet(self, request: EntryRequest, scope: Scope = "user") -> str:
        config = {"mcpServers": {request.name: self.render_entry(request, scope)}}
        if request.oauth:
            return (
                "# Streamable HTTP MCP server in OAuth mode: no token anywhere. The client signs in itself\n"
                "# (MCP authorization): on the gateway's 401 it reads the resource metadata, registers,\n"
                "# and opens a browser for sign-in and consent.\n"
                + json.dumps(config, indent=2, ensure_ascii=False)
                + "\n\n# Check the gateway asks for sign-in (401 with a resource_metadata challenge):\n"
                + f"curl -sS -o /dev/null -D - -X POST {shlex.quote(request.url)} | grep -i www-authenticate\n"
            )
        return (
            "# Streamable HTTP MCP server. Write ${"
            + TOKEN_ENV
            + "} in your client's env-variable syntax; never paste the token itself.\n"
            + json.dumps(config, indent=2, ensure_ascii=False)
            + "\n\n# Check the gateway answers (export "
            + TOKEN_ENV
            + " first, e.g. with `aegress client env`):\n"
            + curl_command(request)
            + "\n"
        )

    def merge(self, existing: str | None, request: EntryRequest, scope: Scope, *, source: str = "config file") -> str:
        check_scope(self, scope)
        raise AssertionError("unreachable")  # pragma: no cover

    def remove(self, existing: str | None, name: str, *, source: str = "config file") -> str | None:
        return existing  # nothing was written, so nothing to remove

    def read_entries(self, existing: str | None, *, source: str = "config file") -> list[Entry]:
        return []


CLIENT = Generic()
