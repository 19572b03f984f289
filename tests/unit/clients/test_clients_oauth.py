"""OAuth-mode client entries (`aegress client setup --auth oauth`): every client gets an entry that holds
no credential at all (no token, no env reference, no helper), only the URL and the tenant (and actor)
claims; setting one up over an existing bearer entry drops the bearer parts and keeps the user's own."""

from __future__ import annotations

import dataclasses
import json

import pytest
from clients_support import REQUEST

from gateway.clients import CLIENTS
from gateway.clients.claude_desktop import oauth_steps
from gateway.errors import UsageError

OAUTH = dataclasses.replace(REQUEST, url="https://gw.example.com/t/acme/mcp", oauth=True)
ENTRY_CLIENTS = [(name, scope) for name, spec in CLIENTS.items() for scope in spec.scopes if name != "claude-desktop"]
NO_SECRET = ("authorization", "bearer", "token", "${", "headershelper", "bridge")


@pytest.mark.parametrize(("client", "scope"), ENTRY_CLIENTS)
def test_oauth_entries_hold_no_credential(client: str, scope: str) -> None:
    spec = CLIENTS[client]
    text = spec.merge(None, OAUTH, scope)  # type: ignore[arg-type]
    lowered = text.lower()
    assert not any(word in lowered for word in NO_SECRET), text
    assert "https://gw.example.com/t/acme/mcp" in text and "X-Aegress-Tenant-Id" in text
    [entry] = spec.read_entries(text)
    assert (entry.tenant, entry.actor, entry.token_env, entry.helper) == ("acme", "alice", None, None)
    assert entry.url == "https://gw.example.com/t/acme/mcp"
    without_actor = spec.merge(None, dataclasses.replace(OAUTH, actor=""), scope)  # type: ignore[arg-type]
    assert "X-Aegress-Actor-Id" not in without_actor
    assert spec.read_entries(without_actor)[0].actor is None


@pytest.mark.parametrize(("client", "scope"), ENTRY_CLIENTS)
def test_switching_a_bearer_entry_to_oauth_drops_the_bearer_parts(client: str, scope: str) -> None:
    spec = CLIENTS[client]
    bearer = spec.merge(None, REQUEST, scope)  # type: ignore[arg-type]
    if client == "codex":
        bearer = bearer.replace('bearer_token_env_var = "AEGRESS_MCP_GATEWAY_TOKEN"',
                                'bearer_token_env_var = "AEGRESS_MCP_GATEWAY_TOKEN"\ntool_timeout_sec = 99')
    else:
        data = json.loads(bearer)
        container = next(iter(data))
        data[container]["aegress"]["timeout"] = 99
        data[container]["aegress"].setdefault("headers", {})["X-Custom"] = "kept"
        bearer = json.dumps(data, indent=2)
    switched = spec.merge(bearer, OAUTH, scope)  # type: ignore[arg-type]
    lowered = switched.lower()
    assert not any(word in lowered for word in NO_SECRET), switched
    assert "99" in switched and "X-Aegress-Tenant-Id" in switched
    if client != "codex":
        assert "X-Custom" in switched
    [entry] = spec.read_entries(switched)
    assert entry.tenant == "acme" and entry.token_env is None and entry.helper is None
    back = spec.merge(switched, REQUEST, scope)  # type: ignore[arg-type]
    assert spec.read_entries(back)[0].token_env == "AEGRESS_MCP_GATEWAY_TOKEN" or spec.read_entries(back)[0].helper


def test_claude_desktop_gets_connector_steps_not_a_file_entry() -> None:
    with pytest.raises(UsageError, match="custom connector"):
        CLIENTS["claude-desktop"].render_entry(OAUTH, "user")
    steps = oauth_steps(OAUTH)
    assert "Add custom connector" in steps and OAUTH.url in steps and "token" not in steps.lower()


def test_generic_snippet_in_oauth_mode() -> None:
    text = CLIENTS["generic"].snippet(OAUTH, "user")
    assert "Authorization" not in text and "AEGRESS_MCP_GATEWAY_TOKEN" not in text
    assert "www-authenticate" in text and OAUTH.url in text


def test_an_actor_is_optional_only_in_oauth_mode() -> None:
    from gateway.errors import InvalidInput

    with pytest.raises(InvalidInput):
        dataclasses.replace(REQUEST, actor="")
    assert dataclasses.replace(REQUEST, actor="", oauth=True).actor == ""
