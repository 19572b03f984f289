"""SSE resumability on 2025-11-25 sessions (SEP-1699), against a real gateway and the stdio fixture:
priming events with a retry hint, event ids, and a call that goes on after its client dropped the
POST stream and is picked up again with GET + Last-Event-ID. 2025-06-18 sessions get none of it."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.e2e.audit_support import evidence_rows
from tests.procs import answer, gateway_with_fixture, setup_tenant

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def events(text: str) -> list[dict[str, str]]:
    """SSE events as dicts of their fields (data lines joined)."""
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            fields[name] = fields[name] + "\n" + value if name in fields and name == "data" else value
        if fields:
            out.append(fields)
    return out


def open_session(http: httpx2.Client, url: str, token: str, version: str) -> dict[str, str]:
    headers = {**ACCEPT, "Authorization": f"Bearer {token}"}
    r = http.post(url, headers=headers, json={
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": version, "capabilities": {},
                   "clientInfo": {"name": "resume-test", "version": "1"}},
    })
    assert r.status_code == 200, r.text
    headers.update({"mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": version})
    http.post(url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    return headers


def call(tool: str, arguments: dict[str, Any], call_id: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": call_id, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}


def drop_after_priming(http: httpx2.Client, url: str, headers: dict[str, str], body: dict[str, Any]) -> dict[str, str]:
    """POST a call, read only its priming event, then go away mid-call (the connection closes)."""
    with http.stream("POST", url, headers=headers, json=body) as r:
        first = b""
        for chunk in r.iter_raw():
            first += chunk
            if b"\n\n" in first:
                break
    return events(first.decode())[0]


def test_priming_event_and_event_ids_only_on_resumable_sessions(tmp_path: Path) -> None:
    with gateway_with_fixture(tmp_path / "home") as gw, httpx2.Client(timeout=30) as http:
        token = gw.tokens[("acme", "alice")]
        headers = open_session(http, gw.url, token, "2025-11-25")
        # a call that answers at once has nothing to resume: plain JSON, one body
        r = http.post(gw.url, headers=headers, json=call("tools__echo", {"text": "hi"}))
        assert r.headers["content-type"] == "application/json"
        assert r.json()["result"]["content"][0]["text"] == "hi"
        # a call still running after a moment gets a stream that opens with the priming event
        r = http.post(gw.url, headers=headers, json=call("tools__slow", {"seconds": 0.3}, 2))
        assert r.headers["content-type"].startswith("text/event-stream")
        got = events(r.text)
        assert got[0]["data"] == "" and got[0]["retry"].isdigit() and got[0]["id"].endswith(":0")
        stream = got[0]["id"].rsplit(":", 1)[0]
        assert got[-1]["id"] == f"{stream}:1"
        assert json.loads(got[-1]["data"])["result"]["content"][0]["text"] == "done"
        # another call gets another stream
        r = http.post(gw.url, headers=headers, json=call("tools__slow", {"seconds": 0.3}, 3))
        assert events(r.text)[0]["id"].rsplit(":", 1)[0] != stream

        old = open_session(http, gw.url, token, "2025-06-18")  # not resumable: no stream for a silent call
        r = http.post(gw.url, headers=old, json=call("tools__slow", {"seconds": 0.3}))
        assert r.headers["content-type"] == "application/json" and r.json()["result"]["content"][0]["text"] == "done"


def test_a_dropped_call_goes_on_and_resumes_with_last_event_id(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with gateway_with_fixture(home) as gw, httpx2.Client(timeout=30) as http:
        token = gw.tokens[("acme", "alice")]
        headers = open_session(http, gw.url, token, "2025-11-25")
        priming = drop_after_priming(http, gw.url, headers, call("tools__slow", {"seconds": 1.5}, 7))
        assert priming["data"] == ""

        # the call was not cancelled: its answer waits for the client to come back
        get = {**headers, "Accept": "text/event-stream", "Last-Event-ID": priming["id"]}
        get.pop("Content-Type")
        r = http.get(gw.url, headers=get)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        got = events(r.text)
        stream = priming["id"].rsplit(":", 1)[0]
        assert got[0]["id"] == priming["id"] and got[0]["data"] == ""  # primed again at the cursor
        answer = json.loads(got[-1]["data"])
        assert answer["id"] == 7 and answer["result"]["content"][0]["text"] == "done"
        assert got[-1]["id"] == f"{stream}:1"

        # the stream is finished and forgotten; an id nobody handed out is refused alike
        for last in (priming["id"], "not-a-stream:0", f"{stream}:x"):
            r = http.get(gw.url, headers={**get, "Last-Event-ID": last})
            assert r.status_code == 404, last
            assert r.json()["error"]["data"]["code"] == "unknown-stream"

        # a session of another actor cannot pick up this session's streams
        other = setup_tenant(home, "acme", "bob")
        bob = open_session(http, gw.url, other, "2025-11-25")
        parked = drop_after_priming(http, gw.url, headers, call("tools__slow", {"seconds": 1.0}, 8))["id"]
        bob_get = {**bob, "Accept": "text/event-stream", "Last-Event-ID": parked}
        bob_get.pop("Content-Type")
        assert http.get(gw.url, headers=bob_get).status_code == 404
        r = http.get(gw.url, headers={**get, "Last-Event-ID": parked})
        assert json.loads(events(r.text)[-1]["data"])["id"] == 8

    outcomes = [row for row in evidence_rows(home, "--tenant", "acme") if row["kind"] == "outcome"]
    slow = [row for row in outcomes if row.get("tool") == "tools__slow"]
    assert [row["outcome"] for row in slow] == ["completed", "completed"], slow


def upstream_heard_a_cancellation(http: httpx2.Client, url: str, headers: dict[str, str]) -> bool:
    """Ask the fixture how many calls it saw cancelled, for up to 5 s (bounded), until it says one."""
    for attempt in range(50):
        count = http.post(url, headers=headers, json=call("tools__cancellations", {}, 10 + attempt))
        if answer(count)["result"]["content"][0]["text"] == "1":
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("version", ["2025-06-18", "2025-11-25"])
def test_client_cancellation_stops_the_call(tmp_path: Path, version: str) -> None:
    """notifications/cancelled ends the call at once (and the upstream hears of it), streamed or not."""
    home = tmp_path / "home"

    async def go(url: str, headers: dict[str, str]) -> str:
        async with httpx2.AsyncClient(timeout=30) as client:
            slow = call("tools__slow", {"seconds": 20}, 9)
            post = asyncio.ensure_future(client.post(url, headers=headers, json=slow))
            await asyncio.sleep(1.0)  # the call is at the upstream by now (it sleeps 20 s there)
            cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 9}}
            assert (await client.post(url, headers=headers, json=cancel)).status_code == 202
            started = time.monotonic()
            response = await asyncio.wait_for(post, 10)
            assert time.monotonic() - started < 5, "the stream ends when the call is cancelled"
            return response.text

    with gateway_with_fixture(home) as gw, httpx2.Client(timeout=30) as http:
        headers = open_session(http, gw.url, gw.tokens[("acme", "alice")], version)
        body = asyncio.run(go(gw.url, headers))
        assert all(json.loads(e["data"]).get("id") != 9 for e in events(body) if e.get("data"))
        assert upstream_heard_a_cancellation(http, gw.url, headers), "the upstream never heard of the cancellation"
    statuses = [row["outcome"] for row in evidence_rows(home, "--tenant", "acme")
                if row["kind"] == "outcome" and row.get("tool") == "tools__slow"]
    assert statuses == ["cancelled"]


def test_a_client_that_goes_away_cancels_its_call_on_a_plain_session(tmp_path: Path) -> None:
    """2025-06-18 has no resumption: when the client's connection ends mid-call, the call is cancelled at
    once, the upstream hears of it, and the evidence says `client_disconnected`."""
    home = tmp_path / "home"
    with gateway_with_fixture(home) as gw, httpx2.Client(timeout=30) as http:
        headers = open_session(http, gw.url, gw.tokens[("acme", "alice")], "2025-06-18")
        # its own connection, closed mid-call
        with httpx2.Client(timeout=30) as doomed, pytest.raises(httpx2.TimeoutException):
            doomed.post(gw.url, headers=headers, json=call("tools__slow", {"seconds": 20}, 5),
                        timeout=httpx2.Timeout(30, read=1.0))
        assert upstream_heard_a_cancellation(http, gw.url, headers), "the upstream never heard the client went away"
    outcomes = [row["outcome"] for row in evidence_rows(home, "--tenant", "acme")
                if row["kind"] == "outcome" and row.get("tool") == "tools__slow"]
    assert outcomes == ["client_disconnected"]
