"""The pure parts of shared limits and signals: degraded shares, leases, membership, message matching."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from gateway import signals
from gateway.policy.model import RateLimit
from gateway.shared_limits import degraded_tokens, headroom, kept_lease, membership, share

ROOT = Path(__file__).resolve().parents[2]


@given(st.integers(0, 10_000), st.integers(1, 64))
def test_shares_add_up_to_the_limit_exactly(total: int, replicas: int) -> None:
    parts = [share(total, replicas, rank) for rank in range(replicas)]
    assert sum(parts) == total  # a fleet in agreement never admits more than the shared limit, nor less
    assert max(parts) - min(parts) <= 1


def test_share_examples() -> None:
    assert [share(32, 3, r) for r in range(3)] == [11, 11, 10]
    assert [share(2, 3, r) for r in range(3)] == [1, 1, 0]  # a limit below the replica count: some get none
    assert share(5, 1, 0) == 5  # one replica (or none ever seen): the whole limit
    assert share(5, 0, 0) == 5
    assert share(5, 2, 7) == 2  # a rank out of range gets the base part, never more


def test_membership_counts_this_replica_and_ranks_by_id() -> None:
    assert membership([], "r-b") == (1, 0)
    assert membership(["r-a", "r-c"], "r-b") == (3, 1)
    assert membership(["r-b", "r-a", "r-b"], "r-b") == (2, 1)


def test_leases_keep_what_is_held_and_give_back_the_rest() -> None:
    assert headroom(32, 1) == 16 and headroom(32, 3) == 5 and headroom(1, 3) == 1
    assert kept_lease(20, 3, 32, 3) == 8  # held + headroom
    assert kept_lease(4, 3, 32, 3) == 4  # never grows on renewal
    assert kept_lease(2, 3, 32, 3) == 3  # never below what is held
    assert kept_lease(0, 0, 32, 3) == 0


def test_degraded_bucket_starts_from_its_share_of_what_was_left() -> None:
    limit = RateLimit(10, 10.0)  # one token per second
    assert degraded_tokens(5, limit, None, 100.0) == 5.0  # never seen: the full share
    assert degraded_tokens(5, limit, (0.0, 100.0), 100.0) == 0.0  # spent: nothing
    assert degraded_tokens(5, limit, (2.0, 100.0), 102.0) == 2.0  # 2 left + 2 refilled = 4, half of it
    assert degraded_tokens(5, limit, (2.0, 0.0), 100.0) == 5.0  # long ago: refilled, capped at the share


def test_token_revoked_messages_match_the_identities_they_name() -> None:
    one = signals.token_revoked("acme", token_id="tok_1")
    assert one == {"tenant": "acme", "token_id": "tok_1"}
    assert signals.token_matches(one, "acme", "alice", "tok_1")
    assert not signals.token_matches(one, "acme", "alice", "tok_2")
    assert not signals.token_matches(one, "other", "alice", "tok_1")
    actor = signals.token_revoked("acme", actor="alice")
    assert signals.token_matches(actor, "acme", "alice", "tok_9")
    assert not signals.token_matches(actor, "acme", "bob", "tok_9")
    assert signals.token_matches(signals.token_revoked("acme"), "acme", "bob", "tok_9")
    assert signals.token_matches({}, "any", "one", "tok")  # after an outage: every token is checked
    assert signals.review_decided("acme", "rev_1") == {"tenant": "acme", "held_id": "rev_1"}
    assert signals.tenant_changed("acme") == {"tenant": "acme"}


def test_announcing_without_redis_does_nothing_and_imports_nothing() -> None:
    """Commands stay fast: without AEGRESS_REDIS_URL neither redis nor the bus is imported."""
    code = ("import sys; from gateway import admin, policy_admin, review, signals; "
            "assert signals.announce(None, signals.POLICY_CHANGED, {'tenant': 't'}) is None; "
            "print(sorted(m for m in ('redis', 'gateway.bus') if m in sys.modules))")
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
