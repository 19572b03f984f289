"""Ed25519 checkpoint signing keys: generation, the 0600 key file, rotation and public key export.

The key file holds one line in the golang.org/x/mod/sumdb/note private key format,
`PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 || 32-byte seed)>`, so Go tooling can use it too.
The key never enters the database; rotation keeps retired public keys so old checkpoints still verify.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from gateway.audit.checkpoint import ED25519_ALG, Verifier, check_key_name, parse_verifier_key, verifier_for
from gateway.audit.errors import KeyFileError, MalformedNote

_PRIVATE_PREFIX = "PRIVATE+KEY+"


@dataclass(frozen=True)
class SigningKey:
    """A named Ed25519 private key; its repr never shows the key material."""

    name: str
    private_key: Ed25519PrivateKey = field(repr=False)

    @property
    def verifier(self) -> Verifier:
        return verifier_for(self.name, self.private_key)

    @property
    def verifier_key(self) -> str:
        """The public verifier key string, what `aegress audit pubkey` prints."""
        return self.verifier.to_string()

    @property
    def key_id(self) -> bytes:
        return self.verifier.key_id


def generate_signing_key(name: str) -> SigningKey:
    check_key_name(name)
    return SigningKey(name=name, private_key=Ed25519PrivateKey.generate())


def format_private_key(key: SigningKey) -> str:
    seed = key.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    encoded = base64.b64encode(bytes([ED25519_ALG]) + seed).decode("ascii")
    return f"{_PRIVATE_PREFIX}{key.name}+{key.key_id.hex()}+{encoded}\n"


def parse_private_key(text: str) -> SigningKey:
    """Parse the note private key format; errors never echo the key text."""
    line = text.strip()
    if not line.startswith(_PRIVATE_PREFIX):
        raise KeyFileError("key file does not hold a PRIVATE+KEY+ line")
    parts = line[len(_PRIVATE_PREFIX) :].split("+", 2)  # base64 may contain "+"
    if len(parts) != 3:
        raise KeyFileError("key file must hold PRIVATE+KEY+name+keyid+base64key")
    name, hex_id, encoded = parts
    try:
        check_key_name(name)
        raw = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (MalformedNote, binascii.Error, UnicodeEncodeError) as exc:
        raise KeyFileError("key file has an invalid name or key encoding") from exc
    if len(raw) != 33 or raw[0] != ED25519_ALG:
        raise KeyFileError("key file does not hold an Ed25519 key")
    key = SigningKey(name=name, private_key=Ed25519PrivateKey.from_private_bytes(raw[1:]))
    if key.key_id.hex() != hex_id:
        raise KeyFileError("key file's key ID does not match its key")
    return key


def check_key_file_mode(mode: int, path: str | os.PathLike[str], *, read_only: bool = False) -> None:
    """Refuse a key file that the group or others can access in any way. On a read-only mount (a
    platform secret such as a Kubernetes Secret volume, which `fsGroup` makes 0440) only group or
    others' write access is refused: the platform decides the read bits there."""
    bad = mode & (stat.S_IWGRP | stat.S_IWOTH) if read_only else mode & (stat.S_IRWXG | stat.S_IRWXO)
    if bad:
        raise KeyFileError(
            f"signing key file {os.fspath(path)} is accessible by group or others (mode {stat.S_IMODE(mode):04o})",
            hint=f"run: chmod 600 {os.fspath(path)}",
        )


def load_signing_key(path: str | os.PathLike[str]) -> SigningKey:
    """Read a key file after checking its mode (edge I/O: one stat, one statvfs, one read)."""
    try:
        info = os.stat(path)
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError as exc:
        raise KeyFileError(f"cannot read signing key file {os.fspath(path)}: {exc.strerror}") from exc
    check_key_file_mode(info.st_mode, path, read_only=read_only)
    try:
        text = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read signing key file {os.fspath(path)}") from exc
    return parse_private_key(text)


def write_signing_key(path: str | os.PathLike[str], key: SigningKey) -> None:
    """Create a new key file readable by its owner only; never overwrite an existing key."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeyFileError(
            f"signing key file {os.fspath(path)} already exists", hint="rotate instead of overwriting"
        ) from exc
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(format_private_key(key))


@dataclass(frozen=True)
class Keyring:
    """The active signing key plus the public keys of retired ones, all trusted for verification."""

    active: SigningKey | None
    retired: tuple[str, ...] = ()

    def rotate(self, new_key: SigningKey) -> Keyring:
        """Make `new_key` active; the old key's public half stays trusted."""
        retired = self.retired
        if self.active is not None and self.active.verifier_key not in retired:
            retired = (*retired, self.active.verifier_key)
        return Keyring(active=new_key, retired=retired)

    def verifiers(self) -> list[Verifier]:
        keys = [parse_verifier_key(text) for text in self.retired]
        if self.active is not None:
            keys.append(self.active.verifier)
        return keys

    def verifier_keys(self) -> list[str]:
        return [v.to_string() for v in self.verifiers()]


def parse_verifier_keys(lines: Sequence[str]) -> list[Verifier]:
    """Parse a list of verifier key strings, skipping blank lines and `#` comments."""
    return [parse_verifier_key(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]
