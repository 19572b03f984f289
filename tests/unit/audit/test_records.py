"""Records: validated bodies, exact canonical bytes, gapless seq and hash links built without a clock."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from audit_logs import ORIGIN, T0, intent_body, make_log, outcome_body
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit.canonical import is_canonical
from gateway.audit.errors import InvalidRecord
from gateway.audit.merkle import leaf_hash
from gateway.audit.records import GENESIS_PREV, KINDS, ChainHead, build_record, parse_record, receipt


def test_chain_links_and_leaf_hashes() -> None:
    log = make_log(3)
    for i, record in enumerate(log.records):
        parsed = parse_record(record.canonical)
        assert parsed.seq == i == record.seq
        assert parsed.prev == (GENESIS_PREV if i == 0 else log.records[i - 1].leaf_hash.hex())
        assert record.leaf_hash == leaf_hash(record.canonical)
        assert is_canonical(record.canonical)
    assert ChainHead.after(log.records[-1].canonical) == log.head


def test_exact_bytes_are_stable() -> None:
    record = build_record(
        origin=ORIGIN, seq=0, prev=GENESIS_PREV, kind="outcome_unknown", time=T0,
        body={"intent_seq": 0, "reason": "gateway_restarted"},
    )
    assert record.canonical == (
        b'{"body":{"intent_seq":0,"reason":"gateway_restarted"},"kind":"outcome_unknown",'
        b'"origin":"aegress.test/tenant/acme","prev":"' + GENESIS_PREV.encode() + b'","seq":0,'
        b'"time":"2025-01-02T03:04:05.000000Z","v":1}'
    )
    assert receipt(record) == {"origin": ORIGIN, "seq": 0, "leaf_hash": record.leaf_hash.hex()}


def test_time_is_normalised_to_utc() -> None:
    east = T0.astimezone(timezone(timedelta(hours=2)))
    head = ChainHead.genesis(ORIGIN)
    a, _ = head.append(kind="intent", time=east, body=intent_body(0))
    b, _ = head.append(kind="intent", time=T0, body=intent_body(0))
    assert a.canonical == b.canonical
    with pytest.raises(InvalidRecord):
        head.append(kind="intent", time=datetime(2025, 1, 1), body=intent_body(0))


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("nope", {}),
        ("intent", {k: v for k, v in intent_body(0).items() if k != "tool"}),
        ("intent", intent_body(0) | {"arguments": {"password": "hunter2"}}),
        ("intent", intent_body(0) | {"args_digest": "md5:abc"}),
        ("outcome", outcome_body(0) | {"status": "exploded"}),
        ("outcome", outcome_body(0) | {"latency_ms": 1.5}),
        ("outcome", outcome_body(0) | {"latency_ms": True}),
        ("outcome", outcome_body(0) | {"result_preview": "x" * 513}),
    ],
)
def test_bodies_are_validated(kind: str, body: dict[str, object]) -> None:
    with pytest.raises(InvalidRecord):
        build_record(origin=ORIGIN, seq=0, prev=GENESIS_PREV, kind=kind, time=T0, body=body)


def test_seq_and_prev_rules() -> None:
    with pytest.raises(InvalidRecord):
        build_record(origin=ORIGIN, seq=1, prev=GENESIS_PREV, kind="intent", time=T0, body=intent_body(0))
    with pytest.raises(InvalidRecord):
        build_record(origin=ORIGIN, seq=0, prev="ab" * 32, kind="intent", time=T0, body=intent_body(0))
    with pytest.raises(InvalidRecord):
        build_record(origin=ORIGIN, seq=-1, prev=GENESIS_PREV, kind="intent", time=T0, body=intent_body(0))
    with pytest.raises(InvalidRecord):
        build_record(origin="", seq=0, prev=GENESIS_PREV, kind="intent", time=T0, body=intent_body(0))


def test_parse_rejects_non_canonical_and_foreign_shapes() -> None:
    data = make_log(1).records[0].canonical
    for bad in [data.replace(b",", b", ", 1), data + b" ", data.replace(b'"v":1', b'"v":1.0'), b"[]", b"{"]:
        with pytest.raises(InvalidRecord):
            parse_record(bad)


def test_every_kind_is_documented() -> None:
    text = (Path(__file__).parents[3] / "docs" / "evidence-format.md").read_text(encoding="utf-8")
    for kind in KINDS:
        assert f"`{kind}`" in text


@settings(max_examples=2000, deadline=None)
@given(st.text(), st.text(min_size=1), st.lists(st.text(), max_size=3))
def test_built_records_are_exactly_rfc8785(text: str, tool: str, strings: list[str]) -> None:
    """A validated record is written with orjson's sorted output; it must be the RFC 8785 bytes for any
    text a body can hold (control characters, non-ASCII, U+2028, astral planes), or refused like JCS."""
    import rfc8785

    body = {"tenant": "acme", "actor": text or "a", "token_id": None, "client_name": text, "client_version": None,
            "upstream": "u", "tool": tool, "tool_def_hash": None, "verdict": "allow", "policy_version": text or "0",
            "rule_id": None, "args_digest": None, "request_id": text or "-", "args_preview": text[:512]}
    try:
        expected = rfc8785.dumps({"v": 1, "origin": "o", "seq": 3, "prev": "ab" * 32, "kind": "intent",
                                  "time": "2026-01-02T03:04:05.000000Z", "body": body})
    except Exception:  # lone surrogates: JCS cannot write them, and neither may we
        with pytest.raises(InvalidRecord):
            build_record(origin="o", seq=3, prev="ab" * 32, kind="intent", time="2026-01-02T03:04:05.000000Z",
                         body=body)
        return
    built = build_record(origin="o", seq=3, prev="ab" * 32, kind="intent", time="2026-01-02T03:04:05.000000Z",
                         body=body)
    assert built.canonical == expected
