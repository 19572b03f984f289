"""Messages between the replicas of one fleet: Redis/Valkey pub/sub when `AEGRESS_REDIS_URL` is set.

The database stays the source of truth for everything a message announces (a revoked token, a new
policy, an approval): a message only makes a replica look sooner. So a lost message, or Redis being
down, never lets a replica act on stale state for longer than its polling bound; consumers read
`live` to choose how often to poll, and `on_reconnect` handlers re-check everything after an outage,
since messages sent meanwhile are gone.

    publish(topic, message) --PUBLISH aegress:<fleet>:<topic>--> every replica's one PSUBSCRIBE
                                                                  connection -> handlers of <topic>

One pattern subscription per replica (`aegress:<fleet>:*`) receives every topic of its fleet and
dispatches locally, so subscribing to a topic costs nothing at Redis. The fleet id is agreed through
the database (`Store.shared_value`), so two fleets sharing one Redis never hear each other.

Without Redis, `Bus` delivers a publish to this process's own handlers only and `live` stays False.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from gateway.store.base import Store

log = logging.getLogger("aegress.bus")

JSON = dict[str, Any]
Handler = Callable[[JSON], None]

REDIS_ENV = "AEGRESS_REDIS_URL"
_CONNECT_TIMEOUT_S = 1.0
_COMMAND_TIMEOUT_S = 1.0
_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)


def redis_url_from_env(environ: dict[str, str] | None = None) -> str | None:
    """`AEGRESS_REDIS_URL`, or None. A bare `REDIS_URL` is never read: it usually belongs to another program."""
    url = (os.environ if environ is None else environ).get(REDIS_ENV, "").strip()
    return url or None


def fleet_id(store: Store) -> str:
    """The id every replica of this database shares (made by the first one to ask)."""
    return store.shared_value("fleet_id", secrets.token_hex(8))


def channel(fleet: str, topic: str) -> str:
    return f"aegress:{fleet}:{topic}"


class Bus:
    """This process only: publish reaches local handlers; nothing crosses to other replicas (`live` False)."""

    def __init__(self, replica_id: str = "") -> None:
        self.replica_id = replica_id
        self._handlers: dict[str, list[Handler]] = {}
        self._reconnect: list[Callable[[], None]] = []

    @property
    def live(self) -> bool:
        """True while messages from other replicas arrive: consumers may then poll the store less often."""
        return False

    @property
    def redis(self) -> Any | None:
        """The command connection (`redis.asyncio.Redis`) for shared counters, or None without Redis."""
        return None

    def subscribe(self, topic: str, handler: Handler) -> Callable[[], None]:
        """Call `handler(message)` for every message on `topic`; returns the unsubscribe function."""
        self._handlers.setdefault(topic, []).append(handler)

        def unsubscribe() -> None:
            handlers = self._handlers.get(topic, [])
            if handler in handlers:
                handlers.remove(handler)
            if not handlers:
                self._handlers.pop(topic, None)

        return unsubscribe

    def on_reconnect(self, handler: Callable[[], None]) -> None:
        """Call `handler()` each time messages start arriving again (after start and after an outage)."""
        self._reconnect.append(handler)

    async def publish(self, topic: str, message: JSON) -> bool:
        """Deliver `message` to every replica's handlers of `topic`; False when it could not be sent."""
        self._dispatch(topic, message)
        return True

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _dispatch(self, topic: str, message: JSON) -> None:
        for handler in list(self._handlers.get(topic, ())):
            try:
                handler(message)
            except Exception:  # one consumer's bug must not stop the others or the listener
                log.exception("bus handler for %s failed", topic)


class RedisBus(Bus):
    """Redis/Valkey pub/sub with reconnection: `live` only while the subscription is up."""

    def __init__(self, url: str, fleet: str, replica_id: str) -> None:
        super().__init__(replica_id)
        import redis.asyncio as aioredis  # only when Redis is configured

        self._url = url
        self._fleet = fleet
        self._prefix = channel(fleet, "")
        self._client = aioredis.Redis.from_url(
            url, socket_connect_timeout=_CONNECT_TIMEOUT_S, socket_timeout=_COMMAND_TIMEOUT_S,
            health_check_interval=1, retry_on_timeout=False)
        self._live = False
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()

    @property
    def live(self) -> bool:
        return self._live

    @property
    def redis(self) -> Any:
        return self._client

    @property
    def fleet(self) -> str:
        return self._fleet

    async def publish(self, topic: str, message: JSON) -> bool:
        data = orjson.dumps({"from": self.replica_id, "m": message})
        try:
            await self._client.publish(self._prefix + topic, data)
        except Exception as exc:  # redis.RedisError, OSError, timeouts: the caller falls back
            log.debug("publish on %s failed: %s", topic, exc)
            return False
        return True

    async def start(self, wait_s: float = 2.0) -> None:
        """Start listening; waits up to `wait_s` for the first subscription (never fails: Redis may be down)."""
        if self._task is None:
            self._task = asyncio.create_task(self._listen(), name="aegress-bus")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._started.wait(), wait_s)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        self._live = False
        with contextlib.suppress(Exception):
            await self._client.aclose()

    async def _listen(self) -> None:
        attempt = 0
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(self._prefix + "*")
                self._live = True
                self._started.set()
                if attempt:
                    log.warning("Redis is back: replicas' messages arrive again")
                attempt = 0
                for handler in list(self._reconnect):
                    try:
                        handler()
                    except Exception:
                        log.exception("bus reconnect handler failed")
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None and msg.get("type") == "pmessage":
                        self._received(msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection lost, refused, timed out
                if self._live or attempt == 0:
                    log.warning("Redis unavailable (%s): falling back to polling the database", type(exc).__name__)
                self._live = False
                self._started.set()
                await asyncio.sleep(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)])
                attempt += 1
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _received(self, msg: dict[str, Any]) -> None:
        name = msg.get("channel")
        name = name.decode() if isinstance(name, bytes) else str(name)
        try:
            envelope = orjson.loads(msg.get("data") or b"")
        except orjson.JSONDecodeError:
            return
        if not isinstance(envelope, dict) or not isinstance(envelope.get("m"), dict):
            return
        message: JSON = envelope["m"]
        message.setdefault("_from", envelope.get("from", ""))
        self._dispatch(name[len(self._prefix):], message)


def connect(store: Store, replica_id: str, url: str | None = None) -> Bus:
    """The bus for this process: Redis when `url` (else `AEGRESS_REDIS_URL`) is set, else local only."""
    url = url or redis_url_from_env()
    if not url:
        return Bus(replica_id)
    return RedisBus(url, fleet_id(store), replica_id)


def publish_now(store: Store, topic: str, message: JSON, *, url: str | None = None,
                timeout_s: float = 0.5) -> bool | None:
    """Publish once from a command (synchronously): None without Redis, False when Redis did not take it.

    Commands call this after their transaction committed; the gateways would see the change by
    polling anyway, this only makes it immediate."""
    url = url or redis_url_from_env()
    if not url:
        return None
    import redis  # only when Redis is configured

    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        client.publish(channel(fleet_id(store), topic), orjson.dumps({"from": "cli", "m": message}))
    except Exception as exc:
        log.debug("publish on %s failed: %s", topic, exc)
        return False
    finally:
        with contextlib.suppress(Exception):
            client.close()
    return True
