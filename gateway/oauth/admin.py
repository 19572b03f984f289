"""Operator actions of OAuth mode: the library `aegress oauth ...` and `aegress actor ... --password` are
shells over. Every change is sealed in the tenant's log in the same transaction (gateway.sealed_change).

Trust entries can also come from a file (`import_issuers`): TOML or JSON, a list under `issuers`, each
with the `aegress oauth issuer add` options as keys:

    [[issuers]]
    tenant = "acme"
    issuer = "https://login.microsoftonline.com/<directory id>/v2.0"
    audience = "https://gw.example.com/mcp"
    actor_claim = "preferred_username"
    scopes = ["mcp"]
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from gateway.admin import operator_name, require_actor, require_tenant, sealed_change
from gateway.errors import InvalidInput, NotFound
from gateway.store.base import OAuthClient, OAuthGrant, Store, TrustedIssuer

_CLAIM_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:/")


def _digest(doc: dict[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def check_issuer(entry: TrustedIssuer) -> TrustedIssuer:
    """A trust entry as the validator needs it, or InvalidInput saying what to fix."""
    from gateway.oauth.fetch import check_fetch_url

    try:
        check_fetch_url(entry.issuer, https_only=False)
        if entry.jwks_uri:
            check_fetch_url(entry.jwks_uri, https_only=False)
    except InvalidInput as exc:
        raise InvalidInput(f"Issuer settings: {exc.message}", hint="Use the issuer's https:// URL exactly as its "
                           "tokens' `iss` claim spells it (plain http only on a loopback address).") from None
    for label, claim in (("--tenant-claim", entry.tenant_claim), ("--actor-claim", entry.actor_claim)):
        if claim and (len(claim) > 100 or not set(claim) <= _CLAIM_CHARS):
            raise InvalidInput(f"{label} {claim!r} is not a claim name.", hint="Use e.g. sub, email, tid.")
    if not entry.actor_claim:
        raise InvalidInput("The actor claim cannot be empty.", hint="Use e.g. --actor-claim sub.")
    if entry.tenant_value and not entry.tenant_claim:
        raise InvalidInput("--tenant-value needs --tenant-claim.", hint="Name the claim that holds the value.")
    for scope in entry.scopes:
        if not scope or not scope.isascii() or not scope.isprintable() or any(c in scope for c in ' "\\'):
            raise InvalidInput(f"Scope {scope!r} is not one scope token.", hint="Use e.g. --scope mcp.")
    if entry.audience and (len(entry.audience) > 500 or not entry.audience.isprintable()):
        raise InvalidInput("The audience is not a printable string.")
    return entry


def add_issuer(store: Store, entry: TrustedIssuer, now: str, by: str | None = None) -> TrustedIssuer:
    """Trust an issuer for a tenant. A second tenant trusting the same issuer needs a tenant claim (or
    per-tenant resource URIs): otherwise its tokens would fit both, and the validator refuses those."""
    require_tenant(store, entry.tenant_id)
    entry = check_issuer(replace(entry, created_at=now))
    with sealed_change(store) as change:
        store.add_trusted_issuer(entry)
        body = {k: v for k, v in asdict(entry).items() if k != "created_at"}
        change.operator_change(entry.tenant_id, "oauth_issuer_added", entry.issuer, by or operator_name(),
                               config_digest=_digest(body))
    return entry


def ambiguous_with(store: Store, entry: TrustedIssuer) -> list[str]:
    """Other tenants whose trust of the same issuer a token could fit as well as this one's (no tenant
    claim on either side, and the same audience): a warning for the operator."""
    return sorted(e.tenant_id for e in store.list_trusted_issuers() if e.issuer == entry.issuer
                  and e.tenant_id != entry.tenant_id and not (e.tenant_claim and entry.tenant_claim)
                  and e.audience == entry.audience)


def remove_issuer(store: Store, tenant_id: str, issuer: str, by: str | None = None) -> None:
    require_tenant(store, tenant_id)
    with sealed_change(store) as change:
        store.remove_trusted_issuer(tenant_id, issuer)
        change.operator_change(tenant_id, "oauth_issuer_removed", issuer, by or operator_name())


def issuer_view(entry: TrustedIssuer) -> dict[str, Any]:
    view = asdict(entry)
    view["scopes"] = list(entry.scopes)
    return view


def read_issuers_file(path: Path) -> list[TrustedIssuer]:
    """Trust entries from a TOML or JSON file (module docstring); InvalidInput on anything unknown."""
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            doc = json.loads(text)
        else:
            import tomllib

            doc = tomllib.loads(text)
    except ValueError as exc:
        kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
        raise InvalidInput(f"{path} is not valid {kind}: {exc}.") from None
    items = doc.get("issuers") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise InvalidInput(f"{path} has no `issuers` list.", hint="See docs/oauth.md for the file format.")
    known = {"tenant", "issuer", "audience", "tenant_claim", "tenant_value", "actor_claim", "scopes", "jwks_uri",
             "require_known_actor"}
    entries = []
    for n, item in enumerate(items, 1):
        if not isinstance(item, dict) or not isinstance(item.get("tenant"), str) or not isinstance(
                item.get("issuer"), str):
            raise InvalidInput(f"{path}: issuer {n} needs `tenant` and `issuer` strings.")
        unknown = sorted(set(item) - known)
        if unknown:
            raise InvalidInput(f"{path}: issuer {n} has unknown keys: {', '.join(unknown)}.")
        scopes = item.get("scopes", ["mcp"])
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise InvalidInput(f"{path}: issuer {n}: `scopes` must be a list of strings.")
        strings = {k: item.get(k, "") for k in ("audience", "tenant_claim", "tenant_value", "jwks_uri")}
        if not all(isinstance(v, str) for v in strings.values()) or not isinstance(item.get("actor_claim", "sub"), str):
            raise InvalidInput(f"{path}: issuer {n}: claim names, audience and jwks_uri must be strings.")
        entries.append(check_issuer(TrustedIssuer(
            item["tenant"], item["issuer"], actor_claim=item.get("actor_claim", "sub"), scopes=tuple(scopes),
            require_known_actor=bool(item.get("require_known_actor", False)), **strings)))
    return entries


def import_issuers(store: Store, entries: Sequence[TrustedIssuer], now: str, by: str | None = None) -> int:
    """Add the entries a tenant does not trust yet (same tenant and issuer: left as it is); how many."""
    added = 0
    for entry in entries:
        existing = {e.issuer for e in store.list_trusted_issuers(entry.tenant_id)}
        if entry.issuer not in existing:
            add_issuer(store, entry, now, by)
            added += 1
    return added


# -- the embedded authorization server: clients, grants, passwords, login links --------------------------
LOGIN_LINK_PREFIX = "aegl_"


def client_view(client: OAuthClient) -> dict[str, Any]:
    return {"id": client.id, "name": client.name, "kind": client.kind, "redirect_uris": list(client.redirect_uris),
            "auth_method": client.auth_method, "created_at": client.created_at, "revoked_at": client.revoked_at}


def grant_view(grant: OAuthGrant) -> dict[str, Any]:
    return {"id": grant.id, "tenant": grant.tenant_id, "actor": grant.actor_id, "client_id": grant.client_id,
            "resource": grant.resource, "scope": grant.scope, "created_at": grant.created_at,
            "revoked_at": grant.revoked_at, "revoked_reason": grant.revoked_reason}


def record_consent(store: Store, grant: OAuthGrant) -> None:
    """The signed-in actor's consent: the grant and its `oauth_grant_created` record in one transaction."""
    with sealed_change(store) as change:
        store.add_oauth_grant(grant)
        change.operator_change(grant.tenant_id, "oauth_grant_created", grant.id, grant.actor_id,
                               subject_actor=grant.actor_id, config_digest=_digest(
                                   {"client_id": grant.client_id, "resource": grant.resource, "scope": grant.scope}))


def require_grant(store: Store, grant_id: str) -> OAuthGrant:
    grant = store.get_oauth_grant(grant_id)
    if grant is None:
        raise NotFound(f"No OAuth grant {grant_id!r}.", hint="List them with `aegress oauth grants list`.")
    return grant


def revoke_grant(store: Store, grant_id: str, now: str, by: str | None = None, reason: str = "operator") -> bool:
    """Revoke a grant: its access tokens are refused from the next request, its refresh tokens at once."""
    grant = require_grant(store, grant_id)
    with sealed_change(store) as change:
        done = store.revoke_oauth_grant(grant_id, now, reason)
        if done:
            change.operator_change(grant.tenant_id, "oauth_grant_revoked", grant_id, by or operator_name(),
                                   subject_actor=grant.actor_id)
    return done


def revoke_client(store: Store, client_id: str, now: str, by: str | None = None) -> tuple[OAuthClient, bool]:
    """Revoke a client and all its grants (recorded in the deployment's security log and each grant's tenant's):
    (the client, whether this call revoked it). A client revoked already changes nothing, so nothing is sealed."""
    existing = store.get_oauth_client(client_id)
    if existing is None:
        raise NotFound(f"No OAuth client {client_id!r}.", hint="List them with `aegress oauth clients list`.")
    if existing.revoked_at is not None:
        return existing, False
    active = [g for g in store.list_oauth_grants(client_id=client_id) if g.active]
    with sealed_change(store) as change:
        client = store.revoke_oauth_client(client_id, now)
        change.seal(None, "operator_change", {"change": "oauth_client_revoked", "actor": by or operator_name(),
                                              "subject": client_id})
        for grant in active:
            change.operator_change(grant.tenant_id, "oauth_grant_revoked", grant.id, by or operator_name(),
                                   subject_actor=grant.actor_id)
    return client, True


def set_password(store: Store, tenant_id: str, actor_id: str, password: str, now: str, by: str | None = None) -> None:
    """Set (or replace) the password an actor signs in with at the embedded authorization server."""
    from gateway.oauth.passwords import hash_password

    require_actor(store, tenant_id, actor_id)
    hashed = hash_password(password)
    with sealed_change(store) as change:
        store.set_actor_password(tenant_id, actor_id, hashed, now)
        change.operator_change(tenant_id, "actor_password_set", actor_id, by or operator_name(),
                               subject_actor=actor_id)


def issue_login_link(store: Store, master: bytes, tenant_id: str, actor_id: str, now: float, ttl_s: float,
                     by: str | None = None) -> str:
    """A one-time sign-in code for an actor, valid `ttl_s` seconds; the store keeps only its keyed hash."""
    import secrets

    from gateway.oauth.signed import hash_key, keyed_hash

    require_actor(store, tenant_id, actor_id)
    code = LOGIN_LINK_PREFIX + secrets.token_urlsafe(24)
    with sealed_change(store) as change:
        store.add_login_link(keyed_hash(hash_key(master), code), tenant_id, actor_id, now, now + ttl_s)
        change.operator_change(tenant_id, "login_link_issued", actor_id, by or operator_name(),
                               subject_actor=actor_id)
    return code


def gateway_origin(home: Path) -> str | None:
    """The origin of the gateway serving this data dir (from its lock file), for printing links."""
    from urllib.parse import urlsplit

    try:
        info = json.loads((home / "aegress.lock").read_text() or "{}")
    except (OSError, ValueError):
        return None
    url = info.get("url") if isinstance(info, dict) else None
    if not isinstance(url, str) or not url:
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
