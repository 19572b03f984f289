"""Secrets: token minting and keyed hashing, and the master key file.

Tokens look like `aeg_<40 base62 chars>` so secret scanners can find leaked ones. The database keeps
only HMAC-SHA256(token-hash key, token); the key derives from a master secret that lives in a 0600
file under the data dir, never in the database. Containers mount it instead as a platform secret and
name the file in `AEGRESS_MASTER_KEY_FILE`, so that every replica reads the same key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets as _random
import stat
import string
from pathlib import Path

from gateway.errors import ConfigError

MASTER_KEY_FILE_ENV = "AEGRESS_MASTER_KEY_FILE"
TOKEN_PREFIX = "aeg_"
_ALPHABET = string.ascii_letters + string.digits
_TOKEN_BODY = 40


def mint_token() -> str:
    return TOKEN_PREFIX + "".join(_random.choice(_ALPHABET) for _ in range(_TOKEN_BODY))


def mint_id(prefix: str, n: int = 12) -> str:
    alphabet = string.ascii_lowercase + string.digits
    return prefix + "".join(_random.choice(alphabet) for _ in range(n))


def derive_key(master: bytes, purpose: str) -> bytes:
    """A sub-key per purpose (HMAC as a PRF), so one master secret serves several uses safely."""
    return hmac.new(master, b"aegress/v1/" + purpose.encode(), hashlib.sha256).digest()


def token_hash(key: bytes, token: str) -> str:
    return hmac.new(key, token.encode(), hashlib.sha256).hexdigest()


def check_private_file(path: Path) -> None:
    """Refuse a secret file that group or others can read: a leaked master key forges nothing but
    exposes every token hash to offline guessing and every audit HMAC to lookup."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{path} is readable by other users (mode {mode:o}).",
            hint=f"Run: chmod 600 {path}",
            code="insecure-key-file",
        )


def write_private_file(path: Path, data: bytes) -> None:
    """Create a 0600 file atomically; never widen permissions on the way."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def mounted_key_problem(mode: int, read_only: bool) -> str | None:
    """Pure: why a mounted master key file (`AEGRESS_MASTER_KEY_FILE`) must be refused, or None.

    Owner-only (as the data dir's key), unless the file sits on a read-only mount: a platform secret
    (Kubernetes Secret volume, Compose secret, Container Apps secret volume) seen only inside the
    container, whose mode the platform decides (Kubernetes with `fsGroup` makes it 0440). A file that
    group or others can write is refused everywhere: the key could be swapped under the gateway."""
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by group or others (mode {stat.S_IMODE(mode):o})"
    if mode & (stat.S_IRWXG | stat.S_IRWXO) and not read_only:
        return f"is readable by other users on a writable file system (mode {stat.S_IMODE(mode):o})"
    return None


def _check_mounted_file(path: Path) -> None:
    problem = mounted_key_problem(path.stat().st_mode, bool(os.statvfs(path).f_flag & os.ST_RDONLY))
    if problem:
        raise ConfigError(
            f"{path} ({MASTER_KEY_FILE_ENV}) {problem}.",
            hint=f"Run: chmod 400 {path}, or mount it read-only (as a platform secret).",
            code="insecure-key-file",
        )


def load_master_key(home: Path, *, create: bool = True, environ: dict[str, str] | None = None) -> bytes:
    """The deployment's master secret (32 bytes): the file `AEGRESS_MASTER_KEY_FILE` names (a mounted
    secret, never created), else `<home>/secrets/master.key` (created on first use)."""
    mounted = (os.environ if environ is None else environ).get(MASTER_KEY_FILE_ENV, "").strip()
    if mounted:
        path = Path(mounted)
        if not path.is_file():
            raise ConfigError(
                f"{MASTER_KEY_FILE_ENV} names {path}, which is not a readable file.",
                hint="Mount the master key secret there (64 hex characters, e.g. from `openssl rand -hex 32`), "
                f"or unset {MASTER_KEY_FILE_ENV} to use <data dir>/secrets/master.key.",
            )
        _check_mounted_file(path)
    else:
        path = home / "secrets" / "master.key"
        if not path.exists():
            if not create:
                raise ConfigError(f"No master key at {path}.", hint="Run any `aegress` command once to create it.")
            write_private_file(path, _random.token_bytes(32).hex().encode())
        check_private_file(path)
    try:
        raw = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"Cannot read the master key {path}: {exc.strerror}.",
                          hint="Check that the gateway's user may read it.") from exc
    try:
        key = bytes.fromhex(raw.decode())
    except ValueError as exc:
        raise ConfigError(f"{path} is not a hex-encoded key.", hint="Restore it from a backup.") from exc
    if len(key) < 32:
        raise ConfigError(f"{path} holds a key shorter than 32 bytes.", hint="Restore it from a backup.")
    return key
