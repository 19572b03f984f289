"""The record stage's seam: every decision and outcome goes through `Recorder.record`.

`StoreRecorder` batches records on a background thread and writes each batch in one transaction,
so the event loop never waits on an fsync and concurrent calls share one commit. The sealed
evidence log (its own module) replaces this with a fail-closed, intent-before-forward writer.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Protocol

from gateway.errors import StoreUnavailable
from gateway.store.base import Store
from gateway.types import CallRecord

log = logging.getLogger("aegress.record")

_BATCH = 512


class Recorder(Protocol):
    def record(self, rec: CallRecord) -> None: ...
    def close(self) -> None: ...
    @property
    def healthy(self) -> bool: ...


class StoreRecorder:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._queue: queue.SimpleQueue[CallRecord | None] = queue.SimpleQueue()
        self._healthy = True
        self._thread = threading.Thread(target=self._run, name="aegress-recorder", daemon=True)
        self._thread.start()

    @property
    def healthy(self) -> bool:
        return self._healthy

    def record(self, rec: CallRecord) -> None:
        self._queue.put(rec)

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            batch: list[CallRecord] = []
            if item is None:
                stop = True
            else:
                batch.append(item)
            while len(batch) < _BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            if batch:
                try:
                    self._store.record_calls(batch)
                    self._healthy = True
                except StoreUnavailable:
                    self._healthy = False
                    log.exception("could not write %d call records", len(batch))
        self._store.close()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
