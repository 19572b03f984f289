"""Claude Desktop: `claude_desktop_config.json` in the OS app-config dir, `mcpServers`, stdio only.

Its entry runs `aegress bridge`, a stdio to Streamable HTTP bridge that reads the token from the
keyring, so the file holds no secret. Desktop apps start with a minimal PATH: the CLI should pass
an absolute `aegress_command`.

In OAuth mode there is no file entry to write: Claude Desktop adds remote servers that sign in (MCP
authorization) under Settings -> Connectors -> Add custom connector, by URL. `OAUTH_STEPS` says so;
`aegress client setup claude-desktop --auth oauth` prints it instead of writing the file.
"""

from __future__ import annotations

import shlex
from pathlib import PurePath
from typing import Any

from gateway.clients._json_config import JsonClient
from gateway.clients._paths import app_config_dir
from gateway.clients.model import Entry, EntryRequest, Host, Scope
from gateway.errors import UsageError


def bridge_argv(request: EntryRequest) -> list[str]:
    """The full argv Claude Desktop will spawn."""
    return [
        *request.aegress_command,
        "bridge",
        "--url",
        request.url,
        "--tenant",
        request.tenant,
        "--actor",
        request.actor,
    ]


def oauth_steps(request: EntryRequest) -> str:
    """What to do in Claude Desktop for an OAuth-mode gateway (no config file takes a remote server)."""
    return ("# Claude Desktop connects to an OAuth-mode gateway as a custom connector (no config file entry):\n"
            "#   Settings -> Connectors -> Add custom connector\n"
            f"#   Name: {request.name}\n#   Remote MCP server URL: {request.url}\n"
            "# Then choose Connect: a browser window opens to sign in and consent"
            f" (tenant {request.tenant}).\n")


class ClaudeDesktop(JsonClient):
    name = "claude-desktop"
    title = "Claude Desktop"
    scopes: tuple[Scope, ...] = ("user",)

    def paths(self, host: Host) -> dict[Scope, PurePath]:
        return {"user": app_config_dir(host) / "Claude" / "claude_desktop_config.json"}

    def render_entry(self, request: EntryRequest, scope: Scope) -> dict[str, Any]:
        if request.oauth:
            raise UsageError("Claude Desktop takes an OAuth-mode gateway as a custom connector, not a config "
                             "file entry.", hint="Settings -> Connectors -> Add custom connector, with the URL "
                             f"{request.url}.")
        argv = bridge_argv(request)
        return {"command": argv[0], "args": argv[1:]}

    def entry_from(self, name: str, data: dict[str, Any]) -> Entry | None:
        command, args = data.get("command"), data.get("args")
        if not isinstance(command, str) or not isinstance(args, list):
            return None
        argv = [command, *(a for a in args if isinstance(a, str))]
        if "bridge" not in argv:
            return None
        rest = argv[argv.index("bridge") + 1 :]
        options = {rest[i]: rest[i + 1] for i in range(len(rest) - 1) if rest[i].startswith("--")}
        if "--tenant" not in options and "--actor" not in options:
            return None
        return Entry(
            name,
            options.get("--url"),
            options.get("--tenant"),
            options.get("--actor"),
            helper=shlex.join(argv),
        )


CLIENT = ClaudeDesktop()
