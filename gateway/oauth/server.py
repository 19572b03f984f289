"""OAuth mode's HTTP routes, raw ASGI like the MCP endpoint, and how they join the gateway's app.

    GET  /.well-known/oauth-protected-resource[/mcp | /t/<tenant>/mcp]   RFC 9728 metadata
    GET  /.well-known/oauth-authorization-server                          RFC 8414 metadata
    GET  /oauth/jwks                                                      the access tokens' public keys
    POST /oauth/register                                                  dynamic client registration (RFC 7591)
    GET  /oauth/authorize, POST /oauth/authorize                          sign-in and consent pages
    POST /oauth/token                                                     code (PKCE S256) and refresh grants
    POST /oauth/revoke                                                    RFC 7009
    GET  /oauth/link/<code>, POST /oauth/link                             one-time login links
    *    /t/<tenant>/mcp                                                  the MCP endpoint (tenant paths on)

Every URL is built from the configured public URL (gateway.oauth.resource). Requests whose Host the MCP
endpoint would refuse are refused here too (DNS rebinding). Metadata, keys, registration, token and
revocation answer cross-origin requests (`Access-Control-Allow-Origin: *`: browser-based clients); the
pages never do, deny framing, carry no script and check a CSRF token on every POST.

The authorization code flow (OAuth 2.1):

  1. GET /oauth/authorize: the client (registered, or a client ID metadata document fetched under
     SSRF guard) and its exact redirect URI are checked first, and an error there is shown, never
     redirected; then response_type=code, PKCE S256, resource (one of ours), scope. The checked request
     is signed and carried by the forms (and a cookie, for login links) for 10 minutes.
  2. Sign in (tenant, actor, password; throttled per address and per actor) or a login link; the
     session is a signed cookie. A tenant that trusts its own identity provider cannot sign in here.
  3. Consent: Allow creates a grant (sealed: `oauth_grant_created`) and a code, valid `code_ttl_s`,
     single use across replicas; the browser goes back with code, state and iss (RFC 9207).
  4. POST /oauth/token: the code, its client, redirect URI and PKCE verifier; a replayed code revokes the
     grant. Access tokens are short-lived JWTs (ES256, keys outside the database) with audience, tenant
     and actor; refresh tokens rotate, and a spent one presented again revokes the grant.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from starlette.datastructures import Headers

from gateway import ratelimit
from gateway.errors import AegressError, ConfigError
from gateway.naming import is_valid_id
from gateway.oauth import admin, pages
from gateway.oauth.fetch import get_json
from gateway.oauth.passwords import verify_password
from gateway.oauth.resource import (
    ASM_PATH,
    PRM_PATH,
    authorization_server_metadata,
    protected_resource_metadata,
    tenant_of_path,
)
from gateway.oauth.signed import csrf_ok, csrf_token, hash_key, keyed_hash, sign, unsign
from gateway.oauth.validator import OAuthValidator
from gateway.secrets import derive_key
from gateway.store.base import OAuthClient, OAuthCode, OAuthGrant, Store
from gateway.transport import host_allowed

if TYPE_CHECKING:
    from gateway.config import ServeSettings
    from gateway.pipeline import Pipeline
    from gateway.transport import McpEndpoint

log = logging.getLogger("aegress.oauth")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers_ = list[tuple[bytes, bytes]]

CORS: Headers_ = [(b"access-control-allow-origin", b"*"), (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                  (b"access-control-allow-headers", b"authorization, content-type, mcp-protocol-version"),
                  (b"access-control-max-age", b"600")]
SESSION_COOKIE = "__Host-aegress-session"
CSRF_COOKIE = "__Host-aegress-csrf"
PENDING_COOKIE = "__Host-aegress-pending"
REQUEST_TTL_S = 600
MAX_FORM_BYTES = 16 * 1024
MAX_REGISTRATION_BYTES = 64 * 1024
MAX_REDIRECT_URIS = 10
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")
_BAD_SCHEMES = frozenset({"javascript", "data", "file", "vbscript", "about", "blob", "filesystem", "ws", "wss"})
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_DOC_CACHE_S = 300.0
_MAX_DOC_CACHE = 1000


async def respond(send: Send, status: int, body: bytes, content_type: bytes = b"application/json",
                  headers: Headers_ | None = None) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", content_type), (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"), (b"pragma", b"no-cache"), (b"x-content-type-options", b"nosniff"),
        *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, doc: Any, headers: Headers_ | None = None) -> None:
    await respond(send, status, json.dumps(doc).encode(), headers=headers)


def check_redirect_uri(uri: str) -> str | None:
    """Pure: why a redirect URI cannot be registered (None: it can). https; http on a loopback host only;
    or a private-use scheme (RFC 8252 7.1: `com.example.app:/cb`, `cursor://...`). No fragment, no
    credentials, never javascript:, data:, file: and the like."""
    if not isinstance(uri, str) or not uri or len(uri) > 2000 or not uri.isprintable() or " " in uri:
        return "not a printable URI of at most 2000 characters"
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme):
        return "not an absolute URI"
    if parts.fragment or "#" in uri:
        return "has a fragment"
    if parts.username or parts.password:
        return "carries credentials"
    if scheme in _BAD_SCHEMES:
        return f"the {scheme}: scheme is not allowed"
    if scheme == "https":
        return None if parts.hostname else "has no host"
    if scheme == "http":
        return None if parts.hostname in _LOOPBACK else "http is allowed on loopback hosts only (127.0.0.1, [::1])"
    return None


def pkce_ok(verifier: str, challenge: str) -> bool:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return secrets.compare_digest(base64.urlsafe_b64encode(digest).rstrip(b"=").decode(), challenge)


def _now_iso() -> str:
    from gateway.admin import now_iso

    return now_iso()


class OAuthError(Exception):
    """An OAuth protocol error (RFC 6749 5.2 / 4.1.2.1): `error` code and a description for the client."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """A checked authorization request, as the signed `request` field carries it."""

    client_id: str
    redirect_uri: str
    state: str | None
    challenge: str
    resource: str
    tenant: str | None
    scope: str

    def dump(self) -> dict[str, Any]:
        return {"c": self.client_id, "r": self.redirect_uri, "s": self.state, "ch": self.challenge,
                "res": self.resource, "t": self.tenant, "sc": self.scope}

    @classmethod
    def load(cls, doc: dict[str, Any]) -> AuthRequest:
        return cls(doc["c"], doc["r"], doc["s"], doc["ch"], doc["res"], doc["t"], doc["sc"])


class Request:
    """What a route needs of one HTTP request: headers, query, cookies, the peer, the body (bounded)."""

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self.receive = receive
        self.headers = Headers(scope=scope)
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.peer = str((scope.get("client") or ("",))[0])
        cookies: SimpleCookie = SimpleCookie()
        try:
            cookies.load(self.headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header is no cookie
            cookies = SimpleCookie()
        self.cookies = {k: v.value for k, v in cookies.items()}

    def query(self) -> dict[str, list[str]]:
        raw = self.scope.get("query_string", b"").decode("latin-1")
        return parse_qs(raw, keep_blank_values=True, max_num_fields=50)

    async def body(self, limit: int) -> bytes | None:
        """The body, or None when it is larger than `limit`."""
        length = self.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return None
        chunks, size = [], 0
        while True:
            message = await self.receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def form(self) -> dict[str, list[str]]:
        if not self.headers.get("content-type", "").lower().startswith("application/x-www-form-urlencoded"):
            raise OAuthError("invalid_request", "Send the parameters as application/x-www-form-urlencoded.")
        body = await self.body(MAX_FORM_BYTES)
        if body is None:
            raise OAuthError("invalid_request", f"The request body is over {MAX_FORM_BYTES} bytes.")
        try:
            return parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
        except (UnicodeDecodeError, ValueError):
            raise OAuthError("invalid_request", "The request body is not a valid form.") from None


def single(params: dict[str, list[str]], name: str, required: bool = False) -> str | None:
    """One parameter's value: given at most once (RFC 6749 3.1), present when `required`."""
    values = params.get(name, [])
    if len(values) > 1:
        raise OAuthError("invalid_request", f"The {name} parameter is repeated.")
    if not values or values[0] == "":
        if required:
            raise OAuthError("invalid_request", f"The {name} parameter is missing.")
        return None
    return values[0]


class Throttle:
    """Failed sign-ins per key (an address, or tenant/actor): refused while `limit` failures fall in the
    current window. Only failures count, so a person who signs in often is never locked out; bounded."""

    def __init__(self, limit: int, per_seconds: float, max_keys: int = 10_000) -> None:
        self.limit, self.per_seconds, self.max_keys = limit, per_seconds, max_keys
        self._windows: dict[str, ratelimit.FailureWindow] = {}

    def blocked(self, key: str, now: float) -> bool:
        window = self._windows.get(key)
        return window is not None and now - window.started < self.per_seconds and window.count >= self.limit

    def fail(self, key: str, now: float) -> None:
        window, _ = ratelimit.note_failure(self._windows.pop(key, None), self.limit, self.per_seconds, now)
        while len(self._windows) >= self.max_keys:
            del self._windows[next(iter(self._windows))]
        self._windows[key] = window

    def clear(self, key: str) -> None:
        self._windows.pop(key, None)


def _cookie(name: str, value: str, max_age: int | None) -> tuple[bytes, bytes]:
    text = f"{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax"
    if max_age is not None:
        text += f"; Max-Age={max_age}"
    return (b"set-cookie", text.encode())


class OAuthRoutes:
    """Everything under /.well-known/ and /oauth/ in OAuth mode."""

    def __init__(self, validator: OAuthValidator, store: Store, master: bytes, allowed_hosts: tuple[str, ...]) -> None:
        self.validator = validator
        self.settings = validator.settings
        self.store = store
        self.allowed_hosts = allowed_hosts
        self._request_key = derive_key(master, "oauth-request")
        self._session_key = derive_key(master, "oauth-session")
        self._csrf_key = derive_key(master, "oauth-csrf")
        self._hash_key = hash_key(master)
        self._by_address = Throttle(100, 300.0)  # a shared NAT signs many people in
        self._by_actor = Throttle(10, 300.0)
        self._registrations = ratelimit.FailureTable(10_000)
        self._documents: dict[str, tuple[float, OAuthClient]] = {}

    # -- dispatch -------------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        if not host_allowed(request.headers.get("host"), self.allowed_hosts):
            await send_json(send, 421, {"error": "invalid_request", "error_description": "Invalid Host header."})
            return
        path, method = request.path, request.method
        try:
            if path == PRM_PATH or path.startswith(PRM_PATH + "/"):
                await self._resource_metadata(send, method, path[len(PRM_PATH):])
            elif path == ASM_PATH:
                await self._api(send, method, "GET", lambda: self._json(authorization_server_metadata(self.settings)))
            elif path == "/oauth/jwks":
                await self._api(send, method, "GET", lambda: self._json(self.validator.keyring.jwks()))
            elif path == "/oauth/register":
                await self._api(send, method, "POST", lambda: self._register(request))
            elif path == "/oauth/token":
                await self._api(send, method, "POST", lambda: self._token(request))
            elif path == "/oauth/revoke":
                await self._api(send, method, "POST", lambda: self._revoke(request))
            elif path == "/oauth/authorize" and method in ("GET", "POST"):
                await (self._authorize_get(request, send) if method == "GET" else self._authorize_post(request, send))
            elif path.startswith("/oauth/link/") and method == "GET":
                await self._link_get(request, send, path[len("/oauth/link/"):])
            elif path == "/oauth/link" and method == "POST":
                await self._link_post(request, send)
            else:
                await send_json(send, 404, {"error": "not_found"})
        except AegressError as exc:  # the store is unavailable, say: no stack trace, no internals
            log.warning("oauth %s failed: %s", path, exc.message)
            await send_json(send, exc.http_status if exc.http_status >= 500 else 503,
                            {"error": "temporarily_unavailable", "error_description": exc.message},
                            [(b"retry-after", b"2")])

    async def _api(self, send: Send, method: str, allowed: str,
                   handler: Callable[[], Awaitable[tuple[int, Any, Headers_]]]) -> None:
        """A JSON endpoint: CORS, OPTIONS, the method check, OAuth errors as RFC 6749 5.2 bodies."""
        if method == "OPTIONS":
            await respond(send, 204, b"", headers=CORS)
            return
        if method != allowed:
            await send_json(send, 405, {"error": "invalid_request", "error_description": f"Use {allowed}."},
                            [(b"allow", f"{allowed}, OPTIONS".encode()), *CORS])
            return
        try:
            status, doc, extra = await handler()
        except OAuthError as exc:
            status, doc = exc.status, {"error": exc.error, "error_description": exc.description}
            extra = [(b"www-authenticate", b'Basic realm="aegress"')] if exc.status == 401 else []
        await send_json(send, status, doc, [*extra, *CORS])

    @staticmethod
    async def _json(doc: Any) -> tuple[int, Any, Headers_]:
        return 200, doc, []

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

    # -- clients --------------------------------------------------------------------------------------
    async def _register(self, request: Request) -> tuple[int, Any, Headers_]:
        """RFC 7591: public clients (`none`) and confidential ones (a secret, shown once)."""
        wait = self._registrations.note(request.peer, 30, 600.0, time.monotonic())
        if wait is not None:
            raise OAuthError("invalid_request", "Too many registrations from this address; try again later.", 429)
        body = await request.body(MAX_REGISTRATION_BYTES)
        if body is None:
            raise OAuthError("invalid_client_metadata", f"The registration is over {MAX_REGISTRATION_BYTES} bytes.")
        try:
            doc = json.loads(body)
        except ValueError:
            raise OAuthError("invalid_client_metadata", "The registration is not JSON.") from None
        if not isinstance(doc, dict):
            raise OAuthError("invalid_client_metadata", "The registration is not a JSON object.")
        uris = doc.get("redirect_uris")
        if not isinstance(uris, list) or not uris or len(uris) > MAX_REDIRECT_URIS:
            raise OAuthError("invalid_redirect_uri", f"Give 1 to {MAX_REDIRECT_URIS} redirect_uris.")
        for uri in uris:
            why = check_redirect_uri(uri)
            if why:
                raise OAuthError("invalid_redirect_uri", f"Redirect URI {str(uri)[:200]!r}: {why}.")
        method = doc.get("token_endpoint_auth_method", "client_secret_basic")
        if method not in ("none", "client_secret_basic", "client_secret_post"):
            raise OAuthError("invalid_client_metadata", "token_endpoint_auth_method must be none, "
                             "client_secret_basic or client_secret_post.")
        grant_types = doc.get("grant_types", ["authorization_code"])
        if not isinstance(grant_types, list) or not set(grant_types) <= {"authorization_code", "refresh_token"} \
                or "authorization_code" not in grant_types:
            raise OAuthError("invalid_client_metadata", "grant_types must be authorization_code (and refresh_token).")
        if doc.get("response_types", ["code"]) != ["code"]:
            raise OAuthError("invalid_client_metadata", "response_types must be [\"code\"].")
        name = doc.get("client_name", "")
        if not isinstance(name, str) or len(name) > 200 or not name.isprintable():
            raise OAuthError("invalid_client_metadata", "client_name must be a printable string of at most 200 "
                             "characters.")
        client_id = "mcp_" + secrets.token_urlsafe(18)
        secret = None if method == "none" else "aegs_" + secrets.token_urlsafe(32)
        issued = int(time.time())
        accepted = {"redirect_uris": uris, "token_endpoint_auth_method": method, "grant_types": grant_types,
                    "response_types": ["code"], "client_name": name, "scope": self.settings.scope}
        client = OAuthClient(client_id, name, tuple(uris), method, "registered", _now_iso(),
                             keyed_hash(self._hash_key, secret) if secret else "", json.dumps(accepted))
        await asyncio.to_thread(self.store.add_oauth_client, client)
        out = {"client_id": client_id, "client_id_issued_at": issued, **accepted}
        if secret:
            out.update(client_secret=secret, client_secret_expires_at=0)
        return 201, out, []

    async def _client(self, client_id: str) -> OAuthClient | None:
        """A registered client, or a client ID metadata document (an https URL with a path), fetched under
        SSRF guard and cached for a few minutes. None when unknown, unusable or revoked."""
        stored = await asyncio.to_thread(self.store.get_oauth_client, client_id)
        if stored is not None:
            return stored if stored.active else None
        parts = urlsplit(client_id)
        if not self.settings.metadata_documents or parts.scheme != "https" or parts.path in ("", "/") \
                or len(client_id) > 2000:
            return None
        cached = self._documents.get(client_id)
        if cached is not None and time.monotonic() - cached[0] < _DOC_CACHE_S:
            return cached[1]
        try:
            doc = await get_json(client_id, allow_private=self.settings.metadata_allow_private, https_only=True,
                                 limit=64 * 1024)
        except AegressError as exc:
            log.info("client metadata document refused: %s", exc.message)
            return None
        client = _document_client(client_id, doc)
        if client is not None:
            if len(self._documents) >= _MAX_DOC_CACHE:
                self._documents.pop(next(iter(self._documents)))
            self._documents[client_id] = (time.monotonic(), client)
        return client

    def _client_auth(self, request: Request, form: dict[str, list[str]]) -> tuple[str, str | None]:
        """(client id, secret or None) from HTTP Basic or the form (RFC 6749 2.3.1)."""
        form_id, form_secret = single(form, "client_id"), single(form, "client_secret")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(auth[6:].strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise OAuthError("invalid_client", "Malformed Basic credentials.", 401) from None
            user, password = unquote(user), unquote(password)
            if (form_id and form_id != user) or form_secret:
                raise OAuthError("invalid_request", "Use one client authentication method.")
            return user, password
        if not form_id:
            raise OAuthError("invalid_client", "The client_id parameter is missing.", 401)
        return form_id, form_secret

    async def _authenticated_client(self, request: Request, form: dict[str, list[str]]) -> OAuthClient:
        client_id, secret = self._client_auth(request, form)
        client = await asyncio.to_thread(self.store.get_oauth_client, client_id)
        if client is None or not client.active:
            raise OAuthError("invalid_client", "Unknown or revoked client.", 401)
        if client.auth_method != "none" and (
                secret is None or not secrets.compare_digest(keyed_hash(self._hash_key, secret), client.secret_hash)):
            raise OAuthError("invalid_client", "Client authentication failed.", 401)
        return client

    # -- the authorization endpoint --------------------------------------------------------------------
    async def _check_request(self, params: dict[str, list[str]]) -> tuple[OAuthClient, AuthRequest]:
        """Steps of RFC 6749 4.1.2.1: client and redirect URI first (an `OAuthError` with status 0 means
        show it, never redirect), then the rest (redirected to the client)."""
        try:
            client_id = single(params, "client_id", required=True) or ""
            redirect_uri = single(params, "redirect_uri")
        except OAuthError as exc:
            raise OAuthError(exc.error, exc.description, 0) from None
        client = await self._client(client_id)
        if client is None:
            raise OAuthError("invalid_client", "This client is unknown or was revoked.", 0)
        if redirect_uri is None and len(client.redirect_uris) == 1:
            redirect_uri = client.redirect_uris[0]
        if redirect_uri is None or redirect_uri not in client.redirect_uris:
            raise OAuthError("invalid_request", "The redirect_uri is not one this client registered.", 0)
        state = single(params, "state")
        if state is not None and len(state) > 2048:
            raise OAuthError("invalid_request", "The state parameter is too long.", 0)
        try:
            if single(params, "response_type", required=True) != "code":
                raise OAuthError("unsupported_response_type", "Only response_type=code is supported.")
            challenge = single(params, "code_challenge")
            if single(params, "code_challenge_method") != "S256" or challenge is None:
                raise OAuthError("invalid_request", "PKCE is required, with code_challenge_method=S256.")
            if not _CHALLENGE.fullmatch(challenge):
                raise OAuthError("invalid_request", "The code_challenge is not a base64url SHA-256 digest.")
            resource = single(params, "resource") or self.settings.resource()
            ours, tenant = self.settings.tenant_of_resource(resource)
            trust = await self.validator.trust()
            if not ours or (tenant is not None and tenant not in trust.tenants):
                raise OAuthError("invalid_target", "The resource is not this gateway's.")
            single(params, "scope")  # any requested scope is narrowed to the one this gateway issues
        except OAuthError as exc:
            exc.redirect = (redirect_uri, state)  # type: ignore[attr-defined]
            raise
        return client, AuthRequest(client.id, redirect_uri, state, challenge, resource, tenant, self.settings.scope)

    def _redirect_to_client(self, redirect_uri: str, params: dict[str, str]) -> Headers_:
        sep = "&" if urlsplit(redirect_uri).query else "?"
        return [(b"location", (redirect_uri + sep + urlencode({**params, "iss": self.settings.issuer})).encode())]

    async def _authorize_get(self, request: Request, send: Send) -> None:
        try:
            client, auth = await self._check_request(request.query())
        except OAuthError as exc:
            await self._authorize_error(send, exc)
            return
        blob = sign(self._request_key, "authorize", auth.dump(), time.time(), REQUEST_TTL_S)
        await self._next_page(request, send, client, auth, blob, [_cookie(PENDING_COOKIE, blob, REQUEST_TTL_S)])

    async def _authorize_error(self, send: Send, exc: OAuthError) -> None:
        target = getattr(exc, "redirect", None)
        if target is None:
            await self._page(send, 400, pages.message("Cannot sign in", exc.description))
            return
        redirect_uri, state = target
        params = {"error": exc.error, "error_description": exc.description}
        if state is not None:
            params["state"] = state
        await respond(send, 303, b"", b"text/plain", self._redirect_to_client(redirect_uri, params))

    def _session(self, request: Request) -> dict[str, Any] | None:
        return unsign(self._session_key, "session", request.cookies.get(SESSION_COOKIE), time.time())

    async def _next_page(self, request: Request, send: Send, client: OAuthClient, auth: AuthRequest, blob: str,
                         cookies: Headers_, error: str = "", status: int = 200) -> None:
        """Consent when a session fits this request, else sign-in."""
        session = self._session(request)
        csrf_cookie = request.cookies.get(CSRF_COOKIE) or ""
        if len(csrf_cookie) < 32 or len(csrf_cookie) > 256:
            csrf_cookie = secrets.token_urlsafe(32)
            cookies = [*cookies, _cookie(CSRF_COOKIE, csrf_cookie, None)]
        csrf = csrf_token(self._csrf_key, csrf_cookie)
        fits = session is not None and (auth.tenant is None or session["t"] == auth.tenant) and \
            await self._may_sign_in(session["t"], session["a"]) is None
        if session is not None and fits and not error:
            html = pages.consent(client_name=client.name or client.id, client_id=client.id,
                                 redirect_uri=auth.redirect_uri, resource=auth.resource, tenant=session["t"],
                                 actor=session["a"], scope=auth.scope, request=blob, csrf=csrf)
            await self._page(send, status, html, cookies, auth.redirect_uri)
            return
        html = pages.sign_in(client_name=client.name or client.id, client_id=client.id, redirect_uri=auth.redirect_uri,
                             resource=auth.resource, tenant=auth.tenant, request=blob, csrf=csrf, error=error,
                             actor=session["a"] if session else "", tenant_value=session["t"] if session else "")
        await self._page(send, status, html, cookies)

    async def _may_sign_in(self, tenant: str, actor: str) -> str | None:
        """Why this actor cannot sign in here (None: they can)."""
        trust = await self.validator.trust()
        if tenant in trust.external:
            return f"Tenant {tenant} signs in with its own identity provider, not here."
        if await asyncio.to_thread(self.store.get_actor, tenant, actor) is None:
            return "Wrong tenant, actor or password."
        return None

    def _form_origin_ok(self, request: Request) -> bool:
        """A POST from our own pages: same-origin (when the browser says), never cross-site."""
        origin = request.headers.get("origin")
        if origin is not None and origin != "null" and origin != self.settings.public_url:
            return False
        return request.headers.get("sec-fetch-site") in (None, "same-origin", "none")

    async def _authorize_post(self, request: Request, send: Send) -> None:
        try:
            form = await request.form()
            csrf_field, blob, action = single(form, "csrf"), single(form, "request"), single(form, "action")
        except OAuthError as exc:
            await self._page(send, 400, pages.message("Cannot sign in", exc.description))
            return
        if not self._form_origin_ok(request) or not csrf_ok(self._csrf_key, request.cookies.get(CSRF_COOKIE),
                                                             csrf_field):
            await self._page(send, 403, pages.message(
                "Request refused", "This form expired or did not come from this gateway's page. Go back to your "
                "MCP client and start signing in again."))
            return
        loaded = unsign(self._request_key, "authorize", blob, time.time())
        auth = AuthRequest.load(loaded) if loaded else None
        client = await self._client(auth.client_id) if auth else None
        if auth is None or client is None or auth.redirect_uri not in client.redirect_uris:
            await self._page(send, 400, pages.message(
                "Cannot sign in", "This sign-in request expired or its client was revoked. Go back to your MCP "
                "client and start again."))
            return
        if action == "sign-in":
            await self._sign_in(request, send, form, client, auth, blob or "")
        elif action in ("allow", "deny"):
            await self._consent(request, send, client, auth, blob or "", action == "allow")
        else:
            await self._page(send, 400, pages.message("Cannot sign in", "Unknown action."))

    async def _sign_in(self, request: Request, send: Send, form: dict[str, list[str]], client: OAuthClient,
                       auth: AuthRequest, blob: str) -> None:
        try:
            tenant = auth.tenant or single(form, "tenant") or ""
            actor = single(form, "actor") or ""
            password = single(form, "password") or ""
        except OAuthError as exc:
            await self._page(send, 400, pages.message("Cannot sign in", exc.description))
            return
        now, who = time.monotonic(), f"{tenant}/{actor}"
        if self._by_address.blocked(request.peer, now) or self._by_actor.blocked(who, now):
            await self._page(send, 429, pages.message("Too many attempts", "Too many failed sign-ins. Wait a few "
                                                      "minutes, or ask the operator for a login link."))
            return
        why = None if is_valid_id(tenant) and is_valid_id(actor) else "Wrong tenant, actor or password."
        why = why or await self._may_sign_in(tenant, actor)
        stored = None if why else await asyncio.to_thread(self.store.get_actor_password, tenant, actor)
        good = await asyncio.to_thread(verify_password, password, stored)  # the same work when there is none
        if why or not good:
            self._by_address.fail(request.peer, now)
            self._by_actor.fail(who, now)
            await self._next_page(request, send, client, auth, blob, [], why or "Wrong tenant, actor or password.",
                                  401)
            return
        self._by_actor.clear(who)
        await self._next_page(request, send, client, auth, blob, [self._start_session(request, tenant, actor)])

    def _start_session(self, request: Request, tenant: str, actor: str) -> tuple[bytes, bytes]:
        """The signed session cookie (also put on `request`, so the page rendered next sees it)."""
        ttl = self.settings.session_ttl_s
        value = sign(self._session_key, "session", {"t": tenant, "a": actor}, time.time(), ttl)
        request.cookies[SESSION_COOKIE] = value
        return _cookie(SESSION_COOKIE, value, ttl)

    async def _consent(self, request: Request, send: Send, client: OAuthClient, auth: AuthRequest, blob: str,
                       allow: bool) -> None:
        session = self._session(request)
        if session is None or (auth.tenant is not None and session["t"] != auth.tenant):
            await self._next_page(request, send, client, auth, blob, [], "Sign in first.", 401)
            return
        why = await self._may_sign_in(session["t"], session["a"])
        if why:
            await self._next_page(request, send, client, auth, blob, [], why, 403)
            return
        base = {"state": auth.state} if auth.state is not None else {}
        clear = [_cookie(PENDING_COOKIE, "", 0)]
        if not allow:
            params = {"error": "access_denied", "error_description": "The user denied access.", **base}
            await respond(send, 303, b"", b"text/plain", [*self._redirect_to_client(auth.redirect_uri, params), *clear])
            return
        if client.kind == "metadata-document":  # from now on it is listed, and can be revoked
            await asyncio.to_thread(self.store.add_oauth_client, client)
        grant = OAuthGrant("grt_" + secrets.token_urlsafe(12), session["t"], session["a"], client.id, auth.resource,
                           auth.scope, _now_iso())
        await asyncio.to_thread(admin.record_consent, self.store, grant)
        code = "aegc_" + secrets.token_urlsafe(32)
        stored = OAuthCode(grant.id, client.id, auth.redirect_uri, auth.challenge, auth.resource, auth.scope,
                           time.time() + self.settings.code_ttl_s)
        await asyncio.to_thread(self.store.add_oauth_code, keyed_hash(self._hash_key, code), stored)
        await respond(send, 303, b"", b"text/plain",
                      [*self._redirect_to_client(auth.redirect_uri, {"code": code, **base}), *clear])

    # -- login links -----------------------------------------------------------------------------------
    async def _link_get(self, request: Request, send: Send, code: str) -> None:
        cookies: Headers_ = []
        csrf_cookie = request.cookies.get(CSRF_COOKIE) or ""
        if len(csrf_cookie) < 32 or len(csrf_cookie) > 256:
            csrf_cookie = secrets.token_urlsafe(32)
            cookies.append(_cookie(CSRF_COOKIE, csrf_cookie, None))
        if not code.startswith(admin.LOGIN_LINK_PREFIX) or len(code) > 100:
            await self._page(send, 404, pages.message("Unknown link", "This login link is not valid."))
            return
        await self._page(send, 200, pages.login_link(code=code, csrf=csrf_token(self._csrf_key, csrf_cookie)), cookies)

    async def _link_post(self, request: Request, send: Send) -> None:
        try:
            form = await request.form()
            code, csrf_field = single(form, "code") or "", single(form, "csrf")
        except OAuthError as exc:
            await self._page(send, 400, pages.message("Cannot sign in", exc.description))
            return
        if not self._form_origin_ok(request) or not csrf_ok(self._csrf_key, request.cookies.get(CSRF_COOKIE),
                                                             csrf_field):
            await self._page(send, 403, pages.message("Request refused", "This form expired or did not come from "
                                                      "this gateway's page. Open the login link again."))
            return
        now = time.monotonic()
        if self._by_address.blocked(request.peer, now):
            await self._page(send, 429, pages.message("Too many attempts", "Wait a few minutes."))
            return
        who = await asyncio.to_thread(self.store.consume_login_link, keyed_hash(self._hash_key, code), time.time())
        if who is None:
            self._by_address.fail(request.peer, now)
            await self._page(send, 400, pages.message("Link expired", "This login link was used already or has "
                                                      "expired. Ask the operator for a new one."))
            return
        tenant, actor = who
        why = await self._may_sign_in(tenant, actor)
        if why:
            await self._page(send, 403, pages.message("Cannot sign in", why))
            return
        cookie = self._start_session(request, tenant, actor)
        pending = unsign(self._request_key, "authorize", request.cookies.get(PENDING_COOKIE), time.time())
        client = await self._client(pending["c"]) if pending else None
        if pending and client is not None:  # resume the authorization that was waiting for a sign-in
            await self._next_page(request, send, client, AuthRequest.load(pending), request.cookies[PENDING_COOKIE],
                                  [cookie])
            return
        await self._page(send, 200, pages.message("Signed in", f"Signed in as {actor} in tenant {tenant}. Go back "
                                                  "to the sign-in page of your MCP client and reload it."), [cookie])

    # -- tokens ----------------------------------------------------------------------------------------
    async def _token(self, request: Request) -> tuple[int, Any, Headers_]:
        form = await request.form()
        client = await self._authenticated_client(request, form)
        grant_type = single(form, "grant_type", required=True)
        if grant_type == "authorization_code":
            grant = await self._redeem_code(client, form)
        elif grant_type == "refresh_token":
            if "refresh_token" not in json.loads(client.metadata or "{}").get("grant_types", ["refresh_token"]):
                raise OAuthError("unauthorized_client", "This client did not register the refresh_token grant.")
            grant, refresh = await self._rotate(client, form)
            return 200, self._access(client, grant, refresh), []
        else:
            raise OAuthError("unsupported_grant_type", "Use authorization_code or refresh_token.")
        refresh = None
        if "refresh_token" in json.loads(client.metadata or "{}").get("grant_types", ["refresh_token"]):
            refresh = "aegr_" + secrets.token_urlsafe(32)
            now = time.time()
            await asyncio.to_thread(self.store.add_refresh_token, keyed_hash(self._hash_key, refresh), grant.id,
                                    client.id, now, now + self.settings.refresh_ttl_s)
        return 200, self._access(client, grant, refresh), []

    async def _redeem_code(self, client: OAuthClient, form: dict[str, list[str]]) -> OAuthGrant:
        code = single(form, "code", required=True) or ""
        redirect_uri = single(form, "redirect_uri")
        verifier = single(form, "code_verifier", required=True) or ""
        resource = single(form, "resource")
        status, stored = await asyncio.to_thread(self.store.consume_oauth_code, keyed_hash(self._hash_key, code),
                                                 time.time())
        if status == "used" and stored is not None:  # a replayed code: whatever it got is revoked (RFC 6749 4.1.2)
            if await asyncio.to_thread(admin.revoke_grant, self.store, stored.grant_id, _now_iso(), "gateway",
                                       "authorization code replayed"):
                log.warning("authorization code replayed: grant %s revoked", stored.grant_id)
            raise OAuthError("invalid_grant", "The authorization code was used already.")
        if status != "ok" or stored is None:
            raise OAuthError("invalid_grant", "The authorization code is invalid or expired.")
        if stored.client_id != client.id:
            raise OAuthError("invalid_grant", "The authorization code was issued to another client.")
        if redirect_uri != stored.redirect_uri:
            raise OAuthError("invalid_grant", "The redirect_uri differs from the authorization request's.")
        if not _VERIFIER.fullmatch(verifier) or not pkce_ok(verifier, stored.code_challenge):
            raise OAuthError("invalid_grant", "The code_verifier does not match the code_challenge.")
        if resource is not None and resource != stored.resource:
            raise OAuthError("invalid_target", "The resource differs from the authorization request's.")
        grant = await asyncio.to_thread(self.store.active_grant, stored.grant_id)
        if grant is None:
            raise OAuthError("invalid_grant", "The grant was revoked.")
        return grant

    async def _rotate(self, client: OAuthClient, form: dict[str, list[str]]) -> tuple[OAuthGrant, str]:
        token = single(form, "refresh_token", required=True) or ""
        resource = single(form, "resource")
        old = keyed_hash(self._hash_key, token)
        owner = await asyncio.to_thread(self.store.find_refresh_token, old)
        if owner is None:
            raise OAuthError("invalid_grant", "The refresh token is invalid.")
        if owner[1] != client.id:  # presented by another client: stolen, so the grant goes
            await asyncio.to_thread(admin.revoke_grant, self.store, owner[0], _now_iso(), "gateway",
                                    "refresh token presented by another client")
            raise OAuthError("invalid_grant", "The refresh token was issued to another client.")
        new = "aegr_" + secrets.token_urlsafe(32)
        now = time.time()
        status, grant_id = await asyncio.to_thread(self.store.rotate_refresh_token, old,
                                                   keyed_hash(self._hash_key, new), now,
                                                   now + self.settings.refresh_ttl_s)
        if status == "reused":
            log.warning("refresh token reused: grant %s revoked", grant_id)
            await asyncio.to_thread(self._seal_revocation, grant_id or "", "refresh token reused")
            raise OAuthError("invalid_grant", "The refresh token was used already; the grant is revoked.")
        if status != "ok" or grant_id is None:
            raise OAuthError("invalid_grant", "The refresh token is expired or its grant was revoked.")
        grant = await asyncio.to_thread(self.store.active_grant, grant_id)
        if grant is None:
            raise OAuthError("invalid_grant", "The grant was revoked.")
        if resource is not None and resource != grant.resource:
            raise OAuthError("invalid_target", "The resource differs from the grant's.")
        return grant, new

    def _seal_revocation(self, grant_id: str, reason: str) -> None:
        """The store revoked a grant in the refresh transaction itself; its record follows in its own."""
        grant = self.store.get_oauth_grant(grant_id)
        if grant is None:
            return
        try:
            with admin.sealed_change(self.store) as change:
                change.operator_change(grant.tenant_id, "oauth_grant_revoked", grant_id, "gateway",
                                       subject_actor=grant.actor_id)
        except AegressError as exc:
            log.error("could not record the revocation of grant %s (%s): %s", grant_id, reason, exc.message)

    def _access(self, client: OAuthClient, grant: OAuthGrant, refresh: str | None) -> dict[str, Any]:
        now = int(time.time())
        ttl = self.settings.access_ttl_s
        access = self.validator.keyring.sign({
            "iss": self.settings.issuer, "sub": grant.actor_id, "aud": grant.resource, "iat": now, "nbf": now,
            "exp": now + ttl, "jti": secrets.token_urlsafe(12), "client_id": client.id, "scope": grant.scope,
            "gid": grant.id, "tenant": grant.tenant_id})
        out: dict[str, Any] = {"access_token": access, "token_type": "Bearer", "expires_in": ttl, "scope": grant.scope}
        if refresh is not None:
            out["refresh_token"] = refresh
        return out

    async def _revoke(self, request: Request) -> tuple[int, Any, Headers_]:
        """RFC 7009: a refresh token or one of our access tokens; revoking either revokes its grant. Unknown
        tokens are not an error (200), so the answer says nothing about which tokens exist."""
        form = await request.form()
        client = await self._authenticated_client(request, form)
        token = single(form, "token", required=True) or ""
        owner = await asyncio.to_thread(self.store.find_refresh_token, keyed_hash(self._hash_key, token))
        grant_id = owner[0] if owner and owner[1] == client.id else None
        if grant_id is None and token.count(".") == 2:
            grant_id = self._own_token_grant(token, client.id)
        if grant_id is not None:
            await asyncio.to_thread(admin.revoke_grant, self.store, grant_id, _now_iso(), f"client {client.id}",
                                    "revoked by the client")
        return 200, {}, []

    def _own_token_grant(self, token: str, client_id: str) -> str | None:
        import jwt

        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self.validator.keyring.get(kid or "")
            if key is None:
                return None
            claims = jwt.decode(token, key.private_key.public_key(), algorithms=["ES256"], issuer=self.settings.issuer,
                                options={"verify_aud": False, "verify_exp": False})
        except jwt.InvalidTokenError:
            return None
        gid = claims.get("gid")
        return gid if isinstance(gid, str) and claims.get("client_id") == client_id else None

    # -- pages -----------------------------------------------------------------------------------------
    async def _page(self, send: Send, status: int, html: str, cookies: Headers_ | None = None,
                    redirect_uri: str | None = None) -> None:
        """A page that cannot be framed, runs no script and posts only here (and, from the consent page, to
        the client it sends the browser back to: CSP form-action covers the redirect that follows)."""
        targets = "'self'"
        if redirect_uri:
            parts = urlsplit(redirect_uri)
            targets += f" {parts.scheme}://{parts.netloc}" if parts.netloc else f" {parts.scheme}:"
        csp = (f"default-src 'none'; style-src 'unsafe-inline'; form-action {targets}; frame-ancestors 'none'; "
               "base-uri 'none'")
        await respond(send, status, html.encode(), b"text/html; charset=utf-8", [
            (b"x-frame-options", b"DENY"), (b"content-security-policy", csp.encode()),
            (b"referrer-policy", b"no-referrer"), *(cookies or [])])


def _document_client(url: str, doc: Any) -> OAuthClient | None:
    """Pure: a client from its metadata document (client_id equal to its URL, usable redirect URIs, a public
    client), or None."""
    if not isinstance(doc, dict) or doc.get("client_id") != url:
        return None
    uris = doc.get("redirect_uris")
    if not isinstance(uris, list) or not uris or len(uris) > MAX_REDIRECT_URIS or any(check_redirect_uri(u) for u in
                                                                                        uris):
        return None
    if doc.get("token_endpoint_auth_method", "none") != "none":
        return None
    name = doc.get("client_name", "")
    if not isinstance(name, str) or len(name) > 200 or not name.isprintable():
        return None
    grant_types = doc.get("grant_types", ["authorization_code", "refresh_token"])
    if not isinstance(grant_types, list):
        return None
    metadata = json.dumps({"grant_types": [g for g in grant_types if g in ("authorization_code", "refresh_token")]})
    return OAuthClient(url, name, tuple(uris), "none", "metadata-document", _now_iso(), "", metadata)


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


def enable(home: Path, store: Store, master: bytes, settings: ServeSettings, pipeline: Pipeline,
           endpoint: McpEndpoint, app: ASGIApp) -> ASGIApp:
    """Turn OAuth mode on for a built gateway: the validator becomes the authenticate stage, the public
    URL's host is accepted, and the routes go in front of `app`."""
    from gateway.oauth import keys
    from gateway.oauth.resource import OAuthSettings

    if not settings.public_url:
        raise ConfigError("OAuth mode needs the gateway's public URL.", hint="Pass --public-url https://...",
                          code="public-url")
    if not settings.public_url.rstrip("/").endswith("/mcp") or urlsplit(settings.public_url).path.rstrip("/") != "/mcp":
        raise ConfigError("OAuth mode needs a public URL whose path is /mcp: the resource is <origin>/mcp.",
                          hint="Pass --public-url https://gw.example.com (or https://gw.example.com/mcp).",
                          code="public-url")
    origin = settings.public_url.rstrip("/")[: -len("/mcp")]
    oauth = OAuthSettings.from_env(origin, tenant_paths=settings.oauth_tenant_paths or None)
    validator = OAuthValidator(store, oauth, home, keys.load(home, _now_iso()))
    pipeline.oauth = validator
    host = urlsplit(oauth.public_url).netloc
    endpoint.allowed_hosts = (*endpoint.allowed_hosts, host)
    return mount(app, endpoint, OAuthRoutes(validator, store, master, endpoint.allowed_hosts))

