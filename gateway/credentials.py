"""Operator-side secrets: issued tokens and upstream credentials, kept in the OS keyring.

Where the machine has no usable keyring (headless servers, CI) they go to a 0600 JSON file under
the data dir instead, and the caller is told once. Nothing here ever prints a secret.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger("aegress.credentials")

SERVICE = "aegress"
_home: Path | None = None


def set_home(home: Path) -> None:
    global _home
    _home = home


def _file() -> Path:
    from gateway.datadir import home_dir

    return (_home or home_dir()) / "secrets" / "credentials.json"


def _keyring():  # type: ignore[no-untyped-def]
    """The keyring module when a real backend exists, else None (import is lazy: it is slow)."""
    try:
        import keyring
        from keyring.backends import fail, null

        backend = keyring.get_keyring()
        if isinstance(backend, fail.Keyring | null.Keyring):
            return None
        name = type(backend).__module__ + "." + type(backend).__name__
        if "chainer" in name.lower() and not getattr(backend, "backends", None):
            return None
        return keyring
    except Exception:
        return None


def _read_file() -> dict[str, str]:
    from gateway.secrets import check_private_file  # not at import: every CLI command sets the home here

    path = _file()
    if not path.exists():
        return {}
    check_private_file(path)
    return dict(json.loads(path.read_text() or "{}"))


def _write_file(data: dict[str, str]) -> None:
    from gateway.secrets import write_private_file

    write_private_file(_file(), json.dumps(data, indent=2, sort_keys=True).encode())


def store_secret(key: str, value: str) -> str:
    """Keep a secret; returns where it went ('keyring' or the fallback file path)."""
    kr = _keyring()
    if kr is not None:
        try:
            kr.set_password(SERVICE, key, value)
            return "keyring"
        except Exception:
            log.debug("keyring refused the secret; using the file fallback")
    data = _read_file()
    data[key] = value
    _write_file(data)
    return str(_file())


def get_secret(key: str) -> str | None:
    kr = _keyring()
    if kr is not None:
        try:
            value = kr.get_password(SERVICE, key)
            if value is not None:
                return str(value)
        except Exception:
            log.debug("keyring lookup failed; trying the file fallback")
    return _read_file().get(key)


def delete_secret(key: str) -> None:
    kr = _keyring()
    if kr is not None:
        try:
            kr.delete_password(SERVICE, key)
        except Exception:
            log.debug("no keyring entry %s", key)
    data = _read_file()
    if key in data:
        del data[key]
        _write_file(data)


def token_key(tenant_id: str, actor_id: str) -> str:
    return f"token:{tenant_id}:{actor_id}"


def get_upstream_secret(name: str) -> str | None:
    return get_secret(f"upstream:{name}")
