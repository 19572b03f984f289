"""Any replica serves any request of any session (issue 11): three real gateway processes on one Postgres
database, with and without Redis, each addressed directly by its URL. Sessions are initialized on one
replica and used on the others; the official SDK client runs through a round-robin transport with no
stickiness at all. See docs/replicas.md "Sessions across replicas"."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from tests.procs import answer, run
from tests.replicas import Fleet, RoundRobin, redis_url, run_fleet

pytestmark = pytest.mark.slow

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
VERSIONS = ("2025-06-18", "2025-11-25")


@pytest.fixture(scope="module", params=["redis", "no-redis"])
def fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pg_database: object
          ) -> Iterator[Fleet]:
    """Three replicas on a fresh schema of this run's Postgres database, shared by the module's tests (each
    test opens its own sessions); `aegress` commands run by `run_fleet` get the database from the environment."""
    database = str(pg_database.schema_url())  # type: ignore[attr-defined]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AEGRESS_DATABASE_URL", database)
        mp.delenv("AEGRESS_REDIS_URL", raising=False)
        redis = redis_url() if request.param == "redis" else None
        with run_fleet(tmp_path_factory.mktemp(request.param), database, redis=redis) as f:
            yield f


def headers(token: str, sid: str | None = None, version: str | None = None) -> dict[str, str]:
    out = {**ACCEPT, "Authorization": f"Bearer {token}"}
    if sid:
        out["Mcp-Session-Id"] = sid
    if version:
        out["MCP-Protocol-Version"] = version
    return out


def initialize(http: httpx2.Client, url: str, token: str, version: str, caps: dict[str, Any] | None = None) -> str:
    r = http.post(url, headers=headers(token), json={
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": version, "capabilities": caps or {},
                   "clientInfo": {"name": "replica-test", "version": "1"}}})
    assert r.status_code == 200, r.text
    assert answer(r)["result"]["protocolVersion"] == version
    return str(r.headers["mcp-session-id"])


def rpc(method: str, params: dict[str, Any] | None = None, msg_id: int = 1) -> dict[str, Any]:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": msg_id, "method": method}
    if params is not None:
        body["params"] = params
    return body


def post(http: httpx2.Client, url: str, token: str, sid: str, version: str, body: dict[str, Any]) -> httpx2.Response:
    return http.post(url, headers=headers(token, sid, version), json=body)


def is_unknown_session(r: httpx2.Response) -> bool:
    return r.status_code == 404 and r.json()["error"]["data"]["code"] == "unknown-session"


@pytest.mark.parametrize("version", VERSIONS)
def test_a_session_initialized_on_one_replica_is_served_by_every_other(fleet: Fleet, version: str) -> None:
    token = fleet.tokens[("acme", "alice")]
    a, b, c = fleet.urls
    with httpx2.Client(timeout=30) as http:
        sid = initialize(http, a, token, version)
        assert len(sid) < 1024 and all(0x21 <= ord(ch) <= 0x7E for ch in sid)
        r = http.post(b, headers=headers(token, sid, version),
                      json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert r.status_code == 202, r.text
        listed = answer(post(http, c, token, sid, version, rpc("tools/list")))
        assert "tools__echo" in {t["name"] for t in listed["result"]["tools"]}
        for i, url in enumerate((b, c, a, b)):
            called = answer(post(http, url, token, sid, version,
                                 rpc("tools/call", {"name": "tools__whoami", "arguments": {}}, 10 + i)))
            assert called["result"]["content"][0]["text"] == "tools"
            assert called["result"]["_meta"]["aegress"]  # sealed evidence on every replica
        assert answer(post(http, c, token, sid, version, rpc("ping", msg_id=30)))["result"] == {}
        # the session's negotiated revision holds everywhere: a newer header is refused on any replica
        if version == "2025-06-18":
            r = post(http, b, token, sid, "2025-11-25", rpc("ping", msg_id=31))
            assert r.status_code == 400 and r.json()["error"]["data"]["code"] == "version-mismatch"


def test_the_sdk_client_through_a_round_robin_without_stickiness(fleet: Fleet) -> None:
    """The official client, every request to the next replica in turn: initialize, the initialized
    notification, the GET stream, listings and calls all land on different replicas."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    token = fleet.tokens[("acme", "alice")]
    balancer = RoundRobin(fleet.urls)

    async def go() -> None:
        async with (
            httpx2.AsyncClient(transport=balancer, headers={"Authorization": f"Bearer {token}"},
                               timeout=httpx2.Timeout(30.0, read=60.0)) as http,
            Client(streamable_http_client(fleet.urls[0], http_client=http), mode="legacy") as client,
        ):
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"tools__echo", "tools__slow"} <= names
            for i in range(6):
                result = await client.call_tool("tools__echo", {"text": f"rr {i}"})
                assert result.content[0].text == f"rr {i}" and result.meta["aegress"]
            resources = await client.list_resources()
            assert any(str(r.uri).endswith("fixture://info") for r in resources.resources)

    run(go())
    posts = [i for m, i in balancer.sent if m == "POST"]
    assert set(posts) == {0, 1, 2}, balancer.sent  # every replica answered requests of the one session


def test_delete_on_one_replica_ends_the_session_everywhere(fleet: Fleet) -> None:
    """Replicas that hold the session drop it (Redis: at once; without Redis: at their next re-check,
    every 2 s); a replica that never saw it looks it up once and refuses it."""
    token = fleet.tokens[("acme", "alice")]
    a, b, c = fleet.urls
    live = fleet.redis is not None
    with httpx2.Client(timeout=30) as http:
        sid = initialize(http, a, token, "2025-11-25")
        assert answer(post(http, b, token, sid, "2025-11-25", rpc("ping")))["result"] == {}  # B holds it too
        r = http.delete(b, headers=headers(token, sid, "2025-11-25"))
        assert r.status_code == 200, r.text
        assert is_unknown_session(post(http, c, token, sid, "2025-11-25", rpc("ping")))  # never held it
        assert is_unknown_session(post(http, b, token, sid, "2025-11-25", rpc("ping")))
        started = time.monotonic()
        for _ in range(100):  # A held it: gone within the bound
            if is_unknown_session(post(http, a, token, sid, "2025-11-25", rpc("ping"))):
                break
            time.sleep(0.05)
        took = time.monotonic() - started
        assert took < (0.5 if live else 3.0), took
        assert is_unknown_session(http.delete(a, headers=headers(token, sid, "2025-11-25")))  # ended once


def test_tampered_foreign_and_other_actors_ids_answer_404_alike(fleet: Fleet) -> None:
    alice, bob = fleet.tokens[("acme", "alice")], fleet.tokens[("acme", "bob")]
    a, b, _ = fleet.urls
    with httpx2.Client(timeout=30) as http:
        sid = initialize(http, a, alice, "2025-11-25")
        body, _, tag = sid.partition(".")
        payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        payload["a"] = "bob"  # claim to be bob's session, keeping alice's tag
        forged_body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
        bad = {
            "bob's token on alice's session": (bob, sid),
            "a payload changed under its tag": (bob, f"{forged_body}.{tag}"),
            "a changed tag": (alice, f"{body}.{tag[::-1]}"),
            "an unsealed random id": (alice, "abcdefghijklmnopqrstuvwxyz123456"),
            "an oversized id": (alice, "a" * 3000),
        }
        seen = set()
        for why, (token, session_id) in bad.items():
            for url in (a, b):
                r = post(http, url, token, session_id, "2025-11-25", rpc("ping"))
                assert is_unknown_session(r), (why, url, r.text)
                seen.add(r.text)
        assert len(seen) == 1  # never a hint of why
        # alice's own session still works on both, bob's token never reached it
        for url in (a, b):
            assert answer(post(http, url, alice, sid, "2025-11-25", rpc("ping")))["result"] == {}
