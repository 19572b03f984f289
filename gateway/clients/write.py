"""The only module that touches the filesystem: bounded reads and atomic, backed-up writes.

A client config is precious (Claude Code replaces a corrupt `~/.claude.json` with a fresh default,
losing every server), so a write is: check the file still holds what we merged into, back it up,
write a temp file in the same directory, fsync, rename over the original, fsync the directory.
A crash leaves either the old file or the new one, never half of each.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gateway.clients.model import MalformedConfig
from gateway.errors import ConfigError

MAX_CONFIG_BYTES = 64 * 1024 * 1024  # ~/.claude.json grows with history; beyond this, refuse
BACKUP_SUFFIX = ".aegress-bak"


@dataclass(frozen=True)
class WriteResult:
    path: Path  # the file actually written (a symlink's target)
    changed: bool
    created: bool
    backup: Path | None


def read_config(path: Path, *, max_bytes: int = MAX_CONFIG_BYTES) -> str | None:
    """The file's text, or None if it does not exist; refuses huge, non-regular or non-UTF-8 files."""
    try:
        with open(path, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise ConfigError(f"{path} is not a regular file")
            data = fh.read(max_bytes + 1)
    except FileNotFoundError:
        return None
    except IsADirectoryError as exc:
        raise ConfigError(f"{path} is a directory, not a config file") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", hint="Check the file's permissions.") from exc
    if len(data) > max_bytes:
        raise ConfigError(
            f"{path} is larger than {max_bytes} bytes; refusing to edit it",
            hint="Trim or move the file aside, then run the command again.",
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise MalformedConfig(str(path), "not UTF-8 text", line=line) from None


def write_config(path: Path, text: str, *, expected: str | None, new_file_mode: int = 0o600) -> WriteResult:
    """Replace `path` with `text` atomically, if it still holds `expected` (None = absent).

    Keeps the existing mode (and owner when run as root); a new file gets `new_file_mode` and its
    missing parent directories are created. The previous content goes to `FILE.aegress-bak`.
    A symlink is written through: its target is replaced and the link stays a link.
    """
    target = Path(os.path.realpath(path))
    current = read_config(target)
    if current != expected:
        raise ConfigError(
            f"{path} changed while it was being edited; nothing was written",
            hint="Run the command again (close the client first if it keeps rewriting the file).",
            code="config-changed",
        )
    if current == text:
        return WriteResult(target, changed=False, created=False, backup=None)
    data = text.encode("utf-8")
    if current is None:
        dir_mode = 0o700 if new_file_mode & 0o077 == 0 else 0o755
        _make_dirs(target.parent, dir_mode)
        _atomic_write(target, data, new_file_mode, owner=None)
        return WriteResult(target, changed=True, created=True, backup=None)
    st = target.stat()
    mode, owner = stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)
    backup = target.with_name(target.name + BACKUP_SUFFIX)
    _atomic_write(backup, current.encode("utf-8"), mode, owner=owner)
    _atomic_write(target, data, mode, owner=owner)
    return WriteResult(target, changed=True, created=False, backup=backup)


def _make_dirs(directory: Path, mode: int) -> None:
    """Create missing directories, each with `mode` (mkdir(parents=True) applies it to the last only)."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        path.mkdir(mode=mode, exist_ok=True)


def _atomic_write(target: Path, data: bytes, mode: int, *, owner: tuple[int, int] | None) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        if owner is not None and os.geteuid() == 0 and owner != (os.getuid(), os.getgid()):
            os.fchown(fd, *owner)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
