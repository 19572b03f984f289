"""The event loop's token lookup never waits: under another process's lock it says WouldBlock at once."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.store.base import Store, WouldBlock
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


def test_the_awaited_token_lookup_sees_every_revocation_at_once(make_store: Callable[..., Store]) -> None:
    """`find_token_async` (Postgres: a query on the event loop, no worker thread) answers what `find_token`
    answers, and a revocation another process commits is refused by the very next lookup."""
    store, other = make_store(), make_store()
    store.create_tenant("acme", "2026-01-01T00:00:00Z")
    store.add_actor("acme", "alice", "2026-01-01T00:00:00Z")
    for n in range(3):
        store.add_token(TokenInfo(f"tok_{n}", "acme", "alice", "2026-01-01T00:00:00Z", None, "cli"), f"h{n}")

    async def run() -> None:
        assert await store.find_token_async("h1") == store.find_token("h1")
        assert await store.find_token_async("missing") is None
        for n in range(3):
            other.revoke_token(f"tok_{n}", "2026-01-02T00:00:00Z")
            info = await store.find_token_async(f"h{n}")
            assert info is not None and info.id == f"tok_{n}" and not info.active
        # more lookups at once than the store keeps connections for: every one answers
        answers = await asyncio.gather(*(store.find_token_async(f"h{n % 3}") for n in range(40)))
        assert [a.id for a in answers if a is not None] == [f"tok_{n % 3}" for n in range(40)]

    asyncio.run(asyncio.wait_for(run(), 60))
    # another event loop (a command's asyncio.run after the gateway's): the lookup works there too
    assert asyncio.run(asyncio.wait_for(store.find_token_async("h0"), 30)) is not None


def test_postgres_awaited_lookups_hold_few_connections_and_drop_a_cancelled_one(pg_database: Any,
                                                                               tmp_path: Path) -> None:
    from gateway.store import open_store
    from gateway.store.postgres import ASYNC_CONNECTIONS
    from tests.pg import sql

    url = pg_database.schema_url()
    replica = f"r-{secrets.token_hex(4)}"
    store = open_store(tmp_path, url, replica_id=replica)
    store.create_tenant("acme", "2026-01-01T00:00:00Z")
    store.add_actor("acme", "alice", "2026-01-01T00:00:00Z")
    store.add_token(TokenInfo("tok_1", "acme", "alice", "2026-01-01T00:00:00Z", None, "cli"), "h1")

    def backends() -> int:
        rows = sql(url, "SELECT count(*) FROM pg_stat_activity WHERE application_name = ?", (f"aegress {replica}",))
        return int(rows[0][0])  # type: ignore[call-overload]

    async def run() -> None:
        before = backends()  # the store's thread pool
        answers = await asyncio.gather(*(store.find_token_async("h1") for _ in range(50)))
        assert all(a is not None and a.id == "tok_1" for a in answers)
        assert 1 <= backends() - before <= ASYNC_CONNECTIONS
        # a lookup cancelled mid-query (the request went away) never hands its connection to the next one
        task = asyncio.ensure_future(store.find_token_async("h1"))
        await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert (await store.find_token_async("h1")) is not None

    try:
        asyncio.run(asyncio.wait_for(run(), 60))
    finally:
        store.close()
    deadline = time.monotonic() + 10
    while backends() > 0 and time.monotonic() < deadline:  # closed: the server ends every backend of the store
        time.sleep(0.05)
    assert backends() == 0
