"""`audit verify` and `audit export` read a stored log a page at a time (gateway/evidence/stream.py), on each
real store: the same result as reading it whole, with a fraction of the memory."""

from __future__ import annotations

import hashlib
import io
import tracemalloc
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from gateway.audit.log import Entry, expected_columns, tenant_origin
from gateway.audit.verify import verify_log
from gateway.evidence.stream import verify_stored_log, write_csv, write_jsonl
from gateway.store.base import EvidenceFilter, Store

ORIGIN = tenant_origin("aegress.test", "acme")
CALLS = 3000  # 6,000 records of about 570 bytes
DIGEST = "hmac-sha256:" + "ab" * 32


def _fill(store: Store, calls: int = CALLS) -> None:
    for start in range(0, calls, 250):
        batch: list[Entry] = []
        for i in range(start, min(calls, start + 250)):
            intent = Entry(ORIGIN, "intent", f"2026-01-02T03:04:05.{i:06d}Z", {
                "tenant": "acme", "actor": f"user-{i % 7}", "token_id": "tok_1", "client_name": "claude-code",
                "client_version": "2.1.0", "upstream": "files", "tool": f"files__read_file_{i % 13}",
                "tool_def_hash": "sha256:" + "cd" * 32, "verdict": "allow", "policy_version": "3",
                "rule_id": "allow-reads", "args_digest": DIGEST, "request_id": str(i),
                "args_preview": '{"path": "/srv/share/some/long/path/to/a/file/' + "x" * 120 + '"}'})
            outcome = Entry(ORIGIN, "outcome", f"2026-01-02T03:04:06.{i:06d}Z", {
                "intent_seq": 2 * i, "status": "completed", "result_digest": DIGEST, "latency_ms": 12})
            batch += [replace(intent, columns=expected_columns("intent", intent.body, "acme")),
                      replace(outcome, columns=expected_columns("outcome", outcome.body, "acme", intent.body))]
        store.append_evidence(batch)


def _peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_verify_streams_and_agrees_with_the_whole_log(store: Store) -> None:
    _fill(store)
    size = sum(len(data) for _, data in store.evidence_records(ORIGIN))

    def whole() -> Any:
        rows = store.query_evidence(EvidenceFilter(origin=ORIGIN), limit=2**62, newest_first=False)
        return verify_log([(r.seq, r.data) for r in rows], origin=ORIGIN, columns=rows, tenant="acme")

    seen: list[tuple[int, int]] = []
    streamed, streamed_peak = _peak(lambda: verify_stored_log(
        store, ORIGIN, checkpoints=[], verifiers=[], tenant="acme", page=200,
        on_progress=lambda done, total: seen.append((done, total))))
    full, full_peak = _peak(whole)
    assert streamed.ok and streamed == full and streamed.size == 2 * CALLS
    assert seen[-1] == (2 * CALLS, 2 * CALLS) and len(seen) > 10
    assert streamed_peak < size / 3 and streamed_peak < full_peak / 8, (streamed_peak, full_peak, size)


def test_a_damaged_log_is_still_named_exactly(store: Store) -> None:
    _fill(store, 300)
    rows = store.query_evidence(EvidenceFilter(origin=ORIGIN), limit=2**62, newest_first=False)
    edited = [replace(r, actor="mallory") if r.seq == 123 else r for r in rows]

    class Edited:  # the store as seen after someone edited one queryable column
        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

        def query_evidence(self, where: Any, limit: int = 100, newest_first: bool = True) -> list[Any]:
            return [r for r in edited if r.id > where.after_id][:limit]

    report = verify_stored_log(Edited(), ORIGIN, checkpoints=[], verifiers=[], tenant="acme",  # type: ignore[arg-type]
                               page=50)
    assert not report.ok and report.finding is not None and report.finding.seq == 123
    assert "'actor'" in report.finding.message


def test_exports_stream_the_exact_records(store: Store) -> None:
    _fill(store)
    records = store.evidence_records(ORIGIN)
    size = sum(len(data) for _, data in records)

    class Digest:  # a file that keeps nothing but a hash of what was written
        def __init__(self) -> None:
            self.hash = hashlib.sha256()

        def write(self, data: bytes) -> int:
            self.hash.update(data)
            return len(data)

    out = Digest()
    count, peak = _peak(lambda: write_jsonl(store, ORIGIN, 0, len(records), out, page=200))  # type: ignore[arg-type]
    assert count == len(records)
    assert out.hash.digest() == hashlib.sha256(b"".join(data + b"\n" for _, data in records)).digest()
    assert peak < size / 3, (peak, size)
    part = io.BytesIO()
    assert write_jsonl(store, ORIGIN, 10, 20, part, page=3) == 10
    assert part.getvalue() == b"".join(data + b"\n" for _, data in records[10:20])

    class Keep(io.BytesIO):
        def close(self) -> None:  # the CSV writer closes its file; keep the bytes to look at
            self.kept = self.getvalue()
            super().close()

    csv_out = Keep()
    assert write_csv(store, ORIGIN, 5, 15, csv_out, page=1000) == 10
    lines = csv_out.kept.decode().splitlines()
    assert lines[0].startswith("id,origin,seq,kind") and [line.split(",")[2] for line in lines[1:]] == [
        str(s) for s in range(5, 15)]
