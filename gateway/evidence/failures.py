"""Authentication failures counted per window, so a flood costs one security-log record per window."""

from __future__ import annotations

import threading
from collections import Counter

from gateway.evidence.clock import now_time


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
