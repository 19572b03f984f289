"""The checkpoint signing key (key file, keyring, rotation) and the verifier keys a data dir trusts (audit/keys.txt)."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.audit.checkpoint import Verifier
from gateway.audit.keys import (
    SigningKey,
    generate_signing_key,
    load_signing_key,
    parse_private_key,
    parse_verifier_keys,
    write_signing_key,
)
from gateway.evidence.events import record_event
from gateway.evidence.origins import origin_prefix
from gateway.evidence.settings import KEY_FILE, KEYS_TXT, EvidenceSettings
from gateway.store.base import Store

KEYRING_ENTRY = "audit-signing-key"


def key_name(prefix: str) -> str:
    return re.sub(r"[^A-Za-z0-9._/-]", "-", prefix)


def keys_txt(home: Path) -> Path:
    return home / KEYS_TXT


def load_signing_key_for(home: Path, prefix: str, key_file: Path | None = None, *,
                         create: bool = False) -> tuple[SigningKey | None, bool]:
    """The active signing key: the 0600 key file, else the operator keyring, else (create=True) a new file.

    Returns (key, created). Refuses a key file others can read (KeyFileError with a chmod hint).
    """
    path = key_file or home / KEY_FILE
    if path.exists():
        return load_signing_key(path), False
    from gateway import credentials

    credentials.set_home(home)
    with contextlib.suppress(Exception):
        text = credentials.get_secret(KEYRING_ENTRY)
        if text:
            return parse_private_key(text), False
    if not create:
        return None, False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = generate_signing_key(key_name(prefix))
    write_signing_key(path, key)
    remember_verifier(home, key.verifier_key)
    return key, True


def remember_verifier(home: Path, verifier_key: str) -> None:
    """Append a verifier key to <home>/audit/keys.txt (public; old keys stay so old checkpoints verify)."""
    path = keys_txt(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = path.read_text().splitlines() if path.exists() else []
    if verifier_key not in existing:
        with path.open("a") as handle:
            handle.write(verifier_key + "\n")


def trusted_verifiers(home: Path, active: SigningKey | None = None) -> list[Verifier]:
    path = keys_txt(home)
    lines = path.read_text().splitlines() if path.exists() else []
    if active is not None and active.verifier_key not in lines:
        lines.append(active.verifier_key)
    return parse_verifier_keys(lines)


def rotate_signing_key(home: Path, prefix: str, key_file: Path | None = None) -> tuple[str | None, SigningKey]:
    """Replace the key file with a new key; the old verifier key stays in keys.txt. Returns (old, new)."""
    path = key_file or home / KEY_FILE
    old, _ = load_signing_key_for(home, prefix, path)
    new = generate_signing_key(key_name(prefix))
    if old is not None:
        remember_verifier(home, old.verifier_key)
    tmp = path.with_name(path.name + ".new")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    write_signing_key(tmp, new)
    os.replace(tmp, path)
    remember_verifier(home, new.verifier_key)
    return (old.verifier_key if old else None), new


def verifiers_from(keys: Sequence[str]) -> list[Verifier]:
    """Verifier keys given on a command line: each a key, or a file of keys one per line."""
    lines: list[str] = []
    for k in keys:
        path = Path(k)
        lines.extend(path.read_text().splitlines() if path.is_file() else [k])
    return parse_verifier_keys(lines)


def public_keys(store: Store, home: Path) -> tuple[str | None, list[str]]:
    """(the active verifier key, if this host has the signing key; every trusted verifier key)."""
    settings = EvidenceSettings.from_env(home)
    key, _ = load_signing_key_for(home, origin_prefix(store), settings.key_file)
    return (key.verifier_key if key else None), [v.to_string() for v in trusted_verifiers(home, key)]


def rotate_key(store: Store, home: Path, actor: str) -> tuple[str | None, str]:
    """`aegress audit rotate-key`: a new signing key file, the old verifier key kept trusted, a `key_event`
    sealed in the security log. Returns (old verifier key, new verifier key)."""
    settings = EvidenceSettings.from_env(home)
    prefix = origin_prefix(store)
    old, new = rotate_signing_key(home, prefix, settings.key_file)
    body: dict[str, Any] = {"event": "rotated", "key": new.verifier_key, "actor": actor}
    if old:
        body["previous_key"] = old
    record_event(store, None, "key_event", body)
    load_signing_key_for(home, prefix, settings.key_file)  # re-check the new file's mode
    return old, new.verifier_key
