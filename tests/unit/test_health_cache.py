"""/health needs no token: its store check runs once per second at most and one at a time (review finding 13)."""

from __future__ import annotations

import asyncio

from gateway.server import HealthCache


def test_a_flood_of_health_checks_runs_one_probe_at_a_time() -> None:
    now = [100.0]
    probes: list[int] = []
    gate: list[asyncio.Event] = []

    async def probe() -> tuple[bool, str | None]:
        probes.append(1)
        await gate[0].wait()  # a slow store: the probe is still running while the flood arrives
        return False, "the store is unreachable"

    async def go() -> None:
        gate.append(asyncio.Event())
        cache = HealthCache(probe, ttl=1.0, clock=lambda: now[0])
        flood = [asyncio.ensure_future(cache.get()) for _ in range(200)]
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(probes) == 1  # one probe for all 200 waiting requests
        flood[0].cancel()  # a client going away does not cancel the probe the others wait on
        gate[0].set()
        answers = await asyncio.gather(*flood[1:])
        assert set(answers) == {(False, "the store is unreachable")}
        assert await cache.get() == (False, "the store is unreachable")  # cached: no new probe
        assert len(probes) == 1
        now[0] += 1.5  # after the ttl the next request probes again
        assert await cache.get() == (False, "the store is unreachable")
        assert len(probes) == 2

    asyncio.run(go())


def test_a_ready_answer_is_not_reused_after_its_probe() -> None:
    answers = [(True, None), (False, "the store is unreachable")]
    probes: list[int] = []

    async def probe() -> tuple[bool, str | None]:
        probes.append(1)
        return answers[len(probes) - 1]

    async def go() -> None:
        cache = HealthCache(probe, ttl=60.0, clock=lambda: 0.0)
        assert await cache.get() == (True, None)
        assert await cache.get() == (False, "the store is unreachable")  # the fault shows at once
        assert len(probes) == 2

    asyncio.run(go())
