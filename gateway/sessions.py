"""Session ids any replica can serve: the id carries the session's state, sealed (pure functions).

    Mcp-Session-Id = base64url(payload) "." base64url(HMAC-SHA256(key, base64url(payload)))
    payload        = compact JSON {"v": 1, "r": creating replica, "t": tenant, "a": actor,
                                   "p": negotiated protocol version, "c": client capabilities (the
                                   reduced profile, proxy.known_capabilities), "i": client name and
                                   version (truncated), "at": issued at (epoch s), "n": random nonce}

A replica that has never seen the session verifies the tag (`hmac.compare_digest`), then rebuilds the
same `ClientSession` the initializing replica built, so no request ever waits on Redis or another
replica. The key is `HMAC-SHA256(derive_key(master key, "session-id"), <secret in the database>)`: the
replicas of one database already share the master key file (token hashes need it) and agree on the
database secret through `Store.shared_value`; neither alone can seal an id. A sealed id is not a
credential: every request still needs a valid bearer token of the same tenant and actor.

The id is visible ASCII (base64url and "."), at most about 900 characters (ids are bounded: tenant and
actor 128, replica 64, client name 64 and version 32 bytes), typically about 350.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.secrets import derive_key

FORMAT = 1
MAX_ID_CHARS = 2048
"""Longer ids are refused before any work (a sealed id is at most about 900 characters)."""
MAX_NAME_BYTES = 64
MAX_VERSION_BYTES = 32
FUTURE_SKEW_S = 300.0
"""An id issued this far in the future (another replica's clock) is still accepted; further is not."""
SHARED_KEY = "session_key"
"""The `Store.shared_value` key of the database half of the sealing key."""

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class SessionClaims:
    """What a sealed session id says about its session."""

    replica: str
    tenant_id: str
    actor_id: str
    version: str
    capabilities: JSON
    client_info: JSON
    issued_at: int
    nonce: str


def session_key(master_key: bytes, shared_secret: str) -> bytes:
    """The sealing key from the master key file and the database's shared secret."""
    return hmac.new(derive_key(master_key, "session-id"), shared_secret.encode(), hashlib.sha256).digest()


def new_shared_secret() -> str:
    """A proposal for the database half of the key (the first replica to ask stores it)."""
    return secrets.token_urlsafe(32)


def _clip(value: Any, limit: int) -> str | None:
    """A string value cut to at most `limit` UTF-8 bytes (never inside a character), or None."""
    if not isinstance(value, str) or not value:
        return None
    return value.encode()[:limit].decode(errors="ignore") or None


def kept_client_info(info: Any) -> JSON:
    """Pure: what a session keeps of `clientInfo`: name and version, each truncated (they go in the id)."""
    if not isinstance(info, dict):
        return {}
    out: JSON = {}
    for key, limit in (("name", MAX_NAME_BYTES), ("version", MAX_VERSION_BYTES)):
        value = _clip(info.get(key), limit)
        if value is not None:
            out[key] = value
    return out


def new_claims(replica: str, tenant_id: str, actor_id: str, version: str, capabilities: JSON, client_info: Any,
               now: float) -> SessionClaims:
    """Claims for a new session (`capabilities` already reduced to the profile's flags)."""
    return SessionClaims(replica, tenant_id, actor_id, version, capabilities, kept_client_info(client_info),
                         int(now), secrets.token_urlsafe(12))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _tag(key: bytes, body: str) -> bytes:
    return hmac.new(key, body.encode("ascii"), hashlib.sha256).digest()


def seal(claims: SessionClaims, key: bytes) -> str:
    """Pure: the session id for `claims` under `key`."""
    payload = {"v": FORMAT, "r": claims.replica, "t": claims.tenant_id, "a": claims.actor_id, "p": claims.version,
               "c": claims.capabilities, "i": claims.client_info, "at": claims.issued_at, "n": claims.nonce}
    body = _b64(orjson.dumps(payload))
    return f"{body}.{_b64(_tag(key, body))}"


def unseal(session_id: str, key: bytes, now: float, max_age_s: float) -> SessionClaims | None:
    """Pure: the claims of a session id this fleet sealed and that has not expired; None for anything else
    (tampered, foreign key, malformed, too old or issued in the future). Callers answer every None alike."""
    if not session_id or len(session_id) > MAX_ID_CHARS or not session_id.isascii():
        return None
    body, dot, tag = session_id.partition(".")
    if not dot or not body or not tag:
        return None
    try:
        given = _unb64(tag)
    except (binascii.Error, ValueError):
        return None
    if not hmac.compare_digest(given, _tag(key, body)):
        return None
    try:
        payload = orjson.loads(_unb64(body))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        return None
    if not isinstance(payload, dict) or payload.get("v") != FORMAT:
        return None
    strings = [payload.get(k) for k in ("r", "t", "a", "p", "n")]
    caps, info, issued = payload.get("c"), payload.get("i"), payload.get("at")
    if not all(isinstance(s, str) for s in strings) or not isinstance(caps, dict) or not isinstance(info, dict):
        return None
    if not isinstance(issued, int) or isinstance(issued, bool):
        return None
    if issued > now + FUTURE_SKEW_S or now - issued > max_age_s:
        return None
    replica, tenant, actor, version, nonce = strings
    return SessionClaims(replica, tenant, actor, version, caps, info, issued, nonce)  # type: ignore[arg-type]


def digest(session_id: str) -> str:
    """The sha256 of a session id (hex): how the ended-sessions table and bus messages name a session."""
    return hashlib.sha256(session_id.encode()).hexdigest()
