"""The authenticate stage in OAuth mode: `Authorization: Bearer <JWT>` -> Identity(tenant, actor, token id).

Checks, in order (each refusal is a 401 whose WWW-Authenticate names the resource metadata and scope):

  1. a Bearer header (never the query string: the edge refuses credentials there before this runs)
  2. the header's `alg` is an asymmetric algorithm (never `none`, never HMAC) and `typ` an access token's
  3. the issuer is the embedded authorization server or one a tenant trusts (on `/t/<tenant>/mcp`: that
     tenant); its key for the token's `kid` (JWKS, refreshed on rotation at most once per interval)
     fits the algorithm (type, curve, declared alg)
  4. signature, `exp`, `nbf`, `iat`, `iss`; `aud` names this resource (RFC 8707)
  5. embedded tokens: the grant behind it is still active (revocation applies to the next request), its
     client and actor still exist, its tenant has no identity provider of its own
     external tokens: `gateway.oauth.claims.map_claims` picks the one tenant and the actor
  6. the scopes the resource needs, else 403 insufficient_scope naming them (step-up)

The token itself is never logged, stored or forwarded; the identity's token id is the grant id
(embedded) or `jwt:` + the token's `jti` (else a digest of the token).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import AuthError, ConfigError, InsufficientScope
from gateway.oauth import keys as signing
from gateway.oauth.claims import ASYMMETRIC, MAX_TOKEN_BYTES, alg_fits_key, audiences_of, map_claims, scopes_of
from gateway.oauth.jwks import JwksCache
from gateway.oauth.resource import OAuthSettings, challenge, issuers_for, scopes_for, tenant_of_path
from gateway.store.base import Store, TrustedIssuer
from gateway.types import Identity

LEEWAY_S = 30
log = logging.getLogger("aegress.oauth")

KEYS_CHECK_S = 1.0
"""How often the embedded server's signing-key file is looked at (one stat): `aegress oauth key rotate` and
`retire` take effect in a running gateway within this, without a restart."""
TRUST_POLL_S = 1.0
"""Issuer trust and tenants are read again at most this often: a new or removed trust entry applies within it."""
_TOKEN_TYPES = (None, "JWT", "at+jwt", "application/at+jwt")


@dataclass
class Trust:
    """What the store says, as of `polled_at`: trust entries by issuer, tenants, tenants with an IdP."""

    entries: list[TrustedIssuer] = field(default_factory=list)
    by_issuer: dict[str, list[TrustedIssuer]] = field(default_factory=dict)
    tenants: list[str] = field(default_factory=list)
    external: set[str] = field(default_factory=set)
    polled_at: float = float("-inf")


class OAuthValidator:
    def __init__(self, store: Store, settings: OAuthSettings, home: Path, keyring: signing.Keyring,
                 jwks: JwksCache | None = None) -> None:
        self.store = store
        self.settings = settings
        self.home = home
        self._keyring = keyring
        self._keys_stamp = signing.stamp(home)
        self._keys_checked = time.monotonic()
        self.jwks = jwks or JwksCache(min_refresh_s=settings.jwks_min_refresh_s, max_age_s=settings.jwks_max_age_s)
        self._trust = Trust()
        self._polling: asyncio.Future[Trust] | None = None
        self._keys_reloaded = float("-inf")

    # -- the embedded server's signing keys ------------------------------------------------------------
    @property
    def keyring(self) -> signing.Keyring:
        """The signing keys as their file holds them now (looked at every KEYS_CHECK_S): after `aegress oauth
        key rotate` new tokens are signed with the new key and JWKS publishes both; after `retire` a token
        signed by a retired key is refused, so a leaked key is cut off without a restart."""
        if time.monotonic() - self._keys_checked >= KEYS_CHECK_S:
            self._reload_keys()
        return self._keyring

    def _reload_keys(self) -> None:
        self._keys_checked = time.monotonic()
        stamp = signing.stamp(self.home)
        if stamp == self._keys_stamp:
            return
        self._keys_stamp = stamp  # a broken file is reported once, not every second
        try:
            self._keyring = signing.load(self.home, "", create=False)
        except ConfigError as exc:
            log.error("the OAuth signing keys could not be re-read (%s); the keys loaded before stay in use",
                      exc.message)

    # -- what the store says --------------------------------------------------------------------------
    async def trust(self) -> Trust:
        if time.monotonic() - self._trust.polled_at < TRUST_POLL_S:
            return self._trust
        if self._polling is None:
            self._polling = asyncio.ensure_future(asyncio.to_thread(self._read_trust))
        polling = self._polling
        try:
            self._trust = await asyncio.shield(polling)
        finally:
            if polling.done():
                self._polling = None
        return self._trust

    def _read_trust(self) -> Trust:
        entries = self.store.list_trusted_issuers()
        by_issuer: dict[str, list[TrustedIssuer]] = {}
        for entry in entries:
            by_issuer.setdefault(entry.issuer, []).append(entry)
        return Trust(entries, by_issuer, [t.id for t in self.store.list_tenants()], {e.tenant_id for e in entries},
                     time.monotonic())

    def resource_servers(self, trust: Trust, tenant: str | None) -> tuple[list[str], list[str]]:
        """(authorization servers, scopes to ask for) of a resource, as its metadata and challenges say."""
        servers = issuers_for(self.settings, trust.entries, trust.tenants, tenant)
        return servers, scopes_for(self.settings, trust.entries, tenant, servers[0])

    # -- the stage ------------------------------------------------------------------------------------
    async def authenticate(self, authorization: str | None, path: str) -> Identity:
        known, path_tenant = tenant_of_path(path)
        if not known or (path_tenant is not None and not self.settings.tenant_paths):
            raise AuthError("Unknown resource.", code="invalid-token")
        trust = await self.trust()
        _, scopes = self.resource_servers(trust, path_tenant)
        resource = self.settings.resource(path_tenant)

        def refuse(message: str, hint: str | None = None) -> AuthError:
            return AuthError(message, hint=hint or "Sign in again through your MCP client (OAuth).",
                             code="invalid-token",
                             challenge=challenge(self.settings, path_tenant, scopes, "invalid_token", message))

        if not authorization:
            raise AuthError("Missing bearer token.", hint="Sign in through your MCP client (OAuth).",
                            challenge=challenge(self.settings, path_tenant, scopes))
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise refuse("Malformed Authorization header.", "Send Authorization: Bearer <access token>.")
        if len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
            raise refuse("The access token is not a JWT.")

        import jwt

        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            raise refuse("The access token is not a well-formed JWT.") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ASYMMETRIC:
            raise refuse("The access token's signing algorithm is not accepted.")
        if header.get("typ") not in _TOKEN_TYPES or "crit" in header or not (kid is None or isinstance(kid, str)):
            raise refuse("The access token's header is not accepted.")
        issuer = unverified.get("iss")
        if not isinstance(issuer, str):
            raise refuse("The access token names no issuer.")
        if issuer == self.settings.issuer:
            claims = await self._verify_embedded(token, alg, kid, refuse)
            return await self._embedded_identity(claims, trust, resource, path_tenant, refuse)
        entries = trust.by_issuer.get(issuer, [])
        candidates = [e for e in entries if path_tenant is None or e.tenant_id == path_tenant]
        if not entries:
            raise refuse("The access token's issuer is not trusted.")
        if not candidates:
            raise refuse("This tenant does not trust the token's issuer.")
        jwks_uri = next((e.jwks_uri for e in candidates if e.jwks_uri), "")
        jwk = await self.jwks.key(issuer, jwks_uri, kid)
        if jwk is None:
            raise refuse("The access token's signing key is unknown to its issuer.")
        if not alg_fits_key(alg, jwk):
            raise refuse("The access token's algorithm does not fit its issuer's key.")
        try:
            key = jwt.PyJWK(jwk, algorithm=alg).key
        except jwt.PyJWKError:
            raise refuse("The issuer's signing key cannot be used.") from None
        claims = self._decode(token, key, alg, issuer, refuse)
        mapped = map_claims(claims, entries, resource, path_tenant)
        if mapped.entry is None:
            raise refuse(mapped.refusal)
        if mapped.entry.require_known_actor and await asyncio.to_thread(
                self.store.get_actor, mapped.tenant, mapped.actor) is None:
            raise refuse("The token's actor is not registered in its tenant.",
                         "Ask the operator to add the actor (`aegress actor add`).")
        if mapped.missing_scopes:
            raise InsufficientScope(
                "The access token lacks a scope this resource needs.",
                hint=f"Sign in again granting: {' '.join(mapped.entry.scopes)}.",
                challenge=challenge(self.settings, path_tenant, list(mapped.entry.scopes), "insufficient_scope",
                                    "The access token lacks a scope this resource needs."))
        jti = claims.get("jti")
        digest = hashlib.sha256(token.encode()).hexdigest()[:24]
        token_id = "jwt:" + (jti[:64] if isinstance(jti, str) and jti else digest)
        return Identity(mapped.tenant, mapped.actor, token_id)

    # -- pieces ---------------------------------------------------------------------------------------
    def _decode(self, token: str, key: Any, alg: str, issuer: str, refuse: Callable[..., AuthError],
                leeway: int = LEEWAY_S) -> dict[str, Any]:
        """Signature and time claims; `leeway` for another party's clock (none for our own tokens)."""
        import jwt

        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[alg], issuer=issuer, leeway=leeway,
                options={"require": ["exp", "iss", "aud"], "verify_aud": False})
        except jwt.ExpiredSignatureError:
            raise refuse("The access token has expired.") from None
        except jwt.ImmatureSignatureError:
            raise refuse("The access token is not valid yet.") from None
        except jwt.MissingRequiredClaimError as exc:
            raise refuse(f"The access token has no {exc.claim} claim.") from None
        except jwt.InvalidTokenError:
            raise refuse("The access token's signature or claims are invalid.") from None
        return claims

    async def _verify_embedded(self, token: str, alg: str, kid: str | None,
                               refuse: Callable[..., AuthError]) -> dict[str, Any]:
        key = self.keyring.get(kid or "")
        if key is None and time.monotonic() - self._keys_reloaded >= self.settings.jwks_min_refresh_s:
            self._keys_reloaded = time.monotonic()  # rotated since the last look: look now, not in a second
            self._reload_keys()
            key = self._keyring.get(kid or "")
        if key is None or alg != signing.ALG:
            raise refuse("The access token's signing key is unknown.")
        return self._decode(token, key.private_key.public_key(), alg, self.settings.issuer, refuse, leeway=0)

    async def _embedded_identity(self, claims: dict[str, Any], trust: Trust, resource: str, path_tenant: str | None,
                                 refuse: Callable[..., AuthError]) -> Identity:
        if resource not in audiences_of(claims):
            raise refuse("The token's audience is not this resource.")
        grant_id = claims.get("gid")
        grant = await asyncio.to_thread(self.store.active_grant, grant_id) if isinstance(grant_id, str) else None
        if grant is None or grant.resource != resource:
            raise refuse("The grant behind this access token was revoked.")
        if grant.tenant_id in trust.external:
            raise refuse("This tenant signs in with its own identity provider.")
        if path_tenant is not None and grant.tenant_id != path_tenant:
            raise refuse("The token's tenant is not this resource's tenant.")
        if self.settings.scope not in scopes_of(claims):
            raise InsufficientScope(
                "The access token lacks a scope this resource needs.", hint=f"Sign in again granting: "
                f"{self.settings.scope}.", challenge=challenge(self.settings, path_tenant, [self.settings.scope],
                                                               "insufficient_scope"))
        return Identity(grant.tenant_id, grant.actor_id, grant.id)
