"""Signing, storing and publishing C2SP checkpoints of every log (in the gateway and for `audit checkpoint`)."""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.audit.checkpoint import Checkpoint, parse_checkpoint, parse_note, sign_checkpoint
from gateway.audit.errors import KeyFileError
from gateway.audit.keys import SigningKey, load_signing_key
from gateway.audit.merkle import CompactRange
from gateway.errors import AegressError, NotFound
from gateway.evidence.clock import now_time
from gateway.evidence.keys import load_signing_key_for
from gateway.evidence.origins import origin_prefix
from gateway.evidence.settings import EvidenceSettings
from gateway.store.base import Store

log = logging.getLogger("aegress.evidence")


def _slug(origin: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", origin)


def published_checkpoint(directory: Path, origin: str) -> Path:
    """Where the newest checkpoint of `origin` is published (outside the database): `audit verify`
    checks the log against it, so a log truncated in the database is found without extra flags."""
    return directory / _slug(origin) / "checkpoint"


def write_published(directory: Path, origin: str, size: int, note: str) -> None:
    """Publish a checkpoint: `<size>.note` kept, `checkpoint` replaced atomically (raises OSError)."""
    target = published_checkpoint(directory, origin).parent
    target.mkdir(parents=True, exist_ok=True)
    (target / f"{size:012d}.note").write_text(note)
    tmp = target / "checkpoint.tmp"
    tmp.write_text(note)
    os.replace(tmp, target / "checkpoint")


@dataclass
class _LogState:
    """A log as the checkpointer knows it: only its right edge (O(log n) hashes), so memory stays flat
    however long the log grows. The edge was checked against the last signed checkpoint when it was read
    from the store and has only been extended since, so every later root extends what was signed."""

    origin: str
    edge: CompactRange
    signed: Checkpoint | None
    signed_at: float
    published_at: float
    forked: str | None = None


class Checkpointer:
    """Signs, stores and publishes checkpoints; safe to call from one thread at a time."""

    def __init__(self, store: Store, key: SigningKey, settings: EvidenceSettings) -> None:
        self.store = store
        self.key = key
        self.settings = settings
        self._logs: dict[str, _LogState] = {}
        self.healthy = True
        self._key_mtime = self._mtime()

    def _mtime(self) -> float:
        path = self.settings.key_file
        try:
            return path.stat().st_mtime if path is not None else 0.0
        except OSError:
            return 0.0

    def _reload_key(self) -> None:
        """Pick up `aegress audit rotate-key` without a restart."""
        mtime = self._mtime()
        if mtime and mtime != self._key_mtime and self.settings.key_file is not None:
            try:
                self.key = load_signing_key(self.settings.key_file)
                self._key_mtime = mtime
                log.warning("checkpoint signing key reloaded (%s)", self.key.key_id.hex())
            except KeyFileError as exc:
                log.error("cannot reload the signing key: %s", exc.message)

    def _state(self, origin: str) -> _LogState:
        state = self._logs.get(origin)
        if state is None:
            stored = self.store.list_checkpoints(origin)
            signed = parse_checkpoint(parse_note(stored[-1][1]).text) if stored else None
            state = _LogState(origin, CompactRange(), signed, time.monotonic(), 0.0)
            self._extend(state)
            if signed is not None and state.edge.size < signed.size:
                state.forked = (f"the log holds {state.edge.size} records but checkpoint {signed.size} was signed; "
                                "refusing to sign")
            self._logs[origin] = state
        else:
            self._extend(state)
        return state

    def _extend(self, state: _LogState) -> None:
        """Append the leaves stored since; on the way past the signed size, check the root there: a stored
        history that no longer hashes to what was signed has been rewritten, and is never signed again."""
        signed = state.signed
        for h in self.store.evidence_leaf_hashes(state.origin, state.edge.size):
            state.edge.append(h)
            if signed is not None and state.edge.size == signed.size and state.edge.root() != signed.root:
                state.forked = (f"the stored log's first {signed.size} records do not hash to the signed "
                                "checkpoint's root; refusing to sign")

    def tick(self, *, force: bool = False, now: float | None = None) -> list[str]:
        """Sign what is due (force: everything that grew); republish idle logs' checkpoints as a heartbeat."""
        now = time.monotonic() if now is None else now
        self._reload_key()
        notes: list[str] = []
        for origin in self.store.evidence_origins():
            state = self._state(origin)
            size = state.edge.size
            signed_size = state.signed.size if state.signed else 0
            grown = size - signed_size
            due = grown > 0 and (
                force or grown >= self.settings.checkpoint_every
                or now - state.signed_at >= self.settings.checkpoint_interval_s
            )
            if due:
                note = self._sign(origin, state, now)
                if note:
                    notes.append(note)
            elif state.signed is not None and now - state.published_at >= self.settings.heartbeat_s:
                stored = self.store.list_checkpoints(origin)
                if stored:
                    self._publish(origin, stored[-1][0], stored[-1][1])
                    state.published_at = now
        return notes

    def _sign(self, origin: str, state: _LogState, now: float) -> str | None:
        cp = Checkpoint(origin=origin, size=state.edge.size, root=state.edge.root())
        if state.forked is not None:
            self.healthy = False
            log.error("refusing to sign %s at size %d: %s", origin, cp.size, state.forked)
            return None
        # consistency with state.signed holds by construction (see _LogState), so no proof is passed
        note = sign_checkpoint(cp, self.key.name, self.key.private_key, previous=None)
        self.store.add_checkpoint(origin, cp.size, cp.root, note, now_time())
        state.signed, state.signed_at = cp, now
        self._publish(origin, cp.size, note)
        state.published_at = now
        return note

    def _publish(self, origin: str, size: int, note: str) -> None:
        directory = self.settings.publish_dir
        if directory is not None:
            try:
                write_published(directory, origin, size, note)
            except OSError as exc:
                log.error("cannot publish a checkpoint to %s: %s", directory, exc.strerror)
        hook = self.settings.publish_hook
        if hook:
            env = dict(os.environ, AEGRESS_CHECKPOINT_ORIGIN=origin, AEGRESS_CHECKPOINT_SIZE=str(size))
            try:
                subprocess.run(shlex.split(hook), input=note, text=True, env=env, timeout=10, check=True,
                               capture_output=True)
            except (OSError, subprocess.SubprocessError) as exc:
                log.error("checkpoint hook failed for %s: %s", origin, type(exc).__name__)


def sign_checkpoints(store: Store, key: SigningKey, settings: EvidenceSettings) -> list[str]:
    """Sign every log that grew since its last checkpoint, now (CLI `audit checkpoint`, shutdown)."""
    return Checkpointer(store, key, settings).tick(force=True)


def sign_now(store: Store, home: Path, *, settings: EvidenceSettings | None = None) -> list[str]:
    """`aegress audit checkpoint`: sign every log that grew, with this data dir's key; NotFound without one."""
    settings = settings or EvidenceSettings.from_env(home)
    key, _ = load_signing_key_for(home, origin_prefix(store), settings.key_file)
    if key is None:
        raise NotFound("No checkpoint signing key.", hint="Start the gateway once; it creates one.")
    return sign_checkpoints(store, key, settings)


def sign_if_possible(store: Store, home: Path) -> list[str]:
    """Sign every log that grew, if this host has a usable key (before an export, after a repair); else nothing."""
    settings = EvidenceSettings.from_env(home)
    try:
        key, _ = load_signing_key_for(home, origin_prefix(store), settings.key_file)
    except KeyFileError:
        return []
    return sign_checkpoints(store, key, settings) if key is not None else []


def read_published(directory: Path | None, origin: str) -> tuple[str, Path] | None:
    """(note, path) of the newest checkpoint of `origin` published outside the database, if there is one."""
    path = published_checkpoint(directory, origin) if directory is not None else None
    if path is None or not path.is_file():
        return None
    return path.read_text(), path


def published_origins(directory: Path | None) -> set[str]:
    """Origins with a checkpoint published in `directory`: a log deleted from the database entirely is still
    verified (and found truncated). Files that are not checkpoints are skipped (`--against` names one)."""
    found: set[str] = set()
    for path in sorted(directory.glob("*/checkpoint")) if directory is not None and directory.is_dir() else []:
        try:
            found.add(parse_checkpoint(parse_note(path.read_text()).text).origin)
        except (AegressError, OSError, ValueError):
            continue
    return found
