"""Claude Code: user scope in `~/.claude.json`, project scope in `.mcp.json` (key `mcpServers`).

User scope uses `headersHelper`, a shell command Claude Code runs to get headers as JSON: it runs
`aegress client headers`, which reads the token from the keyring, so no secret sits in any file or
environment. Project files get committed, so they reference `${AEGRESS_MCP_GATEWAY_TOKEN}`, which
Claude Code expands in url and headers (an unset one is sent literally and fails auth, visibly).
"""

from __future__ import annotations

import shlex
from pathlib import PurePath
from typing import Any

from gateway.clients._json_config import JsonClient, env_reference, header
from gateway.clients.headers import env_headers, env_ref, oauth_headers
from gateway.clients.model import (
    ACTOR_HEADER,
    TENANT_HEADER,
    Entry,
    EntryRequest,
    Host,
    Scope,
)


def headers_helper_command(request: EntryRequest) -> str:
    """The shell command Claude Code runs for headers; every part quoted for the shell."""
    argv = [*request.aegress_command, "client", "headers"]
    argv += ["--tenant", request.tenant, "--actor", request.actor]
    return shlex.join(argv)


def _helper_identity(command: str) -> tuple[str, str] | None:
    """(tenant, actor) from a headersHelper we wrote, or None if it is someone else's."""
    try:
        argv = shlex.split(command)
    except ValueError:
        return None
    for i in range(len(argv) - 1):
        if argv[i : i + 2] == ["client", "headers"]:
            options = _options(argv[i + 2 :])
            if "--tenant" in options and "--actor" in options:
                return options["--tenant"], options["--actor"]
    return None


def _options(argv: list[str]) -> dict[str, str]:
    return {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}


class ClaudeCode(JsonClient):
    name = "claude-code"
    title = "Claude Code"

    def paths(self, host: Host) -> dict[Scope, PurePath]:
        # CLAUDE_CONFIG_DIR moves Claude Code's global config file with it.
        config_dir = host.env.get("CLAUDE_CONFIG_DIR")
        user = PurePath(config_dir) if config_dir else host.home
        return {"user": user / ".claude.json", "project": host.project / ".mcp.json"}

    def render_entry(self, request: EntryRequest, scope: Scope) -> dict[str, Any]:
        if request.oauth:  # Claude Code signs in itself on the gateway's 401 (`/mcp` -> Authenticate)
            return {"type": "http", "url": request.url, "headers": oauth_headers(request.tenant, request.actor)}
        if scope == "user":
            return {"type": "http", "url": request.url, "headersHelper": headers_helper_command(request)}
        return {
            "type": "http",
            "url": request.url,
            "headers": env_headers(request.tenant, request.actor, env_ref("plain")),
        }

    def entry_from(self, name: str, data: dict[str, Any]) -> Entry | None:
        url = data.get("url") if isinstance(data.get("url"), str) else None
        helper = data.get("headersHelper")
        if isinstance(helper, str) and (identity := _helper_identity(helper)):
            return Entry(name, url, identity[0], identity[1], helper=helper)
        headers = data.get("headers")
        tenant, actor = header(headers, TENANT_HEADER), header(headers, ACTOR_HEADER)
        if tenant is None and actor is None:
            return None
        token_env = env_reference(header(headers, "Authorization"), "${", "}")
        return Entry(name, url, tenant, actor, token_env=token_env)


CLIENT = ClaudeCode()
