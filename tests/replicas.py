"""Several gateway replicas on one Postgres database, addressed directly by URL (no load balancer).

Each replica has its own data dir (one gateway per data dir) holding a copy of the first one's master
key (token hashes and session ids need the same key everywhere), its own `AEGRESS_REPLICA_ID`, and,
when asked, the same `AEGRESS_REDIS_URL`. The tenant, actors, policy and the stdio fixture upstream are
registered once, through the CLI, in the shared database; every replica starts its own upstream process.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx2

from tests.procs import Gateway, add_stdio_fixture, allow_all, run_gateway, setup_tenant


def redis_url() -> str:
    """The machine's Redis, on a database number of this run's own (channels are kept apart by the fleet
    id, which comes from the run's own Postgres schema)."""
    return f"redis://127.0.0.1:6379/{secrets.randbelow(15) + 1}"


@dataclass
class Fleet:
    gateways: list[Gateway]
    tokens: dict[tuple[str, str], str] = field(default_factory=dict)
    redis: str | None = None
    database: str = ""

    @property
    def urls(self) -> list[str]:
        return [g.url for g in self.gateways]

    def __getitem__(self, index: int) -> Gateway:
        return self.gateways[index]


def _copy_master_key(source: Path, target: Path) -> None:
    (target / "secrets").mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(target, 0o700)
    shutil.copy2(source / "secrets" / "master.key", target / "secrets" / "master.key")
    os.chmod(target / "secrets" / "master.key", 0o600)


@contextlib.contextmanager
def run_fleet(tmp_path: Path, database_url: str, *, count: int = 3, redis: str | None = None,
              actors: tuple[str, ...] = ("alice", "bob"), tenant: str = "acme",
              args: tuple[str, ...] = ()) -> Iterator[Fleet]:
    """`count` replicas (ids replica-a, replica-b, ...) of one fleet; `database_url` must also be in the
    environment (AEGRESS_DATABASE_URL) for the CLI calls, as the tests' fixture sets it."""
    homes = [tmp_path / f"home-{chr(ord('a') + i)}" for i in range(count)]
    tokens = {(tenant, actor): setup_tenant(homes[0], tenant, actor) for actor in actors}
    allow_all(homes[0], tenant)
    add_stdio_fixture(homes[0], tenant, "tools")
    for home in homes[1:]:
        _copy_master_key(homes[0], home)
    env = {"AEGRESS_DATABASE_URL": database_url}
    if redis:
        env["AEGRESS_REDIS_URL"] = redis
    with contextlib.ExitStack() as stack:
        gateways: list[Gateway | None] = [None] * count
        errors: list[BaseException] = []

        def start(i: int) -> None:
            try:
                gateways[i] = stack.enter_context(run_gateway(
                    homes[i], *args, env={**env, "AEGRESS_REPLICA_ID": f"replica-{chr(ord('a') + i)}"}))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(i,)) for i in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        if errors:
            raise errors[0]
        started = [g for g in gateways if g is not None]
        assert len(started) == count, "a replica did not start"
        fleet = Fleet(started, tokens, redis, database_url)
        for g in started:
            g.tokens.update(tokens)
        yield fleet


class RoundRobin(httpx2.AsyncBaseTransport):
    """A load balancer without stickiness inside the client: request n goes to replica n mod N (same path)."""

    def __init__(self, urls: list[str]) -> None:
        self._targets = [httpx2.URL(u) for u in urls]
        self._next = 0
        self._inner = httpx2.AsyncHTTPTransport()
        self.sent: list[tuple[str, int]] = []  # (method, replica index) per request, in order
        self.bodies: list[tuple[int, dict[str, object]]] = []  # (replica index, JSON-RPC message) per POST

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        index = self._next % len(self._targets)
        self._next += 1
        target = self._targets[index]
        request.url = request.url.copy_with(host=target.host, port=target.port)
        request.headers["host"] = f"{target.host}:{target.port}"
        self.sent.append((request.method, index))
        if request.method == "POST":
            with contextlib.suppress(ValueError):
                self.bodies.append((index, json.loads(request.content)))
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()
