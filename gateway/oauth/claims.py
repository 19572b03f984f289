"""Pure decisions about a token: which algorithm may be used with which key, its scopes and audiences,
and which trusted issuer entry (so which tenant and actor) its verified claims map to.

No I/O, no clock: the validator passes verified claims and the trust entries in. The mapping is where
"a token from tenant A's identity provider can never act in tenant B" is decided:

  1. only entries of the token's issuer count (the signature was checked with that issuer's keys);
  2. on a tenant's own resource (`/t/<tenant>/mcp`) only that tenant's entries;
  3. the audience must name the entry's audience (default: the resource asked for, RFC 8707);
  4. an entry with a tenant claim needs that claim to hold its value (a shared IdP, one value per tenant);
  5. exactly one entry may remain: none or several is a refusal, never a guess.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.naming import is_valid_id
from gateway.store.base import TrustedIssuer

ASYMMETRIC = {
    "RS256": "RSA", "RS384": "RSA", "RS512": "RSA", "PS256": "RSA", "PS384": "RSA", "PS512": "RSA",
    "ES256": "EC", "ES384": "EC", "ES512": "EC", "EdDSA": "OKP",
}
"""The only algorithms accepted, and the key type each needs: never `none`, never an HMAC algorithm (a
public key used as an HMAC secret is the classic algorithm-confusion forgery)."""
_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
MAX_TOKEN_BYTES = 8192


def alg_fits_key(alg: str, jwk: Mapping[str, Any]) -> bool:
    """Pure: may a token whose header says `alg` be checked with this JWK? The key's type (and curve) must
    be the algorithm's, a key that names its own `alg` must name this one, and a key meant for
    encryption (`use: enc`) never verifies."""
    kty = ASYMMETRIC.get(alg)
    if kty is None or jwk.get("kty") != kty:
        return False
    if jwk.get("alg") not in (None, alg) or jwk.get("use") not in (None, "sig"):
        return False
    if kty == "EC" and jwk.get("crv") != _CURVES[alg]:
        return False
    return not (kty == "OKP" and jwk.get("crv") not in ("Ed25519", "Ed448"))


def scopes_of(claims: Mapping[str, Any]) -> set[str]:
    """`scope` (RFC 9068: space-separated) or `scp` (Entra ID: a string; Okta: a list)."""
    found: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(v for v in value if isinstance(v, str))
    return found


def audiences_of(claims: Mapping[str, Any]) -> list[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list):
        return [a for a in aud if isinstance(a, str)]
    return []


@dataclass(frozen=True, slots=True)
class Mapped:
    """The outcome of `map_claims`: the entry, tenant and actor, or why not (`refusal`, safe to show)."""

    entry: TrustedIssuer | None = None
    tenant: str = ""
    actor: str = ""
    refusal: str = ""
    missing_scopes: tuple[str, ...] = ()


def map_claims(claims: Mapping[str, Any], entries: Sequence[TrustedIssuer], resource: str,
               path_tenant: str | None) -> Mapped:
    """Pure: the one trust entry (tenant) and the actor these verified claims stand for (module docstring)."""
    issuer = claims.get("iss")
    candidates = [e for e in entries if e.issuer == issuer]
    if path_tenant is not None:
        candidates = [e for e in candidates if e.tenant_id == path_tenant]
        if not candidates:
            return Mapped(refusal="This tenant does not trust the token's issuer.")
    if not candidates:
        return Mapped(refusal="The token's issuer is not trusted by any tenant.")
    audiences = audiences_of(claims)
    fitting = [e for e in candidates if (e.audience or resource) in audiences]
    if not fitting:
        return Mapped(refusal="The token's audience is not this resource.")
    matched = []
    for entry in fitting:
        if entry.tenant_claim:
            value = claims.get(entry.tenant_claim)
            if not isinstance(value, str) or value != (entry.tenant_value or entry.tenant_id):
                continue
        matched.append(entry)
    if not matched:
        return Mapped(refusal="The token's tenant claim names no tenant that trusts its issuer.")
    if len(matched) > 1:
        return Mapped(refusal="The token fits more than one tenant; the gateway will not guess.")
    entry = matched[0]
    actor = claims.get(entry.actor_claim)
    if not isinstance(actor, str) or not is_valid_id(actor):
        return Mapped(refusal=f"The token's {entry.actor_claim!r} claim is missing or not a valid actor id.")
    missing = tuple(s for s in entry.scopes if s not in scopes_of(claims))
    return Mapped(entry, entry.tenant_id, actor, missing_scopes=missing)
