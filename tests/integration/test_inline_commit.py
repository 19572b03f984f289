"""A lone call's intent commits on the event loop when the evidence writer is idle (issue 10); everything
else, and every fault, still goes through the writer thread, which refuses intents and holds the rest as
before. Real SQLite files and a real Postgres; no mocks of the database."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.audit.log import Entry, Sealed
from gateway.audit.verify import verify_log
from gateway.errors import StoreUnavailable
from gateway.evidence import writer as writer_module
from gateway.evidence.writer import EvidenceWriter
from gateway.store.base import Store
from gateway.store.sqlite import SQLiteStore
from tests.integration.test_audit_store import ORIGIN, intent, revoked

Commits = list[tuple[str, list[str]]]


def _writer(store: Any, commits: Commits, **kwargs: Any) -> EvidenceWriter:
    """A writer with inline commits on that notes, per commit, the thread that made it and the kinds."""
    def note(sealed: list[Sealed]) -> None:
        commits.append((threading.current_thread().name, [s.entry.kind for s in sealed]))

    return EvidenceWriter(store, inline=True, on_commit=note, **kwargs)


def _submit(writer: EvidenceWriter, entry: Entry, *, alone: bool = True) -> tuple[bool, Sealed]:
    """On an event loop: whether the intent was durable before the first await, and its record."""
    async def go() -> tuple[bool, Sealed]:
        future = writer.submit_async(entry, alone=alone)
        at_once = future.done()
        return at_once, await asyncio.wait_for(future, 10)

    return asyncio.run(go())


def _built(writer: EvidenceWriter, n: int) -> None:
    """Wait (bounded) until the writer thread has built `n` deferred records and put them with the ones ready
    for the next commit (the writer's own bookkeeping: nothing public says "built")."""
    for _ in range(1000):
        with writer._later_lock:
            if len(writer._ready) >= n and not writer._building and not writer._later:
                return
        time.sleep(0.005)
    raise AssertionError(f"the writer did not build {n} deferred record(s) within 5 s")


def test_a_lone_intent_is_durable_before_the_first_await_and_takes_the_built_outcomes(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "a.db")
    commits: Commits = []
    writer = _writer(store, commits, defer_s=60.0)
    writer.defer(lambda: revoked(0))  # an answered call's outcome: built on the writer's thread
    _built(writer, 1)
    at_once, sealed = _submit(writer, intent(1))
    assert at_once and sealed.record.seq == 1
    # one transaction, made on the event loop's thread: the outcome rode the intent's commit
    assert commits == [("MainThread", ["token_revoked", "intent"])]
    writer.close()
    assert verify_log(store.evidence_records(ORIGIN), origin=ORIGIN).ok


@pytest.mark.parametrize("alone", [False, True])
def test_under_load_and_on_postgres_the_writer_thread_commits(store: Store, store_url: str, alone: bool) -> None:
    """Not alone (other calls in flight): always the writer thread. Postgres: never on the loop (each
    statement is a network round trip), alone or not."""
    commits: Commits = []
    writer = _writer(store, commits)
    at_once, sealed = _submit(writer, intent(0), alone=alone)
    writer.close()
    inline = alone and store_url.startswith("sqlite:")
    assert at_once is inline
    assert commits == [("MainThread" if inline else "aegress-evidence", ["intent"])]
    assert sealed.record.seq == 0


def test_a_locked_database_sends_the_intent_to_the_writer_thread_and_loses_nothing(tmp_path: Path) -> None:
    """Another process holds the write lock: the loop never waits for it (WouldBlock at once); the writer
    thread waits its busy timeout and commits once the lock is gone."""
    store = SQLiteStore(tmp_path / "a.db", busy_timeout_s=10.0)
    commits: Commits = []
    writer = _writer(store, commits)
    other = sqlite3.connect(tmp_path / "a.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    threading.Timer(2.0, lambda: other.execute("ROLLBACK")).start()
    started = time.monotonic()

    async def go() -> tuple[bool, float, Sealed]:
        future = writer.submit_async(intent(0), alone=True)
        returned = time.monotonic() - started
        return future.done(), returned, await asyncio.wait_for(future, 10)

    at_once, returned, sealed = asyncio.run(go())
    other.close()
    writer.close()
    assert not at_once and returned < 1.0  # the loop did not wait for the lock (held 2 s)
    assert sealed.record.seq == 0 and commits == [("aegress-evidence", ["intent"])]


class _Faulty:
    """A real SQLite store whose loop-side commit is slow, or fails, on demand (the disk's faults)."""

    inline_commits = True

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self.inline_delay = 0.0
        self.inline_error: Exception | None = None
        self.error: Exception | None = None

    def append_evidence_nowait(self, entries: list[Entry], before: Callable[..., None] | None = None) -> list[Sealed]:
        if self.inline_error is not None:
            raise self.inline_error
        time.sleep(self.inline_delay)
        return self.store.append_evidence_nowait(entries, before)

    def append_evidence(self, entries: list[Entry], before: Callable[..., None] | None = None) -> list[Sealed]:
        if self.error is not None:
            raise self.error
        return self.store.append_evidence(entries, before)


def test_a_slow_inline_commit_pauses_inline_commits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The event loop must not keep waiting on a slow disk: after one commit over INLINE_SLOW_S the writer
    thread takes every intent for INLINE_PAUSE_S, then the loop may commit again."""
    monkeypatch.setattr(writer_module, "INLINE_PAUSE_S", 0.5)
    faulty = _Faulty(SQLiteStore(tmp_path / "a.db"))
    commits: Commits = []
    writer = _writer(faulty, commits)
    faulty.inline_delay = writer_module.INLINE_SLOW_S * 2
    assert _submit(writer, intent(0))[0]  # committed here, but slowly
    faulty.inline_delay = 0.0
    assert not _submit(writer, intent(1))[0]  # paused: the writer thread
    time.sleep(0.6)
    assert _submit(writer, intent(2))[0]  # the pause is over
    writer.close()
    assert [name for name, _ in commits] == ["MainThread", "aegress-evidence", "MainThread"]


def test_a_failed_inline_commit_hands_over_and_the_intent_is_refused_if_the_store_refuses(tmp_path: Path) -> None:
    """Fail closed, as before: the loop's commit failed (nothing committed), the writer thread tries, and
    when the store refuses it too the intent is refused (503, nothing forwarded); when the store takes
    it, it commits there. Deferred records taken for the failed commit are kept and commit later."""
    faulty = _Faulty(SQLiteStore(tmp_path / "a.db"))
    commits: Commits = []
    writer = _writer(faulty, commits, defer_s=60.0, retry_s=0.05)
    faulty.inline_error = StoreUnavailable("disk full")
    writer.defer(lambda: revoked(0))
    _built(writer, 1)
    faulty.error = StoreUnavailable("disk full")
    with pytest.raises(StoreUnavailable):
        _submit(writer, intent(1))
    assert commits == [] and faulty.store.evidence_size(ORIGIN) == 0
    faulty.error = None  # the disk has room again: the held outcome commits without a restart
    for _ in range(200):
        if faulty.store.evidence_size(ORIGIN) == 1:
            break
        time.sleep(0.01)
    assert commits == [("aegress-evidence", ["token_revoked"])]
    at_once, sealed = _submit(writer, intent(2))
    assert not at_once and sealed.record.seq == 1  # inline commits are paused after the failure
    writer.close()
    assert verify_log(faulty.store.evidence_records(ORIGIN), origin=ORIGIN).ok



class _OwnedLock:
    """The writer's commit lock, noting which thread holds it (a plain Lock cannot say)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.owner: int | None = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(blocking, timeout):
            self.owner = threading.get_ident()
            return True
        return False

    def release(self) -> None:
        self.owner = None
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class _NotingCheckpoints(SQLiteStore):
    """A real SQLite store that notes each WAL checkpoint pass: the thread that ran it, whether that thread
    held the writer's commit lock (`watch` the writer first), and how many commits landed while it ran.
    `slow_s`: every pass ends that much later (a slow disk's sync)."""

    def __init__(self, path: Path, slow_s: float = 0.0) -> None:
        super().__init__(path)
        self.lock: _OwnedLock | None = None
        self.passes: list[tuple[str, bool, int]] = []  # (thread, commit lock held, commits meanwhile)
        self._slow_s = slow_s
        self._commits = 0

    def watch(self, writer: EvidenceWriter) -> EvidenceWriter:
        """Give `writer` (before its first commit) a commit lock that says who holds it."""
        self.lock = writer._commit_lock = _OwnedLock()  # type: ignore[assignment]
        return writer

    def checkpoint_wal(self) -> None:
        locked = self.lock is not None and self.lock.owner == threading.get_ident()
        before = self._commits
        super().checkpoint_wal()
        time.sleep(self._slow_s)
        self.passes.append((threading.current_thread().name, locked, self._commits - before))

    def append_evidence_nowait(self, *args: Any, **kwargs: Any) -> list[Sealed]:
        sealed = super().append_evidence_nowait(*args, **kwargs)
        self._commits += 1
        return sealed

    def append_evidence(self, *args: Any, **kwargs: Any) -> list[Sealed]:
        sealed = super().append_evidence(*args, **kwargs)
        self._commits += 1
        return sealed

    @property
    def checkpoints(self) -> list[str]:
        """The threads of the finished checkpoints (each ends with a pass under the commit lock)."""
        return [name for name, locked, _ in self.passes if locked]


def _inline_intents(writer: EvidenceWriter, n: int) -> None:
    async def go() -> None:
        for i in range(n):
            await writer.submit_async(intent(i), alone=True)

    asyncio.run(go())


def _wal_frames(path: Path) -> int:
    """Frames in the WAL now (a PASSIVE checkpoint from another connection reports them; it resets nothing)."""
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])


def test_inline_commits_never_checkpoint_the_wal_on_the_event_loop(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's automatic checkpoint (at 1,000 WAL pages, in the commit that crosses the mark) would copy the WAL
    into the database and sync it on the event loop: the inline connection has it off. With no checkpoint
    asked of the writer either, the WAL keeps every frame of 300 inline commits, well past 1,000."""
    from gateway.store import sqlite as sqlite_module

    monkeypatch.setattr(sqlite_module, "INLINE_COMMITS_PER_CHECKPOINT", 10**9)
    monkeypatch.setattr(writer_module, "INLINE_SLOW_S", 60.0)  # a busy machine's slow commit must not pause them
    store = _NotingCheckpoints(tmp_path / "a.db")
    commits: Commits = []
    writer = _writer(store, commits)
    _inline_intents(writer, 300)
    assert _wal_frames(tmp_path / "a.db") > 1000
    writer.close()
    assert store.passes == [] and {name for name, _ in commits} == {"MainThread"}


def test_the_writer_thread_checkpoints_the_wal_for_inline_commits(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Every INLINE_COMMITS_PER_CHECKPOINT inline commits the writer's thread runs a PASSIVE checkpoint, so the
    WAL stays about SQLite's usual size; the log verifies afterwards. (A lone intent that finds the request
    still queued goes to the writer's thread, and does not count: on a busy machine a few more may.)
    A checkpoint is a first pass without the commit lock (commits go on) and a second with it: however slow
    that is, no commit lands meanwhile. One that did would leave frames the checkpoint did not copy, the WAL
    could not restart, and with one call after another it would keep growing."""
    from gateway.store.sqlite import INLINE_COMMITS_PER_CHECKPOINT

    monkeypatch.setattr(writer_module, "INLINE_SLOW_S", 60.0)  # a busy machine's slow commit must not pause them
    store = _NotingCheckpoints(tmp_path / "a.db", slow_s=0.05)
    commits: Commits = []
    writer = store.watch(_writer(store, commits))
    for _ in range(20):  # bounded: 20 batches of half the interval
        _inline_intents(writer, INLINE_COMMITS_PER_CHECKPOINT // 2)
        if len(store.checkpoints) >= 2:
            break
    writer.close()
    inline = sum(name == "MainThread" for name, _ in commits)
    assert len(store.checkpoints) >= 2 and {name for name, _, _ in store.passes} == {"aegress-evidence"}
    assert [locked for _, locked, _ in store.passes] == [False, True] * len(store.checkpoints)
    assert [meanwhile for _, locked, meanwhile in store.passes if locked] == [0] * len(store.checkpoints)
    assert inline >= INLINE_COMMITS_PER_CHECKPOINT and inline >= 0.8 * len(commits), (inline, len(commits))
    assert _wal_frames(tmp_path / "a.db") < 1000  # the WAL restarted after the last checkpoint
    assert verify_log(store.evidence_records(ORIGIN), origin=ORIGIN).ok
