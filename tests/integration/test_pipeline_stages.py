"""The request path reports its stages in order (docs/pipeline.md, gateway.observe): the gateway app under
uvicorn on port 0, a real stdio upstream (tests/servers/fixture_server.py), an observer that keeps what
it is told. An allowed call runs all six stages, a blocked one never reaches forward, a bad token stops
at authenticate."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvicorn

from gateway import admin, policy_admin
from gateway.config import Limits, ServeSettings
from gateway.jsonrpc import HEADER_MISMATCH
from gateway.methods import HANDLERS
from gateway.observe import STAGES, Observer
from gateway.secrets import load_master_key
from gateway.server import build_gateway
from gateway.store import open_store
from gateway.types import UpstreamLimits, UpstreamSpec
from tests.procs import FIXTURE_SERVER, ROOT

POLICY = """
version = 1
default = "allow"
[builtin]
destructive = "off"
[[rules]]
id = "no-secrets"
name = "echo"
verdict = "block"
[rules.args]
text = { equals = "secret" }
"""
VERSION = "2025-06-18"


class Kept(Observer):
    """Keeps every stage and finished call it is told of, in order."""

    def __init__(self) -> None:
        self.stages: list[tuple[str, int, int, str | None]] = []
        self.calls: list[tuple[str, str, str, int, int, str | None]] = []
        self.upstream_errors: list[tuple[str, str, str | None]] = []

    def stage(self, name: str, start_ns: int, end_ns: int, tenant: str | None = None) -> None:
        self.stages.append((name, start_ns, end_ns, tenant))

    def call_done(self, method: str, verdict: str, outcome: str, start_ns: int, end_ns: int,
                  tenant: str | None = None) -> None:
        self.calls.append((method, verdict, outcome, start_ns, end_ns, tenant))

    def upstream_error(self, upstream: str, kind: str, tenant: str | None = None) -> None:
        self.upstream_errors.append((upstream, kind, tenant))

    def clear(self) -> None:
        self.stages.clear()
        self.calls.clear()
        self.upstream_errors.clear()


def _home(home: Path) -> str:
    """A data dir with tenant acme, actor alice, the fixture upstream `fx` and a policy blocking echo of "secret"."""
    store = open_store(home)
    try:
        master = load_master_key(home)
        admin.create_tenant(store, "acme", "now", "tests")
        admin.add_actor(store, "acme", "alice", "now", "tests")
        _, token = admin.issue_token(store, master, "acme", "alice", "now", by="tests")
        admin.add_upstream(store, UpstreamSpec(
            "acme", "fx", "stdio", command=tuple(FIXTURE_SERVER), env={"FIXTURE_NAME": "fx", "PYTHONPATH": str(ROOT)},
            cwd=str(ROOT), created_at="now"), None)
        policy_admin.apply_policy(store, "acme", POLICY, "p.toml", "now", "tests")
    finally:
        store.close()
    return token


@asynccontextmanager
async def _serving(home: Path, kept: Kept, settings: ServeSettings | None = None) -> AsyncIterator[str]:
    gateway = build_gateway(home, settings or ServeSettings())
    gateway.pipeline.observer = kept
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(gateway.app, log_level="warning", lifespan="on"))
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        for _ in range(500):  # at most 5 s
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        assert server.started, "the gateway did not start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
        sock.close()


def _answer(response: httpx2.Response) -> Any:
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        return json.loads([d for d in data if d][-1])
    return response.json()


async def _session(client: httpx2.AsyncClient, url: str) -> dict[str, str]:
    init = await client.post(url, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}})
    assert init.status_code == 200, init.text
    headers = {"Mcp-Session-Id": init.headers["mcp-session-id"], "MCP-Protocol-Version": VERSION}
    sent = await client.post(url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert sent.status_code == 202
    return headers


@asynccontextmanager
async def _in_session(home: Path, kept: Kept, token: str, settings: ServeSettings | None = None
                      ) -> AsyncIterator[tuple[str, httpx2.AsyncClient, dict[str, str]]]:
    """A served gateway, a client with the token, and an initialized session: (url, client, session headers)."""
    async with _serving(home, kept, settings) as url, httpx2.AsyncClient(timeout=30, headers={
        "Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
    }) as client:
        yield url, client, await _session(client, url)


async def _calls_done(kept: Kept, n: int) -> None:
    for _ in range(300):  # at most 3 s: call_done is told before the answer is written, this is a backstop
        if len(kept.calls) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"call_done told {len(kept.calls)} times, expected {n}")


def _call(i: int, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}


def _assert_in_order(stages: list[tuple[str, int, int, str | None]]) -> None:
    """Each stage ends after it starts, and each ends no earlier than the one before it."""
    for _, start, end, _ in stages:
        assert start <= end
    ends = [end for _, _, end, _ in stages]
    assert ends == sorted(ends)


def test_stages_arrive_in_order(tmp_path: Path) -> None:
    home = tmp_path / "home"
    token = _home(home)
    kept = Kept()

    async def go() -> None:
        async with _in_session(home, kept, token) as (url, client, headers):

            kept.clear()  # an allowed call: every stage, in order
            answer = _answer(await client.post(url, headers=headers, json=_call(1, "fx__echo", {"text": "hi"})))
            assert answer["result"]["content"][0]["text"] == "hi", answer
            await _calls_done(kept, 1)
            assert [s[0] for s in kept.stages] == list(STAGES)
            _assert_in_order(kept.stages)
            starts = [s[1] for s in kept.stages[:5]]  # record's interval is the intent's and outcome's waits
            assert starts == sorted(starts)
            assert {s[3] for s in kept.stages} == {"acme"}
            method, verdict, outcome, start, end, tenant = kept.calls[0]
            assert (method, verdict, outcome, tenant) == ("tools/call", "allow", "ok", "acme")
            assert start == kept.stages[0][1] and kept.stages[-1][2] <= end  # the whole request, from authenticate

            kept.clear()  # blocked by policy: decided, recorded as a refusal, never forwarded
            answer = _answer(await client.post(url, headers=headers, json=_call(2, "fx__echo", {"text": "secret"})))
            assert answer["result"]["isError"] is True and "no-secrets" in answer["result"]["content"][0]["text"]
            await _calls_done(kept, 1)
            assert [s[0] for s in kept.stages] == ["authenticate", "bind", "limit", "decide", "record"]
            _assert_in_order(kept.stages)
            assert kept.calls[0][:3] == ("tools/call", "block", "refused")

            kept.clear()  # answered by the gateway itself: admitted (limit), then no call stages
            answer = _answer(await client.post(url, headers=headers, json={"jsonrpc": "2.0", "id": 3,
                                                                           "method": "ping"}))
            assert answer["result"] == {}
            await _calls_done(kept, 1)
            assert [s[0] for s in kept.stages] == ["authenticate", "bind", "limit"]
            assert kept.calls[0][:3] == ("ping", "none", "ok")

            kept.clear()  # an unknown tool: refused, and its decision record is the record stage
            answer = _answer(await client.post(url, headers=headers, json=_call(5, "fx__nope", {})))
            assert "error" in answer, answer
            await _calls_done(kept, 1)
            assert [s[0] for s in kept.stages] == ["authenticate", "bind", "limit", "record"]
            assert kept.calls[0][:3] == ("tools/call", "hidden", "refused")

            kept.clear()  # a bad token: only authenticate, with no tenant, and no call
            bad = await client.post(url, headers={**headers, "Authorization": "Bearer not-a-token"},
                                    json=_call(4, "fx__echo", {"text": "x"}))
            assert bad.status_code == 401
            assert [(s[0], s[3]) for s in kept.stages] == [("authenticate", None)]
            assert kept.calls == []
            assert kept.upstream_errors == []

    asyncio.run(asyncio.wait_for(go(), 120))


async def _stages_seen(kept: Kept, name: str, n: int) -> None:
    for _ in range(1000):  # at most 10 s
        if sum(1 for s in kept.stages if s[0] == name) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"stage {name} reported fewer than {n} times")


def test_requests_the_transport_answers_are_reported(tmp_path: Path) -> None:
    """initialize (answered by the transport) and requests refused before dispatch (429 too many in flight, 409 a
    duplicate id) each get one call_done; the fair-shares check is the limit stage."""
    home = tmp_path / "home"
    token = _home(home)
    kept = Kept()
    settings = ServeSettings(limits=Limits(max_calls_per_actor=2))

    async def go() -> None:
        async with _in_session(home, kept, token, settings) as (url, client, headers):
            await _calls_done(kept, 1)
            assert kept.calls[0][:3] == ("initialize", "none", "ok") and kept.calls[0][5] == "acme"
            assert kept.calls[0][3] == kept.stages[0][1]  # from its authenticate stage
            assert [s[0] for s in kept.stages] == ["authenticate", "bind", "authenticate", "bind"]

            kept.clear()
            first = asyncio.ensure_future(client.post(url, headers=headers, json=_call(10, "fx__slow",
                                                                                      {"seconds": 2})))
            await _stages_seen(kept, "decide", 1)
            duplicate = await client.post(url, headers=headers, json=_call(10, "fx__echo", {"text": "x"}))
            assert duplicate.status_code == 409, duplicate.text
            second = asyncio.ensure_future(client.post(url, headers=headers, json=_call(11, "fx__slow",
                                                                                       {"seconds": 2})))
            await _stages_seen(kept, "decide", 2)
            over = await client.post(url, headers=headers, json=_call(12, "fx__echo", {"text": "x"}))
            assert over.status_code == 429, over.text
            refused = [c[:3] for c in kept.calls]
            assert refused == [("tools/call", "none", "refused")] * 2, refused
            assert sum(1 for s in kept.stages if s[0] == "limit") == 4  # each request's fair-shares check
            for done in (await first, await second):
                assert _answer(done)["result"]["content"][0]["text"]
            await _calls_done(kept, 4)
            assert sorted(c[2] for c in kept.calls) == ["ok", "ok", "refused", "refused"]

    asyncio.run(asyncio.wait_for(go(), 120))


def test_an_unexpected_failure_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A handler that fails with something other than our errors is reported as outcome error, never ok."""
    home = tmp_path / "home"
    token = _home(home)
    kept = Kept()

    async def broken(*_: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setitem(HANDLERS, "tests/broken", broken)  # a method of the test's own, not a stand-in for ours

    async def go() -> None:
        async with _in_session(home, kept, token) as (url, client, headers):
            kept.clear()
            answer = await client.post(url, headers=headers, json={"jsonrpc": "2.0", "id": 1,
                                                                   "method": "tests/broken"})
            assert answer.status_code >= 500 or "error" in _answer(answer)
            await _calls_done(kept, 1)
            assert kept.calls[0][:3] == ("tests/broken", "none", "error")

    asyncio.run(asyncio.wait_for(go(), 120))


def test_the_default_observer_is_cheap() -> None:
    """The no-op observer every gateway without metrics pays for: well under a microsecond per stage."""
    import time

    from gateway.observe import NOTHING

    n = 20_000
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            NOTHING.stage("forward", t0, t0, "acme")
        best = min(best, (time.perf_counter_ns() - t0) / n)
    assert best < 1000, f"{best:.0f} ns per stage"


MODERN = "2026-07-28"


def _add_upstream(home: Path, name: str, command: list[str], env: dict[str, str], limits: UpstreamLimits) -> None:
    store = open_store(home)
    try:
        admin.add_upstream(store, UpstreamSpec("acme", name, "stdio", command=tuple(command),
                                               env={"PYTHONPATH": str(ROOT), **env}, cwd=str(ROOT),
                                               created_at="now", limits=limits), None)
    finally:
        store.close()


def test_a_header_mismatch_is_recorded_and_never_forwarded(tmp_path: Path) -> None:
    """A 2026-07-28 tools/call whose Mcp-Param-Region disagrees with its argument: refused by the handler
    itself, its decision record reported as the record stage (Pipeline.record_refusal), no forward."""
    home = tmp_path / "home"
    token = _home(home)
    _add_upstream(home, "params", [sys.executable, "-m", "tests.servers.param_server"], {}, UpstreamLimits())
    kept = Kept()

    def body(i: int, region: str) -> dict[str, Any]:
        call = _call(i, "params__route", {"region": region, "text": "t"})
        call["params"]["_meta"] = {"io.modelcontextprotocol/protocolVersion": MODERN,
                                   "io.modelcontextprotocol/clientCapabilities": {},
                                   "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "0"}}
        return call

    async def go() -> None:
        async with _serving(home, kept) as url, httpx2.AsyncClient(timeout=30, headers={
            "Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": "params__route",
        }) as client:
            ok = await client.post(url, headers={"Mcp-Param-Region": "eu"}, json=body(1, "eu"))
            assert _answer(ok)["result"]["content"][0]["text"] == "eu:t", ok.text  # the header mirrors: served
            await _calls_done(kept, 1)
            assert "forward" in [s[0] for s in kept.stages]

            kept.clear()
            refused = await client.post(url, headers={"Mcp-Param-Region": "us"}, json=body(2, "eu"))
            assert refused.status_code == 400 and refused.json()["error"]["code"] == HEADER_MISMATCH, refused.text
            await _calls_done(kept, 1)
            assert [s[0] for s in kept.stages] == ["authenticate", "bind", "limit", "record"]
            assert kept.stages[-1][3] == "acme"
            _assert_in_order(kept.stages)
            assert kept.calls[0][:3] == ("tools/call", "block", "refused") and kept.calls[0][5] == "acme"
            assert kept.upstream_errors == []

    asyncio.run(asyncio.wait_for(go(), 120))


def test_a_fan_out_reports_the_upstream_that_fails_it(tmp_path: Path) -> None:
    """logging/setLevel to two upstreams, one of which never answers it: the other keeps the level, the client
    is answered, and the silent one is reported as an upstream timeout."""
    home = tmp_path / "home"
    token = _home(home)
    for name, mode in (("calm", "ok"), ("mute", "hang")):
        _add_upstream(home, name, FIXTURE_SERVER, {"FIXTURE_NAME": name, "FIXTURE_SET_LEVEL": mode},
                      UpstreamLimits(call_timeout_s=1.0))
    kept = Kept()

    async def go() -> None:
        async with _in_session(home, kept, token) as (url, client, headers):
            kept.clear()
            answer = _answer(await client.post(url, headers=headers, json={
                "jsonrpc": "2.0", "id": 1, "method": "logging/setLevel", "params": {"level": "debug"}}))
            assert answer["result"] == {}, answer
            await _calls_done(kept, 1)
            assert kept.calls[0][:3] == ("logging/setLevel", "none", "ok")
            assert kept.upstream_errors == [("mute", "timeout", "acme")]
            assert [s[0] for s in kept.stages] == ["authenticate", "bind", "limit"]  # a fan-out: no call stages

    asyncio.run(asyncio.wait_for(go(), 120))
