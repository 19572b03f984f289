"""The read-only operator console at `/console`: the Gateway page and its neighbours, server-rendered.

Operators only: an operator token (`aegop_...`, `aegress operator token issue`) as a bearer token or through
the login form's session cookie; an actor token never opens it. No script, no external asset, a strict CSP,
framing denied, nothing cached. It changes nothing: approving reviews stays with `aegress review` (a console
action would need CSRF protection and the CLI's separation-of-duties rules first). See docs/console.md.

    auth.py    credentials, session cookies, security headers (pure)
    data.py    what each page shows: gateway.status counters, policy verdicts, verified evidence
    html.py    the pages (pure)
    app.py     routes, refusals, the worker-thread page builds
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from starlette.routing import Route

if TYPE_CHECKING:
    from gateway.config import ServeSettings
    from gateway.datadir import DataDirLock
    from gateway.transport import McpEndpoint


def console_route(home: Path, settings: ServeSettings, endpoint: McpEndpoint, master_key: bytes,
                  lock: DataDirLock) -> Route:
    """The one route gateway.server mounts: `/console` and everything under it. Building it also records, in
    the data dir's lock file, the facts `aegress status` shows about this gateway (gateway.status)."""
    from gateway.console.app import Console

    return Route("/console{rest:path}", Console(home, settings, endpoint, master_key, lock), methods=None)


__all__ = ["console_route"]
