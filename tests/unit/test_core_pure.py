"""Pure decisions of the gateway core: binding, naming, URL rules, envelopes, Host/Origin checks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import binding, naming, netguard
from gateway.errors import BindingError, InvalidInput, ProtocolError
from gateway.jsonrpc import validate_message
from gateway.methods import merge_capabilities
from gateway.transport import default_allowed, host_allowed, origin_allowed
from gateway.types import Identity
from gateway.upstreams.stdio import child_env

ME = Identity("acme", "alice", "tok_1")


def test_bind_accepts_absent_or_matching_claims() -> None:
    assert binding.bind(ME, binding.Claims()) == ME
    assert binding.bind(ME, binding.Claims(["acme"], ["alice"], ["acme"], ["alice"])) == ME


@pytest.mark.parametrize(
    "claims",
    [
        binding.Claims(header_tenant=["other"]),
        binding.Claims(header_actor=["bob"]),
        binding.Claims(query_tenant=["other"]),
        binding.Claims(query_actor=["bob"]),
        binding.Claims(header_tenant=["acme", "acme"]),
        binding.Claims(query_actor=["alice", "alice"]),
        binding.Claims(header_tenant=["ACME"]),  # compared exactly, no case folding
        binding.Claims(header_tenant=["acme "]),
        binding.Claims(header_tenant=["acm\u00e9"]),
        binding.Claims(header_tenant=[""]),
        binding.Claims(header_tenant=["acme"], query_tenant=["other"]),
    ],
)
def test_bind_refuses_mismatch_duplicates_and_non_ascii(claims: binding.Claims) -> None:
    with pytest.raises(BindingError) as err:
        binding.bind(ME, claims)
    assert "acme" not in err.value.message and "alice" not in err.value.message


@given(st.text(max_size=20))
def test_bind_only_accepts_the_exact_tenant(claim: str) -> None:
    try:
        binding.bind(ME, binding.Claims(header_tenant=[claim]))
        assert claim == "acme"
    except BindingError:
        assert claim != "acme"


@given(st.from_regex(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){0,20}", fullmatch=True), st.text(min_size=1, max_size=30))
def test_prefixed_names_split_back(upstream: str, name: str) -> None:
    assert naming.split_prefixed(naming.prefixed(upstream, name)) == (upstream, name)
    assert naming.split_prefixed_uri(naming.prefixed_uri(upstream, "file:///x")) == (upstream, "file:///x")


def test_upstream_names_cannot_hold_separators() -> None:
    for bad in ("a__b", "a+b", "A", "-a", "a-", "a--b", "", "a" * 41, "ä"):
        with pytest.raises(InvalidInput):
            naming.check_upstream_name(bad)
    assert naming.check_upstream_name("files-ro") == "files-ro"


def test_collisions_only_between_exposed_names() -> None:
    names = {"a": ["echo", "x"], "b": ["echo"], "c": ["a__x"]}
    assert naming.find_collisions(names, {"a": True, "b": True, "c": True}) == []
    assert naming.find_collisions(names, {"a": False, "b": False, "c": True}) == ["echo"]
    assert naming.find_collisions(names, {"a": True, "b": True, "c": False}) == ["a__x"]


@pytest.mark.parametrize(
    ("url", "addresses", "ok"),
    [
        ("https://mcp.example.com/mcp", ["93.184.216.34"], True),
        ("https://mcp.example.com/mcp", ["93.184.216.34", "10.0.0.1"], False),
        ("http://127.0.0.1/mcp", ["127.0.0.1"], False),
        ("http://[::ffff:127.0.0.1]/mcp", ["::ffff:127.0.0.1"], False),
        ("http://169.254.169.254/", ["169.254.169.254"], False),
        ("http://100.64.0.1/", ["100.64.0.1"], False),
        ("https://x.example/", [], False),
        ("gopher://x.example/", ["93.184.216.34"], False),
    ],
)
def test_url_rules(url: str, addresses: list[str], ok: bool) -> None:
    if ok:
        netguard.check_url(url, addresses, allow_private=False)
    else:
        with pytest.raises(InvalidInput):
            netguard.check_url(url, addresses, allow_private=False)


def test_allow_private_still_requires_http() -> None:
    netguard.check_url("http://127.0.0.1:9/mcp", ["127.0.0.1"], allow_private=True)
    with pytest.raises(InvalidInput):
        netguard.check_url("file:///etc/passwd", [], allow_private=True)


@pytest.mark.parametrize(
    "msg",
    [[], [{"jsonrpc": "2.0", "id": 1, "method": "ping"}], {"id": 1, "method": "ping"}, {"jsonrpc": "1.0"},
     {"jsonrpc": "2.0", "id": None, "method": "x"}, {"jsonrpc": "2.0", "id": 1.5, "method": "x"},
     {"jsonrpc": "2.0", "id": 1, "method": 3}, {"jsonrpc": "2.0", "id": 1}, "x", 3],
)
def test_envelopes_refused(msg: object) -> None:
    with pytest.raises(ProtocolError):
        validate_message(msg)


def test_envelopes_accepted() -> None:
    for msg in ({"jsonrpc": "2.0", "id": 1, "method": "ping"}, {"jsonrpc": "2.0", "method": "notifications/x"},
                {"jsonrpc": "2.0", "id": "a", "result": {}}, {"jsonrpc": "2.0", "id": 2, "error": {"code": 1}}):
        assert validate_message(msg) is msg


def test_host_and_origin_checks() -> None:
    hosts, origins = default_allowed("127.0.0.1")
    assert host_allowed("127.0.0.1:8765", hosts) and host_allowed("localhost:1", hosts)
    assert host_allowed("[::1]:9", hosts) and host_allowed("localhost", hosts)
    for bad in ("evil.com", "localhost:80.evil.com", "127.0.0.1.evil.com:80", "localhost:", None, ""):
        assert not host_allowed(bad, hosts)
    assert origin_allowed(None, origins)
    assert origin_allowed("http://localhost:3000", origins)
    assert not origin_allowed("http://evil.com", origins)
    assert not origin_allowed("null", origins)


def test_capabilities_are_honest() -> None:
    merged = merge_capabilities([
        {"tools": {"listChanged": True}},
        {"resources": {"subscribe": True, "listChanged": False}, "logging": {}},
    ])
    assert merged == {"tools": {"listChanged": True}, "resources": {"subscribe": True}, "logging": {}}
    assert merge_capabilities([]) == {"tools": {}}
    assert "prompts" not in merge_capabilities([{"tools": {}}])


def test_child_environment_is_explicit() -> None:
    parent = {"PATH": "/bin", "HOME": "/root", "AEGRESS_HOME": "/x", "DATABASE_URL": "postgres://secret",
              "AWS_SECRET_ACCESS_KEY": "k"}
    env = child_env({"FOO": "1"}, parent)
    assert env == {"PATH": "/bin", "HOME": "/root", "FOO": "1"}
