"""The evidence writer on a real SQLite store when a caller gives up while its intent is being committed."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from gateway.audit.log import Columns, Entry, tenant_origin
from gateway.audit.verify import verify_log
from gateway.evidence import Evidence, EvidenceSettings
from gateway.store.base import EvidenceFilter
from gateway.store.sqlite import SQLiteStore

T = "2026-01-02T03:04:05.000000Z"


def _intent(origin: str) -> Entry:
    return Entry(origin, "intent", T, {
        "tenant": "acme", "actor": "alice", "token_id": None, "client_name": None, "client_version": None,
        "upstream": "u", "tool": "t", "tool_def_hash": None, "verdict": "allow", "policy_version": "0",
        "rule_id": None, "args_digest": None}, Columns(tenant="acme", tool="t", verdict="allow"))


def test_an_intent_committed_after_its_caller_left_is_answered_not_forwarded(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "aegress.db", busy_timeout_s=20.0)
    evidence = Evidence(store, b"k" * 32, tmp_path, EvidenceSettings.from_env(tmp_path, {}))
    origin = evidence.origin("acme")
    assert origin == tenant_origin(evidence.prefix, "acme")
    locker = sqlite3.connect(store.path, timeout=1, isolation_level=None)

    async def go() -> None:
        locker.execute("BEGIN EXCLUSIVE")
        waiting = evidence.append(_intent(origin))
        await asyncio.sleep(0.5)  # the writer holds the intent and waits for the lock
        waiting.cancel()  # the caller leaves (client gone, call cancelled): the call is never forwarded
        locker.execute("ROLLBACK")  # ...and then the store takes the intent after all
        for _ in range(200):  # bounded: 10 s
            kinds = [(row.kind, row.status) for row in store.query_evidence(EvidenceFilter(origin=origin),
                                                                           newest_first=False)]
            if len(kinds) == 2:
                break
            await asyncio.sleep(0.05)
        assert kinds == [("intent", ""), ("outcome", "not_forwarded")]

    try:
        asyncio.run(asyncio.wait_for(go(), 30))
    finally:
        locker.close()
        evidence.close()
    report = verify_log(store.evidence_records(origin), origin=origin, final=True)
    assert report.ok, report.finding
    data = store.evidence_records(origin)[1][1]
    assert b'"status":"not_forwarded"' in data and b'"intent_seq":0' in data

