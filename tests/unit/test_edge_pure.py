"""Pure decisions of the HTTP edge: duplicate JSON keys, Mcp-Param-* mirrors, the auth throttle, fair-share caps."""

from __future__ import annotations

import json

import orjson
from hypothesis import given
from hypothesis import strategies as st

from gateway.jsonrpc import encode_header_value, has_duplicate_keys, param_header_mismatch
from gateway.ratelimit import note_failure, over_cap


def _dups_by_reference(body: bytes) -> bool:
    found = []

    def hook(pairs: list) -> dict:
        keys = [k for k, _ in pairs]
        found.append(len(keys) != len(set(keys)))
        return dict(pairs)

    json.loads(body, object_pairs_hook=hook)
    return any(found)


def test_duplicate_keys_at_any_depth() -> None:
    for body, expected in [
        (b'{"a": 1, "b": 2}', False),
        (b'{"a": 1, "a": 1}', True),
        (b'{"a": {"b": [{"c": 1, "c": 2}]}}', True),
        (b'{"a" \t:1, "a"\n: 2}', True),
        (b'{"a": "x\\": y\\":", "b": {"a": 1}}', False),  # quoted colons inside strings, same key in another object
        (b'{"\\u0061": 1, "a": 2}', True),  # escapes decode to the same key
        (b"[1, 2, {}]", False),
    ]:
        assert has_duplicate_keys(body, orjson.loads(body)) is expected, body


keys = st.sampled_from(["a", "b", ":", "a\\\":", "\\u0061", " :"])
leaf = st.one_of(st.integers(), st.sampled_from(['"s"', '"q\\":"', '":x"', '" :"', "null", "true"]))


@st.composite
def json_text(draw: st.DrawFn, depth: int = 0) -> str:
    if depth > 3 or draw(st.booleans()):
        return str(draw(leaf))
    if draw(st.booleans()):
        items = [draw(json_text(depth + 1)) for _ in range(draw(st.integers(0, 3)))]
        return "[" + ", ".join(items) + "]"
    members = [f'"{draw(keys)}"{draw(st.sampled_from(["", " ", chr(9)]))}: {draw(json_text(depth + 1))}'
               for _ in range(draw(st.integers(0, 4)))]
    return "{" + ", ".join(members) + "}"


@given(json_text())
def test_duplicate_check_agrees_with_the_reference(text: str) -> None:
    body = text.encode()
    assert has_duplicate_keys(body, orjson.loads(body)) == _dups_by_reference(body)


SCHEMA = {"type": "object", "properties": {
    "region": {"type": "string", "x-mcp-header": "Region"},
    "count": {"type": "integer", "x-mcp-header": "Count"},
    "opts": {"type": "object", "properties": {"flag": {"type": "boolean", "x-mcp-header": "Flag"}}},
    "text": {"type": "string"},
}}


def test_param_headers_must_mirror_arguments() -> None:
    args = {"region": "eu", "count": 3, "opts": {"flag": True}, "text": "t"}
    good = {"mcp-param-region": "eu", "mcp-param-count": "3.0", "mcp-param-flag": "true", "mcp-param-other": "x"}
    mismatch, forward = param_header_mismatch(SCHEMA, args, good)
    assert mismatch is None
    assert forward == {"mcp-param-region": "eu", "mcp-param-count": "3.0", "mcp-param-flag": "true"}
    assert param_header_mismatch(SCHEMA, args, {**good, "mcp-param-region": "us"})[0]
    assert param_header_mismatch(SCHEMA, args, {k: v for k, v in good.items() if k != "mcp-param-flag"})[0]
    assert param_header_mismatch(SCHEMA, {"text": "t"}, {"mcp-param-region": "eu"})[0]  # header without argument
    assert param_header_mismatch(SCHEMA, {**args, "count": 3}, {**good, "mcp-param-count": "3.5"})[0]
    name = "ünïcode region"
    encoded = {**good, "mcp-param-region": encode_header_value(name)}
    assert param_header_mismatch(SCHEMA, {**args, "region": name}, encoded)[0] is None
    assert param_header_mismatch({"type": "object"}, args, {})[0] is None  # nothing declared, nothing to check


def test_auth_throttle_counts_failures_per_window() -> None:
    window, waits = None, []
    for i in range(5):
        window, wait = note_failure(window, 3, 60.0, now=100.0 + i)
        waits.append(wait)
    assert waits[:3] == [None, None, None]
    assert waits[3] == 57.0 and waits[4] == 56.0  # until the window ends
    window, wait = note_failure(window, 3, 60.0, now=160.0)  # a new window
    assert wait is None and window.count == 1


def test_caps_name_what_is_full() -> None:
    assert over_cap(1, 5, 2, 10) is None
    assert over_cap(2, 5, 2, 10) == "actor"
    assert over_cap(1, 10, 2, 10) == "tenant"


def test_version_header_may_be_the_sessions_or_older() -> None:
    from gateway.transport import version_fits

    assert version_fits("2025-11-25", "2025-11-25")
    assert version_fits("2025-03-26", "2025-11-25")
    assert not version_fits("2025-11-25", "2025-06-18")
    assert not version_fits("2025-99-99", "2025-11-25")


def test_duplicate_check_fast_path_cases() -> None:
    for body, expected in [
        (b'{"a": ":x", "b": 1}', False),  # a string starting with a colon, written alike on both sides
        (b'{"a": ":x", "a": 1}', True),
        (b'{":k": 1, ":k": 2}', True),
        (b'{"a": "\xc3\xa9:", "b": {"c": [":", {"d": ":"}]}}', False),
    ]:
        assert has_duplicate_keys(body, orjson.loads(body)) is expected, body


def test_one_tenant_cannot_hold_every_connection_with_sessions() -> None:
    """Review finding 3c: the tenant session cap was equal to the connection cap."""
    from gateway.config import Limits

    limits = Limits()
    assert limits.max_sessions_per_tenant <= limits.max_connections // 2
    assert limits.max_connections_per_address < limits.max_connections
    assert limits.body_deadline_s >= limits.body_idle_timeout_s


def test_only_idle_sessions_with_nothing_in_flight_are_reclaimed_oldest_first() -> None:
    """Review finding 4: at a session cap, the actor's own abandoned sessions make room."""
    from gateway.ratelimit import to_reclaim

    sessions = [("new", 95.0, False), ("old", 10.0, False), ("busy", 0.0, True), ("older", 5.0, False)]
    assert to_reclaim(sessions, now=100.0, min_idle=60.0, need=1) == ["older"]
    assert to_reclaim(sessions, now=100.0, min_idle=60.0, need=5) == ["older", "old"]  # never busy, never fresh
    assert to_reclaim(sessions, now=100.0, min_idle=60.0, need=0) == []
    assert to_reclaim(sessions, now=100.0, min_idle=60.0, need=-3) == []
