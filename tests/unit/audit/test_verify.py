"""The verifier names the first bad record and the class of problem, and agrees with an independent one."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import minimal_verifier
import pytest
from audit_logs import ORIGIN, T0, Log, fixed_key, intent_body, make_log, outcome_body
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.audit.checkpoint import Checkpoint, sign_checkpoint, sign_note
from gateway.audit.merkle import leaf_hash
from gateway.audit.records import ChainHead, build_record
from gateway.audit.verify import ConsistencyProof, LogStart, Problem, VerifyReport, verify_log, verify_log_stream

KEY = fixed_key()
VKEYS = [KEY.verifier_key]


@cache
def _log(calls: int) -> Log:
    return make_log(calls)


def _verify(records: list[bytes], notes: list[str], *, final: bool = False, **kw: object) -> VerifyReport:
    report = verify_log(
        list(enumerate(records)), origin=ORIGIN, checkpoints=notes, verifiers=[KEY.verifier], final=final, **kw
    )
    if not kw:
        _same_when_streamed(records, notes, final, report)
    independent = minimal_verifier.verify(records, ORIGIN, notes, VKEYS, final=final)
    if "consistency_proofs" not in kw:
        got = None if report.finding is None else (str(report.finding.problem), report.finding.seq)
        if got is not None and got[0] in ("bad_signature", "inconsistent_checkpoint"):
            got = (got[0], None)
        assert got == independent, (report.finding, independent)
    return report


def _same_when_streamed(records: list[bytes], notes: list[str], final: bool, report: VerifyReport) -> None:
    """The one-pass verifier (`audit verify` on a database) either agrees with verify_log on a clean log or
    hands the log to it: it never calls a log clean that verify_log does not."""
    diagnosed: list[bool] = []

    def diagnose() -> VerifyReport:
        diagnosed.append(True)
        return report

    streamed = verify_log_stream(((seq, data, None) for seq, data in enumerate(records)), origin=ORIGIN,
                                 checkpoints=notes, verifiers=[KEY.verifier], final=final, diagnose=diagnose)
    if not diagnosed:
        assert report.ok and streamed == report, (streamed, report)
    assert streamed.ok == report.ok


def _expect(report: VerifyReport, problem: Problem, seq: int | None = None) -> None:
    assert report.finding is not None, "tampering went undetected"
    assert report.finding.problem is problem, report.finding
    if seq is not None:
        assert report.finding.seq == seq, report.finding


def _notes(log: Log, sizes: list[int]) -> list[str]:
    return [log.checkpoint(KEY, s) for s in sizes]


# --- property tests -------------------------------------------------------------------------------

logs = st.integers(min_value=2, max_value=10).map(_log)
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def log_and_checkpoints(draw: st.DrawFn) -> tuple[Log, list[str]]:
    log = draw(logs)
    n = len(log.records)
    extra = draw(st.lists(st.integers(1, n - 1), max_size=2, unique=True))
    return log, _notes(log, [*sorted(extra), n])


@PROPS
@given(log_and_checkpoints())
def test_untouched_log_verifies(case: tuple[Log, list[str]]) -> None:
    log, notes = case
    report = _verify(log.data, notes, final=True)
    assert report.ok, report.finding
    assert report.root == log.tree().root() and report.size == len(log.records)


@PROPS
@given(log_and_checkpoints(), st.data())
def test_any_single_byte_edit_is_modified(case: tuple[Log, list[str]], data: st.DataObject) -> None:
    log, notes = case
    records = log.data
    p = data.draw(st.integers(0, len(records) - 1))
    offset = data.draw(st.integers(0, len(records[p]) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != records[p][offset]))
    edited = bytearray(records[p])
    edited[offset] = byte
    records[p] = bytes(edited)
    _expect(_verify(records, notes), Problem.MODIFIED, p)


@PROPS
@given(log_and_checkpoints(), st.data())
def test_any_deletion_is_a_gap_or_truncation(case: tuple[Log, list[str]], data: st.DataObject) -> None:
    log, notes = case
    records = log.data
    p = data.draw(st.integers(0, len(records) - 1))
    del records[p]
    expected = Problem.TRUNCATED if p == len(records) else Problem.GAP
    _expect(_verify(records, notes), expected, p)


@PROPS
@given(log_and_checkpoints(), st.data())
def test_any_insertion_is_a_fork(case: tuple[Log, list[str]], data: st.DataObject) -> None:
    log, notes = case
    records = log.data
    n = len(records)
    how = data.draw(st.sampled_from(["copy", "forged-linked", "forged-unlinked", "garbage"]))
    if how == "copy":
        p = data.draw(st.integers(0, n))
        inserted = records[data.draw(st.integers(0, n - 1))]
    else:
        p = data.draw(st.integers(0, n - 1))  # appending a well-formed next record is a valid extension
        if how == "garbage":
            inserted = data.draw(st.binary(min_size=0, max_size=40))
        else:
            prev = log.records[p - 1].leaf_hash.hex() if p else "0" * 64
            if how == "forged-unlinked" and p:
                prev = "ee" * 32
            inserted = build_record(
                origin=ORIGIN, seq=p, prev=prev, kind="outcome_unknown", time=T0,
                body={"intent_seq": 0, "reason": "forged"},
            ).canonical
    records.insert(p, inserted)
    _expect(_verify(records, notes), Problem.FORK)


@PROPS
@given(log_and_checkpoints(), st.data())
def test_any_swap_is_reordered(case: tuple[Log, list[str]], data: st.DataObject) -> None:
    log, notes = case
    records = log.data
    i = data.draw(st.integers(0, len(records) - 2))
    j = data.draw(st.integers(i + 1, len(records) - 1))
    records[i], records[j] = records[j], records[i]
    _expect(_verify(records, notes), Problem.REORDERED, i)


@PROPS
@given(log_and_checkpoints(), st.data())
def test_any_truncation_is_truncated(case: tuple[Log, list[str]], data: st.DataObject) -> None:
    log, notes = case
    keep = data.draw(st.integers(0, len(log.records) - 1))
    _expect(_verify(log.data[:keep], notes), Problem.TRUNCATED, keep)


# --- fixtures for the other classes ------------------------------------------------------------------


def test_bad_signature_classes() -> None:
    log = _log(4)
    good = log.checkpoint(KEY)
    other = fixed_key("aegress.test/log", 9)
    cases = [
        good.replace(f"\n{len(log.records)}\n", f"\n{len(log.records) - 1}\n"),  # size edited
        good[:-10] + ("A" if good[-10] != "A" else "B") + good[-9:],  # signature edited
        log.checkpoint(other),  # signed by an untrusted key with the same name
        sign_note(Checkpoint("elsewhere/log", len(log.records), log.tree().root()).body(), KEY.name, KEY.private_key),
        "garbage",
    ]
    for note in cases:
        report = _verify(log.data, [good, note])
        _expect(report, Problem.BAD_SIGNATURE)
        assert report.finding is not None and report.finding.checkpoint == 1


def test_inconsistent_checkpoints() -> None:
    log = _log(5)
    n = len(log.records)
    tree = log.tree()
    # same size, different roots
    split_view = sign_note(Checkpoint(ORIGIN, n, tree.root(n - 1)).body(), KEY.name, KEY.private_key)
    _expect(_verify(log.data, [log.checkpoint(KEY), split_view]), Problem.INCONSISTENT_CHECKPOINT)
    # an earlier checkpoint from another history, while the latest one matches the records
    forged = Log()
    forged.add("outcome_unknown", {"intent_seq": 0, "reason": "other history"})
    early = sign_note(Checkpoint(ORIGIN, 1, forged.tree().root()).body(), KEY.name, KEY.private_key)
    _expect(_verify(log.data, [early, log.checkpoint(KEY)]), Problem.INCONSISTENT_CHECKPOINT)
    # a consistency proof between two checkpoints that does not hold
    bad_proof = ConsistencyProof(3, n, tuple(tree.consistency_proof(4, n)))
    report = _verify(log.data, _notes(log, [3, n]), consistency_proofs=[bad_proof])
    _expect(report, Problem.INCONSISTENT_CHECKPOINT)
    good_proof = ConsistencyProof(3, n, tuple(tree.consistency_proof(3, n)))
    assert _verify(log.data, _notes(log, [3, n]), consistency_proofs=[good_proof]).ok


def test_rewritten_history_is_a_fork() -> None:
    log = _log(6)
    notes = _notes(log, [4, 9])
    rewritten = Log()
    for record in log.records[:6]:
        rewritten.records.append(record)
    rewritten.head = ChainHead(ORIGIN, 6, log.records[5].leaf_hash)
    rewritten.add("outcome_unknown", {"intent_seq": 4, "reason": "rewritten"})
    for i in range(len(log.records) - 7):
        rewritten.add("intent", intent_body(i))
    report = _verify(rewritten.data, notes)
    _expect(report, Problem.FORK, 4)


def test_orphan_intents() -> None:
    log = Log()
    log.add("intent", intent_body(0))
    log.add("outcome", outcome_body(0))
    log.add("intent", intent_body(2))  # in flight
    report = _verify(log.data, [])
    assert report.ok and report.open_intents == (2,)
    _expect(_verify(log.data, [], final=True), Problem.ORPHAN_INTENT, 2)
    log.add("intent", intent_body(3))
    log.add("outcome_unknown", {"intent_seq": 3, "reason": "gateway_restarted"})  # recovery missed intent 2
    _expect(_verify(log.data, [log.checkpoint(KEY)]), Problem.ORPHAN_INTENT, 2)
    log.add("outcome_unknown", {"intent_seq": 2, "reason": "gateway_restarted"})
    assert _verify(log.data, [log.checkpoint(KEY)], final=True).ok


def test_malformed_but_chained_records() -> None:
    log = Log()
    log.add("intent", intent_body(0))
    log.add("outcome", outcome_body(0))
    log.add("outcome", outcome_body(0))  # answers an intent that already has its outcome
    _expect(_verify(log.data, [log.checkpoint(KEY)]), Problem.MALFORMED, 2)
    # a writer that stored non-canonical bytes but chained them correctly
    bad = Log()
    bad.add("intent", intent_body(0))
    loose = bad.records[0].canonical.replace(b",", b", ", 1)
    nxt = build_record(origin=ORIGIN, seq=1, prev=leaf_hash(loose).hex(), kind="outcome", time=T0, body=outcome_body(0))
    _expect(_verify([loose, nxt.canonical], []), Problem.MALFORMED, 0)


def test_stored_seq_column_must_match() -> None:
    log = _log(3)
    stored = [(seq, data) for seq, data in log.stored()]
    stored[2] = (7, stored[2][1])
    report = verify_log(stored, origin=ORIGIN, checkpoints=[log.checkpoint(KEY)], verifiers=[KEY.verifier])
    _expect(report, Problem.MODIFIED, 2)


def test_partial_log_with_frontier() -> None:
    log = _log(8)
    tree = log.tree()
    s = 7
    start = LogStart(seq=s, prev=log.records[s - 1].leaf_hash, frontier=tuple(tree.frontier(s)))
    tail = log.stored()[s:]
    notes = _notes(log, [s, 12, len(log.records)])
    report = verify_log(tail, origin=ORIGIN, checkpoints=notes, verifiers=[KEY.verifier], start=start)
    assert report.ok, report.finding
    tail[3] = (tail[3][0], tail[3][1].replace(b"2025-", b"2026-", 1))
    report = verify_log(tail, origin=ORIGIN, checkpoints=notes, verifiers=[KEY.verifier], start=start)
    _expect(report, Problem.MODIFIED, s + 3)


def test_signing_chain_matches_verifier() -> None:
    """What the gateway would do: sign successive checkpoints, each consistent with the last."""
    log = _log(6)
    tree = log.tree()
    previous, notes = None, []
    for size in (3, 8, len(log.records)):
        cp = Checkpoint(ORIGIN, size, tree.root(size))
        notes.append(sign_checkpoint(cp, KEY.name, KEY.private_key, previous=previous, tree=tree))
        previous = cp
    assert _verify(log.data, notes, final=True).ok


def test_a_long_log_with_two_checkpoints_verifies() -> None:
    """Functional only: the speed target (>= 50,000 records/s) is checked by bench/audit_bench.py."""
    log = make_log(10_000, extra_decisions=False)
    stored = log.stored()
    notes = _notes(log, [5000, len(stored)])
    report = verify_log(stored, origin=ORIGIN, checkpoints=notes, verifiers=[KEY.verifier], final=True)
    assert report.ok and report.size == len(stored) and report.open_intents == ()
    assert [c.size for c in report.checkpoints] == [5000, len(stored)]


@pytest.mark.parametrize("problem", list(Problem))
def test_every_problem_class_is_documented(problem: Problem) -> None:
    text = (Path(__file__).parents[3] / "docs" / "evidence-format.md").read_text(encoding="utf-8")
    assert f"`{problem}`" in text
