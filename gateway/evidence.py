"""The running side of sealed evidence: group-commit writer, checkpointer, keys, recovery, log redaction.

    Pipeline.record stage ──> Evidence.append(entry) ──> EvidenceWriter (one thread)
                                                            │  batch = everything queued (+ a bounded wait)
                                                            │  store.append_evidence(batch): ONE transaction,
                                                            │  heads read inside it, one fsync for all
                                                            └─> futures resolved; Checkpointer told
    Checkpointer (one thread): every N records or T seconds, and as an idle heartbeat, signs a C2SP
      checkpoint per log (never one inconsistent with the last it signed), stores it, publishes it to
      a directory and an optional command hook; it also writes the security log's aggregated
      authentication failures once per window.

Everything pure (chaining, canonical bytes, digests, previews, signatures) lives in `gateway.audit`;
this module is I/O and threads only. The CLI uses the synchronous helpers (`append_events`,
`load_signing_key_for`, `sign_checkpoints`) without starting any thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
import queue
import re
import secrets
import shlex
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from gateway.audit.checkpoint import Checkpoint, Verifier, parse_checkpoint, parse_note, sign_checkpoint
from gateway.audit.errors import KeyFileError
from gateway.audit.keys import (
    SigningKey,
    generate_signing_key,
    load_signing_key,
    parse_private_key,
    parse_verifier_keys,
    write_signing_key,
)
from gateway.audit.log import Columns, Entry, Sealed, expected_columns, security_origin, tenant_origin
from gateway.audit.merkle import CompactRange
from gateway.audit.records import validate_body
from gateway.audit.redact import derive_tenant_key, redact_text
from gateway.errors import AegressError, StoreUnavailable
from gateway.observe import NOTHING, Observer
from gateway.store.base import Store

log = logging.getLogger("aegress.evidence")

KEY_FILE = Path("secrets") / "audit-signing.key"
KEYS_TXT = Path("audit") / "keys.txt"
CHECKPOINT_DIR = Path("audit") / "checkpoints"
KEYRING_ENTRY = "audit-signing-key"
CRASH_ENV = "AEGRESS_TEST_CRASH"
"""TEST ONLY. `after-intent`, `after-forward` or `during-outcome`: the gateway SIGKILLs itself at that point
(crash tests). Never set it in a deployment."""


_SECOND: tuple[int, str] = (0, "")


def now_time() -> str:
    """`format_time(datetime.now(UTC))`, with the seconds part formatted once per second (hot path)."""
    global _SECOND
    sec, usec = divmod(time.time_ns() // 1000, 1_000_000)
    cached = _SECOND
    if cached[0] != sec:
        cached = _SECOND = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{cached[1]}.{usec:06d}Z"


# -- settings ----------------------------------------------------------------------------------------
MAX_HELD_RECORDS = 100_000
MAX_HELD_BYTES = 64 * 1024 * 1024
"""Records waiting in the writer (queued or held for a retry) beyond which new ones are refused
(StoreUnavailable, 503): a long store outage must not grow memory without limit. Outcomes are never
refused: they are bounded by the calls already in flight, whose intents committed."""


@dataclass(frozen=True)
class EvidenceSettings:
    """Tuning of the record stage. Turning it off is not a setting: only `aegress serve --no-evidence`."""

    checkpoint_every: int = 1000
    checkpoint_interval_s: float = 10.0
    heartbeat_s: float = 300.0
    publish_dir: Path | None = None
    publish_hook: str | None = None
    commit_wait_s: float = 0.0
    max_batch: int = 1024
    auth_window_s: float = 60.0
    key_file: Path | None = None
    origin_prefix: str | None = None
    crash_point: str | None = None
    await_outcome: bool = False
    outcome_defer_s: float = 0.01
    max_held: int = MAX_HELD_RECORDS
    max_held_bytes: int = MAX_HELD_BYTES

    @classmethod
    def from_env(cls, home: Path, env: dict[str, str] | None = None) -> EvidenceSettings:
        """Read the AEGRESS_AUDIT* / AEGRESS_CHECKPOINT* variables (documented in docs/audit.md)."""
        e = dict(os.environ if env is None else env)

        def num(name: str, default: float) -> float:
            raw = e.get(name)
            return float(raw) if raw else default

        return cls(
            checkpoint_every=int(num("AEGRESS_CHECKPOINT_EVERY", 1000)),
            checkpoint_interval_s=num("AEGRESS_CHECKPOINT_INTERVAL", 10.0),
            heartbeat_s=num("AEGRESS_CHECKPOINT_HEARTBEAT", 300.0),
            publish_dir=Path(e["AEGRESS_CHECKPOINT_DIR"]) if e.get("AEGRESS_CHECKPOINT_DIR") else home / CHECKPOINT_DIR,
            publish_hook=e.get("AEGRESS_CHECKPOINT_HOOK") or None,
            commit_wait_s=num("AEGRESS_GROUP_COMMIT_WAIT_MS", 0.0) / 1000,
            auth_window_s=num("AEGRESS_AUTH_FAILURE_WINDOW", 60.0),
            key_file=Path(e["AEGRESS_SIGNING_KEY_FILE"]) if e.get("AEGRESS_SIGNING_KEY_FILE") else home / KEY_FILE,
            origin_prefix=e.get("AEGRESS_AUDIT_ORIGIN") or None,
            crash_point=e.get(CRASH_ENV) or None,
            await_outcome=e.get("AEGRESS_AUDIT_AWAIT_OUTCOME", "off").lower() in ("on", "1", "true"),
            outcome_defer_s=max(0.0, num("AEGRESS_AUDIT_OUTCOME_DEFER_MS", 10.0) / 1000),
            max_held=max(1, int(num("AEGRESS_AUDIT_MAX_HELD", MAX_HELD_RECORDS))),
            max_held_bytes=max(1, int(num("AEGRESS_AUDIT_MAX_HELD_MB", MAX_HELD_BYTES / 2**20) * 2**20)),
        )


def crash_here(settings: EvidenceSettings, point: str) -> None:
    """TEST ONLY hook: die exactly like a power cut at a named point (see CRASH_ENV)."""
    if settings.crash_point == point:
        os.kill(os.getpid(), signal.SIGKILL)


def origin_prefix(store: Store, configured: str | None = None) -> str:
    default = configured or f"aegress.local/d-{secrets.token_hex(4)}"
    return store.evidence_prefix(default)


# -- keys ----------------------------------------------------------------------------------------------
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


# -- writing -------------------------------------------------------------------------------------------
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
UNCAPPED = frozenset({"outcome"})


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
    so a call costs one fsync, not two."""

    def __init__(self, store: Store, *, commit_wait_s: float = 0.002, max_batch: int = 1024,
                 before_commit: Callable[[list[Sealed]], None] | None = None,
                 on_commit: Callable[[list[Sealed]], None] | None = None,
                 on_orphan: _Orphan | None = None, retry_s: float = RETRY_S,
                 max_held: int = MAX_HELD_RECORDS, max_held_bytes: int = MAX_HELD_BYTES,
                 defer_s: float = 0.0) -> None:
        self._store = store
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

    def submit_async(self, entry: Entry) -> asyncio.Future[Sealed]:
        """Like `submit`, for the event loop: a whole batch is settled with one loop wake-up."""
        validate_body(entry.kind, entry.body)
        self._admit(entry)
        future: asyncio.Future[Sealed] = asyncio.get_running_loop().create_future()
        self._queue.put((entry, future))
        return future

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
            if item is not _WAKE:
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
        try:
            sealed = self._store.append_evidence(entries, self._before)
        except BaseException as exc:  # fail closed for intents; hold everything else for a retry
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
        self._release(entries)
        if not self._healthy:
            log.warning("evidence store takes commits again")
        self._healthy = True
        self.last_error = ""
        if self._on_commit is not None:
            try:
                self._on_commit(sealed)
            except Exception:  # never let a notification kill the writer
                log.exception("evidence commit listener failed")
        # last: the woken event loop needs the GIL, which this thread then soon gives up waiting for work
        _settle([(future, item) for (_, future), item in zip(batch, sealed, strict=True)], None, self._on_orphan)
        return True

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)
        if not self._thread.is_alive():
            late = self._deferred()  # deferred after the writer's last look: commit them here
            if late:
                self._commit(late)


def not_forwarded_entry(intent: Sealed, time_text: str) -> Entry:
    """The final record of a committed intent whose call never left the gateway."""
    seq = intent.record.seq
    body = {"intent_seq": seq, "status": "not_forwarded", "result_digest": None, "latency_ms": 0}
    columns = Columns(tenant=intent.entry.columns.tenant, actor=intent.entry.columns.actor,
                      tool=intent.entry.columns.tool, verdict=intent.entry.columns.verdict,
                      status="not_forwarded", intent_seq=seq)
    return Entry(intent.record.origin, "outcome", time_text, body, columns)


def append_events(store: Store, entries: Sequence[Entry]) -> list[Sealed]:
    """Synchronous append of events that change no stored state (key rotation); operator changes to the
    store are sealed in their own transaction (`gateway.sealed_change`)."""
    for entry in entries:
        validate_body(entry.kind, entry.body)
    return store.append_evidence(list(entries))


def event_entry(store: Store, tenant: str | None, kind: str, body: dict[str, Any], *,
                prefix: str | None = None) -> Entry:
    """An entry for a tenant log (tenant given) or the deployment's security log (tenant None); its
    columns are derived from the body (`expected_columns`), so `audit verify` can check them."""
    prefix = prefix or origin_prefix(store)
    origin = tenant_origin(prefix, tenant) if tenant else security_origin(prefix)
    return Entry(origin, kind, now_time(), body, expected_columns(kind, body, tenant or ""))


def record_event(store: Store, tenant: str | None, kind: str, body: dict[str, Any]) -> Sealed:
    """Append one event durably on its own (key rotation). An operator change to stored state is sealed
    in its own transaction instead: `gateway.sealed_change.sealed_change`."""
    return append_events(store, [event_entry(store, tenant, kind, body)])[0]


def operator_name() -> str:
    return os.environ.get("AEGRESS_OPERATOR") or os.environ.get("USER") or "operator"


def recover_open_intents(store: Store) -> int:
    """Start-up: append `outcome_unknown` for every intent a crash left without an outcome.

    Only intents this replica wrote (`store.replica_id`: set AEGRESS_REPLICA_ID to the same name on every
    restart of one replica), since other replicas sharing the database may have those calls in flight;
    every open intent when the store is `exclusive` (SQLite: one gateway per data dir)."""
    opened = store.open_intents(None if store.exclusive else store.replica_id)
    entries = [
        Entry(origin, "outcome_unknown", now_time(),
              {"intent_seq": seq, "reason": "the gateway stopped before the call's outcome was recorded"},
              Columns(tenant=tenant, status="outcome_unknown", intent_seq=seq))
        for origin, seq, tenant in opened
    ]
    if entries:
        store.append_evidence(entries)
        log.warning("recovered %d call(s) without an outcome: marked outcome_unknown", len(entries))
    return len(entries)


# -- checkpoints -----------------------------------------------------------------------------------------
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


# -- authentication failures (security log) ---------------------------------------------------------
class AuthFailures:
    """Counts failures per window so a flood costs one record per window, not one per request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reasons: Counter[str] = Counter()
        self._start = now_time()

    def add(self, reason: str) -> None:
        with self._lock:
            self._reasons[reason[:64]] += 1

    def take(self) -> tuple[str, str, Counter[str]] | None:
        with self._lock:
            reasons, start = self._reasons, self._start
            self._reasons, self._start = Counter(), now_time()
        if not reasons:
            return None
        return start, self._start, reasons


# -- the service the pipeline uses -----------------------------------------------------------------------
class Evidence:
    """Sealed evidence for one gateway: writer + checkpointer + security log, started and stopped once."""

    enabled = True

    def __init__(self, store: Store, master_key: bytes, home: Path, settings: EvidenceSettings,
                 observer: Observer | None = None) -> None:
        self.observer = observer or NOTHING
        self.store = store
        self.settings = settings
        self.await_outcome = settings.await_outcome
        self.home = home
        self.prefix = origin_prefix(store, settings.origin_prefix)
        self.key, created = load_signing_key_for(home, self.prefix, settings.key_file, create=True)
        assert self.key is not None
        self._master = master_key
        self._tenant_keys: dict[str, bytes] = {}
        self.recovered = recover_open_intents(store)
        if created:
            store.append_evidence([Entry(security_origin(self.prefix), "key_event", now_time(),
                                         {"event": "generated", "key": self.key.verifier_key},
                                         Columns(verdict="key_event"))])
        remember_verifier(home, self.key.verifier_key)
        self.writer = EvidenceWriter(
            store, commit_wait_s=settings.commit_wait_s, max_batch=settings.max_batch,
            before_commit=self._before_commit if settings.crash_point == "during-outcome" else None,
            on_commit=self._committed, on_orphan=self._not_forwarded,
            max_held=settings.max_held, max_held_bytes=settings.max_held_bytes,
            defer_s=settings.outcome_defer_s,
        )
        self.checkpointer = Checkpointer(store, self.key, settings)
        self.auth = AuthFailures()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._grown = 0
        self._last_auth_flush = time.monotonic()
        self._thread = threading.Thread(target=self._background, name="aegress-checkpointer", daemon=True)
        self._thread.start()

    # origins and digests
    def origin(self, tenant: str) -> str:
        return tenant_origin(self.prefix, tenant)

    def tenant_key(self, tenant: str) -> bytes:
        key = self._tenant_keys.get(tenant)
        if key is None:
            key = self._tenant_keys[tenant] = derive_tenant_key(self._master, tenant)
        return key

    @property
    def healthy(self) -> bool:
        return self.writer.healthy

    def check(self) -> bool:
        """Readiness (blocking: call it in a worker thread): after a failed commit, a real write must succeed
        before we say ready again; records still held for a retry keep us unready."""
        return self.unready_reason() is None

    def unready_reason(self) -> str | None:
        """Why intents cannot be taken now, or None (blocking: call it in a worker thread)."""
        if self.writer.held:
            return (f"the evidence store is not taking commits ({self.writer.last_error}); "
                    f"{self.writer.held} record(s) held for retry")
        if self.writer.healthy:
            return None
        try:
            self.store.probe_write(now_time())
        except StoreUnavailable as exc:
            return f"the evidence store is not taking commits ({exc.message})"
        return None

    # appending
    def append(self, entry: Entry) -> asyncio.Future[Sealed]:
        """Durably commit one record (group commit): await it; it raises StoreUnavailable if the store cannot
        take an intent. A plain future (no task), so a bounded wait on it costs nothing extra."""
        return self.writer.submit_async(entry)

    def defer(self, build: Callable[[], Entry]) -> None:
        """An answered call's outcome: built off the event loop and committed with the next intent, or within
        AEGRESS_AUDIT_OUTCOME_DEFER_MS; failures are logged (the writer holds and retries what the store refuses)."""
        self.writer.defer(build)

    def submit(self, entry: Entry) -> concurrent.futures.Future[Sealed]:
        """Queue a record without waiting (a cancelled call's outcome): failures are logged, not raised."""
        future = self.writer.submit(entry)
        future.add_done_callback(lambda f: f.exception())
        return future

    def auth_failure(self, reason: str) -> None:
        self.auth.add(reason)

    def crash(self, point: str) -> None:
        crash_here(self.settings, point)

    def _not_forwarded(self, intent: Sealed) -> None:
        """A committed intent nobody is waiting for (the caller left or was refused first): its call was never
        forwarded, and the log says so now rather than `outcome_unknown` after a restart."""
        try:
            self.writer.submit(not_forwarded_entry(intent, now_time()))
        except Exception:
            log.exception("could not queue the not_forwarded outcome of intent %s", intent.record.seq)

    def _before_commit(self, sealed: list[Sealed]) -> None:
        if any(s.record.kind == "outcome" for s in sealed):
            crash_here(self.settings, "during-outcome")

    def _committed(self, sealed: list[Sealed]) -> None:
        self._grown += len(sealed)
        if self._grown >= self.settings.checkpoint_every:
            self._wake.set()

    # background: checkpoints and the security log
    def settle(self, timeout: float = 10.0) -> bool:
        """Commit now what would otherwise wait in memory: the authentication failures counted so far and every
        queued or deferred record. AWS Lambda freezes the process once an answer leaves, so its handler calls
        this before each answer (with AEGRESS_AUDIT_AWAIT_OUTCOME on). False if the store took not all in time."""
        self._flush_auth(wait=timeout)
        return self.writer.flush(timeout)

    def _flush_auth(self, wait: float = 30.0) -> None:
        taken = self.auth.take()
        if taken is None:
            return
        start, end, reasons = taken
        entry = Entry(security_origin(self.prefix), "auth_failures_aggregate", end,
                      {"window_start": start, "window_end": end, "count": sum(reasons.values()),
                       "reasons": sorted(reasons)}, Columns(verdict="auth_failures_aggregate"))
        try:
            self.writer.submit(entry).result(wait)
        except Exception as exc:  # counted again next window would double count: log and drop
            log.error("could not record %d authentication failures: %s", sum(reasons.values()), exc)

    def _background(self) -> None:
        step = max(0.05, min(1.0, self.settings.checkpoint_interval_s / 4))
        while not self._stop.is_set():
            self._wake.wait(step)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                if time.monotonic() - self._last_auth_flush >= self.settings.auth_window_s:
                    self._last_auth_flush = time.monotonic()
                    self._flush_auth()
                self._grown = 0
                self.checkpointer.tick()
            except Exception:
                log.exception("checkpointer tick failed")

    def close(self) -> None:
        """Stop: flush auth counts, commit what is queued, sign a final checkpoint for every log that grew."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)
        with contextlib.suppress(Exception):
            self._flush_auth()
        self.writer.close()
        try:
            self.checkpointer.tick(force=True)
        except Exception:
            log.exception("final checkpoint failed")


class NoEvidence:
    """`aegress serve --no-evidence` (benchmarks only): the record stage writes nothing, so calls leave no
    intent, outcome or receipt. /health and the start-up banner say so."""

    enabled = False
    await_outcome = False
    healthy = True
    prefix = "off"
    recovered = 0

    def origin(self, tenant: str) -> str:
        return tenant_origin(self.prefix, tenant)

    def tenant_key(self, tenant: str) -> bytes:
        return hashlib.sha256(tenant.encode()).digest()

    def check(self) -> bool:
        return True

    def unready_reason(self) -> str | None:
        return None

    async def append(self, entry: Entry) -> None:
        return None

    def defer(self, build: Callable[[], Entry]) -> None:
        pass

    def submit(self, entry: Entry) -> None:
        return None

    def auth_failure(self, reason: str) -> None:
        return None

    def settle(self, timeout: float = 10.0) -> bool:
        return True

    def crash(self, point: str) -> None:
        return None

    def close(self) -> None:
        return None


# -- log redaction ------------------------------------------------------------------------------------------
class RedactingFilter(logging.Filter):
    """Rewrites every log record's message with `redact_text`, so detected secrets never reach a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        redacted = redact_text(message)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text = redact_text(f"{type(exc).__name__}: {exc}")
            record.exc_info = None
            record.exc_text = None
            redacted = f"{redacted} ({text})"
        record.msg, record.args = redacted, None
        return True


_FILTER = RedactingFilter()


def install_log_redaction(logger_names: Sequence[str] = ("", "uvicorn", "uvicorn.error", "uvicorn.access")) -> None:
    """Attach the redacting filter to every handler of these loggers (handler filters see propagated
    records too). Idempotent; `serve` calls it after logging is configured."""
    for name in logger_names:
        for handler in logging.getLogger(name).handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)


def decision_seq_for(store: Store, tenant: str, audit_id: str) -> int | None:
    """The seq of the `decision` record a refusal or hold (`aud_...` / `rev_...`) was sealed as, for a
    later `review_approved` / `review_denied` record's `decision_seq`."""
    from gateway.store.base import EvidenceFilter

    rows = store.query_evidence(EvidenceFilter(tenant=tenant, kind="decision",
                                               contains=f'"request_id":"{audit_id}"'), limit=1)
    return rows[0].seq if rows else None
