"""The master key: the data dir's 0600 file, or a platform secret mounted at `AEGRESS_MASTER_KEY_FILE`."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.secrets import MASTER_KEY_FILE_ENV, load_master_key, mounted_key_problem

KEY_HEX = "ab" * 32


@pytest.mark.parametrize(
    ("mode", "read_only", "refused"),
    [
        (0o400, False, False),
        (0o600, False, False),
        (0o440, True, False),  # Kubernetes Secret volume with fsGroup: read-only mount, group read
        (0o444, True, False),  # a platform secret mount: read-only, seen only inside the container
        (0o644, True, False),
        (0o440, False, True),  # group read on a writable disk: the 0600 rule holds there
        (0o640, False, True),
        (0o644, False, True),  # world-readable on a writable file system: the case the 0600 rule is for
        (0o604, False, True),
        (0o660, True, True),  # group may swap the key
        (0o602, True, True),
        (0o666, True, True),
    ],
)
def test_mounted_key_modes(mode: int, read_only: bool, refused: bool) -> None:
    assert (mounted_key_problem(stat.S_IFREG | mode, read_only) is not None) is refused


def _key_file(tmp_path: Path, mode: int, text: str = KEY_HEX + "\n") -> Path:
    path = tmp_path / "mounted" / "master.key"
    path.parent.mkdir()
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_mounted_key_is_read_and_the_data_dir_gets_none(tmp_path: Path) -> None:
    path = _key_file(tmp_path, 0o400)
    home = tmp_path / "home"
    assert load_master_key(home, environ={MASTER_KEY_FILE_ENV: str(path)}) == bytes.fromhex(KEY_HEX)
    assert not (home / "secrets" / "master.key").exists()


def test_two_data_dirs_share_one_mounted_key(tmp_path: Path) -> None:
    path = _key_file(tmp_path, 0o400)
    env = {MASTER_KEY_FILE_ENV: str(path)}
    assert load_master_key(tmp_path / "a", environ=env) == load_master_key(tmp_path / "b", environ=env)


def test_world_readable_mounted_key_on_a_writable_disk_is_refused(tmp_path: Path) -> None:
    path = _key_file(tmp_path, 0o644)
    with pytest.raises(ConfigError) as info:
        load_master_key(tmp_path / "home", environ={MASTER_KEY_FILE_ENV: str(path)})
    assert info.value.code == "insecure-key-file"
    assert KEY_HEX not in info.value.message + (info.value.hint or "")
    assert "chmod 400" in (info.value.hint or "")


def test_missing_mounted_key_is_never_created(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "master.key"
    with pytest.raises(ConfigError) as info:
        load_master_key(tmp_path / "home", environ={MASTER_KEY_FILE_ENV: str(path)})
    assert MASTER_KEY_FILE_ENV in info.value.message
    assert not path.exists()
    assert not (tmp_path / "home" / "secrets" / "master.key").exists()


@pytest.mark.parametrize("text", ["not hex\n", "abcd\n"])
def test_malformed_mounted_key_is_refused_without_echoing_it(tmp_path: Path, text: str) -> None:
    path = _key_file(tmp_path, 0o400, text)
    with pytest.raises(ConfigError) as info:
        load_master_key(tmp_path / "home", environ={MASTER_KEY_FILE_ENV: str(path)})
    assert text.strip() not in info.value.message


def test_without_the_variable_the_data_dir_key_is_created_0600(tmp_path: Path) -> None:
    home = tmp_path / "home"
    key = load_master_key(home, environ={})
    path = home / "secrets" / "master.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_master_key(home, environ={MASTER_KEY_FILE_ENV: "  "}) == key  # blank: unset
    os.chmod(path, 0o640)
    with pytest.raises(ConfigError, match="readable by other users"):
        load_master_key(home, environ={})
