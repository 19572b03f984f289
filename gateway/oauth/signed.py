"""HMAC-signed, time-limited values: the pending authorization request carried through the sign-in and
consent forms, the sign-in session cookie, and CSRF tokens. Pure given the key and the time.

    <base64url(JSON with "exp")>.<base64url(HMAC-SHA256(key, purpose || "." || first part))>

Each use has its own key (derived from the master key: `gateway.secrets.derive_key`) and its own
`purpose`, so a value made for one use is never accepted for another. Replicas sharing a database share
the master key, so any replica accepts what another signed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(key: bytes, purpose: str, payload: dict[str, Any], now: float, ttl_s: float) -> str:
    body = _b64(json.dumps({**payload, "exp": int(now + ttl_s)}, separators=(",", ":")).encode())
    mac = hmac.new(key, f"{purpose}.{body}".encode(), hashlib.sha256).digest()
    return f"{body}.{_b64(mac)}"


def unsign(key: bytes, purpose: str, value: str | None, now: float, max_len: int = 8192) -> dict[str, Any] | None:
    """The payload when `value` was signed with this key and purpose and has not expired; else None."""
    if not value or len(value) > max_len or value.count(".") != 1:
        return None
    body, mac = value.split(".")
    want = hmac.new(key, f"{purpose}.{body}".encode(), hashlib.sha256).digest()
    try:
        if not hmac.compare_digest(want, _unb64(mac)):
            return None
        payload = json.loads(_unb64(body))
    except ValueError:
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("exp"), int) or payload["exp"] <= now:
        return None
    return payload


def csrf_token(key: bytes, cookie: str) -> str:
    """The form field that must accompany a POST from a browser holding this CSRF cookie."""
    return _b64(hmac.new(key, b"csrf." + cookie.encode(), hashlib.sha256).digest())


def csrf_ok(key: bytes, cookie: str | None, field: str | None) -> bool:
    if not cookie or not field or len(cookie) > 256 or len(field) > 256:
        return False
    return hmac.compare_digest(csrf_token(key, cookie), field)


def hash_key(master: bytes) -> bytes:
    """The key codes, refresh tokens, login links and client secrets are stored under (as keyed hashes)."""
    from gateway.secrets import derive_key

    return derive_key(master, "oauth-hash")


def keyed_hash(key: bytes, secret: str) -> str:
    return hmac.new(key, secret.encode(), hashlib.sha256).hexdigest()
