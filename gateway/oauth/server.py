"""OAuth mode's HTTP routes, raw ASGI like the MCP endpoint, and how they join the gateway's app.

    GET  /.well-known/oauth-protected-resource[/mcp | /t/<tenant>/mcp]   RFC 9728 metadata
    *    /t/<tenant>/mcp                                                  the MCP endpoint (tenant paths on)

Metadata is built from the configured public URL only (gateway.oauth.resource), and answered with
`Access-Control-Allow-Origin: *` so browser-based clients can discover it. Requests whose Host the
MCP endpoint would refuse are refused here too (DNS rebinding).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.datastructures import Headers

from gateway.errors import ConfigError
from gateway.oauth.resource import PRM_PATH, protected_resource_metadata, tenant_of_path
from gateway.oauth.validator import OAuthValidator
from gateway.transport import host_allowed

if TYPE_CHECKING:
    from gateway.config import ServeSettings
    from gateway.pipeline import Pipeline
    from gateway.store.base import Store
    from gateway.transport import McpEndpoint

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CORS = [(b"access-control-allow-origin", b"*"), (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
        (b"access-control-allow-headers", b"authorization, content-type, mcp-protocol-version"),
        (b"access-control-max-age", b"600")]


async def respond(send: Send, status: int, body: bytes, content_type: bytes = b"application/json",
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", content_type), (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, doc: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await respond(send, status, json.dumps(doc).encode(), headers=headers)


class OAuthRoutes:
    """Everything under /.well-known/ and /oauth/ in OAuth mode."""

    def __init__(self, validator: OAuthValidator, allowed_hosts: tuple[str, ...]) -> None:
        self.validator = validator
        self.settings = validator.settings
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        if not host_allowed(headers.get("host"), self.allowed_hosts):
            await send_json(send, 421, {"error": "invalid_request", "error_description": "Invalid Host header."})
            return
        path, method = scope["path"], scope["method"]
        if path == PRM_PATH or path.startswith(PRM_PATH + "/"):
            await self._resource_metadata(send, method, path[len(PRM_PATH):])
            return
        await send_json(send, 404, {"error": "not_found"})

    async def _resource_metadata(self, send: Send, method: str, rest: str) -> None:
        if method == "OPTIONS":
            await respond(send, 204, b"", headers=CORS)
            return
        if method not in ("GET", "HEAD"):
            await send_json(send, 405, {"error": "method_not_allowed"}, [(b"allow", b"GET, OPTIONS"), *CORS])
            return
        known, tenant = tenant_of_path(rest) if rest else (True, None)
        trust = await self.validator.trust()
        if not known or (tenant is not None and (not self.settings.tenant_paths or tenant not in trust.tenants)):
            await send_json(send, 404, {"error": "not_found"}, CORS)
            return
        servers, scopes = self.validator.resource_servers(trust, tenant)
        await send_json(send, 200, protected_resource_metadata(self.settings, servers, scopes, tenant), CORS)


def mount(app: ASGIApp, endpoint: ASGIApp, routes: OAuthRoutes) -> ASGIApp:
    """The gateway's app with OAuth mode's routes in front: /.well-known/ and /oauth/ to `routes`, the
    per-tenant MCP paths to the MCP endpoint (which authenticates them against their own resource)."""
    tenant_paths = routes.settings.tenant_paths

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith(("/.well-known/", "/oauth/")):
                await routes(scope, receive, send)
                return
            if tenant_paths and path.startswith("/t/") and tenant_of_path(path)[0]:
                await endpoint(scope, receive, send)
                return
        await app(scope, receive, send)

    return dispatch


def enable(home: Path, store: Store, settings: ServeSettings, pipeline: Pipeline, endpoint: McpEndpoint,
           app: ASGIApp) -> ASGIApp:
    """Turn OAuth mode on for a built gateway: the validator becomes the authenticate stage, the public
    URL's host is accepted, and the routes go in front of `app`."""
    from urllib.parse import urlsplit

    from gateway.admin import now_iso
    from gateway.oauth import keys
    from gateway.oauth.resource import OAuthSettings

    if not settings.public_url:
        raise ConfigError("OAuth mode needs the gateway's public URL.", hint="Pass --public-url https://...",
                          code="public-url")
    oauth = OAuthSettings.from_env(settings.public_url, tenant_paths=settings.oauth_tenant_paths or None)
    validator = OAuthValidator(store, oauth, home, keys.load(home, now_iso()))
    pipeline.oauth = validator
    host = urlsplit(oauth.public_url).netloc
    endpoint.allowed_hosts = (*endpoint.allowed_hosts, host)
    routes = OAuthRoutes(validator, endpoint.allowed_hosts)
    return mount(app, endpoint, routes)
