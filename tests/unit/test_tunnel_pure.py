"""Pure parts of the private MCP tunnel path: public URL, ingress rules, forwarded headers, static binding
references, the tunnel inventory and how `tunnel check` reads answers (gateway.ingress, gateway.tunnel)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import ConfigError
from gateway.ingress import (
    check_auth_mode,
    check_ingress,
    client_address,
    edge_host,
    is_loopback_host,
    parse_public_url,
    parse_secret_ref,
    parse_trusted_proxies,
    read_secret_ref,
    static_binding,
)
from gateway.tunnel import (
    REASONS,
    CheckReport,
    EvidenceHit,
    _Answer,
    _Failed,
    _find_evidence,
    _messages,
    _reply,
    check_tunnel,
    classify_health,
    inventory,
)


# -- public URL ------------------------------------------------------------------------------------
def test_public_url_https_default_port() -> None:
    url = parse_public_url("https://MCP.Example.com/mcp/")
    assert url.url == "https://MCP.Example.com/mcp"
    assert url.host_values == ("mcp.example.com", "mcp.example.com:443")
    assert url.origin == "https://mcp.example.com"
    assert url.health == "https://MCP.Example.com/health"


def test_public_url_explicit_port_and_prefix() -> None:
    url = parse_public_url("https://gw.example.com:8443/tenant-a/mcp")
    assert url.host_values == ("gw.example.com:8443",)
    assert url.origin == "https://gw.example.com:8443"
    assert url.health == "https://gw.example.com:8443/tenant-a/health"


def test_public_url_plain_http_only_to_loopback() -> None:
    assert parse_public_url("http://127.0.0.2:4000/mcp").host_values == ("127.0.0.2:4000",)
    assert parse_public_url("http://[::1]:4000/mcp").host_values == ("[::1]:4000",)
    assert parse_public_url("http://localhost/mcp").host_values == ("localhost", "localhost:80")
    with pytest.raises(ConfigError, match="unencrypted") as exc:
        parse_public_url("http://mcp.example.com/mcp")
    assert exc.value.code == "public-url"


@pytest.mark.parametrize("bad", [
    "ftp://mcp.example.com/mcp", "https:///mcp", "https://user:pw@mcp.example.com/mcp",
    "https://mcp.example.com/mcp?token=x", "https://mcp.example.com/mcp#x", "https://mcp.example.com/",
    "https://mcp.example.com/sse", "https://mcp.example.com:99999/mcp", "not a url",
])
def test_public_url_refusals(bad: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_public_url(bad)
    assert exc.value.code == "public-url"
    assert "pw@" not in exc.value.message  # a URL's credentials are never echoed


def test_loopback_names() -> None:
    assert all(is_loopback_host(h) for h in ("127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost", "LOCALHOST"))
    assert not any(is_loopback_host(h) for h in ("0.0.0.0", "10.0.0.1", "example.com", "localhost.example.com"))


# -- ingress and auth mode ---------------------------------------------------------------------------
def test_tunnel_ingress_rules() -> None:
    assert check_ingress("direct", "127.0.0.1", None, False) is None
    assert check_ingress("direct", "0.0.0.0", "https://gw.example.com/mcp", True) is not None
    public = check_ingress("tunnel", "127.0.0.1", "https://gw.example.com/mcp", False)
    assert public is not None and public.host_values[0] == "gw.example.com"
    for host, allow in (("0.0.0.0", True), ("10.1.2.3", False), ("127.0.0.1", True)):
        with pytest.raises(ConfigError) as exc:
            check_ingress("tunnel", host, "https://gw.example.com/mcp", allow)
        assert exc.value.code == "ingress-bind"
    with pytest.raises(ConfigError, match="public URL") as exc:
        check_ingress("tunnel", "127.0.0.1", None, False)
    assert exc.value.code == "public-url"
    with pytest.raises(ConfigError) as exc:
        check_ingress("funnel", "127.0.0.1", None, False)
    assert exc.value.code == "ingress-mode"


def test_auth_modes() -> None:
    assert check_auth_mode("bearer") == "bearer"
    assert check_auth_mode(" BEARER ") == "bearer"
    assert check_auth_mode("oauth") == "oauth"
    with pytest.raises(ConfigError, match="not a known mode") as exc:
        check_auth_mode("none")
    assert exc.value.code == "auth-mode"
    with pytest.raises(ConfigError, match="not a known mode"):
        check_auth_mode("none")


# -- forwarded headers -------------------------------------------------------------------------------
PROXIES = parse_trusted_proxies(["127.0.0.1", "10.0.0.0/8, ::1"])


def test_trusted_proxy_parsing() -> None:
    assert [str(net) for net in PROXIES] == ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]
    assert isinstance(PROXIES[0], ipaddress.IPv4Network)
    with pytest.raises(ConfigError) as exc:
        parse_trusted_proxies(["127.0.0.1", "proxy.example.com"])
    assert exc.value.code == "trusted-proxy"


def test_forwarded_for_only_from_trusted_peers() -> None:
    assert client_address("127.0.0.1", ["203.0.113.7"], ()) == "127.0.0.1"  # nothing configured: never believed
    assert client_address("192.0.2.1", ["203.0.113.7"], PROXIES) == "192.0.2.1"  # not a named proxy
    assert client_address("127.0.0.1", ["203.0.113.7"], PROXIES) == "203.0.113.7"
    # the right-most address that is not a proxy: what a client wrote further left is its own claim
    assert client_address("127.0.0.1", ["198.51.100.9, 203.0.113.7, 10.1.1.1"], PROXIES) == "203.0.113.7"
    assert client_address("127.0.0.1", ["198.51.100.9", "203.0.113.7:5555"], PROXIES) == "203.0.113.7"
    assert client_address("::1", ["[2001:db8::5]:443"], PROXIES) == "2001:db8::5"
    assert client_address("127.0.0.1", ["10.0.0.1, 10.0.0.2"], PROXIES) == "127.0.0.1"  # proxies all the way
    assert client_address("127.0.0.1", ["garbage, 203.0.113.7"], PROXIES) == "203.0.113.7"
    assert client_address("127.0.0.1", ["203.0.113.7, garbage"], PROXIES) == "127.0.0.1"
    assert client_address("127.0.0.1", [], PROXIES) == "127.0.0.1"


@given(st.lists(st.text(max_size=30), max_size=4), st.sampled_from(["192.0.2.1", "2001:db8::1", "", "x"]))
def test_an_untrusted_peer_is_always_counted_as_itself(forwarded: list[str], peer: str) -> None:
    assert client_address(peer, forwarded, PROXIES) == peer


def test_forwarded_host_only_from_trusted_peers() -> None:
    assert edge_host("127.0.0.1", "127.0.0.1:8765", ["gw.example.com"], ()) == "127.0.0.1:8765"
    assert edge_host("192.0.2.1", "127.0.0.1:8765", ["gw.example.com"], PROXIES) == "127.0.0.1:8765"
    assert edge_host("127.0.0.1", "127.0.0.1:8765", ["gw.example.com"], PROXIES) == "gw.example.com"
    assert edge_host("127.0.0.1", "a", ["evil.example, gw.example.com"], PROXIES) == "gw.example.com"
    assert edge_host("127.0.0.1", "a", [" "], PROXIES) == "a"
    assert edge_host("127.0.0.1", None, [], PROXIES) is None


# -- static binding ----------------------------------------------------------------------------------
def test_static_binding_settings() -> None:
    assert static_binding(None, None, None) is None
    binding = static_binding("acme", "alice", None)
    assert binding is not None and binding.token_ref == "keyring:token:acme:alice"
    assert static_binding("acme", "alice", "file:/run/secrets/aegress").token_ref == "file:/run/secrets/aegress"  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="AEGRESS_STATIC_ACTOR not set") as exc:
        static_binding("acme", None, None)
    assert exc.value.code == "static-binding"
    with pytest.raises(ConfigError, match="AEGRESS_STATIC_TENANT and AEGRESS_STATIC_ACTOR"):
        static_binding(None, None, "file:/x")
    with pytest.raises(ConfigError) as exc:
        static_binding("acme", "alice", "aeg_" + "x" * 40)  # a token is not a reference
    assert exc.value.code == "secret-ref" and "x" * 40 not in exc.value.message


def test_secret_refs() -> None:
    assert parse_secret_ref("keyring:token:acme:alice") == ("keyring", "token:acme:alice")
    assert parse_secret_ref("file:/run/secrets/t") == ("file", "/run/secrets/t")
    for bad in ("keyring:", "file:relative/path", "env:TOKEN", "vault:x"):
        with pytest.raises(ConfigError):
            parse_secret_ref(bad)


def test_reading_secret_refs(tmp_path: Path) -> None:
    from gateway import credentials

    path = tmp_path / "token"
    with pytest.raises(ConfigError) as exc:
        read_secret_ref(f"file:{path}")
    assert exc.value.code == "static-token-missing"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"aeg_secret\n")
    os.close(fd)
    assert read_secret_ref(f"file:{path}") == "aeg_secret"
    path.chmod(0o644)
    with pytest.raises(ConfigError) as exc:
        read_secret_ref(f"file:{path}")
    assert exc.value.code == "insecure-key-file"
    before = credentials._home
    credentials.set_home(tmp_path / "home")  # no keyring in tests: the data dir's 0600 file
    try:
        with pytest.raises(ConfigError) as exc:
            read_secret_ref("keyring:token:acme:alice")
        assert exc.value.code == "static-token-missing"
        credentials.store_secret("token:acme:alice", "aeg_kept")
        assert read_secret_ref("keyring:token:acme:alice") == "aeg_kept"
    finally:
        credentials._home = before


# -- inventory -----------------------------------------------------------------------------------------
def test_inventory_names_exactly_what_is_missing() -> None:
    inv = inventory({"MCP_TUNNEL_PROVIDER": "cloudflared", "MCP_TUNNEL_OWNER": "ops@example.com",
                     "MCP_TUNNEL_ID": "  "})
    assert inv.missing == ("MCP_TUNNEL_ID", "MCP_TUNNEL_WORKSPACE")
    assert inv.fields["provider"] == "cloudflared" and inv.provider_name == "Cloudflare Tunnel (cloudflared)"
    assert not inv.ok
    full = {"MCP_TUNNEL_PROVIDER": "openai", "MCP_TUNNEL_ID": "tun_1", "MCP_TUNNEL_WORKSPACE": "ws",
            "MCP_TUNNEL_OWNER": "ops", "MCP_INGRESS_MODE": "tunnel", "MCP_PUBLIC_URL": "https://gw.example.com/mcp"}
    inv = inventory(full)
    assert inv.ok and inv.missing == () and inv.to_dict()["ingress"] == "tunnel"
    inv = inventory({**full, "MCP_TUNNEL_PROVIDER": "carrier-pigeon", "MCP_PUBLIC_URL": "http://gw.example.com/mcp",
                     "MCP_INGRESS_MODE": "sideways"})
    assert not inv.ok and inv.missing == ()
    assert [p.split("=")[0].split(":")[0] for p in inv.problems] == ["MCP_TUNNEL_PROVIDER", "MCP_INGRESS_MODE",
                                                                      "MCP_PUBLIC_URL"]


# -- reading answers -------------------------------------------------------------------------------------
def _json(status: int, body: bytes, ctype: str = "application/json", **headers: str) -> _Answer:
    return _Answer(status, {"content-type": ctype, **headers}, body)


def test_health_answers() -> None:
    ok = b'{"status":"ok","live":true,"ready":true,"store":"ok","recorder":"ok","evidence":"on"}'
    assert classify_health(_json(200, ok)) == (None, "Aegress answers (ready, evidence on)", True)
    off = ok.replace(b'"on"', b'"off (--no-evidence: calls are not recorded)"')
    assert classify_health(_json(200, off))[0] is None and classify_health(_json(200, off))[2] is False
    unready = b'{"live":true,"ready":false,"evidence":"on","reason":"the store is unreachable"}'
    reason, detail, _ = classify_health(_json(503, unready))
    assert reason == "gateway-unready" and "the store is unreachable" in detail
    assert classify_health(_json(530, b"error code: 1033", "text/html"))[0] == "tunnel-down"
    assert classify_health(_json(404, b"... ERR_NGROK_3200 ...", "text/html"))[0] == "tunnel-down"
    assert classify_health(_json(502, b"Bad Gateway", "text/plain"))[0] == "target-down"
    assert classify_health(_json(502, b"ERR_NGROK_8012", "text/html"))[0] == "target-down"
    reason, detail, _ = classify_health(_json(301, b"", "text/html", location="https://gw.example.com/health"))
    assert reason == "wrong-target" and "https://gw.example.com/health" in detail
    assert classify_health(_json(404, b"Not Found", "text/plain"))[0] == "wrong-target"
    assert classify_health(_json(200, b'{"status":"ok"}'))[0] == "wrong-target"  # some other service's health
    assert set(REASONS) >= {"tunnel-down", "target-down", "wrong-target", "gateway-unready", "host-refused",
                            "auth-failed", "protocol", "evidence-missing"}


def test_sse_and_json_answers() -> None:
    sse = _json(200, b'id: s:0\nretry: 500\ndata: \n\nevent: message\nid: s:1\ndata: {"jsonrpc":"2.0","method":'
                     b'"notifications/progress"}\n\nevent: message\ndata: {"jsonrpc":"2.0","id":2,"result":'
                     b'{"tools":[]}}\r\n\r\n', "text/event-stream")
    assert len(_messages(sse)) == 2
    assert _reply(sse, 2) == {"jsonrpc": "2.0", "id": 2, "result": {"tools": []}}
    assert _reply(sse, 3) is None
    assert _reply(_json(200, b'{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"x"}}'), 1) is not None
    assert _messages(_json(200, b"not json")) == []


def test_a_bad_url_fails_before_any_request() -> None:
    report = check_tunnel("http://gw.example.com/mcp", "aeg_x", None)
    assert report.reason == "wrong-target" and "unencrypted" in report.message
    assert [s.name for s in report.steps] == ["url"] and report.to_dict()["ok"] is False


def test_the_evidence_wait_is_bounded() -> None:
    now = [0.0]
    calls: list[str] = []

    def lookup(probe: str) -> EvidenceHit | None:
        calls.append(probe)
        return None

    def sleep(s: float) -> None:
        now[0] += s

    report = CheckReport("https://gw.example.com/mcp", probe="aegress_tunnel_check_x")
    with pytest.raises(_Failed) as exc:
        _find_evidence(report, "aeg_x", lambda token: lookup, True, 2.0, sleep, lambda: now[0])
    assert exc.value.reason == "evidence-missing" and 2.0 <= now[0] <= 2.5 and len(calls) <= 10
    with pytest.raises(_Failed, match="--no-evidence"):
        _find_evidence(report, "aeg_x", lambda token: lookup, False, 2.0, sleep, lambda: now[0])

    hit = EvidenceHit(1, "o", 7, "acme", "alice", "hidden")
    answers = iter([None, None, hit])
    _find_evidence(report, "aeg_x", lambda token: lambda probe: next(answers), True, 5.0, sleep, lambda: now[0])
    assert report.evidence == hit and report.steps[-1].ok
