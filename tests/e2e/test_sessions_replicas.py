"""Any replica serves any request of any session (issue 11): three real gateway processes on one Postgres
database, with and without Redis, each addressed directly by its URL. Sessions are initialized on one
replica and used on the others; the official SDK client runs through a round-robin transport with no
stickiness at all. See docs/replicas.md "Sessions across replicas"."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.procs import add_stdio_fixture, aegress, answer, run, run_gateway, setup_tenant
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


# -- server-to-client requests and client notifications across replicas --------------------------------
def sse_messages(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """JSON-RPC messages of an SSE response as they arrive (data lines only; the priming event has none)."""
    for line in lines:
        if line.startswith("data:") and line[5:].strip():
            yield json.loads(line[5:].strip())


def evidence(fleet: Fleet, *args: str) -> list[dict[str, Any]]:
    out = aegress(fleet[0].home, "audit", "query", "--limit", "100000", *args, "--json",
                  AEGRESS_DATABASE_URL=fleet.database)
    return list(json.loads(out.stdout))


@pytest.mark.parametrize("version", VERSIONS)
def test_an_elicitation_asked_on_one_replica_is_answered_on_another(fleet: Fleet, version: str) -> None:
    """The upstream's elicitation travels on the call's stream from A; the client POSTs its answer to B,
    which relays it to A over Redis: A records the answer's evidence and returns it upstream. Without
    Redis B cannot reach A and says so (503), and the same answer on A still completes the call."""
    token = fleet.tokens[("acme", "alice")]
    a, b, _ = fleet.urls
    with httpx2.Client(timeout=30) as http, httpx2.Client(timeout=30) as other:
        sid = initialize(http, a, token, version, {"elicitation": {}})
        call = rpc("tools/call", {"name": "tools__ask_user", "arguments": {"question": "which?"}}, 5)
        with http.stream("POST", a, headers=headers(token, sid, version), json=call) as r:
            messages = sse_messages(r.iter_lines())
            asked = next(m for m in messages if m.get("method") == "elicitation/create")
            gid = asked["id"]
            assert isinstance(gid, str) and gid.endswith("@replica-a"), gid
            reply = {"jsonrpc": "2.0", "id": gid, "result": {"action": "accept", "content": {"answer": "from B"}}}
            relayed = post(other, b, token, sid, version, reply)
            if fleet.redis is None:
                assert relayed.status_code == 503 and relayed.json()["error"]["data"]["code"] == "replica-unreachable"
                reply["result"]["content"]["answer"] = "from A"
                assert post(other, a, token, sid, version, reply).status_code == 202
            else:
                assert relayed.status_code == 202, relayed.text
            done = next(m for m in messages if m.get("id") == 5)
        said = "from B" if fleet.redis else "from A"
        assert done["result"]["content"][0]["text"] == f"user said: {said}"
        # an answer to a request nobody sent, relayed or not, is refused as on one replica
        stale = post(other, b, token, sid, version, reply)
        assert stale.status_code in ((400,) if fleet.redis else (503,)), stale.text
    answers = [row for row in evidence(fleet, "--tenant", "acme", "--kind", "elicitation_answer")]
    assert any(json.dumps(row).count(gid) for row in answers), answers  # recorded by the replica that asked


@pytest.mark.parametrize("fleet", ["redis"], indirect=True)
def test_sampling_and_elicitation_through_a_round_robin(fleet: Fleet) -> None:
    """The SDK client answers each upstream request with a new POST, which the balancer sends elsewhere."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp_types import CreateMessageResult, ElicitResult, TextContent

    async def sampling(ctx, params):  # type: ignore[no-untyped-def]
        text = params.messages[0].content.text
        return CreateMessageResult(role="assistant", content=TextContent(type="text", text=f"echo {text}"),
                                   model="test-model")

    async def elicit(ctx, params):  # type: ignore[no-untyped-def]
        return ElicitResult(action="accept", content={"answer": "round robin"})

    token = fleet.tokens[("acme", "alice")]
    balancer = RoundRobin(fleet.urls)

    async def go() -> None:
        async with (
            httpx2.AsyncClient(transport=balancer, headers={"Authorization": f"Bearer {token}"},
                               timeout=httpx2.Timeout(30.0, read=60.0)) as http,
            Client(streamable_http_client(fleet.urls[0], http_client=http), mode="legacy",
                   sampling_callback=sampling, elicitation_callback=elicit) as client,
        ):
            for i in range(3):
                r = await client.call_tool("tools__ask_model", {"prompt": f"p{i}"})
                assert r.content[0].text == f"model said: echo p{i}"
                r = await client.call_tool("tools__ask_user", {"question": "ok?"})
                assert r.content[0].text == "user said: round robin"

    run(go())
    answers = [(index, str(m["id"])) for index, m in balancer.bodies if "result" in m]
    assert len(answers) == 6
    # every answer reached a replica other than the one whose upstream asked (ids end @replica-<a|b|c>)
    assert all(gid.rsplit("@replica-", 1)[1] != "abc"[index] for index, gid in answers), answers


@pytest.mark.parametrize("fleet", ["redis"], indirect=True)
@pytest.mark.parametrize("version", VERSIONS)
def test_a_cancellation_sent_to_another_replica_stops_the_call(fleet: Fleet, version: str) -> None:
    token = fleet.tokens[("acme", "alice")]
    a, b, _ = fleet.urls

    def cancelled_on_a(http: httpx2.Client, sid: str, msg_id: int) -> int:
        r = post(http, a, token, sid, version, rpc("tools/call", {"name": "tools__cancellations", "arguments": {}},
                                                   msg_id))
        return int(answer(r)["result"]["content"][0]["text"])

    async def go(sid: str) -> str:
        async with httpx2.AsyncClient(timeout=30) as client:
            slow = rpc("tools/call", {"name": "tools__slow", "arguments": {"seconds": 20}}, 9)
            call = asyncio.ensure_future(client.post(a, headers=headers(token, sid, version), json=slow))
            await asyncio.sleep(1.0)  # at the upstream by now
            cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 9}}
            r = await client.post(b, headers=headers(token, sid, version), json=cancel)
            assert r.status_code == 202
            started = time.monotonic()
            response = await asyncio.wait_for(call, 10)
            assert time.monotonic() - started < 3, "the call on A stops when B hears the cancellation"
            return response.text

    with httpx2.Client(timeout=30) as http:
        sid = initialize(http, a, token, version)
        before = cancelled_on_a(http, sid, 1)
        body = run(go(sid))
        assert '"id":9' not in body.replace(" ", "")  # no answer: the call was cancelled
        for attempt in range(50):  # the upstream on A heard of it (bounded: 5 s)
            if cancelled_on_a(http, sid, 100 + attempt) == before + 1:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the upstream never heard of the cancellation")


CONFIRM_POLICY = """
version = 1
trusted_upstreams = ["tools"]

[review]
mode = "approve"
hold_timeout_seconds = 20

[[rules]]
id = "echo-confirm"
upstream = "tools"
name = "echo"
verdict = "review"
review_mode = "confirm"
reason = "the caller confirms"
"""


@pytest.mark.parametrize("fleet", ["redis"], indirect=True)
def test_a_review_confirmation_asked_on_one_replica_is_given_on_another(
        fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Confirm mode: the gateway itself asks the caller (elicitation) on the call's replica; the answer,
    POSTed through the balancer to another replica, is relayed back and releases the call."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp_types import ElicitResult

    monkeypatch.setenv("AEGRESS_DATABASE_URL", fleet.database)
    home = fleet[0].home
    token = setup_tenant(home, "rev", "carol")
    add_stdio_fixture(home, "rev", "tools")
    policy = tmp_path / "confirm.toml"
    policy.write_text(CONFIRM_POLICY)
    aegress(home, "policy", "apply", str(policy), "--tenant", "rev", "--yes", "--as", "setup")
    time.sleep(1.5)  # every replica polls registrations (1 s) and policies (0.5 s)
    asked: list[str] = []

    async def elicit(ctx, params):  # type: ignore[no-untyped-def]
        asked.append(params.message)
        return ElicitResult(action="accept", content={"decision": "approve", "reason": "fine by me"})

    balancer = RoundRobin(fleet.urls)

    async def go() -> None:
        async with (
            httpx2.AsyncClient(transport=balancer, headers={"Authorization": f"Bearer {token}"},
                               timeout=httpx2.Timeout(30.0, read=60.0)) as http,
            Client(streamable_http_client(fleet.urls[0], http_client=http), mode="legacy",
                   elicitation_callback=elicit) as client,
        ):
            for i in range(2):
                r = await client.call_tool("tools__echo", {"text": f"confirmed {i}"})
                assert not r.is_error and r.content[0].text == f"confirmed {i}", r

    run(go())
    assert len(asked) == 2 and "tools__echo" in asked[0]
    answers = [(index, str(m["id"])) for index, m in balancer.bodies if "result" in m]
    assert len(answers) == 2 and all(gid.startswith("aeg-confirm-rev_") for _, gid in answers), answers
    assert all(gid.rsplit("@replica-", 1)[1] != "abc"[index] for index, gid in answers), answers


# -- resumable streams (2025-11-25) and the GET stream across replicas -----------------------------------
def sse_events(text: str) -> list[dict[str, str]]:
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line and not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value
        if fields:
            out.append(fields)
    return out


def drop_after_priming(url: str, token: str, sid: str, body: dict[str, Any]) -> dict[str, str]:
    """POST a call on its own connection, read its priming event, then go away mid-call."""
    with httpx2.Client(timeout=30) as http, http.stream("POST", url, headers=headers(token, sid, "2025-11-25"),
                                                        json=body) as r:
        first = b""
        for chunk in r.iter_raw():
            first += chunk
            if b"\n\n" in first:
                break
    return sse_events(first.decode())[0]


def resume_headers(token: str, sid: str, last_event_id: str) -> dict[str, str]:
    out = headers(token, sid, "2025-11-25")
    out.update({"Accept": "text/event-stream", "Last-Event-ID": last_event_id})
    out.pop("Content-Type")
    return out


def slow(msg_id: int, seconds: float) -> dict[str, Any]:
    return rpc("tools/call", {"name": "tools__slow", "arguments": {"seconds": seconds}}, msg_id)


@pytest.mark.parametrize("fleet", ["redis"], indirect=True)
def test_a_stream_dropped_on_one_replica_resumes_on_another(fleet: Fleet) -> None:
    """Last-Event-ID on B for A's stream: A replays what the client missed (the answer, here) and B writes
    it with the same event ids; during the call, the rest comes live over the relay."""
    token = fleet.tokens[("acme", "alice")]
    a, b, c = fleet.urls
    with httpx2.Client(timeout=30) as http:
        sid = initialize(http, a, token, "2025-11-25")
        priming = drop_after_priming(a, token, sid, slow(7, 0.5))
        stream = priming["id"].rsplit(":", 1)[0]
        assert stream.endswith("@replica-a") and priming["data"] == ""
        time.sleep(1.0)  # the call has finished on A meanwhile: its answer waits there
        r = http.get(b, headers=resume_headers(token, sid, priming["id"]))
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
        got = sse_events(r.text)
        assert got[0]["id"] == priming["id"] and got[0]["data"] == ""  # primed again at the cursor
        assert got[-1]["id"] == f"{stream}:1" and json.loads(got[-1]["data"])["result"]["content"][0]["text"] == "done"
        # finished and forgotten on A: resuming it again, anywhere, is refused
        for url in (a, b):
            r = http.get(url, headers=resume_headers(token, sid, priming["id"]))
            assert r.status_code == 404 and r.json()["error"]["data"]["code"] == "unknown-stream"

        # resumed on C while the call still runs: the answer comes live, relayed
        priming = drop_after_priming(a, token, sid, slow(8, 2.0))
        started = time.monotonic()
        r = http.get(c, headers=resume_headers(token, sid, priming["id"]))
        assert time.monotonic() - started > 1.0  # it waited for the call on A
        assert json.loads(sse_events(r.text)[-1]["data"])["id"] == 8

        # a bob token cannot pick up alice's stream on any replica
        bob = fleet.tokens[("acme", "bob")]
        bob_sid = initialize(http, b, bob, "2025-11-25")
        priming = drop_after_priming(a, token, sid, slow(9, 1.0))
        assert http.get(b, headers=resume_headers(bob, bob_sid, priming["id"])).status_code == 404
        assert json.loads(sse_events(http.get(b, headers=resume_headers(token, sid, priming["id"])).text)[-1]["data"]
                          )["id"] == 9

    outcomes = [row["outcome"] for row in evidence(fleet, "--tenant", "acme", "--kind", "outcome")
                if row.get("tool") == "tools__slow"]
    # every call above ran to its end on A while its client was away or on another replica
    assert outcomes.count("completed") >= 3 and "client_disconnected" not in outcomes, outcomes


@pytest.mark.parametrize("fleet", ["redis"], indirect=True)
def test_progress_missed_on_one_replica_is_replayed_on_another_then_the_rest_comes_live(fleet: Fleet) -> None:
    token = fleet.tokens[("acme", "alice")]
    a, b, _ = fleet.urls
    with httpx2.Client(timeout=30) as http:
        sid = initialize(http, a, token, "2025-11-25")
        call = rpc("tools/call", {"name": "tools__slow_steps", "arguments": {"steps": 6, "seconds": 3.0},
                                  "_meta": {"progressToken": "p-1"}}, 21)
        with httpx2.Client(timeout=30) as doomed, doomed.stream("POST", a, headers=headers(token, sid, "2025-11-25"),
                                                               json=call) as r:
            seen = ""
            for text in r.iter_text():  # the priming event and the first progress event, then away
                seen += text
                if "step 1" in seen and seen.endswith("\n\n"):
                    break
        first = [e for e in sse_events(seen) if e.get("data")]
        assert json.loads(first[0]["data"])["params"]["message"] == "step 1"
        last_id = first[-1]["id"]
        time.sleep(1.2)  # steps 2-3 or so happen while nobody listens
        r = http.get(b, headers=resume_headers(token, sid, last_id))
        assert r.status_code == 200, r.text
        got = [e for e in sse_events(r.text) if e.get("data")]
        stream, _, number = last_id.rpartition(":")
        assert [e["id"] for e in got] == [f"{stream}:{int(number) + 1 + i}" for i in range(len(got))]
        progress = [json.loads(e["data"])["params"]["message"] for e in got[:-1]]
        assert progress == [f"step {i}" for i in range(len(first) + 1, 7)], progress  # none lost, none twice
        assert all(json.loads(e["data"])["params"]["progressToken"] == "p-1" for e in got[:-1])
        assert json.loads(got[-1]["data"])["result"]["content"][0]["text"] == "6 steps"


@pytest.mark.parametrize("fleet", ["redis"], indirect=True)
def test_a_client_leaving_the_relaying_replica_parks_the_stream_for_any_other(fleet: Fleet) -> None:
    token = fleet.tokens[("acme", "alice")]
    a, b, c = fleet.urls
    with httpx2.Client(timeout=30) as http:
        sid = initialize(http, a, token, "2025-11-25")
        priming = drop_after_priming(a, token, sid, slow(11, 2.5))
        with httpx2.Client(timeout=30) as doomed, doomed.stream(
                "GET", b, headers=resume_headers(token, sid, priming["id"])) as r:  # B relays, then the client goes
            assert r.status_code == 200
            first = b""
            for chunk in r.iter_raw():
                first += chunk
                if b"\n\n" in first:
                    break
        assert sse_events(first.decode())[0]["id"] == priming["id"]
        time.sleep(0.5)
        r = http.get(c, headers=resume_headers(token, sid, priming["id"]))  # parked again on A: C picks it up
        assert r.status_code == 200, r.text
        final = json.loads(sse_events(r.text)[-1]["data"])
        assert final["id"] == 11 and final["result"]["content"][0]["text"] == "done"


def test_a_stream_whose_replica_cannot_answer_is_unknown_at_once(fleet: Fleet) -> None:
    """Without Redis (or for a replica that is gone) the Last-Event-ID cannot be served elsewhere: 404
    `unknown-stream` within about a second, whose hint says to send the request again."""
    token = fleet.tokens[("acme", "alice")]
    a, b, _ = fleet.urls
    with httpx2.Client(timeout=30) as http:
        sid = initialize(http, a, token, "2025-11-25")
        owners = ["replica-gone"] if fleet.redis else ["replica-gone", "replica-a"]
        for owner in owners:
            started = time.monotonic()
            r = http.get(b, headers=resume_headers(token, sid, f"s1@{owner}:0"))
            assert r.status_code == 404 and r.json()["error"]["data"]["code"] == "unknown-stream"
            assert "send the request again" in r.json()["error"]["message"]
            assert time.monotonic() - started < 2.5


@pytest.mark.parametrize("fleet", ["redis"], indirect=True)
def test_messages_no_request_caused_reach_the_get_stream_on_another_replica(fleet: Fleet) -> None:
    """The GET stream is open on B; C's upstream announces a tools list change after a call made on C:
    C hands it over and B writes it."""
    token = fleet.tokens[("acme", "alice")]
    a, b, c = fleet.urls
    got: list[dict[str, Any]] = []

    async def listen(sid: str, ready: asyncio.Event) -> None:
        get = {**headers(token, sid, "2025-11-25"), "Accept": "text/event-stream"}
        get.pop("Content-Type")
        async with httpx2.AsyncClient(timeout=30) as client, client.stream("GET", b, headers=get) as r:
            assert r.status_code == 200
            ready.set()
            async for line in r.aiter_lines():
                if line.startswith("data:"):
                    got.append(json.loads(line[5:]))
                    return

    async def go(sid: str) -> None:
        ready = asyncio.Event()
        listener = asyncio.ensure_future(listen(sid, ready))
        await asyncio.wait_for(ready.wait(), 10)
        async with httpx2.AsyncClient(timeout=30) as client:
            r = await client.post(c, headers=headers(token, sid, "2025-11-25"),
                                  json=rpc("tools/call", {"name": "tools__later_list_changed",
                                                          "arguments": {"delay": 0.5}}, 3))
            assert answer(r)["result"]["content"][0]["text"] == "scheduled"
        await asyncio.wait_for(listener, 10)

    with httpx2.Client(timeout=30) as http:
        sid = initialize(http, a, token, "2025-11-25")
        run(go(sid), timeout=30)
    assert got == [{"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}], got


def test_a_session_outlives_a_restart_of_its_only_gateway(tmp_path: Path) -> None:
    """SQLite, one gateway: the sealing key is in the database, so a restarted gateway serves the sessions
    of its previous run (what lived only in that process, such as parked streams, is gone); a DELETE made
    before the restart still holds after it."""
    from tests.procs import gateway_with_fixture

    home = tmp_path / "home"
    with gateway_with_fixture(home) as gw, httpx2.Client(timeout=30) as http:
        token = gw.tokens[("acme", "alice")]
        kept = initialize(http, gw.url, token, "2025-11-25")
        ended = initialize(http, gw.url, token, "2025-11-25")
        assert http.delete(gw.url, headers=headers(token, ended, "2025-11-25")).status_code == 200
    with run_gateway(home) as gw, httpx2.Client(timeout=30) as http:
        r = post(http, gw.url, token, kept, "2025-11-25", rpc("tools/call", {"name": "tools__echo",
                                                                            "arguments": {"text": "again"}}))
        assert answer(r)["result"]["content"][0]["text"] == "again"
        assert is_unknown_session(post(http, gw.url, token, ended, "2025-11-25", rpc("ping")))


def test_a_session_expires_after_its_max_age_on_one_replica_too(tmp_path: Path) -> None:
    """SQLite, one gateway: `--session-max-age` ends a session the replica holds as well as ids it
    would rebuild; the reclaim and idle rules of one replica are covered in test_edge_bounds."""
    from tests.procs import gateway_with_fixture

    home = tmp_path / "home"
    with gateway_with_fixture(home) as gw:
        token = gw.tokens[("acme", "alice")]
    with run_gateway(home, "--session-max-age", "3") as gw, httpx2.Client(timeout=30) as http:
        initialize(http, gw.url, token, "2025-06-18")  # the upstream starts: the next initialize is quick
        issued = time.time()
        sid = initialize(http, gw.url, token, "2025-06-18")
        first = post(http, gw.url, token, sid, "2025-06-18", rpc("ping"))
        assert answer(first).get("result") == {}, first.text
        time.sleep(max(0.0, issued + 4.0 - time.time()))
        assert is_unknown_session(post(http, gw.url, token, sid, "2025-06-18", rpc("ping")))
