"""Queryable columns are derived from the sealed bytes by one function, and the verifier holds them to it."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from gateway.audit.log import Columns, Entry, expected_columns, seal
from gateway.audit.records import parse_record
from gateway.audit.verify import Problem, verify_log
from gateway.record import CallFacts, call_entry, elicitation_entry, outcome_entry
from gateway.types import Decision, Identity

KEY = b"k" * 32
ORIGIN = "aegress.test/tenant/acme"
T = "2026-01-02T03:04:05.000000Z"


def _facts(decision: Decision, tool: str = "github__create_issue") -> CallFacts:
    return CallFacts(
        identity=Identity("acme", "alice", "tok_1"), client_name="c", client_version="1", session_id="s1",
        method="tools/call", upstream="github", tool=tool, tool_def=None, decision=decision,
        arguments={"title": "hi"}, request_id="7", started_at="2026-01-02T03:04:05.000+00:00", time=T,
    )


@dataclass(frozen=True)
class Row:
    """What a database stores next to a record's bytes."""

    kind: str
    time: str
    tenant: str
    actor: str
    tool: str
    verdict: str
    status: str
    intent_seq: int | None
    leaf_hash: bytes


def _log(tool: str = "github__create_issue", verdict: str = "allow") -> tuple[list[Entry], list[tuple[int, bytes]],
                                                                              list[Row]]:
    facts = _facts(Decision(verdict, "r1"), tool)  # type: ignore[arg-type]
    entries = [
        call_entry(ORIGIN, KEY, facts, kind="intent", verdict="review_approved" if verdict == "review" else None),
        outcome_entry(ORIGIN, KEY, facts, 0, status="completed", time=T, latency_ms=1, upstream_latency_ms=None),
        call_entry(ORIGIN, KEY, _facts(Decision("block", "no", "because")), kind="decision"),
        elicitation_entry(ORIGIN, KEY, "acme", "alice", "9", {"action": "accept", "content": {"ok": True}}, T),
    ]
    sealed, _ = seal(entries, {})
    records = [(s.record.seq, s.record.canonical) for s in sealed]
    rows = [Row(s.record.kind, s.entry.time, s.entry.columns.tenant, s.entry.columns.actor, s.entry.columns.tool,
                s.entry.columns.verdict, s.entry.columns.status, s.entry.columns.intent_seq, s.record.leaf_hash)
            for s in sealed]
    return entries, records, rows


@pytest.mark.parametrize(("tool", "verdict"), [("github__create_issue", "allow"), ("", "allow"),
                                               ("(none)", "allow"), ("x", "review")])
def test_writers_store_exactly_the_derived_columns(tool: str, verdict: str) -> None:
    entries, records, _ = _log(tool, verdict)
    intent = parse_record(records[0][1]).body
    for entry, (_, data) in zip(entries, records, strict=True):
        record = parse_record(data)
        answered = intent if record.kind == "outcome" else None
        assert entry.columns == expected_columns(record.kind, record.body, "acme", answered), record.kind


def test_columns_of_operator_events() -> None:
    body = {"change": "token_issued", "actor": "ops", "subject": "tok_1", "subject_actor": "bob"}
    assert expected_columns("operator_change", body, "acme") == Columns(tenant="acme", actor="ops",
                                                                        verdict="operator_change")
    review = {"review_id": "rev_1", "reviewer": "carol"}
    assert expected_columns("review_approved", review, "acme").actor == "carol"


def test_the_verifier_names_an_edited_column() -> None:
    _, records, rows = _log()
    assert verify_log(records, origin=ORIGIN, columns=rows, tenant="acme").ok
    for position, name, value in [(0, "actor", "mallory"), (1, "verdict", "deny"), (2, "status", ""),
                                  (3, "tenant", "globex"), (1, "intent_seq", 2), (0, "leaf_hash", b"\0" * 32)]:
        edited = list(rows)
        edited[position] = replace(rows[position], **{name: value})
        finding = verify_log(records, origin=ORIGIN, columns=edited, tenant="acme").finding
        assert finding is not None and finding.problem is Problem.MODIFIED and finding.seq == position
        assert f"'{name}'" in finding.message


def test_an_outcome_whose_intent_precedes_a_partial_log_is_checked_where_it_can_be() -> None:
    from gateway.audit.merkle import MerkleTree
    from gateway.audit.verify import LogStart

    _, records, rows = _log()
    tree = MerkleTree([r.leaf_hash for r in rows])
    start = LogStart(seq=1, prev=tree.leaf(0), frontier=tuple(tree.frontier(1)))
    part = verify_log(records[1:], origin=ORIGIN, columns=rows[1:], tenant="acme", start=start)
    assert part.ok
    wrong = [replace(rows[1], status="failed"), *rows[2:]]
    assert verify_log(records[1:], origin=ORIGIN, columns=wrong, tenant="acme", start=start).finding is not None


def test_the_one_pass_verifier_checks_columns_too() -> None:
    """`audit verify` on a database streams the log (gateway.audit.verify.verify_log_stream): a clean log with its
    columns passes in one pass; an edited column (or stored seq) sends it to verify_log, which names it."""
    from gateway.audit.verify import verify_log_stream

    _, records, rows = _log()

    def streamed(records: list[tuple[int, bytes]], rows: list[Row]) -> tuple[bool, object]:
        diagnosed: list[bool] = []

        def diagnose() -> object:
            diagnosed.append(True)
            return verify_log(records, origin=ORIGIN, columns=rows, tenant="acme")

        report = verify_log_stream(((seq, data, row) for (seq, data), row in zip(records, rows, strict=True)),
                                   origin=ORIGIN, tenant="acme", diagnose=diagnose)  # type: ignore[arg-type]
        return bool(diagnosed), report

    diagnosed, report = streamed(records, rows)
    assert not diagnosed and report == verify_log(records, origin=ORIGIN, columns=rows, tenant="acme")
    for position, name, value in [(0, "actor", "mallory"), (1, "verdict", "deny"), (2, "status", ""),
                                  (3, "tenant", "globex"), (1, "intent_seq", 2), (0, "leaf_hash", b"\0" * 32)]:
        edited = list(rows)
        edited[position] = replace(rows[position], **{name: value})
        diagnosed, report = streamed(records, edited)
        assert diagnosed and report.finding is not None and report.finding.seq == position  # type: ignore[attr-defined]
    wrong_seq = [(seq + (1 if seq == 2 else 0), data) for seq, data in records]
    diagnosed, report = streamed(wrong_seq, rows)
    assert diagnosed and report.finding is not None  # type: ignore[attr-defined]
