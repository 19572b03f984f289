"""A small external identity provider for OAuth-mode tests: OpenID discovery and a JWKS on loopback port 0,
and token minting with its keys (RS256 by default; ES256 keys on request). The JWKS can be rotated and
counts how often it was fetched, so tests can prove rotation and rate-limited refresh.

Runs in a thread of the test process (http.server): a real HTTP server the gateway fetches from.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Key:
    kid: str
    private: Any
    alg: str

    def public_jwk(self) -> dict[str, Any]:
        algo = jwt.algorithms.RSAAlgorithm if self.alg.startswith(("RS", "PS")) else jwt.algorithms.ECAlgorithm
        jwk = algo.to_jwk(self.private.public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "use": "sig", "alg": self.alg})
        return jwk

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo)


def new_key(alg: str = "RS256") -> Key:
    if alg.startswith(("RS", "PS")):
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    return Key("k-" + secrets.token_hex(6), private, alg)


@dataclass
class FakeIdp:
    path: str = ""  # an issuer with a path, as Keycloak's /realms/<realm>
    keys: list[Key] = field(default_factory=lambda: [new_key()])
    jwks_fetches: int = 0
    base: str = ""
    _server: ThreadingHTTPServer | None = None

    @property
    def issuer(self) -> str:
        return self.base + self.path

    @property
    def signer(self) -> Key:
        return self.keys[0]

    def rotate(self, alg: str = "RS256") -> Key:
        """A new signing key, published next to the old ones."""
        key = new_key(alg)
        self.keys.insert(0, key)
        return key

    def mint(self, claims: dict[str, Any] | None = None, *, key: Key | None = None, kid: str | None = "",
             headers: dict[str, Any] | None = None, lifetime: int = 300, **more: Any) -> str:
        """A signed access token: iss, iat, exp and jti filled in unless given (None removes a claim)."""
        key = key or self.signer
        now = int(time.time())
        body: dict[str, Any] = {"iss": self.issuer, "iat": now, "exp": now + lifetime, "jti": secrets.token_hex(8)}
        body.update(claims or {})
        body.update(more)
        body = {k: v for k, v in body.items() if v is not None}
        head = {"kid": key.kid if kid == "" else kid, **(headers or {})}
        if head["kid"] is None:
            del head["kid"]
        return jwt.encode(body, key.private, algorithm=key.alg, headers=head)

    def forge_unsigned(self, claims: dict[str, Any]) -> str:
        """alg: none."""
        head = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        return f"{head}.{b64(json.dumps(claims).encode())}."

    def forge_hmac_with_public_key(self, claims: dict[str, Any]) -> str:
        """Algorithm confusion: HS256 keyed with the RSA public key (PEM), with the real key's kid."""
        head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": self.signer.kid}).encode())
        body = b64(json.dumps(claims).encode())
        mac = hmac.new(self.signer.public_pem(), f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{b64(mac)}"

    # -- the server ------------------------------------------------------------------------------
    def __enter__(self) -> FakeIdp:
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == idp.path + "/.well-known/openid-configuration":
                    doc: Any = {"issuer": idp.issuer, "jwks_uri": idp.base + idp.path + "/jwks",
                                "authorization_endpoint": idp.issuer + "/authorize",
                                "token_endpoint": idp.issuer + "/token"}
                elif self.path == idp.path + "/jwks":
                    idp.jwks_fetches += 1
                    doc = {"keys": [k.public_jwk() for k in idp.keys]}
                else:
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                data = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
