"""The HTTP headers that identify a caller to the gateway, built in one place for every client."""

from __future__ import annotations

from gateway.clients.model import ACTOR_HEADER, TENANT_HEADER, TOKEN_ENV


def gateway_headers(token: str, tenant: str, actor: str) -> dict[str, str]:
    """Headers for a live request, e.g. what `aegress client headers` prints for Claude Code's
    headersHelper. It goes to the client's pipe, never into a file."""
    return {"Authorization": f"Bearer {token}", TENANT_HEADER: tenant, ACTOR_HEADER: actor}


def env_headers(tenant: str, actor: str, token_ref: str) -> dict[str, str]:
    """Headers for a config file: the token only as the client's env reference (`token_ref`)."""
    return {"Authorization": f"Bearer {token_ref}", TENANT_HEADER: tenant, ACTOR_HEADER: actor}


def oauth_headers(tenant: str, actor: str) -> dict[str, str]:
    """OAuth mode: no credential, only the binding claims (the actor's only when one is named)."""
    return {TENANT_HEADER: tenant, **({ACTOR_HEADER: actor} if actor else {})}


def entry_headers(tenant: str, actor: str, token_ref: str, oauth: bool) -> dict[str, str]:
    """A config file's headers: the token reference and claims, or in OAuth mode the claims alone."""
    return oauth_headers(tenant, actor) if oauth else env_headers(tenant, actor, token_ref)


def env_ref(style: str) -> str:
    """The token env var in a client's interpolation syntax: `${VAR}` or `${env:VAR}`."""
    return {"plain": f"${{{TOKEN_ENV}}}", "env": f"${{env:{TOKEN_ENV}}}"}[style]
