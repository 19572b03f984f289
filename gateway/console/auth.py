"""Who may open the console, and what every console response carries. Pure: keys, times and headers in.

Credentials: an operator token (`aegop_...`, gateway.operators) as `Authorization: Bearer`, or the session
cookie the login form sets. An actor token (`aeg_...`) is refused by its shape alone (403: it binds MCP
clients, never the console), so the console is no oracle for whether one is valid.

The session cookie is stateless: `<operator token id>.<expiry>.<HMAC>` under a sub-key of the master key,
so replicas sharing the master key accept each other's sessions, and every request re-reads the operator
token, so revoking it ends its sessions at once. It is Secure, HttpOnly, SameSite=Strict and `__Host-`
prefixed (no Domain, Path=/): scripts cannot read it, other sites cannot send it, subdomains cannot plant
one. Logging out clears it in the browser; a copied cookie stays valid until it expires (SESSION_TTL_S) or
its operator token is revoked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import urlsplit

from gateway.secrets import derive_key

SESSION_COOKIE = "__Host-aegress-console"
SESSION_TTL_S = 8 * 3600

CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("content-security-policy", CSP),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),  # not no-referrer: browsers then send `Origin: null` on form posts
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("permissions-policy", "camera=(), microphone=(), geolocation=()"),
)
"""On every console response, pages, errors and redirects alike."""
NO_STORE: tuple[tuple[str, str], ...] = (("cache-control", "no-store"), ("pragma", "no-cache"))
"""Pages hold operator data: never cached (the stylesheet may be)."""


def session_key(master_key: bytes) -> bytes:
    return derive_key(master_key, "console-session")


def _mac(key: bytes, text: str) -> str:
    digest = hmac.new(key, text.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def make_session(key: bytes, token_id: str, now: float, ttl: float = SESSION_TTL_S) -> str:
    """A cookie value naming the operator token for `ttl` seconds from `now`."""
    payload = f"{token_id}.{int(now + ttl)}"
    return f"{payload}.{_mac(key, payload)}"


def check_session(key: bytes, value: str | None, now: float) -> str | None:
    """The operator token id a session cookie names, or None (malformed, forged or expired)."""
    if not value or len(value) > 200:
        return None
    payload, _, mac = value.rpartition(".")
    token_id, _, expiry = payload.partition(".")
    if not token_id or not expiry.isdigit() or not hmac.compare_digest(mac.encode(), _mac(key, payload).encode()):
        return None
    return token_id if int(expiry) > now else None


def session_cookie(value: str, ttl: float = SESSION_TTL_S) -> str:
    return f"{SESSION_COOKIE}={value}; Path=/; Max-Age={int(ttl)}; Secure; HttpOnly; SameSite=Strict"


def cleared_cookie() -> str:
    return f"{SESSION_COOKIE}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict"


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer` header; "" for a malformed one; None without the header."""
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else ""


def same_origin(origin: str | None, host: str | None, extra: tuple[str, ...] = ()) -> bool:
    """A form post's Origin names the host it was sent to (or the public URL's origin). Browsers send Origin on
    every POST; a missing one (a non-browser client) is accepted, a mismatched or `null` one is not."""
    if origin is None:
        return True
    if origin in extra:
        return True
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    return bool(host) and netloc == host
