"""`CLIENTS`: every supported coding agent by its CLI name, in the order `client list` shows them."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from gateway.clients import (
    claude_code,
    claude_desktop,
    codex,
    cursor,
    gemini,
    generic,
    vscode,
    windsurf,
)
from gateway.clients.model import ClientSpec

CLIENTS: Mapping[str, ClientSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            claude_code.CLIENT,
            codex.CLIENT,
            cursor.CLIENT,
            vscode.CLIENT,
            gemini.CLIENT,
            windsurf.CLIENT,
            claude_desktop.CLIENT,
            generic.CLIENT,
        )
    }
)
