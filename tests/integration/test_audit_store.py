"""Evidence on each real store (SQLite, Postgres): group commit, several writers without a fork, recovery,
checkpoints."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.audit.checkpoint import open_checkpoint
from gateway.audit.log import Columns, Entry, tenant_origin
from gateway.audit.verify import Problem, verify_log
from gateway.errors import StoreUnavailable
from gateway.evidence.checkpointer import Checkpointer
from gateway.evidence.events import recover_open_intents
from gateway.evidence.keys import load_signing_key_for, trusted_verifiers
from gateway.evidence.settings import EvidenceSettings
from gateway.evidence.writer import EvidenceWriter
from gateway.store import open_store
from gateway.store.base import Store
from gateway.types import CallRecord
from tests.pg import sql

ORIGIN = tenant_origin("aegress.test", "acme")
T = "2026-01-02T03:04:05.000000Z"


def revoked(i: int, origin: str = ORIGIN) -> Entry:
    return Entry(origin, "token_revoked", T, {"token_id": f"tok_{i}", "actor": "op"}, Columns(tenant="acme"))


def intent(i: int) -> Entry:
    return Entry(ORIGIN, "intent", T, {
        "tenant": "acme", "actor": "alice", "token_id": None, "client_name": None, "client_version": None,
        "upstream": "u", "tool": f"t{i}", "tool_def_hash": None, "verdict": "allow", "policy_version": "0",
        "rule_id": None, "args_digest": None}, Columns(tenant="acme", tool=f"t{i}", verdict="allow"))


def test_group_commit_shares_transactions_and_keeps_order(store: Store) -> None:
    commits: list[int] = []
    writer = EvidenceWriter(store, commit_wait_s=0.005, on_commit=lambda sealed: commits.append(len(sealed)))
    futures = []
    threads = [threading.Thread(target=lambda i=i: futures.append(writer.submit(revoked(i)))) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seqs = sorted(f.result(10).record.seq for f in futures)
    writer.close()
    assert seqs == list(range(200))
    assert sum(commits) == 200 and len(commits) < 200  # concurrent records shared commits
    report = verify_log(store.evidence_records(ORIGIN), origin=ORIGIN)
    assert report.ok and report.size == 200


def test_a_deferred_record_rides_the_next_awaited_commit(store: Store) -> None:
    """An answered call's outcome waits for the next intent and shares its transaction: one fsync per call."""
    commits: list[list[str]] = []
    writer = EvidenceWriter(store, defer_s=5.0, on_commit=lambda sealed: commits.append([s.entry.kind for s in sealed]))

    async def go() -> None:
        writer.defer(lambda: revoked(0))
        await asyncio.sleep(0.05)
        assert commits == []  # nobody waits for it: it waits for company
        await asyncio.wait_for(writer.submit_async(intent(1)), 5)

    asyncio.run(go())
    writer.close()
    assert commits == [["token_revoked", "intent"]]


def test_a_deferred_record_alone_commits_within_its_bound_and_at_close(store: Store) -> None:
    commits: list[int] = []
    writer = EvidenceWriter(store, defer_s=0.05, on_commit=lambda sealed: commits.append(len(sealed)))
    writer.defer(lambda: revoked(0))
    for _ in range(200):  # bounded: 2 s for a 50 ms bound
        if store.evidence_size(ORIGIN) == 1:
            break
        time.sleep(0.01)
    assert store.evidence_size(ORIGIN) == 1 and commits == [1]
    slow = EvidenceWriter(store, defer_s=60.0)
    slow.defer(lambda: 1 / 0)  # a builder that fails is logged and dropped; the others still commit
    slow.defer(lambda: revoked(1))
    slow.close()  # closing commits what waits, long before its bound
    assert store.evidence_size(ORIGIN) == 2
    assert verify_log(store.evidence_records(ORIGIN), origin=ORIGIN).ok


OTHER = tenant_origin("aegress.test", "other")


def _append_many(url: str, n: int, replica: str) -> None:
    s = open_store(Path("/nonexistent"), url, replica_id=replica)
    try:
        for i in range(n):  # two logs per batch, in both orders: the per-log locks must not deadlock
            pair = [revoked(i), revoked(i, OTHER)]
            s.append_evidence(pair if i % 2 else pair[::-1])
    finally:
        s.close()


def test_several_processes_append_without_a_fork_or_a_gap(store_url: str, store: Store) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(store_url, 40, f"r-{n}")) for n in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    for origin in (ORIGIN, OTHER):
        records = store.evidence_records(origin)
        assert [s for s, _ in records] == list(range(120))
        assert verify_log(records, origin=origin).ok
        assert store.evidence_size(origin) == 120


def test_writers_taking_turns_each_extend_the_others_head(make_store: Callable[..., Store]) -> None:
    """Each store seals on the head it last saw; when another writer moved it since, the append must chain
    onto the stored head (Postgres: the one-statement append finds its hint stale and seals again)."""
    a, b = make_store(replica_id="r-a"), make_store(replica_id="r-b")
    call = CallRecord("acme", "alice", "tok_1", "tools/call", "echo", "up", "allow", "", "ok", T, 0.1 + 0.2, 7,
                      "s1", "client")
    for i in range(6):
        writer = a if i % 3 else b  # runs of two on one writer, then a turn of the other
        sealed = writer.append_evidence([intent(2 * i), Entry(ORIGIN, "token_revoked", T, {"token_id": f"tok_{i}",
                                         "actor": "op"}, Columns(tenant="acme"), call=call)])
        assert [s.record.seq for s in sealed] == [2 * i, 2 * i + 1]
    records = a.evidence_records(ORIGIN)
    assert [seq for seq, _ in records] == list(range(12))
    assert verify_log(records, origin=ORIGIN).ok and b.evidence_size(ORIGIN) == 12
    assert a.list_calls("acme", limit=100) == [call] * 6  # the float and the error code exactly as given


def test_postgres_append_falls_back_to_a_transaction_while_another_writer_moves_the_head(pg_database: Any,
                                                                                      tmp_path: Path) -> None:
    """Every one-statement try misses (another writer commits just before each), and so does the first call inside
    the transaction (before its locks were taken): the last call, under the locks, must chain on."""
    from gateway.store.postgres import APPEND_TRIES

    url = pg_database.schema_url()
    a = open_store(tmp_path, url, replica_id="r-a")
    b = open_store(tmp_path, url, replica_id="r-b")
    try:
        a.append_evidence([revoked(0)])
        moved: list[int] = []

        def another_writer_first(sealed: list[Any]) -> None:
            if len(moved) < APPEND_TRIES + 1:  # not before the last call: it runs under a's locks, b would wait
                moved.append(b.append_evidence([revoked(10 + len(moved))])[0].record.seq)

        sealed = a.append_evidence([revoked(1), revoked(2)], another_writer_first)
        n = APPEND_TRIES + 1
        assert moved == list(range(1, n + 1)) and [s.record.seq for s in sealed] == [n + 1, n + 2]
        assert a.append_evidence([revoked(3)])[0].record.seq == n + 3
        records = b.evidence_records(ORIGIN)
        assert [seq for seq, _ in records] == list(range(n + 4)) and verify_log(records, origin=ORIGIN).ok
    finally:
        a.close()
        b.close()


def test_writers_on_threads_of_two_stores_never_fork(make_store: Callable[..., Store]) -> None:
    stores = [make_store(replica_id=f"r-{n}") for n in range(2)]
    errors: list[BaseException] = []

    def run(store: Store, n: int) -> None:
        try:
            for i in range(25):
                store.append_evidence([revoked(100 * n + i), revoked(100 * n + i, OTHER)][:: 1 if i % 2 else -1])
        except BaseException as exc:  # reported below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(stores[n % 2], n)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and not any(t.is_alive() for t in threads)
    for origin in (ORIGIN, OTHER):
        records = stores[0].evidence_records(origin)
        assert [seq for seq, _ in records] == list(range(100))
        assert verify_log(records, origin=origin).ok


def test_the_log_refuses_a_second_record_at_one_position(store_url: str, store: Store) -> None:
    """The schema's backstop: a writer that skipped the head lock can still never fork the log."""
    store.append_evidence([revoked(0)])
    row = sql(store_url, "SELECT origin, kind, time, tenant, actor, tool, verdict, status, leaf_hash, data"
                         " FROM evidence WHERE seq = 0")[0]
    with pytest.raises(Exception, match=r"(?i)unique"):
        sql(store_url, "INSERT INTO evidence (origin, seq, kind, time, tenant, actor, tool, verdict, status,"
                       " leaf_hash, data) VALUES (?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)


def test_recovery_marks_open_intents_outcome_unknown(store: Store) -> None:
    store.append_evidence([intent(0), intent(1)])
    assert store.open_intents() == [(ORIGIN, 0, "acme"), (ORIGIN, 1, "acme")]
    assert recover_open_intents(store) == 2
    assert store.open_intents() == []
    assert recover_open_intents(store) == 0
    report = verify_log(store.evidence_records(ORIGIN), origin=ORIGIN, final=True)
    assert report.ok


def test_recovery_touches_only_the_recovering_replicas_intents(store: Store,
                                                                make_store: Callable[..., Store]) -> None:
    """Replicas share a database: one restarting must not close calls another still has in flight."""
    other = make_store(replica_id="r-other")
    store.append_evidence([intent(0)])
    other.append_evidence([intent(1)])
    assert store.open_intents("r-test") == [(ORIGIN, 0, "acme")]
    assert other.open_intents("r-other") == [(ORIGIN, 1, "acme")]
    if store.exclusive:  # SQLite: one gateway per data dir, so every open intent is the restarting one's
        assert recover_open_intents(store) == 2
        assert store.open_intents() == []
        return
    assert recover_open_intents(store) == 1
    assert store.open_intents() == [(ORIGIN, 1, "acme")]  # r-other's call is untouched
    assert recover_open_intents(other) == 1
    assert store.open_intents() == []
    assert verify_log(store.evidence_records(ORIGIN), origin=ORIGIN, final=True).ok


def test_checkpointer_signs_publishes_and_refuses_a_rewritten_history(tmp_path: Path, store_url: str,
                                                                     store: Store) -> None:
    home = tmp_path
    settings = EvidenceSettings.from_env(home, {"AEGRESS_CHECKPOINT_EVERY": "5"})
    key, created = load_signing_key_for(home, "aegress.test", settings.key_file, create=True)
    assert created and key is not None and (settings.key_file.stat().st_mode & 0o777) == 0o600
    store.append_evidence([revoked(i) for i in range(7)])
    cp = Checkpointer(store, key, settings)
    notes = cp.tick()
    assert len(notes) == 1
    assert open_checkpoint(notes[0], trusted_verifiers(home), ORIGIN).size == 7
    published = settings.publish_dir / "aegress.test_tenant_acme" / "checkpoint"
    assert published.read_text() == notes[0]
    assert cp.tick() == []  # nothing new, nothing due
    # someone rewrites a signed record in the database: the checkpointer must not sign the new history
    sql(store_url, "UPDATE evidence SET leaf_hash = ? WHERE seq = 3", (b"\0" * 32,))
    store.append_evidence([revoked(99)])
    fresh = Checkpointer(store, key, settings)
    assert fresh.tick(force=True) == []
    assert not fresh.healthy
    report = verify_log(store.evidence_records(ORIGIN), origin=ORIGIN,
                        checkpoints=[n for _, n in store.list_checkpoints(ORIGIN)], verifiers=trusted_verifiers(home))
    assert report.ok  # the bytes are intact; only the derived leaf_hash column was damaged


def test_the_checkpointer_keeps_only_the_logs_right_edge(tmp_path: Path, store: Store) -> None:
    """Its memory must stay flat however long a log grows (a 10-minute soak showed linear growth when it
    kept the whole Merkle tree): O(log n) hashes per log, and every root still verifies."""
    from gateway.audit.merkle import root_from_leaf_hashes

    settings = EvidenceSettings.from_env(tmp_path, {"AEGRESS_CHECKPOINT_EVERY": "100"})
    key, _ = load_signing_key_for(tmp_path, "aegress.test", settings.key_file, create=True)
    assert key is not None
    cp = Checkpointer(store, key, settings)
    for batch in range(5):
        store.append_evidence([revoked(batch * 1000 + i) for i in range(1000)])
        assert len(cp.tick()) == 1
    held = [v for state in cp._logs.values() for v in vars(state).values() if isinstance(v, list | tuple)]
    assert held == []  # no per-record list kept on the state itself
    state = cp._logs[ORIGIN]
    assert state.edge.size == 5000 and len(state.edge._stack) == (5000).bit_count()
    assert state.edge.root() == root_from_leaf_hashes(store.evidence_leaf_hashes(ORIGIN))
    notes = [n for _, n in store.list_checkpoints(ORIGIN)]
    report = verify_log(store.evidence_records(ORIGIN), origin=ORIGIN, checkpoints=notes,
                        verifiers=trusted_verifiers(tmp_path))
    assert report.ok and len(report.checkpoints) == 5


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    from gateway.audit.errors import KeyFileError

    load_signing_key_for(tmp_path, "aegress.test", create=True)
    path = tmp_path / "secrets" / "audit-signing.key"
    path.chmod(0o640)
    with pytest.raises(KeyFileError) as info:
        load_signing_key_for(tmp_path, "aegress.test")
    assert "chmod 600" in (info.value.hint or "")


def _lock_evidence(url: str) -> Callable[[], None]:
    """Hold the store's write lock from outside (another process's long transaction); returns the release."""
    if url.startswith("sqlite:///"):
        import sqlite3

        db = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=1, isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
    else:
        import psycopg

        db = psycopg.connect(url, autocommit=True)
        db.execute("BEGIN")
        db.execute("LOCK TABLE evidence_heads IN ACCESS EXCLUSIVE MODE")

    def release() -> None:
        db.execute("ROLLBACK")
        db.close()

    return release


def test_a_locked_store_fails_every_intent_and_holds_everything_else(store_url: str, store: Store,
                                                                     make_store: Callable[..., Store]) -> None:
    store.append_evidence([revoked(0)])
    release = _lock_evidence(store_url)
    writer = EvidenceWriter(make_store(busy_timeout_s=0.2), retry_s=0.05)
    try:
        futures = [writer.submit(intent(i)) for i in range(3)]
        for f in futures:
            with pytest.raises(StoreUnavailable):
                f.result(30)
        held = writer.submit(revoked(1))  # an event that already happened: kept until the store takes it
        with pytest.raises(TimeoutError):
            held.result(1.0)  # a few attempts, each refused
        assert not writer.healthy and writer.held == 1
    finally:
        release()
    assert held.result(30).record.seq == 1  # committed after the fault, without a restart; no gap
    assert writer.submit(revoked(5)).result(30).record.seq == 2
    assert writer.healthy and writer.held == 0
    writer.close()


def test_tampered_row_is_found_by_the_verifier(store_url: str, store: Store) -> None:
    store.append_evidence([revoked(i) for i in range(5)])
    sql(store_url, "DELETE FROM evidence WHERE seq = 2")
    finding = verify_log(store.evidence_records(ORIGIN), origin=ORIGIN).finding
    assert finding is not None and finding.problem is Problem.GAP and finding.seq == 2


def test_a_hold_is_found_by_its_audit_id(store: Store) -> None:
    from gateway.evidence.events import decision_seq_for

    body = {**intent(0).body, "verdict": "review", "request_id": "rev_abc"}
    store.append_evidence([revoked(0), Entry(ORIGIN, "decision", T, body, Columns(tenant="acme"))])
    assert decision_seq_for(store, "acme", "rev_abc") == 1
    assert decision_seq_for(store, "acme", "rev_nope") is None
