"""Shared rate limits and caps on a real Redis: one bucket for the fleet, leases that never add up to more
than a cap, and the fall-back to per-replica shares when Redis goes away (a PRIVATE redis-server, stopped
and started again by the test)."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.bus import RedisBus
from gateway.policy.model import RateLimit
from gateway.shared_limits import SharedLimits
from tests.redisproc import REDIS_URL, fleet, private_redis, reachable


@pytest.fixture(scope="module")
def redis_url() -> str:
    why = reachable()
    if why is not None:
        pytest.fail(f"{why} (the Redis tests need the machine's server at AEGRESS_TEST_REDIS_URL)")
    return REDIS_URL


class Replica:
    """One replica's view: its SharedLimits and the counters the endpoint would keep."""

    def __init__(self, url: str, fleet_id: str, name: str) -> None:
        self.bus = RedisBus(url, fleet_id, name)
        self.limits = SharedLimits(self.bus)
        self.counts: dict[str, collections.Counter[Any]] = {k: collections.Counter() for k in ("sessions", "calls")}
        for kind, counter in self.counts.items():
            self.limits.track(kind, counter)

    def take(self, kind: str, tenant: str, actor: str) -> None:
        self.counts[kind][(tenant, actor)] += 1
        self.counts[kind][tenant] += 1

    def give_back(self, kind: str, tenant: str, actor: str) -> None:
        for key in ((tenant, actor), tenant):
            self.counts[kind][key] -= 1
            if self.counts[kind][key] <= 0:
                del self.counts[kind][key]

    async def call(self, tenant: str, actor: str, per_actor: int, per_tenant: int) -> bool:
        """One call in flight if the caps allow it (counted before the next await, as the endpoint does)."""
        if await self.limits.over_cap("calls", tenant, actor, per_actor, per_tenant) is None:
            self.take("calls", tenant, actor)
            return True
        return False


@asynccontextmanager
async def replicas(url: str, n: int, fleet_id: str | None = None) -> AsyncIterator[list[Replica]]:
    fid = fleet_id or fleet()
    out = [Replica(url, fid, f"r{i}") for i in range(n)]
    try:
        for r in out:
            await r.limits.tick()
        for r in out:
            await r.limits.tick()  # everyone has seen everyone's heartbeat
        yield out
    finally:
        for r in out:
            await r.limits.close()
            await r.bus.close()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_one_rate_limit_bucket_for_the_whole_fleet(redis_url: str) -> None:
    async def go() -> None:
        async with replicas(redis_url, 3) as fleet3:
            assert all(r.limits.mode == "shared" and r.limits.replicas == 3 for r in fleet3)
            limit = RateLimit(5, 600.0)
            verdicts = [await fleet3[i % 3].limits.admit_rate("acme", "alice", limit) for i in range(12)]
            assert [ok for ok, _ in verdicts] == [True] * 5 + [False] * 7
            assert all(110 <= wait <= 121 for _, wait in verdicts[5:])  # one token per 120 s
            other = await fleet3[0].limits.admit_rate("acme", "bob", limit)  # another actor: its own bucket
            assert other[0]

    run(go())


def test_calls_in_flight_never_exceed_the_cap_across_replicas(redis_url: str) -> None:
    async def go() -> None:
        async with replicas(redis_url, 2) as (a, b):
            # 20 concurrent calls, half on each replica: exactly the actor's cap of 6 get in
            admitted = await asyncio.gather(*(r.call("acme", "alice", 6, 100) for r in [a, b] * 10))
            assert sum(admitted) == 6
            assert a.counts["calls"][("acme", "alice")] + b.counts["calls"][("acme", "alice")] == 6
            # the tenant cap counts every actor of the tenant, on every replica
            more = await asyncio.gather(*(r.call("beta", f"u{i % 5}", 6, 8) for i, r in enumerate([a, b] * 10)))
            assert sum(more) == 8
            # calls end on one replica: at its next tick it gives the slots back (all of them, headroom too,
            # since the other replica was refused for want of room a moment ago), and the other may take them
            held_a = a.counts["calls"][("acme", "alice")]
            for _ in range(held_a):
                a.give_back("calls", "acme", "alice")
            await a.limits.tick()
            extra = [await b.call("acme", "alice", 6, 100) for _ in range(held_a + 1)]
            assert extra == [True] * held_a + [False]
            assert b.counts["calls"][("acme", "alice")] == 6 and a.counts["calls"][("acme", "alice")] == 0

    run(go())


def test_sessions_exceed_a_cap_by_at_most_one_per_replica(redis_url: str) -> None:
    """Opening a session cannot wait for Redis: one beyond the lease while the lease grows, no more."""
    async def go() -> None:
        async with replicas(redis_url, 2) as (a, b):
            opened = {"a": 0, "b": 0}
            for _ in range(6):
                for name, r in (("a", a), ("b", b)):
                    if r.limits.over_cap_now("sessions", "acme", "alice", 3, 100) is None:
                        r.take("sessions", "acme", "alice")
                        opened[name] += 1
                    await asyncio.sleep(0.05)  # the background grow runs
            assert 3 <= opened["a"] + opened["b"] <= 3 + 2, opened

    run(go())


def test_a_lease_admits_without_redis_and_redis_down_means_shares(tmp_path: Path) -> None:
    """Within its lease a replica asks Redis nothing; past it, a Redis that does not answer means each
    replica admits its share of every limit (the shares add up to the limit); Redis back, sharing resumes."""
    async def go() -> None:
        with private_redis(tmp_path / "redis") as server:
            async with replicas(server.url, 2) as (a, b):
                assert a.limits.replicas == 2 and a.limits.mode == "shared"
                assert await a.call("acme", "alice", 32, 256)  # one round trip: a lease with headroom
                shared_bucket = RateLimit(4, 600.0)
                assert (await a.limits.admit_rate("acme", "seen", shared_bucket))[0]  # 3 left in Redis
                server.stop()
                for _ in range(5):  # inside the lease: no Redis contact, so nothing notices it is gone
                    assert await a.call("acme", "alice", 32, 256)
                assert a.limits.mode == "shared"
                limit = RateLimit(4, 600.0)
                allowed_a = [(await a.limits.admit_rate("acme", "fresh", limit))[0] for _ in range(4)]
                assert a.limits.mode == "degraded" and b.limits.mode == "shared"
                await b.limits.tick()  # b's heartbeat fails: degraded too
                assert b.limits.mode == "degraded"
                allowed_b = [(await b.limits.admit_rate("acme", "fresh", limit))[0] for _ in range(4)]
                assert allowed_a == [True, True, False, False] and allowed_b == [True, True, False, False]
                # a bucket seen shared starts from its share of what was left (3 of 4 -> 1.5 of 2)
                seen = [(await a.limits.admit_rate("acme", "seen", shared_bucket))[0] for _ in range(3)]
                assert seen == [True, False, False]
                # caps: each replica its share of 32 (16), counting what it already holds (6)
                admitted = [await a.call("acme", "alice", 32, 256) for _ in range(20)]
                assert sum(admitted) == 10 and a.counts["calls"][("acme", "alice")] == 16
                assert a.limits.over_cap_now("sessions", "acme", "alice", 3, 256) is None  # share 2 of 3
                a.take("sessions", "acme", "alice")
                a.take("sessions", "acme", "alice")
                assert a.limits.over_cap_now("sessions", "acme", "alice", 3, 256) == "actor"
                server.start()
                await a.limits.tick()
                assert a.limits.mode == "shared"
                ok, _ = await a.limits.admit_rate("acme", "later", limit)
                assert ok and a.limits.mode == "shared"

    run(go())
