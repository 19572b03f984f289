"""The event loop's token lookup never waits: under another process's lock it says WouldBlock at once."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from gateway.store.base import WouldBlock
from gateway.store.sqlite import SQLiteStore
from gateway.types import TokenInfo


def test_the_nowait_token_lookup_answers_without_waiting_or_says_it_would(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "aegress.db", busy_timeout_s=5.0)
    store.create_tenant("acme", "2026-01-01T00:00:00Z")
    store.add_actor("acme", "alice", "2026-01-01T00:00:00Z")
    store.add_token(TokenInfo("tok_1", "acme", "alice", "2026-01-01T00:00:00Z", None, "cli"), "h1")
    assert store.find_token_nowait("h1") == store.find_token("h1")
    assert store.find_token_nowait("missing") is None

    store.revoke_token("tok_1", "2026-01-02T00:00:00Z")  # a revocation is seen by the very next lookup
    info = store.find_token_nowait("h1")
    assert info is not None and not info.active

    again = SQLiteStore(tmp_path / "aegress.db", busy_timeout_s=5.0)
    store.close()
    again.close()  # no connection left open: the next lookup opens its reader under the lock

    # In WAL mode readers never wait for a writer. A database another program switched back to a rollback
    # journal and holds exclusively makes every reader wait: the nowait lookup must say so at once.
    locker = sqlite3.connect(tmp_path / "aegress.db", isolation_level=None)
    locker.execute("PRAGMA journal_mode=DELETE")
    locker.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with pytest.raises(WouldBlock):
            again.find_token_nowait("h1")
        assert time.monotonic() - started < 1.0  # no busy wait (the blocking lookup would wait 5 s)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert again.find_token_nowait("h1") is not None
    again.close()
