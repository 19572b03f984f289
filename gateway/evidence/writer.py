"""The group-commit writer: one thread commits everything queued in one transaction, one fsync for all."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from gateway.audit.log import Entry, Sealed
from gateway.audit.records import validate_body
from gateway.errors import AegressError, StoreUnavailable
from gateway.evidence.settings import MAX_HELD_BYTES, MAX_HELD_RECORDS
from gateway.observe import NOTHING, Observer
from gateway.store.base import Store, WouldBlock

log = logging.getLogger("aegress.evidence")


_Waiter = concurrent.futures.Future[Sealed] | asyncio.Future[Sealed] | None
"""Who waits for a record's commit: a thread, the event loop, or nobody (a deferred record)."""
_Orphan = Callable[[Sealed], None]

REFUSABLE = frozenset({"intent", "elicitation_answer"})
"""Records whose caller is told when the store cannot take them (the call is refused, nothing forwarded).
Every other record (outcomes, decisions, operator events) describes something that already happened: the
writer keeps it and retries until the store takes it."""
RETRY_S = 0.5
"""How often a writer that holds records the store refused tries again."""
_WAKE = object()
"""Queued by `defer` so the writer builds the deferred record now; never committed."""
_CHECKPOINT = object()
"""Queued after an inline commit when the store wants a WAL checkpoint (`wal_checkpoint_due`): the writer's
thread runs it (`checkpoint_wal`), so the event loop never does."""
UNCAPPED = frozenset({"outcome"})
INLINE_SLOW_S = 0.01
"""An inline commit slower than this (a slow disk, a busy machine) stops inline commits for INLINE_PAUSE_S: the
event loop must not wait on the disk while the writer thread could."""
INLINE_PAUSE_S = 5.0


def _entry_size(entry: Entry) -> int:
    """Pure: the bytes a waiting record is counted for (its body as JSON; previews bound it)."""
    try:
        return len(orjson.dumps(entry.body, default=str)) + 256
    except TypeError:  # an integer past 64 bits in a preview: orjson refuses it, json does not
        return len(json.dumps(entry.body, separators=(",", ":"), default=str)) + 256


def _resolve(future: _Waiter, item: Sealed | None, error: BaseException | None, orphan: _Orphan | None) -> None:
    if future is None:
        return
    if future.done():  # the caller gave up (cancelled, timed out); the record is committed all the same
        if item is not None and item.entry.kind == "intent" and orphan is not None:
            orphan(item)  # nobody will forward this call: say so in the log
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(item)  # type: ignore[arg-type]


def _settle_on_loop(items: list[tuple[_Waiter, Sealed | None]], error: BaseException | None,
                    orphan: _Orphan | None) -> None:
    for future, item in items:
        _resolve(future, item, error, orphan)


def _settle(items: list[tuple[_Waiter, Sealed | None]], error: BaseException | None,
            orphan: _Orphan | None = None) -> None:
    """Resolve a batch's waiters: thread futures directly, event-loop futures with one call per loop (where
    cancellation happens too, so "the caller is gone" is decided without a race)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Waiter, Sealed | None]]] = {}
    for future, item in items:
        if isinstance(future, asyncio.Future):
            by_loop.setdefault(future.get_loop(), []).append((future, item))
        else:
            _resolve(future, item, error, orphan)
    for loop, pairs in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_on_loop, pairs, error, orphan)
        except RuntimeError:  # the loop already closed (shutdown): nobody forwards these calls
            for _, item in pairs:
                if item is not None and item.entry.kind == "intent" and orphan is not None:
                    orphan(item)


class EvidenceWriter:
    """One thread commits everything queued in one transaction: concurrent records share an fsync.

    When the store fails, waiting intents are refused at once (StoreUnavailable: 503, nothing forwarded)
    and every other record is held and retried every RETRY_S, in transactions of at most max_batch, until it
    commits: a fault that clears needs no restart, and no call's outcome is lost to it. Records arriving
    meanwhile are committed in their own transaction, so a held record the store keeps refusing never
    blocks new intents. At most max_held records (max_held_bytes) wait: beyond that new records other than
    outcomes are refused at once (`submit` raises StoreUnavailable).

    A record nobody waits for (an answered call's outcome, `defer`) is built on this thread as soon as it is
    deferred, then waits up to defer_s for the next record somebody awaits (an intent) and rides its commit,
    so a call costs one fsync, not two.

    After each commit the observer hears how long the transaction took and how many records it held
    (`Observer.evidence_commit`); it never sees a record."""

    def __init__(self, store: Store, *, commit_wait_s: float = 0.002, max_batch: int = 1024,
                 before_commit: Callable[[list[Sealed]], None] | None = None,
                 on_commit: Callable[[list[Sealed]], None] | None = None,
                 on_orphan: _Orphan | None = None, retry_s: float = RETRY_S,
                 max_held: int = MAX_HELD_RECORDS, max_held_bytes: int = MAX_HELD_BYTES,
                 defer_s: float = 0.0, inline: bool = False, observer: Observer | None = None) -> None:
        self._store = store
        self._observer = observer or NOTHING
        self._wait = commit_wait_s
        self._defer = defer_s
        self._max = max_batch
        self._before = before_commit
        self._on_commit = on_commit
        self._on_orphan = on_orphan
        self._retry_s = retry_s
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()  # (entry, waiter), _WAKE, or None: stop
        self._later: list[Callable[[], Entry]] = []
        self._later_since = 0.0
        self._ready: list[tuple[Entry, _Waiter]] = []  # deferred records built, waiting for a commit
        self._ready_since = 0.0
        self._later_lock = threading.Lock()
        self._wake_queued = False
        self._building = 0  # deferred records taken from _later and not yet in _ready (see flush)
        self._held: list[tuple[Entry, _Waiter]] = []
        self._max_held = max_held
        self._max_held_bytes = max_held_bytes
        self._waiting = 0  # records submitted and not yet committed or refused (queued + held)
        self._waiting_bytes = 0
        self._sizes: dict[int, int] = {}  # id(entry) -> its counted bytes, while it waits
        self._count_lock = threading.Lock()
        self._healthy = True
        self.last_error = ""
        # inline commits (`_commit_here`): only where the store can begin without waiting
        self._inline = inline and getattr(store, "inline_commits", False)
        self._inline_paused = 0.0
        self._commit_lock = threading.Lock()  # one commit at a time, the writer's or an inline one
        self._checkpoint_queued = False
        self._thread = threading.Thread(target=self._run, name="aegress-evidence", daemon=True)
        self._thread.start()

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def held(self) -> int:
        """Records the store refused that are waiting for the next attempt."""
        return len(self._held)

    @property
    def waiting(self) -> tuple[int, int]:
        """Records (and their counted bytes) queued or held, not yet committed or refused."""
        return self._waiting, self._waiting_bytes

    def _admit(self, entry: Entry) -> None:
        """Count a new record in, or refuse it (fail closed) when too many already wait for the store."""
        size = _entry_size(entry)
        with self._count_lock:
            full = self._waiting >= self._max_held or self._waiting_bytes + size > self._max_held_bytes
            if full and entry.kind not in UNCAPPED:
                raise StoreUnavailable(
                    f"The evidence store is not taking commits and {self._waiting} record(s) wait for it; "
                    "this request is refused so that nothing goes unrecorded.",
                    hint="Retry later; the gateway's /health says why it is not ready.")
            self._waiting += 1
            self._waiting_bytes += size
            self._sizes[id(entry)] = size

    def _release(self, entries: Sequence[Entry]) -> None:
        """Records that left the writer: committed, refused, or dropped."""
        if not entries:
            return
        with self._count_lock:
            self._waiting -= len(entries)
            self._waiting_bytes -= sum(self._sizes.pop(id(e), 0) for e in entries)

    def submit(self, entry: Entry) -> concurrent.futures.Future[Sealed]:
        validate_body(entry.kind, entry.body)  # a bad body fails alone, never its whole batch
        self._admit(entry)
        future: concurrent.futures.Future[Sealed] = concurrent.futures.Future()
        self._queue.put((entry, future))
        return future

    def submit_async(self, entry: Entry, *, alone: bool = False) -> asyncio.Future[Sealed]:
        """Like `submit`, for the event loop: a whole batch is settled with one loop wake-up. `alone` (no other
        call is in flight) lets an idle writer's work be done right here instead (`_commit_here`)."""
        validate_body(entry.kind, entry.body)
        self._admit(entry)
        future: asyncio.Future[Sealed] = asyncio.get_running_loop().create_future()
        if alone and self._inline and self._commit_here(entry, future):
            return future
        self._queue.put((entry, future))
        return future

    def _commit_here(self, entry: Entry, future: asyncio.Future[Sealed]) -> bool:
        """Commit `entry` (with the deferred records already built) on the calling thread, the event loop,
        when nothing else is under way: the writer thread idle with nothing queued or held, no record being
        built, and recent inline commits fast. That saves the two thread hand-offs of a lone call (about
        0.15-0.3 ms). Under load the writer thread batches as before. Never waits for a lock (WouldBlock:
        the writer thread takes the records); a commit slower than INLINE_SLOW_S, or any failure, turns
        this off for INLINE_PAUSE_S, and a failed commit's records go to the writer thread, which refuses
        the intent or holds the rest as it always does. False: nothing was committed here."""
        if not self._healthy or self._held or not self._queue.empty() or time.monotonic() < self._inline_paused:
            return False
        if not self._commit_lock.acquire(blocking=False):
            return False
        try:
            with self._later_lock:
                if self._later or self._building:  # the writer is building deferred records: let it commit
                    return False
                ready, self._ready, since = self._ready, [], self._ready_since
            batch = [*ready, (entry, future)]
            entries = [e for e, _ in batch]
            started = time.perf_counter()
            try:
                sealed = self._store.append_evidence_nowait(entries, self._before)
            except WouldBlock:
                self._give_back(ready, since)
                return False
            except Exception as exc:  # the writer thread commits (or refuses) them, and says why
                log.warning("inline evidence commit failed, handing over to the writer thread: %s",
                            exc.message if isinstance(exc, AegressError) else type(exc).__name__)
                self._inline_paused = time.monotonic() + INLINE_PAUSE_S
                self._give_back(ready, since)
                return False
            elapsed = time.perf_counter() - started
            if elapsed > INLINE_SLOW_S:
                self._inline_paused = time.monotonic() + INLINE_PAUSE_S
            self._committed(batch, sealed, elapsed)
            future.set_result(sealed[-1])
            if not self._checkpoint_queued and getattr(self._store, "wal_checkpoint_due", False):
                self._checkpoint_queued = True
                self._queue.put(_CHECKPOINT)
            return True
        finally:
            self._commit_lock.release()

    def _checkpoint(self) -> None:
        """On the writer's thread: the WAL checkpoint inline commits left to it, in two passes. The first
        copies the bulk while commits go on; the second, with the commit lock held (a lone intent goes to
        this thread for that moment), copies what they added meanwhile, usually nothing or a few pages. No
        evidence commit overtakes that one, so the WAL restarts (unless another writer, such as an operator's
        change, or a reader on an older snapshot holds it back: then the next checkpoint does). A checkpoint
        that commits overtake leaves frames behind: with one call after another the WAL kept growing until a
        commit on this thread happened to run SQLite's own checkpoint."""
        self._checkpoint_queued = False
        try:
            self._store.checkpoint_wal()  # type: ignore[attr-defined]
            with self._commit_lock:
                self._store.checkpoint_wal()  # type: ignore[attr-defined]
        except Exception:  # never let housekeeping kill the writer
            log.exception("WAL checkpoint failed")

    def _give_back(self, ready: list[tuple[Entry, _Waiter]], since: float) -> None:
        """Deferred records taken for an inline commit that did not happen: back in front, for the writer,
        still due within defer_s of when they were first ready."""
        if ready:
            with self._later_lock:
                self._ready[:0] = ready
                self._ready_since = since
            self._queue.put(_WAKE)

    def defer(self, build: Callable[[], Entry]) -> None:
        """Queue a record nobody waits for (an outcome already answered): built on the writer's thread and
        committed with the next awaited record, or within defer_s. One wake-up at a time is queued."""
        with self._later_lock:
            if not self._later:
                self._later_since = time.monotonic()
            self._later.append(build)
            wake, self._wake_queued = not self._wake_queued, True
        if wake:
            self._queue.put(_WAKE)

    def flush(self, timeout: float) -> bool:
        """Wait until every record handed over so far (deferred ones too) has left the writer: committed, or
        refused; False if some still wait after `timeout` (the store refuses them; they stay held). For hosts
        that freeze the process between requests (AWS Lambda): nothing may sit in memory while it sleeps."""
        deadline = time.monotonic() + timeout
        self._queue.put(_WAKE)  # deferred records are built and committed now, not after defer_s
        while True:
            with self._later_lock:
                pending = bool(self._later or self._ready or self._building)
            if not pending and self._waiting == 0:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def append_sync(self, entries: Sequence[Entry], timeout: float = 30.0) -> list[Sealed]:
        futures = [self.submit(e) for e in entries]
        return [f.result(timeout) for f in futures]

    def _take(self, first: tuple[Entry, _Waiter] | None, wait: float) -> tuple[list[Any], bool]:
        batch = [first] if first is not None and first is not _WAKE else []
        stop = False
        deadline = time.monotonic() + wait
        while len(batch) < self._max:
            try:
                remaining = deadline - time.monotonic()
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                stop = True
                break
            if item is _CHECKPOINT:
                self._checkpoint()
            elif item is not _WAKE:
                batch.append(item)
        return batch, stop

    def _live(self, batch: list[tuple[Entry, _Waiter]]) -> list[tuple[Entry, _Waiter]]:
        """An intent whose caller already gave up (refused after a bounded wait) is never committed."""
        gone = [e for e, f in batch if e.kind in REFUSABLE and f.done()]
        self._release(gone)
        return [(e, f) for e, f in batch if not (e.kind in REFUSABLE and f.done())] if gone else batch

    def _retry_held(self) -> None:
        """Retry held records oldest first, max_batch per transaction; stop at the first refusal. They stay
        in `_held` until committed, so readiness never sees them gone early."""
        while self._held:
            chunk = self._held[:self._max]
            if not self._commit(chunk, hold=False):
                return
            del self._held[:len(chunk)]

    def _run(self) -> None:
        linger = False
        stop = False
        while True:
            if self._held:  # the store refused records: wait a little (gathering new ones), then retry
                fresh, stop = self._take(None, self._retry_s)
                self._retry_held()
                fresh = self._live(self._deferred() + fresh)
                if fresh:  # in their own transaction: a held record that keeps failing never blocks them
                    self._commit(fresh)
            elif stop:
                break
            else:
                first = self._next()
                batch, stop = self._take(first, self._wait if linger else 0.0) if first is not None else ([], True)
                batch = self._live(self._deferred() + batch)
                if batch:
                    linger = len(batch) > 2  # more than one call's records: wait a little to gather the next group
                    self._commit(batch)
            if stop and self._held:
                log.error("evidence writer stopped with %d record(s) the store did not take; start-up recovery "
                          "marks their calls outcome_unknown", len(self._held))
                break

    def _next(self) -> Any:
        """The next queued record, or _WAKE when deferred records are due. A `defer` wakes the writer to build
        the record at once (off the event loop, while the client reads its answer); the record then waits for
        the next awaited record to share its commit, or for its bound. Right after a commit the writer lingers
        up to defer_s; with nothing to do after that it sleeps until woken."""
        linger_until = time.monotonic() + self._defer
        while True:
            with self._later_lock:
                now = time.monotonic()
                since = min([t for t, pending in ((self._later_since, self._later), (self._ready_since, self._ready))
                             if pending], default=None)
                if since is not None:
                    timeout: float | None = max(0.0, since + self._defer - now)
                elif now < linger_until:
                    timeout = linger_until - now
                else:
                    timeout = None
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                if since is not None and since + self._defer <= time.monotonic():
                    return _WAKE  # deferred records are due: commit them on their own
                continue
            if item is _WAKE:
                self._prebuild()
                continue
            if item is _CHECKPOINT:
                self._checkpoint()
                continue
            return item

    def _prebuild(self) -> None:
        """Build the deferred records (on this thread, off the event loop) and count them in; they wait in
        `_ready` for a commit."""
        with self._later_lock:
            builders, self._later, self._wake_queued = self._later, [], False
            if builders and not self._ready:
                self._ready_since = self._later_since
            self._building += len(builders)
        try:
            for build in builders:
                try:
                    entry = build()
                    validate_body(entry.kind, entry.body)
                    self._admit(entry)
                except Exception:
                    log.exception("could not build a deferred evidence record")
                    continue
                self._ready.append((entry, None))
        finally:
            with self._later_lock:
                self._building -= len(builders)

    def _deferred(self) -> list[tuple[Entry, _Waiter]]:
        """Every deferred record, built, for the commit about to run."""
        self._prebuild()
        with self._later_lock:
            out, self._ready = self._ready, []
        return out

    def _commit(self, batch: list[tuple[Entry, _Waiter]], *, hold: bool = True) -> bool:
        """One transaction; on failure intents are refused and (with `hold`) the rest joins `_held`."""
        entries = [entry for entry, _ in batch]
        started = time.perf_counter()
        self._commit_lock.acquire()  # released once counted and reported: inline commits report one at a time too
        try:
            sealed = self._store.append_evidence(entries, self._before)
        except BaseException as exc:  # fail closed for intents; hold everything else for a retry
            self._commit_lock.release()
            if self._healthy:
                log.error("evidence commit failed for %d record(s): %s", len(batch),
                          exc.message if isinstance(exc, AegressError) else type(exc).__name__)
            self._healthy = False
            self.last_error = exc.message if isinstance(exc, AegressError) else type(exc).__name__
            failure = exc if isinstance(exc, AegressError) else StoreUnavailable(
                "The evidence store failed.", hint="Check the gateway log and the data dir.")
            refused = [(entry, future) for entry, future in batch if entry.kind in REFUSABLE]
            self._release([entry for entry, _ in refused])
            _settle([(future, None) for _, future in refused], failure)
            if hold:
                self._held.extend((entry, future) for entry, future in batch if entry.kind not in REFUSABLE)
            return False
        elapsed = time.perf_counter() - started
        if not self._healthy:
            log.warning("evidence store takes commits again")
        self._healthy = True
        self.last_error = ""
        try:
            self._committed(batch, sealed, elapsed)
        finally:
            self._commit_lock.release()
        # last: the woken event loop needs the GIL, which this thread then soon gives up waiting for work
        _settle([(future, item) for (_, future), item in zip(batch, sealed, strict=True)], None, self._on_orphan)
        return True

    def _committed(self, batch: list[tuple[Entry, _Waiter]], sealed: list[Sealed], elapsed: float) -> None:
        """After any commit, on whichever thread made it: count the records out, tell the observer and the
        listener."""
        self._release([entry for entry, _ in batch])
        try:
            self._observer.evidence_commit(elapsed, len(batch))
        except Exception:  # an observer never kills the writer
            log.exception("evidence commit observer failed")
        if self._on_commit is not None:
            try:
                self._on_commit(sealed)
            except Exception:  # never let a notification kill the writer
                log.exception("evidence commit listener failed")

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)
        if not self._thread.is_alive():
            late = self._deferred()  # deferred after the writer's last look: commit them here
            if late:
                self._commit(late)
