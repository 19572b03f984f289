"""Revoked tokens end what they hold open on every replica: sessions, GET streams, running and held calls.

Every request looks its token up in the store, so a revoked token's NEXT request is refused on any
replica. What it already holds open (a GET stream, a long call, a call held for review, a 2026-07-28
listen) would outlive the revocation; this watch ends those:

* on a `token.revoked` signal (gateway.signals), at once: the matching tokens held here are checked
  against the store and the revoked ones ended (the message is only a hint: the store decides);
* and on its own every CHECK_S (LIVE_CHECK_S while the bus is live, as the backstop for a lost
  message): every token held here, in one batched read (`Store.active_tokens`) in a worker thread.

So without Redis, what a revoked token holds ends within CHECK_S plus one query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

from gateway import signals
from gateway.bus import Bus
from gateway.store.base import Store
from gateway.types import Identity

log = logging.getLogger("aegress.tokens")

BEARER_PREFIX = "tok_"
"""Ids of the tokens `aegress token issue` makes (gateway.admin); OAuth identities carry others."""
CHECK_S = 1.0
LIVE_CHECK_S = 5.0


class Holder(Protocol):
    """What holds tokens open (the HTTP endpoint)."""

    def open_tokens(self, match: Callable[[Identity], bool] = ...) -> set[str]: ...
    def end_tokens(self, revoked: set[str]) -> int: ...


class TokenWatch:
    def __init__(self, store: Store, bus: Bus, holder: Holder, *, check_s: float = CHECK_S,
                 live_check_s: float = LIVE_CHECK_S) -> None:
        self.store = store
        self.bus = bus
        self.holder = holder
        self.check_s, self.live_check_s = check_s, live_check_s
        self._tasks: set[asyncio.Future[Any]] = set()
        self._task: asyncio.Task[None] | None = None
        bus.subscribe(signals.TOKEN_REVOKED, self._revoked)
        bus.on_reconnect(lambda: self._revoked({}))  # messages sent during an outage are lost: check all

    async def check(self, match: Callable[[Identity], bool] = lambda _: True) -> int:
        """Check the held tokens `match` selects against the store; end the revoked ones. Returns how many
        sessions and requests were ended."""
        # only the store's own bearer tokens: an OAuth identity's grant is checked on every request instead
        held = {t for t in self.holder.open_tokens(match) if t.startswith(BEARER_PREFIX)}
        if not held:
            return 0
        active = await asyncio.to_thread(self.store.active_tokens, held)
        revoked = held - active
        if not revoked:
            return 0
        ended = self.holder.end_tokens(revoked)
        log.info("ended %d sessions and requests of %d revoked tokens", ended, len(revoked))
        return ended

    def _revoked(self, message: dict[str, Any]) -> None:
        def match(who: Identity) -> bool:
            return signals.token_matches(message, who.tenant_id, who.actor_id, who.token_id)

        task = asyncio.ensure_future(self._check_quietly(match))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _check_quietly(self, match: Callable[[Identity], bool] = lambda _: True) -> None:
        try:
            await self.check(match)
        except Exception as exc:  # StoreUnavailable and the like: the next round tries again
            log.warning("checking open sessions' tokens failed (%s); retried in %g s",
                        getattr(exc, "message", type(exc).__name__), self.check_s)

    async def run(self) -> None:
        """Check every held token every CHECK_S (LIVE_CHECK_S while signals arrive), until cancelled."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.check_s)  # short steps: Redis going away shortens the interval at once
            if loop.time() - last >= (self.live_check_s if self.bus.live else self.check_s) - 0.01:
                last = loop.time()
                await self._check_quietly()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="aegress-token-watch")

    async def close(self) -> None:
        for task in [t for t in (self._task, *self._tasks) if t is not None]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._task = None
