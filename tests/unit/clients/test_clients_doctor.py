"""`gateway.clients.doctor`: how each client's entry is reached, and every failure in the user's words."""

from __future__ import annotations

import pytest
from clients_support import CANARY, REQUEST

from gateway.bridge import GatewayProtocolError, GatewayRejected, GatewayUnreachable
from gateway.clients import CLIENTS, Entry
from gateway.clients.doctor import PlanProblem, explain, plan


def entry_for(client: str, scope: str = "user") -> Entry:
    spec = CLIENTS[client]
    (entry,) = spec.read_entries(spec.merge(None, REQUEST, scope))  # type: ignore[arg-type]
    return entry


@pytest.mark.parametrize(
    ("client", "scope", "source"),
    [("claude-code", "user", "helper"), ("claude-code", "project", "env"), ("codex", "user", "env"),
     ("cursor", "user", "env"), ("vscode", "project", "env"), ("gemini", "user", "env"), ("windsurf", "user", "env"),
     ("claude-desktop", "user", "bridge")],
)
def test_every_client_entry_has_a_plan(client: str, scope: str, source: str) -> None:
    p = plan(client, entry_for(client, scope))
    assert p.source == source
    assert (p.tenant, p.actor) == ("acme", "alice")
    assert CANARY not in repr(p)
    if source == "env":
        assert p.token_env == "AEGRESS_MCP_GATEWAY_TOKEN"
    if client == "codex":  # Codex sends the identity as query parameters, not headers
        assert p.url == "http://127.0.0.1:8765/mcp?tenantId=acme&actorId=alice" and p.identity_headers == {}
    elif source != "helper":
        assert p.url == REQUEST.url
        assert p.identity_headers == {"X-Aegress-Tenant-Id": "acme", "X-Aegress-Actor-Id": "alice"}
    if source == "bridge":
        assert p.command[-7:] == ("bridge", "--url", REQUEST.url, "--tenant", "acme", "--actor", "alice")


def test_entries_without_url_or_token_source_are_reported() -> None:
    with pytest.raises(PlanProblem) as no_url:
        plan("cursor", Entry("aegress", None, "acme", "alice", token_env="X"))
    assert no_url.value.check.code == "entry-incomplete"
    # no token source: an OAuth-mode entry (or a broken bearer one); the probe of the gateway tells which
    oauth = plan("cursor", Entry("aegress", "http://h/mcp", "acme", None))
    assert oauth.source == "oauth" and oauth.identity_headers == {"X-Aegress-Tenant-Id": "acme"}


def test_an_entry_without_a_token_meets_the_gateways_challenge() -> None:
    from gateway.clients.doctor import explain_challenge

    p = plan("cursor", Entry("aegress", "https://gw.example.com/mcp", "acme", None))
    www = 'Bearer realm="aegress", resource_metadata="https://gw.example.com/.well-known/oauth-protected-resource/mcp"'
    good = {"resource": "https://gw.example.com/mcp", "authorization_servers": ["https://gw.example.com"]}
    check = explain_challenge(p, 401, www, good)
    assert check.ok and "https://gw.example.com" in check.detail
    assert explain_challenge(p, None, "", None).code == "gateway-down"
    bearer = explain_challenge(p, 401, 'Bearer realm="aegress"', None)  # a bearer-mode gateway
    assert not bearer.ok and bearer.code == "not-oauth" and "--auth bearer" in (bearer.hint or "")
    assert explain_challenge(p, 200, "", None).code == "not-oauth"
    other = explain_challenge(p, 401, www, {**good, "resource": "https://elsewhere.example/mcp"})
    assert other.code == "wrong-url"


def rejected(status: int, code: str | None, message: str = "m", www: str | None = None) -> GatewayRejected:
    return GatewayRejected(status, code, message, www)


@pytest.mark.parametrize(
    ("error", "code", "words"),
    [
        (GatewayUnreachable("http://127.0.0.1:8765/mcp", "ConnectError"), "gateway-down", "gateway down"),
        (rejected(401, "invalid-token", www='Bearer realm="aegress", error="invalid_token"'), "token-revoked",
         "revoked"),
        (rejected(401, "unauthorized", "Missing bearer token."), "token-missing", "no usable token"),
        (rejected(403, "binding", "X-Aegress-Tenant-Id does not match the token."), "tenant-mismatch",
         "tenant mismatch"),
        (rejected(421, "invalid-host"), "host-refused", "refused the request"),
        (rejected(404, None, "Not Found"), "wrong-url", "no MCP endpoint"),
        (rejected(500, "upstream", "boom"), "upstream", "HTTP 500"),
        (GatewayProtocolError("not JSON"), "protocol", "did not speak MCP"),
        (TimeoutError(), "gateway-timeout", "in time"),
    ],
)
def test_explain_names_each_failure(error: Exception, code: str, words: str) -> None:
    p = plan("gemini", entry_for("gemini"))
    check = explain(error, p)
    assert not check.ok and check.code == code and words in check.detail


def test_hints_say_how_to_fix_it() -> None:
    env_plan = plan("codex", entry_for("codex"))
    revoked = explain(rejected(401, "invalid-token"), env_plan)
    assert "aegress token issue --tenant acme --actor alice" in (revoked.hint or "")
    assert 'eval "$(aegress client env --tenant acme --actor alice)"' in (revoked.hint or "")
    helper_plan = plan("claude-code", entry_for("claude-code"))
    assert "client env" not in (explain(rejected(401, "invalid-token"), helper_plan).hint or "")
    assert "aegress serve" in (explain(GatewayUnreachable("u", "r"), env_plan).hint or "")
