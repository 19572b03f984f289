"""Sealed session ids (gateway.sessions): what one replica seals, another with the same key opens; anything
else (tampered, foreign, malformed, expired, from the future) opens to None, never to an exception."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import sessions
from gateway.proxy import known_capabilities

KEY = sessions.session_key(b"m" * 32, "database-half")
NOW = 1_800_000_000.0
DAY = 24 * 3600.0
CAPS = known_capabilities({"sampling": {"context": {}}, "elicitation": {"form": {}, "junk": 1},
                           "roots": {"listChanged": True}, "experimental": {"x": 1}})


def claims(**over: object) -> sessions.SessionClaims:
    base = sessions.new_claims("replica-a", "acme", "alice", "2025-11-25", CAPS,
                               {"name": "claude-code", "version": "2.1.0", "title": "dropped"}, NOW)
    return sessions.SessionClaims(**{**{f: getattr(base, f) for f in base.__slots__}, **over})  # type: ignore[arg-type]


def test_a_sealed_id_opens_to_the_same_claims_and_is_visible_ascii() -> None:
    c = claims()
    sid = sessions.seal(c, KEY)
    assert sessions.unseal(sid, KEY, NOW + 10, DAY) == c
    assert c.client_info == {"name": "claude-code", "version": "2.1.0"}
    assert c.capabilities == {"sampling": {"context": {}}, "elicitation": {"form": {}}, "roots": {"listChanged": True}}
    assert all(0x21 <= ord(ch) <= 0x7E for ch in sid) and len(sid) < 500
    assert sessions.seal(claims(), KEY) != sid  # the nonce: two sessions never share an id


def test_the_largest_possible_id_stays_under_a_kilobyte() -> None:
    big = claims(replica="r" * 64, tenant_id="t" * 128, actor_id="a" * 128,
                 client_info=sessions.kept_client_info({"name": "\u00e9" * 500, "version": "v" * 500}))
    assert len(big.client_info["name"].encode()) <= 64 and len(big.client_info["version"]) == 32
    sid = sessions.seal(big, KEY)
    assert len(sid) < 1024 and sessions.unseal(sid, KEY, NOW, DAY) == big


def test_tampered_foreign_malformed_and_expired_ids_open_to_none() -> None:
    sid = sessions.seal(claims(), KEY)
    body, _, tag = sid.partition(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["a"] = "mallory"
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    other_key = sessions.session_key(b"m" * 32, "another-database")
    for bad in (f"{forged}.{tag}", body + "." + tag[:-2] + ("AA" if tag[-2:] != "AA" else "BB"), body, "." + tag,
                body + ".", "", "x" * 5000, sid + "x", "é" + sid, sessions.seal(claims(), other_key)):
        assert sessions.unseal(bad, KEY, NOW, DAY) is None, bad
    assert sessions.unseal(sid, KEY, NOW + DAY + 1, DAY) is None  # too old
    assert sessions.unseal(sid, KEY, NOW - sessions.FUTURE_SKEW_S - 1, DAY) is None  # issued in the future
    assert sessions.unseal(sid, KEY, NOW - sessions.FUTURE_SKEW_S + 1, DAY) is not None  # within clock skew


def test_the_key_needs_both_the_master_key_and_the_database_secret() -> None:
    assert sessions.session_key(b"m" * 32, "s") != sessions.session_key(b"n" * 32, "s")
    assert sessions.session_key(b"m" * 32, "s") != sessions.session_key(b"m" * 32, "t")
    assert sessions.digest("abc") == sessions.digest("abc") and len(sessions.digest("abc")) == 64


@given(st.text(max_size=3000))
def test_any_string_opens_to_none_and_never_raises(text: str) -> None:
    assert sessions.unseal(text, KEY, NOW, DAY) is None


@pytest.mark.parametrize("field, value", [("v", 2), ("at", "1"), ("at", True), ("c", []), ("t", 5), ("i", None)])
def test_a_well_tagged_payload_of_the_wrong_shape_opens_to_none(field: str, value: object) -> None:
    payload = {"v": 1, "r": "a", "t": "acme", "a": "alice", "p": "2025-11-25", "c": {}, "i": {}, "at": int(NOW),
               "n": "x", field: value}
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    tag = base64.urlsafe_b64encode(sessions._tag(KEY, body)).rstrip(b"=").decode()
    assert sessions.unseal(f"{body}.{tag}", KEY, NOW, DAY) is None


def test_relayed_ids_name_their_replica() -> None:
    from gateway.proxy import request_owner

    assert request_owner("aeg-12@replica-a") == "replica-a"
    assert request_owner("aeg-confirm-rev_abc@r-1a2b:x.y") == "r-1a2b:x.y"
    for other in ("aeg-12", "aeg-12@", "x-1@replica-a", 12, None, {"id": 1}):
        assert request_owner(other) is None


def test_a_response_crosses_replicas_byte_for_byte() -> None:
    from gateway.transport import _decode_asgi, _encode_asgi

    start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
    event = "id: s1@a:1\ndata: {\"x\":\"h\u00e9\u2603\"}\n\n".encode()
    body = {"type": "http.response.body", "body": event + bytes(range(256)), "more_body": True}
    for message in (start, body, {**body, "more_body": False, "body": b""}):
        assert _decode_asgi(json.loads(json.dumps(_encode_asgi(message)))) == message
    assert _decode_asgi({"type": "http.response.body", "body": 5}) is None and _decode_asgi("x") is None
