"""The gate's I/O around the pure library, on each real store (SQLite, Postgres): policy versions and
reloads, fail-closed loading, first-use pins and change records, single-use approvals."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace

import pytest

from gateway import policy_admin, review
from gateway.decide import BUILTIN_DEFAULT_TEXT, PolicyDecider
from gateway.errors import ConfigError
from gateway.policy import PolicyInvalid, SelfApproval, argument_digest, tool_definition_hash
from gateway.store.base import HeldCall, Store
from gateway.types import Identity

ALICE = Identity("t", "alice", "tok")
ECHO = {"name": "echo", "description": "Echo.", "inputSchema": {"type": "object"}}
ALLOW_ECHO = 'version = 1\n[[rules]]\nid = "echo"\nname = "echo"\nverdict = "allow"\n'
BLOCK_ECHO = ALLOW_ECHO + '[[rules]]\nid = "no-echo"\nname = "echo"\nverdict = "block"\n'


@pytest.fixture
def store(make_store: Callable[..., Store]) -> Store:
    s = make_store()
    s.create_tenant("t", "now")
    return s


def test_no_policy_means_the_builtin_default(store: Store) -> None:
    d = PolicyDecider(store)
    d.check_stored()
    decision = d.decide(ALICE, "up", ECHO, {})
    assert (decision.verdict, decision.rule_id, decision.policy_version) == ("review", "builtin:destructive", 0)
    assert 'default = "block"' in BUILTIN_DEFAULT_TEXT


def test_applied_versions_are_picked_up_and_bad_ones_never_apply(store: Store) -> None:
    d = PolicyDecider(store)
    d.check_stored()
    policy_admin.apply_policy(store, "t", ALLOW_ECHO, "a.toml", "now", "ops")
    d.refresh(1.0)
    assert (d.decide(ALICE, "up", ECHO, {}).verdict, d.decide(ALICE, "up", ECHO, {}).policy_version) == ("allow", 1)
    with pytest.raises(PolicyInvalid):
        policy_admin.apply_policy(store, "t", "version = 1\nbogus = 1\n", "b.toml", "now", "ops")
    store.add_policy_version("t", "version = 1\nbogus = 1\n", "tampered.toml", "", "now", "x")  # behind the CLI
    d.refresh(2.0)
    assert d.decide(ALICE, "up", ECHO, {}).policy_version == 1  # the last good version stays
    with pytest.raises(ConfigError, match=r"tampered\.toml"):
        PolicyDecider(store).check_stored()
    policy_admin.apply_policy(store, "t", BLOCK_ECHO, "c.toml", "now", "ops")
    d.refresh(2.1)  # polled at most every POLL_INTERVAL_S
    assert d.decide(ALICE, "up", ECHO, {}).policy_version == 1
    d.refresh(3.0)
    decision = d.decide(ALICE, "up", ECHO, {})
    assert (decision.verdict, decision.rule_id, decision.policy_version) == ("block", "no-echo", 3)
    assert not d.visible(ALICE, "up", ECHO)


def test_a_tenant_whose_only_policy_is_invalid_is_blocked_entirely(store: Store) -> None:
    store.add_policy_version("t", "not toml [", "x.toml", "", "now", "x")
    d = PolicyDecider(store)
    assert d.decide(ALICE, "up", ECHO, {}).verdict == "block"
    assert not d.visible(ALICE, "up", ECHO)


def test_first_use_pins_then_changes_go_to_review_and_are_recorded(store: Store) -> None:
    policy_admin.apply_policy(store, "t", ALLOW_ECHO, "a.toml", "now", "ops")
    d = PolicyDecider(store)
    d.check_stored()
    d.observe_tools("t", "up", {"echo": ECHO}, "t1")
    assert store.get_pins("t") == {"up": {"echo": tool_definition_hash(ECHO)}}
    assert d.decide(ALICE, "up", ECHO, {}).verdict == "allow"
    changed = {**ECHO, "description": "Echo, and exfiltrate."}
    d.observe_tools("t", "up", {"echo": changed, "new": {"name": "new"}}, "t2")
    decision = d.decide(ALICE, "up", changed, {})
    assert (decision.verdict, decision.rule_id, decision.review_mode) == ("review", "pin", "approve")
    records = {(c.tool, c.old_hash, c.new_hash, c.resolved_by) for c in store.list_pin_changes("t")}
    assert ("echo", tool_definition_hash(ECHO), tool_definition_hash(changed), None) in records
    assert ("echo", "", tool_definition_hash(ECHO), "first-use") in records
    assert ("new", "", tool_definition_hash({"name": "new"}), None) in records
    store.set_pins("t", "up", {"echo": tool_definition_hash(changed)}, "ops", "t3")
    d.refresh(10.0)
    assert d.decide(ALICE, "up", changed, {}).verdict == "allow"


def _held(store: Store, **kw: object) -> HeldCall:
    base = HeldCall(id="rev_1", tenant_id="t", actor_id="alice", upstream="up", tool="echo", exposed="up__echo",
                    args_digest=argument_digest({"a": 1}), arguments='{"a": 1}', rule_id="r", reason="",
                    policy_version=1, mode="approve", status="pending", created_at=100.0)
    held = replace(base, **kw)  # type: ignore[arg-type]
    store.add_held_call(held)
    return held


def test_approval_is_bound_single_use_and_expiring(store: Store) -> None:
    _held(store)
    with pytest.raises(SelfApproval):
        review.approve(store, "rev_1", "alice", 101.0, 60)
    review.approve(store, "rev_1", "ops", 101.0, 60)
    digest = argument_digest({"a": 1})
    assert store.consume_approval("t", "bob", "up", "echo", digest, 102.0) is None
    assert store.consume_approval("t", "alice", "up", "echo", argument_digest({"a": 2}), 102.0) is None
    assert store.consume_approval("t", "alice", "up", "other", digest, 102.0) is None
    assert store.consume_approval("t", "alice", "up", "echo", digest, 170.0) is None  # expired
    assert store.consume_approval("t", "alice", "up", "echo", digest, 102.0) is not None
    assert store.consume_approval("t", "alice", "up", "echo", digest, 102.0) is None  # used


def test_concurrent_consumers_share_one_approval_exactly_once(store: Store,
                                                              make_store: Callable[..., Store]) -> None:
    _held(store)
    review.approve(store, "rev_1", "ops", 101.0, 60)
    wins: list[object] = []
    barrier = threading.Barrier(8)
    stores = [make_store() for _ in range(8)]  # like separate gateway replicas

    def consume() -> None:
        s = stores.pop()
        barrier.wait()
        got = s.consume_approval("t", "alice", "up", "echo", argument_digest({"a": 1}), 102.0)
        if got is not None:
            wins.append(got)

    threads = [threading.Thread(target=consume) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(wins) == 1


def test_a_hold_is_decided_once(store: Store) -> None:
    _held(store)
    review.deny(store, "rev_1", "ops", 101.0, "no")
    with pytest.raises(Exception, match="already denied"):
        review.approve(store, "rev_1", "ops2", 102.0, 60)
    assert store.get_held_call("rev_1").decision_reason == "no"  # type: ignore[union-attr]


def test_deleting_a_tenant_removes_its_policy_state(store: Store) -> None:
    policy_admin.apply_policy(store, "t", ALLOW_ECHO, "a.toml", "now", "ops")
    _held(store)
    store.delete_tenant("t")
    store.create_tenant("t", "later")
    assert store.get_policy_version("t") is None and store.get_held_call("rev_1") is None


def test_held_calls_are_counted_without_reading_them(store: Store) -> None:
    assert store.count_held_calls(None, "pending") == 0
    for i in range(3):
        _held(store, id=f"rev_{i}")
    review.deny(store, "rev_0", "ops", 101.0, "no")
    assert store.count_held_calls(None, "pending") == 2 == len(store.list_held_calls(None, "pending"))
    assert store.count_held_calls("t", "denied") == 1 and store.count_held_calls("t") == 3
    assert store.count_held_calls("nobody", "pending") == 0
