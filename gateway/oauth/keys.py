"""The embedded authorization server's token signing keys: ES256, in a 0600 file under the data dir.

    <data dir>/secrets/oauth-signing-keys.json   {"active": kid, "keys": [{"kid", "created_at", "pem"}]}

Never in the database: whoever can read the database (a backup, a read replica) must not be able to
mint access tokens. Replicas that share one database need the same file, as they need the same
master key. `rotate` adds a new active key and keeps the old ones published at /oauth/jwks, so tokens
signed before a rotation stay valid until they expire; `retire` drops the old ones.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.errors import ConfigError
from gateway.secrets import check_private_file, write_private_file

ALG = "ES256"
FILE = Path("secrets") / "oauth-signing-keys.json"


@dataclass(frozen=True)
class SigningKey:
    kid: str
    created_at: str
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)

    def public_jwk(self) -> dict[str, Any]:
        numbers = self.private_key.public_key().public_numbers()
        return {"kty": "EC", "crv": "P-256", "x": _b64(numbers.x.to_bytes(32, "big")),
                "y": _b64(numbers.y.to_bytes(32, "big")), "kid": self.kid, "alg": ALG, "use": "sig"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_key(now: str) -> SigningKey:
    private = ec.generate_private_key(ec.SECP256R1())
    der = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return SigningKey(_b64(hashlib.sha256(der).digest()[:12]), now, private)


@dataclass(frozen=True)
class Keyring:
    active: SigningKey
    keys: tuple[SigningKey, ...]

    def get(self, kid: str) -> SigningKey | None:
        return next((k for k in self.keys if k.kid == kid), None)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in self.keys]}

    def sign(self, claims: dict[str, Any]) -> str:
        import jwt

        return jwt.encode(claims, self.active.private_key, algorithm=ALG,
                          headers={"kid": self.active.kid, "typ": "at+jwt"})


def _dump(ring: Keyring) -> bytes:
    keys = [{"kid": k.kid, "created_at": k.created_at, "pem": k.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()}
        for k in ring.keys]
    return json.dumps({"active": ring.active.kid, "keys": keys}, indent=2).encode()


def stamp(home: Path) -> tuple[int, int, int] | None:
    """What changes when `rotate` or `retire` rewrites the key file (mtime, size, inode); None without one."""
    try:
        st = (home / FILE).stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def load(home: Path, now: str, *, create: bool = True) -> Keyring:
    """The keyring from its file, created (one new key) when missing and `create`."""
    path = home / FILE
    if not path.exists():
        if not create:
            raise ConfigError(f"No OAuth signing keys at {path}.", hint="Start `aegress serve` in OAuth mode once.")
        key = new_key(now)
        ring = Keyring(key, (key,))
        write_private_file(path, _dump(ring))
        return ring
    check_private_file(path)
    try:
        doc = json.loads(path.read_bytes())
        keys = []
        for item in doc["keys"]:
            private = serialization.load_pem_private_key(item["pem"].encode(), password=None)
            if not isinstance(private, ec.EllipticCurvePrivateKey) or private.curve.name != "secp256r1":
                raise ValueError("not a P-256 key")
            keys.append(SigningKey(str(item["kid"]), str(item["created_at"]), private))
        active = next(k for k in keys if k.kid == doc["active"])
    except (OSError, ValueError, KeyError, TypeError, StopIteration) as exc:
        raise ConfigError(f"{path} is not a valid OAuth signing key file.", hint="Restore it from a backup.") from exc
    return Keyring(active, tuple(keys))


def rotate(home: Path, now: str) -> Keyring:
    """A new active key; the old ones stay published until `retire`."""
    ring = load(home, now)
    key = new_key(now)
    ring = Keyring(key, (key, *ring.keys))
    write_private_file(home / FILE, _dump(ring))
    return ring


def retire(home: Path, now: str) -> Keyring:
    """Keep only the active key (tokens signed by the others stop verifying at once)."""
    ring = load(home, now, create=False)
    ring = Keyring(ring.active, (ring.active,))
    write_private_file(home / FILE, _dump(ring))
    return ring
