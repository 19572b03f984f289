"""Messages to one replica and their answers, over the bus (gateway.bus): what sessions across replicas need
when something lives in one process only (a call's server-to-client request, a resumable stream).

    replica B                                         replica A (owns the call)
    ask(A, kind, body) --PUBLISH replica.A {t: ask}-->  serve(kind) handler -> reply
          <-- PUBLISH replica.B {t: reply, rid} ------
    listen(rid, sink)  <-- PUBLISH replica.B {t: frame, rid, ...} -- tell(B, frame)   (a relayed stream)

Every replica receives its own topic `replica.<id>`. An ask is answered within its timeout or counts as
unanswered (None): the other replica is gone, or Redis is. Without Redis (`Bus.live` False) nothing can
reach another replica, so an ask returns None at once. Broadcasts to every replica holding a session go
on `SESSION_TOPIC` (handled in gateway.transport), not here.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.bus import Bus

log = logging.getLogger("aegress.relay")

JSON = dict[str, Any]
SESSION_TOPIC = "session.cast"
"""Broadcast about one session (by digest) to the replicas that hold it: {"d", "from", "kind", ...}."""
_MAX_WAITING = 10_000


def replica_topic(replica: str) -> str:
    return f"replica.{replica}"


class Relay:
    """This replica's end of the replica-to-replica messages."""

    def __init__(self, bus: Bus, replica: str) -> None:
        self.bus = bus
        self.replica = replica
        self._served: dict[str, Callable[[JSON], Awaitable[JSON]]] = {}
        self._waiting: dict[str, asyncio.Future[JSON]] = {}
        self._sinks: dict[str, Callable[[JSON], None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        bus.subscribe(replica_topic(replica), self._received)

    @property
    def live(self) -> bool:
        """Whether another replica can be reached at all (Redis configured and up)."""
        return self.bus.live

    def serve(self, kind: str, handler: Callable[[JSON], Awaitable[JSON]]) -> None:
        """Answer asks of `kind` with `handler(body)` (the asking replica's id is in body["from"])."""
        self._served[kind] = handler

    async def ask(self, replica: str, kind: str, body: JSON, timeout: float) -> JSON | None:
        """Send `body` to `replica` and wait at most `timeout` seconds for its answer; None when none came."""
        if not self.live or len(self._waiting) >= _MAX_WAITING:
            return None
        rid = secrets.token_urlsafe(12)
        future: asyncio.Future[JSON] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        try:
            message = {"t": "ask", "k": kind, "rid": rid, "b": {**body, "from": self.replica}}
            if not await self.bus.publish(replica_topic(replica), message):
                return None
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return None
        finally:
            self._waiting.pop(rid, None)

    async def tell(self, replica: str, message: JSON) -> bool:
        """One message to `replica` (a frame of a relayed stream); False when it could not be sent."""
        return await self.bus.publish(replica_topic(replica), message)

    def listen(self, rid: str, sink: Callable[[JSON], None]) -> Callable[[], None]:
        """Hand frames tagged `rid` to `sink` until the returned function is called."""
        self._sinks[rid] = sink

        def stop() -> None:
            if self._sinks.get(rid) is sink:
                del self._sinks[rid]

        return stop

    def _received(self, message: JSON) -> None:
        kind = message.get("t")
        rid = message.get("rid")
        if not isinstance(rid, str):
            return
        if kind == "reply":
            future = self._waiting.get(rid)
            body = message.get("b")
            if future is not None and not future.done() and isinstance(body, dict):
                future.set_result(body)
        elif kind == "frame":
            sink = self._sinks.get(rid)
            if sink is not None:
                sink(message)
        elif kind == "ask":
            handler = self._served.get(str(message.get("k")))
            body = message.get("b")
            if handler is not None and isinstance(body, dict) and isinstance(body.get("from"), str):
                task = asyncio.ensure_future(self._answer(handler, rid, body))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _answer(self, handler: Callable[[JSON], Awaitable[JSON]], rid: str, body: JSON) -> None:
        try:
            reply = await handler(body)
        except Exception:  # a bug in one handler must not leave the asker waiting silently
            log.exception("relay handler failed")
            reply = {"error": {"status": 500, "code": "internal", "message": "The replica failed to handle it."}}
        await self.bus.publish(replica_topic(str(body["from"])), {"t": "reply", "rid": rid, "b": reply})
