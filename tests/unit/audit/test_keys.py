"""Signing keys: 0600 key files, note-compatible format, rotation keeps old public keys."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from audit_logs import fixed_key

from gateway.audit.checkpoint import open_note, sign_note
from gateway.audit.errors import KeyFileError
from gateway.audit.keys import (
    Keyring,
    check_key_file_mode,
    format_private_key,
    generate_signing_key,
    load_signing_key,
    parse_private_key,
    write_signing_key,
)


def test_key_file_round_trip(tmp_path: Path) -> None:
    key = generate_signing_key("aegress.test/log")
    path = tmp_path / "signing.key"
    write_signing_key(path, key)
    assert os.stat(path).st_mode & 0o777 == 0o600
    loaded = load_signing_key(path)
    assert loaded.verifier_key == key.verifier_key
    assert "PRIVATE" not in repr(loaded)
    with pytest.raises(KeyFileError):
        write_signing_key(path, key)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o610, 0o601])
def test_refuses_key_file_others_can_read(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "signing.key"
    path.write_text(format_private_key(fixed_key()))
    path.chmod(mode)
    with pytest.raises(KeyFileError) as info:
        load_signing_key(path)
    assert info.value.hint == f"run: chmod 600 {path}"
    check_key_file_mode(0o100600, path)
    check_key_file_mode(0o100400, path)


@pytest.mark.parametrize(
    ("mode", "refused"), [(0o440, False), (0o444, False), (0o644, False), (0o460, True), (0o446, True), (0o666, True)]
)
def test_read_only_mount_accepts_the_platforms_read_bits(mode: int, refused: bool) -> None:
    """A Kubernetes Secret volume with fsGroup makes the key 0440; a read-only mount cannot be swapped, so only
    write bits for group or others (which a platform would never set on a secret) are refused there."""
    if refused:
        with pytest.raises(KeyFileError):
            check_key_file_mode(0o100000 | mode, "/run/secrets/k", read_only=True)
    else:
        check_key_file_mode(0o100000 | mode, "/run/secrets/k", read_only=True)
    with pytest.raises(KeyFileError):
        check_key_file_mode(0o100000 | mode, "/data/k")  # the same mode on a writable disk


@pytest.mark.parametrize(
    "text",
    ["", "PRIVATE+KEY+x", "PRIVATE+KEY+name+00000000+AAAA", format_private_key(fixed_key()).replace("+", "+0", 1)],
)
def test_malformed_key_files_are_refused_without_echoing(text: str) -> None:
    with pytest.raises(KeyFileError) as info:
        parse_private_key(text)
    assert "AQ" not in info.value.message


def test_rotation_keeps_old_public_keys() -> None:
    first, second = fixed_key("log", 1), fixed_key("log", 3)
    ring = Keyring(active=first).rotate(second)
    assert ring.active is second
    assert ring.retired == (first.verifier_key,)
    old_note = sign_note("hello\n", first.name, first.private_key)
    assert open_note(old_note, ring.verifiers()).verified_by == ("log",)
    assert ring.verifier_keys() == [first.verifier_key, second.verifier_key]
