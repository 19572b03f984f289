"""Approvals: bound to tenant, actor, tool and argument digest; single use; expiring; not self-approved."""

from __future__ import annotations

import hashlib

import pytest
import rfc8785

from gateway.errors import Forbidden
from gateway.policy import (
    Call,
    Mismatch,
    Policy,
    ReviewSettings,
    SelfApproval,
    approval_matches,
    approval_mismatch,
    argument_digest,
    check_approver,
    consume,
    hold_deadline,
    make_approval,
)

POLICY = Policy(review=ReviewSettings(approval_lifetime_seconds=60, hold_timeout_seconds=25))
CALL = Call("acme", "alice", "demo", "delete_note", {"name": "n", "opts": {"b": 1, "a": 2}})
T0 = 1_700_000_000.0


def test_argument_digest_is_canonical() -> None:
    assert argument_digest({"b": 1, "a": [1, "é"]}) == argument_digest({"a": [1, "é"], "b": 1})
    assert argument_digest({"a": 1}) == "sha256:" + hashlib.sha256(rfc8785.dumps({"a": 1})).hexdigest()
    assert argument_digest({"a": 1}) != argument_digest({"a": True})
    assert argument_digest({"big": 2**70}).startswith("sha256:")  # outside JCS range, still deterministic


def test_same_call_within_lifetime_matches() -> None:
    ap = make_approval(approval_id="ap1", call=CALL, approved_by="bob", now=T0, policy=POLICY)
    same = Call("acme", "alice", "demo", "delete_note", {"opts": {"a": 2, "b": 1}, "name": "n"})
    assert approval_matches(ap, same, T0 + 59)
    assert ap.expires_at == T0 + 60


@pytest.mark.parametrize(
    ("call", "now", "why"),
    [
        (CALL, T0 + 60, Mismatch.EXPIRED),
        (CALL, T0 - 1, Mismatch.EXPIRED),
        (Call("other", "alice", "demo", "delete_note", CALL.arguments), T0, Mismatch.TENANT),
        (Call("acme", "mallory", "demo", "delete_note", CALL.arguments), T0, Mismatch.ACTOR),
        (Call("acme", "alice", "demo", "write_note", CALL.arguments), T0, Mismatch.TOOL),
        (Call("acme", "alice", "demo2", "delete_note", CALL.arguments), T0, Mismatch.TOOL),
        (Call("acme", "alice", "demo", "delete_note", {"name": "other"}), T0, Mismatch.ARGUMENTS),
    ],
)
def test_other_calls_do_not_match(call: Call, now: float, why: Mismatch) -> None:
    ap = make_approval(approval_id="ap1", call=CALL, approved_by="bob", now=T0, policy=POLICY)
    assert approval_mismatch(ap, call, now) is why
    assert not approval_matches(ap, call, now)


def test_single_use() -> None:
    ap = make_approval(approval_id="ap1", call=CALL, approved_by="bob", now=T0, policy=POLICY)
    used = consume(ap, T0 + 1)
    assert approval_mismatch(used, CALL, T0 + 2) is Mismatch.USED
    assert approval_matches(ap, CALL, T0 + 2)  # values are immutable: the store records the use


def test_approver_must_not_be_the_caller() -> None:
    check_approver("bob", "alice")
    with pytest.raises(SelfApproval) as caught:
        check_approver("alice", "alice")
    assert isinstance(caught.value, Forbidden) and caught.value.code == "self-approval" and caught.value.hint
    with pytest.raises(SelfApproval):
        make_approval(approval_id="x", call=CALL, approved_by="alice", now=T0, policy=POLICY)
    check_approver("Alice", "alice")  # ids compare exactly


def test_hold_deadline() -> None:
    assert hold_deadline(T0, POLICY) == T0 + 25
    assert hold_deadline(T0, Policy()) == T0 + 25
