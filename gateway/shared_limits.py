"""Rate limits and fair-share caps shared by the replicas of one fleet through Redis/Valkey, never failing open.

    mode       when                               rate_limits (policy)              caps (edge: sessions, calls)
    ─────────  ─────────────────────────────────  ────────────────────────────────  ──────────────────────────────
    local      no AEGRESS_REDIS_URL               each replica: the whole limit     each replica: the whole cap
    shared     Redis answers                      one bucket per (tenant, actor)    leases in Redis: together at
                                                  in Redis (Lua, one round trip)    most the cap
    degraded   Redis configured, not answering    each replica: its share           each replica: its share
               within TIMEOUT_S

Shared rate limits: the policy's token bucket (gateway.ratelimit) kept in Redis and taken by one atomic
script per call that has a rate limit, with Redis's clock, so every replica spends the same bucket.

Shared caps (open sessions, requests in flight, per actor and per tenant): each replica holds a *lease*
per key, a number of slots written into a Redis hash (one field per replica, with an expiry), and admits
locally while its count stays within its lease: no Redis round trip per call while the lease covers it.
A lease grows by one atomic script (one round trip, only when the local count reaches it) that grants
only what the other replicas' unexpired leases leave under the cap, plus a little headroom; the
background tick (every TICK_S) renews leases and gives unused slots back. So with Redis up the fleet
never holds more calls in flight, or sessions open, than the cap. An `initialize` takes the same path as
a call (`over_cap`); `over_cap_now` (no waiting: one beyond the lease while it grows in the background)
is for callers that cannot await.

Degraded: every replica heartbeats into a sorted set (replica id by Redis time) at each tick and
remembers the membership it last saw; while Redis does not answer, each replica enforces its share of
every limit: the limit split over the replicas last seen alive (`share`: the shares add up to the limit
exactly; one replica if none was ever seen), so a fleet whose replicas agree on the membership never
admits more than the shared limit, only less. A bucket that enters degraded mode starts from this
replica's share of what it last saw left in the shared bucket. What a replica already holds when Redis
goes away (or comes back) stays until those calls or sessions end: the one transient overshoot.
Each transition is logged once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gateway import ratelimit
from gateway.bus import Bus
from gateway.policy.model import RateLimit

log = logging.getLogger("aegress.limits")

TIMEOUT_S = 0.5
"""A Redis command slower than this counts as Redis being down: the call goes on with this replica's share."""
TICK_S = 0.5
LEASE_TTL_S = 10.0
"""A lease not renewed for this long no longer counts (a replica that died frees its slots after it)."""
ALIVE_S = 5.0
"""A replica is counted in the membership while its last heartbeat is this recent."""
IDLE_S = 30.0
"""A lease with nothing held for this long is given back."""
WANT_MS = 3000
"""After a replica was refused for want of room under a cap, the others give back their idle headroom at
their next tick while the refusal is this recent (the refused client retries after Retry-After: 2 s)."""


# -- pure decisions -------------------------------------------------------------------------------------
def share(total: int, replicas: int, rank: int) -> int:
    """Pure: replica `rank`'s part of `total` split over `replicas`: the parts add up to `total` exactly
    (the first `total % replicas` ranks get one more), so the fleet admits no more than the limit."""
    replicas = max(1, replicas)
    base, extra = divmod(max(0, total), replicas)
    return base + (1 if 0 <= rank < extra else 0)


def membership(members: Iterable[str], me: str) -> tuple[int, int]:
    """Pure: (replicas, this replica's rank) among the live members, counting this replica."""
    ordered = sorted(set(members) | {me})
    return len(ordered), ordered.index(me)


def headroom(cap: int, replicas: int) -> int:
    """Pure: slots a lease may keep beyond what it holds, so calls below the cap need no round trip."""
    return max(1, cap // (2 * max(1, replicas)))


def kept_lease(lease: int, held: int, cap: int, replicas: int) -> int:
    """Pure: what a renewed lease keeps: at least what is held, at most held + headroom (the rest goes back)."""
    return max(held, min(lease, held + headroom(cap, replicas)))


def degraded_tokens(mine: int, limit: RateLimit, last: tuple[float, float] | None, now: float) -> float:
    """Pure: the tokens a degraded bucket starts with: this replica's share (`mine` of `limit.calls`) of what
    it last saw left in the shared bucket (`last`: tokens, when), refilled since; the full share if never seen."""
    if last is None or limit.calls <= 0:
        return float(mine)
    tokens, at = last
    refilled = min(float(limit.calls), tokens + max(0.0, now - at) * limit.calls / limit.per_seconds)
    return min(float(mine), refilled * mine / limit.calls)


# -- Redis scripts (Redis's clock: replicas' clocks may differ) ---------------------------------------------
_NOW = "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

BUCKET_LUA = _NOW + """
-- KEYS[1] the bucket; ARGV capacity, window in ms. Returns {allowed, wait_ms, tokens_left}.
local cap = tonumber(ARGV[1])
local per = tonumber(ARGV[2])
local rate = cap / per
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = cap
if b[1] and b[2] then
  tokens = math.min(cap, tonumber(b[1]) + math.max(0, now - tonumber(b[2])) * rate)
end
local allowed, wait = 0, 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(per * 2) + 1000)
return {allowed, wait, tostring(tokens)}
"""

_WANT = "local WANT = '~want'\n"  # the field a refused replica sets: the others give back their idle headroom

_OTHERS = _WANT + """
local function others(key, me)
  local sum, mine = 0, 0
  local fields = redis.call('HGETALL', key)
  for i = 1, #fields, 2 do
    if fields[i] ~= WANT then
      local v = fields[i + 1]
      local sep = string.find(v, ':', 1, true)
      local amount, expires = tonumber(string.sub(v, 1, sep - 1)), tonumber(string.sub(v, sep + 1))
      if expires <= now then
        redis.call('HDEL', key, fields[i])
      elseif fields[i] == me then
        mine = amount
      else
        sum = sum + amount
      end
    end
  end
  return sum, mine
end
"""

GROW_LUA = _NOW + _OTHERS + """
-- KEYS lease hashes; ARGV me, ttl_ms, then per key: hold, want_min, want, headroom, cap.
-- All keys get their grant, or none does (then each keeps at least what it holds). Returns {ok, failed key
-- index, grant per key}.
local me, ttl = ARGV[1], tonumber(ARGV[2])
local grants, failed = {}, 0
local mines = {}
for i = 1, #KEYS do
  local base = 2 + (i - 1) * 5
  local want_min, want = tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
  local room_extra, cap = tonumber(ARGV[base + 4]), tonumber(ARGV[base + 5])
  local sum, mine = others(KEYS[i], me)
  mines[i] = mine
  local room = cap - sum
  if room < want_min then
    if failed == 0 then failed = i end
  else
    grants[i] = math.min(room, want + math.min(room_extra, math.floor(math.max(0, room - want) / 2)))
  end
end
if failed > 0 then redis.call('HSET', KEYS[failed], WANT, now) end
local out = {failed == 0 and 1 or 0, failed}
for i = 1, #KEYS do
  local hold = tonumber(ARGV[2 + (i - 1) * 5 + 1])
  local amount = mines[i]
  if failed == 0 then amount = grants[i] elseif hold > amount then amount = hold end
  if amount > 0 then
    redis.call('HSET', KEYS[i], me, amount .. ':' .. (now + ttl))
    redis.call('PEXPIRE', KEYS[i], ttl * 2)
  end
  out[#out + 1] = amount
end
return out
"""

TICK_LUA = _NOW + _WANT + """
-- KEYS[1] the replicas' heartbeats; KEYS[2..] lease hashes. ARGV me, ttl_ms, alive_ms, want_ms, then per
-- lease: the amount to keep, and what is held (kept instead when another replica was refused within
-- want_ms: idle headroom goes back to where it is wanted). 0 gives the lease back.
-- Returns {live replicas, the amount written per lease}.
local me, ttl, alive, want = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZADD', KEYS[1], now, me)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - alive)
redis.call('PEXPIRE', KEYS[1], alive * 10)
local written = {}
for i = 2, #KEYS do
  local amount, held = tonumber(ARGV[3 + (i - 1) * 2]), tonumber(ARGV[4 + (i - 1) * 2])
  local wanted = redis.call('HGET', KEYS[i], WANT)
  if wanted and tonumber(wanted) > now - want and held < amount then amount = held end
  if amount > 0 then
    redis.call('HSET', KEYS[i], me, amount .. ':' .. (now + ttl))
    redis.call('PEXPIRE', KEYS[i], ttl * 2)
  else
    redis.call('HDEL', KEYS[i], me)
  end
  written[#written + 1] = amount
end
return {redis.call('ZRANGE', KEYS[1], 0, -1), written}
"""

LEAVE_LUA = """
-- KEYS[1] heartbeats, KEYS[2..] lease hashes; ARGV me. A replica shutting down frees its slots at once.
redis.call('ZREM', KEYS[1], ARGV[1])
for i = 2, #KEYS do redis.call('HDEL', KEYS[i], ARGV[1]) end
return 1
"""


@dataclass(slots=True)
class Lease:
    amount: int
    cap: int
    used: float  # monotonic: when something was last held under it


CapKey = tuple[str, Any]  # (kind, counter key): the counter key is (tenant, actor) or the tenant id


class SharedLimits:
    """One per gateway process; `bus.redis` None means local mode (nothing is shared, nothing degrades)."""

    def __init__(self, bus: Bus, *, timeout_s: float = TIMEOUT_S, tick_s: float = TICK_S,
                 lease_ttl_s: float = LEASE_TTL_S, alive_s: float = ALIVE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._redis = bus.redis
        self._me = bus.replica_id or "replica"
        self._prefix = f"aegress:{{{getattr(bus, 'fleet', '') or 'local'}}}:"
        self.timeout_s, self.tick_s = timeout_s, tick_s
        self._ttl_ms, self._alive_ms = int(lease_ttl_s * 1000), int(alive_s * 1000)
        self._clock = clock
        self._healthy = True
        self.replicas, self.rank = 1, 0  # as last seen in Redis (one replica if never seen)
        self._counters: dict[str, collections.Counter[Any]] = {}
        self._leases: dict[CapKey, Lease] = {}
        self._pending: collections.Counter[CapKey] = collections.Counter()
        self._lock = asyncio.Lock()  # grows and ticks: a lease is written by one of them at a time
        self._growing: set[CapKey] = set()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._buckets: dict[tuple[str, str], ratelimit.Bucket] = {}  # local or degraded buckets
        self._last_seen: dict[tuple[str, str], tuple[float, float]] = {}  # shared bucket: (tokens left, when)
        self._scripts: dict[str, Any] = {}
        if self._redis is not None:
            for name, lua in (("bucket", BUCKET_LUA), ("grow", GROW_LUA), ("tick", TICK_LUA), ("leave", LEAVE_LUA)):
                self._scripts[name] = self._redis.register_script(lua)

    @property
    def mode(self) -> str:
        if self._redis is None:
            return "local"
        return "shared" if self._healthy else "degraded"

    def track(self, kind: str, counter: collections.Counter[Any]) -> None:
        """The endpoint's live counts for `kind` ("sessions", "calls"), keyed (tenant, actor) and tenant."""
        self._counters[kind] = counter

    # -- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        """First heartbeat (so the membership is known before serving), then one every TICK_S."""
        if self._redis is None or self._ticker is not None:
            return
        await self.tick()
        self._ticker = asyncio.create_task(self._tick_forever(), name="aegress-shared-limits")

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._ticker
            self._ticker = None
        for task in list(self._tasks):
            task.cancel()
        if self._redis is not None and self._healthy:
            keys = [self._key("replicas"), *(self._cap_key(k) for k in self._leases)]
            with contextlib.suppress(Exception):
                await self._call(self._scripts["leave"](keys=keys, args=[self._me]))

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                await self.tick()
            except Exception:  # a bug must not end the heartbeats (the membership would go stale)
                log.exception("shared limits: heartbeat failed")

    async def tick(self) -> None:
        """Heartbeat, renew (and give back) leases, learn the membership: one round trip."""
        async with self._lock:
            now = self._clock()
            leases, keys, args = [], [], []
            for ck, lease in list(self._leases.items()):
                held = self._held(ck)
                if held > 0:
                    lease.used = now
                if not self._healthy:
                    amount = held  # coming back: claim only what is held; growing is checked again
                elif held == 0 and now - lease.used > IDLE_S:
                    amount = 0
                else:
                    amount = kept_lease(lease.amount, held, lease.cap, self.replicas)
                # shrink before writing: nothing is admitted beyond what Redis will say this replica holds
                lease.amount = min(lease.amount, amount) if self._healthy else amount
                leases.append((ck, lease))
                keys.append(self._cap_key(ck))
                args += [amount, held]
            try:
                members, written = await self._call(self._scripts["tick"](
                    keys=[self._key("replicas"), *keys],
                    args=[self._me, self._ttl_ms, self._alive_ms, WANT_MS, *args]))
            except _RedisDown as exc:
                self._degrade(exc)
                return
            for (ck, lease), amount in zip(leases, written, strict=True):
                lease.amount = min(lease.amount, int(amount))
                if lease.amount == 0 and self._held(ck) == 0 and self._leases.get(ck) is lease:
                    del self._leases[ck]
            self.replicas, self.rank = membership((_text(m) for m in members), self._me)
            if not self._healthy:
                self._recover()

    # -- rate limits -----------------------------------------------------------------------------------
    async def admit_rate(self, tenant: str, actor: str, limit: RateLimit) -> tuple[bool, float]:
        """(allowed, seconds until a call would be) for one call of `actor` under `limit`."""
        key = (tenant, actor)
        now = self._clock()
        if self._redis is None:
            allowed, self._buckets[key], wait = ratelimit.admit(self._buckets.get(key), limit, now)
            return allowed, wait
        if self._healthy:
            try:
                allowed_n, wait_ms, left = await self._call(self._scripts["bucket"](
                    keys=[self._key(f"rate:{tenant}/{actor}")], args=[limit.calls, int(limit.per_seconds * 1000)]))
            except _RedisDown as exc:
                self._degrade(exc)
            else:
                self._last_seen[key] = (float(_text(left)), self._clock())
                return bool(int(allowed_n)), int(wait_ms) / 1000
        mine = share(limit.calls, self.replicas, self.rank)
        if mine <= 0:  # this replica's share is nothing: the others' shares add up to the limit
            return False, limit.per_seconds
        mine_limit = RateLimit(mine, limit.per_seconds)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = ratelimit.Bucket(degraded_tokens(mine, limit, self._last_seen.get(key), now), now)
        allowed, self._buckets[key], wait = ratelimit.admit(bucket, mine_limit, now)
        return allowed, wait

    # -- caps ------------------------------------------------------------------------------------------
    def over_cap_now(self, kind: str, tenant: str, actor: str, per_actor: int, per_tenant: int) -> str | None:
        """Which cap one more `kind` would exceed ("actor", "tenant") or None, without waiting: with Redis
        up, one beyond the lease is admitted while the lease grows in the background (sessions)."""
        counts = self._counters[kind]
        held_a, held_t = counts[(tenant, actor)], counts[tenant]
        if self._redis is None:
            return ratelimit.over_cap(held_a, held_t, per_actor, per_tenant)
        if not self._healthy:
            return self._over_share(held_a, held_t, per_actor, per_tenant)
        la = self._lease((kind, (tenant, actor)), per_actor)
        lt = self._lease((kind, tenant), per_tenant)
        verdict = ratelimit.over_cap(held_a, held_t, min(per_actor, la.amount + 1), min(per_tenant, lt.amount + 1))
        if verdict is None and (held_a + 1 > la.amount or held_t + 1 > lt.amount):
            self._grow_later(kind, tenant, actor, per_actor, per_tenant)
        return verdict

    async def over_cap(self, kind: str, tenant: str, actor: str, per_actor: int, per_tenant: int) -> str | None:
        """Which cap one more `kind` would exceed, or None: within the lease at once, else one round trip
        that grows it (fleet-wide exact while Redis answers). The caller counts an admission before its
        next await."""
        if self._redis is None or not self._healthy:
            return self.over_cap_now(kind, tenant, actor, per_actor, per_tenant)
        ka, kt = (kind, (tenant, actor)), (kind, tenant)
        la, lt = self._lease(ka, per_actor), self._lease(kt, per_tenant)
        counts = self._counters[kind]
        if counts[(tenant, actor)] + self._pending[ka] + 1 <= la.amount and \
                counts[tenant] + self._pending[kt] + 1 <= lt.amount:
            return None
        self._pending[ka] += 1
        self._pending[kt] += 1
        try:
            async with self._lock:
                self._pending[ka] -= 1
                self._pending[kt] -= 1
                held_a, held_t = counts[(tenant, actor)], counts[tenant]
                if held_a + 1 <= la.amount and held_t + 1 <= lt.amount:
                    return None  # a grow for another call made room meanwhile
                if self._healthy:
                    try:
                        return await self._grow(ka, kt, held_a, held_t, per_actor, per_tenant, need=1)
                    except _RedisDown as exc:
                        self._degrade(exc)
                return self._over_share(held_a, held_t, per_actor, per_tenant)
        finally:
            for ck in (ka, kt):
                if self._pending[ck] <= 0:
                    del self._pending[ck]

    def _over_share(self, held_a: int, held_t: int, per_actor: int, per_tenant: int) -> str | None:
        return ratelimit.over_cap(held_a, held_t, share(per_actor, self.replicas, self.rank),
                                  share(per_tenant, self.replicas, self.rank))

    async def _grow(self, ka: CapKey, kt: CapKey, held_a: int, held_t: int, per_actor: int, per_tenant: int,
                    need: int) -> str | None:
        """One round trip: both leases cover `held + need` (plus headroom) or neither grows. Holds the lock."""
        args: list[Any] = [self._me, self._ttl_ms]
        for ck, held, cap in ((ka, held_a, per_actor), (kt, held_t, per_tenant)):
            waiting = self._pending[ck]
            args += [held, held + need, held + need + waiting, headroom(cap, self.replicas), cap]
        reply = await self._call(self._scripts["grow"](keys=[self._cap_key(ka), self._cap_key(kt)], args=args))
        ok, failed, grant_a, grant_t = (int(x) for x in reply)
        if not ok:  # Redis now says what is held, beyond the lease; the lease itself did not grow
            return "actor" if failed == 1 else "tenant"
        now = self._clock()
        for ck, grant in ((ka, grant_a), (kt, grant_t)):
            lease = self._leases.get(ck)
            if lease is not None:
                lease.amount, lease.used = grant, now
        return None

    def _grow_later(self, kind: str, tenant: str, actor: str, per_actor: int, per_tenant: int) -> None:
        ka = (kind, (tenant, actor))
        if ka in self._growing:
            return
        self._growing.add(ka)

        async def grow() -> None:
            try:
                async with self._lock:
                    if not self._healthy:
                        return
                    counts = self._counters[kind]
                    held_a, held_t = counts[(tenant, actor)], counts[tenant]
                    kt = (kind, tenant)
                    if held_a < self._lease(ka, per_actor).amount and held_t < self._lease(kt, per_tenant).amount:
                        return
                    with contextlib.suppress(_RedisDown):
                        await self._grow(ka, kt, held_a, held_t, per_actor, per_tenant, need=0)
            finally:
                self._growing.discard(ka)

        self._spawn(grow())

    # -- helpers ---------------------------------------------------------------------------------------
    def _lease(self, ck: CapKey, cap: int) -> Lease:
        lease = self._leases.get(ck)
        if lease is None:
            lease = self._leases[ck] = Lease(0, cap, self._clock())
        lease.cap = cap
        return lease

    def _held(self, ck: CapKey) -> int:
        kind, key = ck
        counter = self._counters.get(kind)
        return (counter[key] if counter is not None else 0) + self._pending[ck]

    def _key(self, name: str) -> str:
        return self._prefix + name

    def _cap_key(self, ck: CapKey) -> str:
        kind, key = ck
        return self._key(f"cap:{kind}:a:{key[0]}/{key[1]}" if isinstance(key, tuple) else f"cap:{kind}:t:{key}")

    async def _call(self, awaitable: Any) -> Any:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await awaitable
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # redis.RedisError, OSError, TimeoutError: Redis is down for our purposes
            # idle pooled connections may be as dead as this one (a restarted server): drop them, so the
            # next command connects afresh instead of failing once per stale connection
            with contextlib.suppress(Exception):
                await self._redis.connection_pool.disconnect(inuse_connections=False)
            raise _RedisDown(type(exc).__name__) from exc

    def _degrade(self, exc: Exception) -> None:
        if self._healthy:
            self._healthy = False
            self._buckets.clear()
            log.warning("shared limits: Redis did not answer (%s); each replica now admits its share of every "
                        "rate limit and cap (1/%d, by the replicas last seen)", exc, self.replicas)

    def _recover(self) -> None:
        self._healthy = True
        self._buckets.clear()
        log.warning("shared limits: Redis answers again; rate limits and caps are shared across %d replicas",
                    self.replicas)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _RedisDown(Exception):
    pass


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
