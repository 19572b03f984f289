"""Actor passwords for the embedded authorization server's sign-in page: scrypt, stdlib only.

    scrypt$<n>$<r>$<p>$<base64 salt>$<base64 key>

A sign-in for an actor without a password still runs one scrypt (against a fixed dummy hash), so the
answer's timing does not tell which actors have one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from gateway.errors import InvalidInput

_N, _R, _P = 2**14, 8, 1
MIN_LENGTH = 12
MAX_LENGTH = 1024
_DUMMY = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="


def check_password(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise InvalidInput(f"The password is shorter than {MIN_LENGTH} characters.", hint="Choose a longer one.")
    if len(password) > MAX_LENGTH:
        raise InvalidInput(f"The password is longer than {MAX_LENGTH} characters.")


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32)


def hash_password(password: str) -> str:
    check_password(password)
    salt = os.urandom(16)
    key = _derive(password, salt, _N, _R, _P)
    return f"scrypt${_N}${_R}${_P}${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


def verify_password(password: str, stored: str | None) -> bool:
    """True when `password` matches `stored`; False for no stored hash (after the same work) or bad input."""
    if len(password) > MAX_LENGTH:
        return False
    try:
        scheme, n, r, p, salt, key = (stored or _DUMMY).split("$")
        if scheme != "scrypt" or int(n) > 2**20:
            return False
        got = _derive(password, base64.b64decode(salt), int(n), int(r), int(p))
        return stored is not None and hmac.compare_digest(got, base64.b64decode(key))
    except ValueError:
        return False
