"""The per-actor call budget is a pure token bucket."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.policy.model import RateLimit
from gateway.ratelimit import admit


def test_budget_spends_then_refills() -> None:
    limit = RateLimit(calls=3, per_seconds=60)
    bucket = None
    results = []
    for _ in range(4):
        ok, bucket, wait = admit(bucket, limit, now=100.0)
        results.append(ok)
    assert results == [True, True, True, False]
    assert 19.9 < wait <= 20.0  # one token every 20 s
    ok, bucket, _ = admit(bucket, limit, now=120.0)
    assert ok
    ok, _, _ = admit(bucket, limit, now=120.0)
    assert not ok


@given(st.integers(1, 50), st.floats(1, 3600), st.lists(st.floats(0, 10), max_size=200))
def test_never_more_than_the_budget_in_any_window(calls: int, per: float, gaps: list[float]) -> None:
    limit = RateLimit(calls=calls, per_seconds=per)
    bucket, now, admitted = None, 0.0, []
    for gap in gaps:
        now += gap
        ok, bucket, _ = admit(bucket, limit, now)
        if ok:
            admitted.append(now)
    # within any span of length `per`, at most calls + calls (burst plus refill) are admitted
    for i, t in enumerate(admitted):
        in_window = [u for u in admitted[i:] if u - t < per]
        assert len(in_window) <= 2 * calls


def test_a_spray_of_addresses_does_not_reset_a_guessers_window() -> None:
    """Review finding 14: the table was cleared wholesale once full; now the least recent address goes."""
    from gateway.ratelimit import FailureTable

    table = FailureTable(max_peers=10)
    waits = [table.note("10.0.0.1", limit=3, per_seconds=60, now=0.0) for _ in range(4)]
    assert waits[:3] == [None, None, None] and waits[3] is not None
    for i in range(50):  # far more addresses than the table holds, the guesser going on between them
        assert table.note(f"192.0.2.{i}", limit=3, per_seconds=60, now=1.0) is None
        assert table.note("10.0.0.1", limit=3, per_seconds=60, now=1.0) is not None
        assert len(table) <= 10
    # a quiet address is the one forgotten: it starts over
    assert table.note("192.0.2.0", limit=3, per_seconds=60, now=2.0) is None
