"""Per-OS application config directories, computed from a `Host` (no reads of the real env)."""

from __future__ import annotations

from pathlib import PurePath

from gateway.clients.model import Host


def app_config_dir(host: Host) -> PurePath:
    """Where desktop apps (VS Code, Claude Desktop) keep per-user config on this platform."""
    if host.platform == "darwin":
        return host.home / "Library" / "Application Support"
    if host.platform == "win32":
        appdata = host.env.get("APPDATA")
        return PurePath(appdata) if appdata else host.home / "AppData" / "Roaming"
    xdg = host.env.get("XDG_CONFIG_HOME")
    return PurePath(xdg) if xdg else host.home / ".config"
