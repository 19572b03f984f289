"""The evidence service the pipeline uses: writer + checkpointer + security log, started and stopped once."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from gateway.audit.log import Columns, Entry, Sealed, security_origin, tenant_origin
from gateway.audit.redact import derive_tenant_key
from gateway.errors import StoreUnavailable
from gateway.evidence.checkpointer import Checkpointer
from gateway.evidence.clock import now_time
from gateway.evidence.events import not_forwarded_entry, recover_open_intents
from gateway.evidence.failures import AuthFailures
from gateway.evidence.keys import load_signing_key_for, remember_verifier
from gateway.evidence.origins import origin_prefix
from gateway.evidence.settings import EvidenceSettings, crash_here
from gateway.evidence.writer import EvidenceWriter
from gateway.observe import Observer
from gateway.store.base import Store

log = logging.getLogger("aegress.evidence")


class Evidence:
    """Sealed evidence for one gateway: writer + checkpointer + security log, started and stopped once."""

    enabled = True

    def __init__(self, store: Store, master_key: bytes, home: Path, settings: EvidenceSettings, *,
                 observer: Observer | None = None) -> None:
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
            defer_s=settings.outcome_defer_s, inline=settings.inline_commit, observer=observer,
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
    def append(self, entry: Entry, *, alone: bool = False) -> asyncio.Future[Sealed]:
        """Durably commit one record (group commit): await it; it raises StoreUnavailable if the store cannot
        take an intent. A plain future (no task), so a bounded wait on it costs nothing extra. `alone`: no
        other call is in flight, so an idle writer's commit may run right here (`EvidenceWriter.submit_async`)."""
        return self.writer.submit_async(entry, alone=alone)

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

    async def append(self, entry: Entry, *, alone: bool = False) -> None:
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
