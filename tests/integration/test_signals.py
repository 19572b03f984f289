"""Signals on a real Redis and a real store: an operator change published by the library's own functions
reaches the gateway's consumers at once. Each test stops the consumer's own poll from doing the work
(no request arrives, or the poll interval is long), so what it sees can only have come by the signal."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway import admin, policy_admin, review
from gateway.bus import connect
from gateway.config import Limits
from gateway.decide import PolicyDecider
from gateway.evidence.facade import NoEvidence
from gateway.pipeline import Pipeline
from gateway.policy import ReviewSettings
from gateway.proxy import ClientSession, Runtime
from gateway.review import ReviewDesk
from gateway.store.base import Store
from gateway.types import Identity, UpstreamSpec
from tests.redisproc import REDIS_URL, reachable

ALLOW = 'version = 1\ndefault = "allow"\n'
BLOCK_ECHO = ALLOW + '[[rules]]\nid = "no-echo"\nname = "echo"\nverdict = "block"\n'
REVIEW_ECHO = ALLOW + '[[rules]]\nid = "hold-echo"\nname = "echo"\nverdict = "review"\n'


@pytest.fixture
def world(make_store: Callable[..., Store], monkeypatch: pytest.MonkeyPatch) -> Store:
    why = reachable()
    if why is not None:
        pytest.fail(f"{why} (the Redis tests need the machine's server at AEGRESS_TEST_REDIS_URL)")
    monkeypatch.setenv("AEGRESS_REDIS_URL", REDIS_URL)  # the library's operator functions announce
    store = make_store()
    admin.create_tenant(store, "acme", "now", "tests")
    admin.add_actor(store, "acme", "alice", "now", "tests")
    return store


async def until(check: Callable[[], Any], timeout: float = 3.0) -> float:
    """Seconds until `check()` is true (bounded), polled every 10 ms."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, "not within the bound"
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_a_policy_applied_anywhere_is_in_force_at_once(world: Store) -> None:
    async def go() -> None:
        bus = connect(world, "r-1")
        await bus.start()
        try:
            assert bus.live
            decider = PolicyDecider(world)
            decider.check_stored()
            Pipeline(world, b"k" * 32, Runtime(world, Limits(), bus), NoEvidence(), decider, bus=bus)
            assert decider.tenant("acme").version == 0
            await asyncio.to_thread(policy_admin.apply_policy, world, "acme", BLOCK_ECHO, "p.toml", "now", "ops")
            # no request arrives, so nothing polls: only the signal can bring version 1 in
            took = await until(lambda: decider.tenant("acme").version == 1)
            assert took < 1.0
        finally:
            await bus.close()

    run(go())


def test_an_upstream_registered_anywhere_is_loaded_at_once(world: Store) -> None:
    async def go() -> None:
        bus = connect(world, "r-1")
        await bus.start()
        runtime = Runtime(world, Limits(), bus)
        try:
            assert not (await runtime.tenant("acme")).specs
            polled = time.monotonic()  # the next poll is due a second from now
            spec = UpstreamSpec("acme", "extra", "stdio", command=("true",), created_at="now")
            await asyncio.to_thread(admin.add_upstream, world, spec, None)

            async def loaded() -> bool:
                return "extra" in (await runtime.tenant("acme")).specs

            while not await loaded():
                assert time.monotonic() - polled < 0.9, "only a poll would have found it"
                await asyncio.sleep(0.01)
        finally:
            await runtime.close()
            await bus.close()

    run(go())


def test_an_approval_anywhere_releases_the_held_call_at_once(world: Store, tmp_path: Path) -> None:
    async def go() -> None:
        bus = connect(world, "r-1")
        await bus.start()
        desk = ReviewDesk(world, bus=bus, live_poll_s=30.0)  # the store is read every 30 s at most
        runtime = Runtime(world, Limits(), bus)
        session = ClientSession("s", Identity("acme", "alice", "tok"), "2025-06-18", {}, {}, runtime)
        sent: list[Any] = []

        async def send(msg: Any) -> None:
            sent.append(msg)

        try:
            held = asyncio.ensure_future(desk.settle(
                session, send, upstream="up", tool="echo", exposed="up__echo", arguments={"text": "x"},
                rule_id="hold-echo", reason="", policy_version=1, mode="approve",
                settings=ReviewSettings(hold_timeout_seconds=60)))
            await until(lambda: bool(world.list_held_calls("acme", "pending")))
            await asyncio.sleep(0.3)  # the call has read the store once and waits for its next look
            held_id = world.list_held_calls("acme", "pending")[0].id
            await asyncio.to_thread(review.approve, world, held_id, "ops", time.time(), 600)
            approved = time.monotonic()
            settled = await asyncio.wait_for(held, 5)
            assert settled.released and settled.outcome == "approved"
            assert time.monotonic() - approved < 1.0
        finally:
            await runtime.close()
            await bus.close()

    run(go())
