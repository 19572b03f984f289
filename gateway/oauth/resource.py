"""Settings, canonical resource URIs and the metadata documents of OAuth mode; pure but for `from_env`.

Every URL the gateway publishes is built from the configured public URL (`--public-url`), never from
the request's Host or forwarded headers: a client that reached the gateway through a rebinding or a
spoofed header must not learn (or be sent to) an address the operator did not choose.

    canonical resource        <public>/mcp                 (RFC 8707; a token's `aud` must name it)
    per tenant (option)       <public>/t/<tenant>/mcp      (the audience itself binds the tenant)
    resource metadata         <public>/.well-known/oauth-protected-resource[/mcp | /t/<tenant>/mcp]
    authorization server      issuer <public>, metadata at <public>/.well-known/oauth-authorization-server
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gateway.errors import ConfigError
from gateway.naming import is_valid_id
from gateway.store.base import TrustedIssuer

PRM_PATH = "/.well-known/oauth-protected-resource"
ASM_PATH = "/.well-known/oauth-authorization-server"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_SCOPE = "mcp"


def check_public_url(url: str) -> str:
    """The public URL normalised (lower-case scheme and host, no trailing slash), or ConfigError: https, or
    http on a loopback host only; an origin (no path, query, fragment or credentials)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    hint = "Pass the address clients use, e.g. --public-url https://gw.example.com (an origin, no path)."
    if scheme not in ("http", "https") or not host:
        raise ConfigError(f"The public URL {url!r} is not an http(s) URL with a host.", hint=hint, code="public-url")
    if scheme == "http" and host not in LOOPBACK_HOSTS:
        raise ConfigError(f"The public URL {url!r} must use https (http only on a loopback address).",
                          hint="Put TLS in front of the gateway and give its https:// address.", code="public-url")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"The public URL {url!r} must be an origin: no path, query, fragment or credentials.",
                          hint=hint, code="public-url")
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return f"{scheme}://{netloc}"


def _env_int(name: str, default: int, low: int, high: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a whole number.", hint=f"Use {low}..{high}.") from exc
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range.", hint=f"Use {low}..{high}.")
    return value


@dataclass(frozen=True, slots=True)
class OAuthSettings:
    """OAuth mode's settings (docs/oauth.md); `public_url` is an origin checked by `check_public_url`."""

    public_url: str
    tenant_paths: bool = False
    scope: str = DEFAULT_SCOPE
    access_ttl_s: int = 300
    refresh_ttl_s: int = 30 * 24 * 3600
    code_ttl_s: int = 60
    session_ttl_s: int = 3600
    jwks_min_refresh_s: int = 30
    jwks_max_age_s: int = 3600
    metadata_allow_private: bool = False
    metadata_documents: bool = True

    @classmethod
    def from_env(cls, public_url: str, *, tenant_paths: bool | None = None) -> OAuthSettings:
        """AEGRESS_OAUTH_* variables (docs/oauth.md) around the public URL."""
        paths = os.environ.get("AEGRESS_OAUTH_TENANT_PATHS", "").lower() in ("1", "on", "true", "yes")
        scope = os.environ.get("AEGRESS_OAUTH_SCOPE", DEFAULT_SCOPE).strip() or DEFAULT_SCOPE
        if not all(c.isascii() and c.isprintable() and c not in ' "\\' for c in scope):
            raise ConfigError(f"AEGRESS_OAUTH_SCOPE={scope!r} is not one scope token.", hint="Use e.g. mcp.")
        return cls(
            public_url=check_public_url(public_url),
            tenant_paths=paths if tenant_paths is None else tenant_paths,
            scope=scope,
            access_ttl_s=_env_int("AEGRESS_OAUTH_ACCESS_TTL", 300, 5, 3600),
            refresh_ttl_s=_env_int("AEGRESS_OAUTH_REFRESH_TTL", 30 * 24 * 3600, 60, 365 * 24 * 3600),
            code_ttl_s=_env_int("AEGRESS_OAUTH_CODE_TTL", 60, 5, 600),
            session_ttl_s=_env_int("AEGRESS_OAUTH_SESSION_TTL", 3600, 60, 7 * 24 * 3600),
            jwks_min_refresh_s=_env_int("AEGRESS_OAUTH_JWKS_MIN_REFRESH", 30, 1, 3600),
            jwks_max_age_s=_env_int("AEGRESS_OAUTH_JWKS_MAX_AGE", 3600, 60, 7 * 24 * 3600),
            metadata_allow_private=os.environ.get("AEGRESS_OAUTH_METADATA_ALLOW_PRIVATE", "").lower()
            in ("1", "on", "true", "yes"),
            # a gateway that cannot reach the internet turns documents off, so clients register instead
            metadata_documents=os.environ.get("AEGRESS_OAUTH_METADATA_DOCUMENTS", "on").lower()
            not in ("0", "off", "false", "no"),
        )

    # -- URIs ---------------------------------------------------------------------------------------
    @property
    def issuer(self) -> str:
        """The embedded authorization server's issuer identifier (RFC 8414): the public origin."""
        return self.public_url

    def resource(self, tenant: str | None = None) -> str:
        """The canonical resource URI: shared, or a tenant's own (`/t/<tenant>/mcp`)."""
        return self.public_url + resource_path(tenant)

    def metadata_url(self, tenant: str | None = None) -> str:
        return self.public_url + PRM_PATH + resource_path(tenant)

    def endpoint(self, name: str) -> str:
        return f"{self.public_url}/oauth/{name}"

    def tenant_of_resource(self, resource: str) -> tuple[bool, str | None]:
        """Is `resource` one of ours, and which tenant's (None: the shared one)? Exact string match."""
        if resource == self.resource():
            return True, None
        prefix = self.public_url + "/t/"
        if self.tenant_paths and resource.startswith(prefix) and resource.endswith("/mcp"):
            tenant = resource[len(prefix):-len("/mcp")]
            if is_valid_id(tenant):
                return True, tenant
        return False, None


def resource_path(tenant: str | None) -> str:
    return "/mcp" if tenant is None else f"/t/{tenant}/mcp"


def tenant_of_path(path: str) -> tuple[bool, str | None]:
    """Pure: is `path` an MCP endpoint, and of which tenant? `/mcp` -> (True, None); `/t/<id>/mcp` ->
    (True, id) for a valid id; anything else (False, None)."""
    if path == "/mcp":
        return True, None
    if path.startswith("/t/") and path.endswith("/mcp"):
        tenant = path[3:-4]
        if is_valid_id(tenant):
            return True, tenant
    return False, None


# -- which authorization servers a resource names ----------------------------------------------------
def issuers_for(settings: OAuthSettings, trusted: Sequence[TrustedIssuer], tenants: Iterable[str],
                tenant: str | None) -> list[str]:
    """The authorization servers a resource's metadata lists, first the one clients will use.

    A tenant's own resource: the identity providers it trusts, or the embedded server when it trusts
    none. The shared resource: the embedded server first when any tenant signs in there (or there are no
    tenants yet), then every trusted identity provider."""
    if tenant is not None:
        own = [t.issuer for t in trusted if t.tenant_id == tenant]
        return _unique(own) or [settings.issuer]
    external = {t.tenant_id for t in trusted}
    names = [t for t in tenants]
    embedded = not names or any(t not in external for t in names)
    return _unique(([settings.issuer] if embedded else []) + [t.issuer for t in trusted])


def scopes_for(settings: OAuthSettings, trusted: Sequence[TrustedIssuer], tenant: str | None,
               first_issuer: str) -> list[str]:
    """The scopes a client should ask for: the embedded server's, or what the first listed identity
    provider's trust entries require of a token (the challenge's `scope`, RFC 6750 3)."""
    if first_issuer == settings.issuer:
        return [settings.scope]
    wanted: list[str] = []
    for entry in trusted:
        if entry.issuer == first_issuer and (tenant is None or entry.tenant_id == tenant):
            wanted += entry.scopes
    return _unique(wanted)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def protected_resource_metadata(settings: OAuthSettings, servers: list[str], scopes: list[str],
                                tenant: str | None) -> dict[str, Any]:
    """RFC 9728 section 2: `resource` is the canonical URI exactly; tokens only in the header."""
    doc: dict[str, Any] = {
        "resource": settings.resource(tenant),
        "authorization_servers": servers,
        "bearer_methods_supported": ["header"],
        "resource_name": "Aegress MCP gateway" + (f" (tenant {tenant})" if tenant else ""),
    }
    if scopes:
        doc["scopes_supported"] = scopes
    return doc


def authorization_server_metadata(settings: OAuthSettings) -> dict[str, Any]:
    """RFC 8414 section 2, for the embedded authorization server."""
    auth_methods = ["none", "client_secret_basic", "client_secret_post"]
    return {
        "issuer": settings.issuer,
        "authorization_endpoint": settings.endpoint("authorize"),
        "token_endpoint": settings.endpoint("token"),
        "registration_endpoint": settings.endpoint("register"),
        "revocation_endpoint": settings.endpoint("revoke"),
        "jwks_uri": settings.endpoint("jwks"),
        "scopes_supported": [settings.scope],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "code_challenge_methods_supported": ["S256"],
        "client_id_metadata_document_supported": settings.metadata_documents,
        "authorization_response_iss_parameter_supported": True,
    }


def challenge(settings: OAuthSettings, tenant: str | None, scopes: Sequence[str], error: str | None = None,
              description: str | None = None) -> str:
    """The WWW-Authenticate value (RFC 6750 3, RFC 9728 5.1). No `error` when no token was sent."""
    parts = ['Bearer realm="aegress"', f'resource_metadata="{settings.metadata_url(tenant)}"']
    if scopes:
        parts.append(f'scope="{" ".join(scopes)}"')
    if error:
        parts.append(f'error="{error}"')
    if description:
        safe = "".join(c for c in description if c.isascii() and c.isprintable() and c not in '"\\')
        parts.append(f'error_description="{safe}"')
    return ", ".join(parts)
