"""Pure pieces behind the upstream review fixes: profiles from known capability flags only, credential
scrubbing of forwarded errors, and which 404 bodies are an answer to our request."""

from __future__ import annotations

from gateway.proxy import Profile, client_error, known_capabilities, scrub_value
from gateway.upstreams.http import _answers


def test_a_profile_holds_only_the_flags_mcp_defines() -> None:
    plain = Profile.of("2025-11-25", {"sampling": {}, "roots": {"listChanged": True}})
    for noise in range(1, 50):
        caps = {"sampling": {"n": noise, "context": "no"}, "roots": {"listChanged": True, "x": noise},
                "experimental": {"k": noise}}
        assert Profile.of("2025-11-25", caps) == plain


def test_known_capabilities_keep_each_defined_flag() -> None:
    caps = {"sampling": {"context": {"a": 1}, "tools": {}}, "elicitation": {"form": {}, "url": {"b": 2}},
            "roots": {"listChanged": True}}
    assert known_capabilities(caps) == {"sampling": {"context": {}, "tools": {}},
                                        "elicitation": {"form": {}, "url": {}}, "roots": {"listChanged": True}}
    assert known_capabilities({"roots": {"listChanged": 1}, "sampling": "yes"}) == {"roots": {}}


def test_forwarded_errors_are_scrubbed_before_they_are_cut() -> None:
    secret = "s3cret-value-for-upstream"
    err = {"code": -32042, "message": "x" * 995 + secret, "data": {"a": [secret, {secret: 1}], "n": 3}}
    out = client_error(scrub_value(err, (secret,)), forward_data=False)
    assert secret not in str(out) and secret[:5] not in out["message"]
    assert out["data"] == {"a": ["[REDACTED]", {"[REDACTED]": 1}], "n": 3}


def test_only_a_response_to_our_id_counts_as_an_answer() -> None:
    assert _answers({"jsonrpc": "2.0", "id": 7, "result": {}}, 7)
    assert _answers({"jsonrpc": "2.0", "id": 7, "error": {"code": 1, "message": "m"}}, 7)
    assert not _answers({"jsonrpc": "2.0", "id": "server-error", "error": {"message": "Session not found"}}, 7)
    assert not _answers({"jsonrpc": "2.0", "id": None, "error": {"message": "Session not found"}}, 7)
    assert not _answers({"jsonrpc": "2.0", "id": 7, "result": {}}, None)
    assert not _answers({"jsonrpc": "2.0", "id": 7, "method": "x"}, 7)
    assert not _answers([1], 7)
