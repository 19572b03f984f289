"""The evidence writer on a real SQLite store when a caller gives up while its intent is being committed."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.audit.log import Columns, Entry, tenant_origin
from gateway.audit.verify import verify_log
from gateway.errors import StoreUnavailable
from gateway.evidence.facade import Evidence
from gateway.evidence.settings import EvidenceSettings
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



def _decision(origin: str, n: int, time_text: str | None = T) -> Entry:
    return Entry(origin, "decision", time_text, {  # type: ignore[arg-type]
        "tenant": "acme", "actor": "alice", "token_id": None, "client_name": None, "client_version": None,
        "upstream": "u", "tool": f"t{n}", "tool_def_hash": None, "verdict": "deny", "policy_version": "0",
        "rule_id": "r", "args_digest": None}, Columns(tenant="acme", tool=f"t{n}", verdict="deny"))


def _until(check: Callable[[], bool], what: str) -> None:
    for _ in range(400):  # bounded: 20 s
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"never: {what}")


def _evidence(tmp_path: Path, **env: str) -> tuple[SQLiteStore, Evidence]:
    store = SQLiteStore(tmp_path / "aegress.db", busy_timeout_s=0.05)
    settings = replace(EvidenceSettings.from_env(tmp_path, env), max_batch=8)
    return store, Evidence(store, b"k" * 32, tmp_path, settings)


def test_held_records_stop_at_the_cap_and_all_commit_when_the_fault_clears(tmp_path: Path) -> None:
    """Finding 5: with the store refusing writes, at most AEGRESS_AUDIT_MAX_HELD records wait; more are
    refused at once (StoreUnavailable, a 503 for the request); afterwards everything held commits."""
    store, evidence = _evidence(tmp_path, AEGRESS_AUDIT_MAX_HELD="40")
    origin = evidence.origin("acme")
    locker = sqlite3.connect(store.path, timeout=1, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")  # the store refuses every write (busy), like a full disk
        futures = [evidence.writer.submit(_decision(origin, i)) for i in range(40)]
        _until(lambda: evidence.writer.held == 40, "all 40 held")
        refused = 0
        for i in range(40, 240):  # a flood of refused calls during the outage
            with pytest.raises(StoreUnavailable):
                evidence.writer.submit(_decision(origin, i))
            refused += 1
        with pytest.raises(StoreUnavailable):
            evidence.writer.submit(_intent(origin))
        assert refused == 200 and evidence.writer.held == 40 and evidence.writer.waiting[0] == 40
        assert not any(f.done() for f in futures)
        locker.execute("ROLLBACK")  # the fault clears: no restart
        _until(lambda: all(f.done() for f in futures), "every held record committed")
        assert sorted(f.result().record.seq for f in futures) == list(range(40))
        assert evidence.writer.held == 0 and evidence.writer.waiting == (0, 0)
        assert evidence.writer.submit(_intent(origin)).result(10).record.seq == 40  # taken again
    finally:
        locker.close()
        evidence.close()
    report = verify_log(store.evidence_records(origin), origin=origin)
    assert report.ok, report.finding


def test_an_intent_is_never_blocked_behind_a_held_record_the_store_keeps_refusing(tmp_path: Path) -> None:
    """Finding 5: held records are retried in their own transactions; new intents commit meanwhile."""
    _, evidence = _evidence(tmp_path)
    origin = evidence.origin("acme")
    try:
        poisoned = evidence.writer.submit(_decision(origin, 0, time_text=None))  # NOT NULL: never commits
        _until(lambda: evidence.writer.held == 1, "the poisoned record held")
        sealed = evidence.writer.submit(_intent(origin)).result(10)
        assert sealed.record.kind == "intent"
        assert evidence.writer.submit(_decision(origin, 1)).result(10).record.kind == "decision"
        assert evidence.writer.held == 1 and not poisoned.done()
    finally:
        evidence.close()
