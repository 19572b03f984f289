"""write.py on a real (temporary) filesystem: atomic replace, backups, modes, refusals."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from clients_support import CANARY, REQUEST

from gateway.clients import CLIENTS, MalformedConfig
from gateway.clients.write import BACKUP_SUFFIX, read_config, write_config
from gateway.errors import ConfigError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _setup(path: Path, client: str = "claude-code", scope: str = "user") -> None:
    """What `aegress client setup` does: read, merge (pure), write."""
    spec = CLIENTS[client]
    before = read_config(path)
    after = spec.merge(before, REQUEST, scope, source=str(path))  # type: ignore[arg-type]
    write_config(path, after, expected=before, new_file_mode=spec.new_file_mode(scope))  # type: ignore[arg-type]


def test_new_file_is_0600_with_private_parent_dirs(tmp_path: Path) -> None:
    path = tmp_path / "home" / ".codex" / "config.toml"
    _setup(path, "codex")
    assert _mode(path) == 0o600
    assert _mode(path.parent) & 0o077 == 0
    assert _mode(path.parent.parent) & 0o077 == 0
    assert not path.with_name(path.name + BACKUP_SUFFIX).exists()
    assert CANARY not in path.read_text()


def test_new_project_file_is_world_readable(tmp_path: Path) -> None:
    path = tmp_path / "proj" / ".vscode" / "mcp.json"
    _setup(path, "vscode", "project")
    assert _mode(path) == 0o644


def test_existing_mode_is_kept_and_backup_written(tmp_path: Path) -> None:
    path = tmp_path / ".claude.json"
    original = '{\n  "theme": "dark"\n}\n'
    path.write_text(original)
    path.chmod(0o640)
    _setup(path)
    assert _mode(path) == 0o640
    backup = path.with_name(".claude.json" + BACKUP_SUFFIX)
    assert backup.read_text() == original
    assert _mode(backup) == 0o640
    assert '"headersHelper"' in path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".claude.json", ".claude.json" + BACKUP_SUFFIX]


def test_second_run_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / ".mcp.json"
    _setup(path, scope="project")
    first = path.read_bytes()
    inode = path.stat().st_ino
    before = read_config(path)
    result = write_config(path, CLIENTS["claude-code"].merge(before, REQUEST, "project"), expected=before)
    assert not result.changed
    assert path.read_bytes() == first and path.stat().st_ino == inode


def test_malformed_file_is_untouched(tmp_path: Path) -> None:
    path = tmp_path / ".claude.json"
    broken = b'{"mcpServers": {"a": {"url": "x"},}}\n'
    path.write_bytes(broken)
    path.chmod(0o600)
    with pytest.raises(MalformedConfig, match=r"\.claude\.json cannot be edited safely: line 1"):
        _setup(path)
    assert path.read_bytes() == broken
    assert [p.name for p in tmp_path.iterdir()] == [".claude.json"]


def test_concurrent_change_is_refused(tmp_path: Path) -> None:
    path = tmp_path / ".claude.json"
    path.write_text("{}\n")
    before = read_config(path)
    merged = CLIENTS["claude-code"].merge(before, REQUEST, "user")
    path.write_text('{"numStartups": 2}\n')  # the client rewrote its file meanwhile
    with pytest.raises(ConfigError) as info:
        write_config(path, merged, expected=before)
    assert info.value.code == "config-changed"
    assert path.read_text() == '{"numStartups": 2}\n'
    with pytest.raises(ConfigError):
        write_config(tmp_path / "new.json", merged, expected="{}\n")  # expected a file that is not there


def test_symlink_is_written_through(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "claude.json"
    real.parent.mkdir()
    real.write_text("{}\n")
    real.chmod(0o600)
    link = tmp_path / ".claude.json"
    link.symlink_to(real)
    _setup(link)
    assert link.is_symlink()
    assert "aegress" in real.read_text()
    assert real.with_name("claude.json" + BACKUP_SUFFIX).read_text() == "{}\n"


def test_read_refuses_huge_and_non_utf8_files(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 2048)
    with pytest.raises(ConfigError, match="larger than 1024 bytes"):
        read_config(big, max_bytes=1024)
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{\n"a": "\xe9"}')
    with pytest.raises(MalformedConfig, match="line 2: not UTF-8"):
        read_config(latin)
    assert read_config(tmp_path / "missing.json") is None
    with pytest.raises(ConfigError, match="is a directory"):
        read_config(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads everything")
def test_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "locked.json"
    path.write_text("{}")
    path.chmod(0)
    with pytest.raises(ConfigError, match="cannot read"):
        read_config(path)


def test_failed_write_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.json"
    path.write_text("{}\n")

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_config(path, '{"a": 1}\n', expected="{}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]
    assert path.read_text() == "{}\n"
