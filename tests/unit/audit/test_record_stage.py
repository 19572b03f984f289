"""The record stage's pure parts: call facts -> valid evidence bodies, receipts, chaining, log redaction."""

from __future__ import annotations

import logging

import pytest

from gateway.audit.log import Columns, Entry, seal, security_origin, tenant_of, tenant_origin
from gateway.audit.merkle import leaf_hash
from gateway.audit.records import ChainHead, parse_record, validate_body
from gateway.evidence.redaction import RedactingFilter
from gateway.record import CallFacts, call_entry, elicitation_entry, outcome_entry, with_receipt
from gateway.types import Decision, Identity

KEY = b"k" * 32
ORIGIN = "aegress.test/tenant/acme"
SECRET = "sk-" + "Zq9" * 10
T = "2026-01-02T03:04:05.000000Z"


def facts(decision: Decision | None = None, arguments: object = None) -> CallFacts:
    return CallFacts(
        identity=Identity("acme", "alice", "tok_1"), client_name="claude-code", client_version="2.1.0",
        session_id="s1", method="tools/call", upstream="github", tool="github__create_issue",
        tool_def={"name": "create_issue", "inputSchema": {"type": "object"}},
        decision=decision or Decision("allow", "r1", policy_version=3),
        arguments={"title": "hi", "token": SECRET} if arguments is None else arguments,
        request_id="7", started_at="2026-01-02T03:04:05.000+00:00", time=T,
    )


def test_intent_and_outcome_bodies_are_valid_and_hold_no_raw_values() -> None:
    intent = call_entry(ORIGIN, KEY, facts(), kind="intent")
    validate_body("intent", intent.body)
    assert intent.body["verdict"] == "allow" and intent.body["policy_version"] == "3"
    assert intent.body["args_digest"].startswith("hmac-sha256:")
    assert intent.body["tool_def_hash"].startswith("sha256:")
    outcome = outcome_entry(ORIGIN, KEY, facts(), 0, status="completed", time=T, latency_ms=12.6,
                            upstream_latency_ms=10.2, result={"content": [{"type": "text", "text": SECRET}]})
    validate_body("outcome", outcome.body)
    assert outcome.body["latency_ms"] == 13 and outcome.call.outcome == "completed"
    sealed, _ = seal([intent, outcome], {})
    for s in sealed:
        assert SECRET.encode() not in s.record.canonical
        assert parse_record(s.record.canonical).origin == ORIGIN


@pytest.mark.parametrize(("verdict", "expected"), [("block", "deny"), ("review", "review")])
def test_refusals_become_decisions(verdict: str, expected: str) -> None:
    entry = call_entry(ORIGIN, KEY, facts(Decision(verdict, "rule-x", "because")), kind="decision")  # type: ignore[arg-type]
    validate_body("decision", entry.body)
    assert entry.body["verdict"] == expected and entry.body["reason"] == "because"
    assert entry.call is not None and entry.call.outcome == "refused"


def test_tool_errors_and_elicitation_answers() -> None:
    outcome = outcome_entry(ORIGIN, KEY, facts(), 4, status="failed", time=T, latency_ms=1, upstream_latency_ms=None,
                            result={"isError": True}, error_code="tool_error")
    assert outcome.call.outcome == "tool_error" and outcome.body["error_code"] == "tool_error"
    answer = elicitation_entry(ORIGIN, KEY, "acme", "alice", "aeg-1",
                               {"action": "accept", "content": {"password": SECRET}}, T)
    validate_body("elicitation_answer", answer.body)
    assert SECRET not in str(answer.body)


def test_digests_are_per_tenant_and_deterministic() -> None:
    a = call_entry(ORIGIN, KEY, facts(arguments={"x": 1}), kind="intent").body["args_digest"]
    b = call_entry(ORIGIN, KEY, facts(arguments={"x": 1}), kind="intent").body["args_digest"]
    c = call_entry(ORIGIN, b"j" * 32, facts(arguments={"x": 1}), kind="intent").body["args_digest"]
    assert a == b != c


def test_receipt_merges_into_existing_meta() -> None:
    sealed, _ = seal([call_entry(ORIGIN, KEY, facts(), kind="intent")], {})
    out = with_receipt({"content": [], "_meta": {"other": 1}}, sealed[0])
    assert out["_meta"]["other"] == 1
    assert out["_meta"]["aegress"] == {"origin": ORIGIN, "seq": 0, "leaf_hash": sealed[0].record.leaf_hash_hex}
    assert with_receipt({"content": []}, None) == {"content": []}


def test_seal_chains_per_origin_from_given_heads() -> None:
    other = "aegress.test/tenant/beta"
    body = {"token_id": "tok_1", "actor": "op"}
    entries = [Entry(o, "token_revoked", T, body, Columns()) for o in (ORIGIN, other, ORIGIN)]
    first, heads = seal(entries[:1], {})
    rest, heads = seal(entries[1:], heads)
    assert [s.record.seq for s in first + rest] == [0, 0, 1]
    assert parse_record(rest[1].record.canonical).prev == leaf_hash(first[0].record.canonical).hex()
    assert heads[ORIGIN] == ChainHead(ORIGIN, 2, rest[1].record.leaf_hash)


def test_origins() -> None:
    assert tenant_origin("p", "acme") == "p/tenant/acme" and security_origin("p") == "p/security"
    assert tenant_of("p", "p/tenant/acme") == "acme" and tenant_of("p", "p/security") is None


def test_log_filter_redacts_messages_and_exceptions() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "upstream said %s", (f"Bearer {SECRET}",), None)
    try:
        raise ValueError(f"token={SECRET}")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert RedactingFilter().filter(record)
    text = logging.Formatter().format(record)
    assert SECRET not in text and "[REDACTED]" in text
