"""Merge behaviour across clients: refusals, awkward values, layouts, paths, no-secret guarantees."""

from __future__ import annotations

import dataclasses
import inspect
import json
import tomllib
from pathlib import PurePath

import pytest
from clients_support import CANARY, REQUEST
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.clients import CLIENTS, EntryRequest, Host, MalformedConfig, _jsonc, gateway_headers, unified_diff
from gateway.clients.codex import KNOWN_KEYS, codex_url, split_codex_url
from gateway.errors import InvalidInput, UsageError

FILE_CLIENTS = [name for name, spec in CLIENTS.items() if spec.scopes]
JSON_CLIENTS = [name for name in FILE_CLIENTS if name != "codex"]
ALL_SCOPES = [(name, scope) for name in FILE_CLIENTS for scope in CLIENTS[name].scopes]
CONTAINER = {"vscode": "servers"}

AWKWARD = [
    'quote " and \\ backslash',
    "unicode é ☃ 😀 \u2028 \u00a0x",
    "toml ''' \"\"\" [table] # not a comment = x",
    'json {"a": [1, 2]} , : }',
    "url ?&=%+/;#@!*()",
    "single ' quote and `backtick`",
]


# ---- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize("client", JSON_CLIENTS)
@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('{\n  "mcpServers": {\n    "x": {"url": "sk-live-SECRET"\n  }\n}\n', 6),
        ('{"mcpServers": {"x": 1}} trailing', 1),
        ("[1, 2]", 1),
        ('{\n  "a": 1\n  "b": 2\n}', 3),
        ('{"a": "unterminated\n}', 1),
        ('{"a": nul}', 1),
    ],
)
def test_malformed_json_is_refused_with_location(client: str, text: str, line: int) -> None:
    spec = CLIENTS[client]
    with pytest.raises(MalformedConfig) as info:
        spec.merge(text, REQUEST, spec.scopes[0], source="~/x.json")
    err = info.value
    assert err.line == line
    assert err.message.startswith("~/x.json cannot be edited safely: line ")
    assert err.hint and "move it aside" in err.hint
    assert "SECRET" not in err.message  # never quote file content
    with pytest.raises(MalformedConfig):
        spec.remove(text, "aegress")
    with pytest.raises(MalformedConfig):
        spec.read_entries(text)


@pytest.mark.parametrize(
    ("client", "comments", "trailing"),
    [
        ("claude-code", False, False),
        ("cursor", False, False),
        ("windsurf", False, False),
        ("claude-desktop", False, False),
        ("gemini", True, False),
        ("vscode", True, True),
    ],
)
def test_json_dialect_per_client(client: str, comments: bool, trailing: bool) -> None:
    spec = CLIENTS[client]
    key = CONTAINER.get(client, "mcpServers")
    commented = f'{{\n  // note\n  "{key}": {{}}\n}}\n'
    with_trailing = f'{{\n  "{key}": {{}},\n}}\n'
    for text, allowed in ((commented, comments), (with_trailing, trailing)):
        if allowed:
            merged = spec.merge(text, REQUEST, spec.scopes[0])
            assert spec.read_entries(merged)[0].tenant == "acme"
            assert ("// note" in merged) == (text is commented)
        else:
            with pytest.raises(MalformedConfig):
                spec.merge(text, REQUEST, spec.scopes[0])


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"mcpServers": []}', '"mcpServers" is not an object'),
        ('{"mcpServers": {"aegress": "x"}}', 'the "aegress" entry is not an object'),
        ('{"mcpServers": {}, "mcpServers": {}}', 'the key "mcpServers" appears more than once'),
        ('{"mcpServers": {"aegress": {}, "aegress": {}}}', 'the key "aegress" appears more than once'),
    ],
)
def test_wrong_shape_is_refused(text: str, problem: str) -> None:
    with pytest.raises(MalformedConfig, match=problem):
        CLIENTS["cursor"].merge(text, REQUEST, "user")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('model = "x"\n[mcp_servers.a\nurl = "y"\n', 2),
        ("a = 1\na = 2\n", 2),
        ('[mcp_servers]\nx = "unterminated\n', 2),
    ],
)
def test_malformed_toml_is_refused_with_location(text: str, line: int) -> None:
    with pytest.raises(MalformedConfig) as info:
        CLIENTS["codex"].merge(text, REQUEST, "user", source="~/.codex/config.toml")
    assert info.value.line == line
    assert "~/.codex/config.toml" in info.value.message


def test_codex_wrong_shapes_are_refused() -> None:
    codex = CLIENTS["codex"]
    with pytest.raises(MalformedConfig, match="mcp_servers is not a table"):
        codex.merge("mcp_servers = 3\n", REQUEST, "user")
    with pytest.raises(MalformedConfig, match=r"mcp_servers\.aegress is not a table"):
        codex.merge('[mcp_servers]\naegress = "x"\n', REQUEST, "user")


def test_codex_inline_servers_table_is_extended_in_place() -> None:
    codex = CLIENTS["codex"]
    merged = codex.merge('mcp_servers = { a = { url = "https://a/mcp" } }\n', REQUEST, "user")
    data = tomllib.loads(merged)["mcp_servers"]
    assert data["a"] == {"url": "https://a/mcp"}
    assert data["aegress"]["bearer_token_env_var"] == "AEGRESS_MCP_GATEWAY_TOKEN"
    assert codex.merge(merged, REQUEST, "user") == merged


def test_codex_writes_only_known_keys() -> None:
    for scope in CLIENTS["codex"].scopes:
        assert set(CLIENTS["codex"].render_entry(REQUEST, scope)) <= set(KNOWN_KEYS)


# ---- awkward values -------------------------------------------------------------------------------


@pytest.mark.parametrize(("client", "scope"), ALL_SCOPES)
@pytest.mark.parametrize("value", AWKWARD)
def test_awkward_values_round_trip(client: str, scope: str, value: str) -> None:
    spec = CLIENTS[client]
    request = EntryRequest(url="https://gw.example/mcp?x=1", tenant=value, actor=value[::-1])
    merged = spec.merge(None, request, scope)  # type: ignore[arg-type]
    [entry] = spec.read_entries(merged)
    assert (entry.tenant, entry.actor, entry.url) == (request.tenant, request.actor, request.url)
    assert spec.merge(merged, request, scope) == merged  # type: ignore[arg-type]


_ids = st.text(
    st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="$"), min_size=1, max_size=40
).filter(lambda s: s == s.strip())


@settings(max_examples=60, deadline=None, database=None)
@given(tenant=_ids, actor=_ids)
def test_any_valid_identity_round_trips_everywhere(tenant: str, actor: str) -> None:
    request = EntryRequest(url=REQUEST.url, tenant=tenant, actor=actor)
    for client, scope in ALL_SCOPES:
        spec = CLIENTS[client]
        merged = spec.merge(None, request, scope)  # type: ignore[arg-type]
        [entry] = spec.read_entries(merged)
        assert (entry.tenant, entry.actor) == (tenant, actor), client


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None, database=None)
@given(
    others=st.dictionaries(st.text(max_size=10).filter(lambda k: k != "aegress"), _json_values, max_size=4),
    indent=st.sampled_from([2, 4, "\t", None]),
)
def test_other_servers_survive_merge_and_remove(others: dict, indent: int | str | None) -> None:
    spec = CLIENTS["claude-code"]
    original = json.dumps({"theme": "x", "mcpServers": others}, indent=indent, ensure_ascii=False) + "\n"
    merged = spec.merge(original, REQUEST, "project")
    data = json.loads(merged)
    assert {k: v for k, v in data["mcpServers"].items() if k != "aegress"} == others
    assert data["theme"] == "x"
    assert spec.merge(merged, REQUEST, "project") == merged
    assert spec.remove(merged, "aegress") == original


# ---- layouts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("", None),
        ("  \n", None),
        ("{}", '{\n  "mcpServers": {\n    "aegress": '),
        ('{"a":1}', '{"a":1,"mcpServers":{"aegress":{"type":"http"'),
        ('{"a": 1}', '{"a": 1, "mcpServers": {"aegress": {"type": "http"'),
        ('\ufeff{\n    "a": 1\n}\n', '\ufeff{\n    "a": 1,\n    "mcpServers": {\n        "aegress": {\n'),
        ('{\n  "mcpServers": {} // none yet\n}\n', '{\n  "mcpServers": {\n    "aegress": {'),
    ],
)
def test_layouts(before: str, after: str | None) -> None:
    spec = CLIENTS["claude-code"] if "//" not in before else CLIENTS["gemini"]
    merged = spec.merge(before, REQUEST, "project")
    if after is None:
        assert merged == spec.snippet(REQUEST, "project")
    else:
        assert merged.startswith(after), merged
    assert spec.merge(merged, REQUEST, "project") == merged
    if before.strip():
        assert spec.read_entries(merged)[0].actor == "alice"


def test_update_keeps_user_keys_and_formatting_when_nothing_changed() -> None:
    spec = CLIENTS["cursor"]
    text = (
        '{"mcpServers": {"aegress": {"url": "http://127.0.0.1:8765/mcp", "headers": {'
        '"Authorization": "Bearer ${env:AEGRESS_MCP_GATEWAY_TOKEN}", "X-Aegress-Tenant-Id": "acme",'
        ' "X-Aegress-Actor-Id": "alice"}, "disabled": false}}}'
    )
    assert spec.merge(text, REQUEST, "user") == text


def test_remove_of_absent_entry_changes_nothing() -> None:
    for client in FILE_CLIENTS:
        spec = CLIENTS[client]
        assert spec.remove(None, "aegress") is None
        other = spec.merge(None, dataclasses.replace(REQUEST, name="other"), spec.scopes[0])
        assert spec.remove(other, "aegress") == other


def test_comments_next_to_removed_entry_survive() -> None:
    text = '{\n  "mcpServers": {\n    // ours\n    "aegress": {"url": "u"}\n  }\n}\n'
    assert CLIENTS["gemini"].remove(text, "aegress") == '{\n  "mcpServers": {\n    // ours\n  }\n}\n'


def test_read_entries_skips_foreign_servers() -> None:
    text = json.dumps({"mcpServers": {"gh": {"url": "https://x", "headers": {"Authorization": "Bearer y"}}}})
    assert CLIENTS["claude-code"].read_entries(text) == []
    assert CLIENTS["codex"].read_entries('[mcp_servers.gh]\nurl = "https://x"\n') == []


def test_claude_code_user_scope_uses_headers_helper() -> None:
    request = dataclasses.replace(REQUEST, tenant="it's", aegress_command=("/opt/my tools/aegress",))
    entry = CLIENTS["claude-code"].render_entry(request, "user")
    assert entry["headersHelper"] == "'/opt/my tools/aegress' client headers --tenant 'it'\"'\"'s' --actor alice"
    assert "headers" not in entry
    [found] = CLIENTS["claude-code"].read_entries(CLIENTS["claude-code"].merge(None, request, "user"))
    assert found.tenant == "it's" and found.helper == entry["headersHelper"]


def test_codex_url_params() -> None:
    url = codex_url("https://gw/mcp?x=1&tenantId=old", "a b+c", "d&e")
    assert url == "https://gw/mcp?x=1&tenantId=a%20b%2Bc&actorId=d%26e"
    assert split_codex_url(url) == ("https://gw/mcp?x=1", "a b+c", "d&e")


# ---- input validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"tenant": ""},
        {"tenant": "a\nb"},
        {"actor": "a\rb"},
        {"actor": "tab\there"},
        {"tenant": " padded"},
        {"tenant": "${HOME}"},
        {"actor": "x" * 257},
        {"tenant": "bad\udcff"},
        {"name": "1abc"},
        {"name": "has space"},
        {"name": "dot.ted"},
        {"url": "ftp://h/mcp"},
        {"url": "127.0.0.1:8765/mcp"},
        {"url": "http://h/mcp#frag"},
        {"url": "http://h/${PATH}"},
        {"aegress_command": ()},
    ],
)
def test_invalid_requests_are_refused(changes: dict) -> None:
    with pytest.raises(InvalidInput):
        dataclasses.replace(REQUEST, **changes)


def test_unsupported_scope_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="windsurf has no project-scope config"):
        CLIENTS["windsurf"].merge(None, REQUEST, "project")
    with pytest.raises(UsageError):
        CLIENTS["generic"].config_path(Host(PurePath("/h"), PurePath("/p")), "user")


# ---- where the files live -------------------------------------------------------------------------


def _path(client: str, scope: str, **host: object) -> str:
    base = {"home": PurePath("/home/u"), "project": PurePath("/srv/p")}
    return str(CLIENTS[client].config_path(Host(**{**base, **host}), scope))  # type: ignore[arg-type]


def test_config_paths() -> None:
    assert _path("claude-code", "user") == "/home/u/.claude.json"
    assert _path("claude-code", "user", env={"CLAUDE_CONFIG_DIR": "/cfg"}) == "/cfg/.claude.json"
    assert _path("claude-code", "project") == "/srv/p/.mcp.json"
    assert _path("codex", "user") == "/home/u/.codex/config.toml"
    assert _path("codex", "user", env={"CODEX_HOME": "/ch"}) == "/ch/config.toml"
    assert _path("cursor", "user") == "/home/u/.cursor/mcp.json"
    assert _path("cursor", "project") == "/srv/p/.cursor/mcp.json"
    assert _path("vscode", "project") == "/srv/p/.vscode/mcp.json"
    assert _path("vscode", "user") == "/home/u/.config/Code/User/mcp.json"
    assert _path("vscode", "user", env={"XDG_CONFIG_HOME": "/x"}) == "/x/Code/User/mcp.json"
    assert _path("vscode", "user", platform="darwin") == "/home/u/Library/Application Support/Code/User/mcp.json"
    assert _path("vscode", "user", platform="win32", env={"APPDATA": "/ad"}) == "/ad/Code/User/mcp.json"
    assert _path("gemini", "user") == "/home/u/.gemini/settings.json"
    assert _path("gemini", "project") == "/srv/p/.gemini/settings.json"
    assert _path("windsurf", "user") == "/home/u/.codeium/windsurf/mcp_config.json"
    assert _path("claude-desktop", "user") == "/home/u/.config/Claude/claude_desktop_config.json"
    assert (
        _path("claude-desktop", "user", platform="darwin")
        == "/home/u/Library/Application Support/Claude/claude_desktop_config.json"
    )


def test_new_file_modes() -> None:
    for client, scope in ALL_SCOPES:
        expected = 0o600 if scope == "user" else 0o644
        assert CLIENTS[client].new_file_mode(scope) == expected  # type: ignore[arg-type]


# ---- no token, ever -------------------------------------------------------------------------------


def test_no_render_function_accepts_a_token() -> None:
    assert not [f for f in dataclasses.fields(EntryRequest) if "token" in f.name or "secret" in f.name]
    for spec in CLIENTS.values():
        for method in (spec.render_entry, spec.snippet, spec.merge):
            params = inspect.signature(method).parameters
            assert not [p for p in params if "token" in p or "secret" in p], (spec.name, method)


def test_canary_token_never_appears_in_any_output() -> None:
    host = Host(PurePath("/home/u"), PurePath("/p"), env={"AEGRESS_MCP_GATEWAY_TOKEN": CANARY})
    for client, scope in ALL_SCOPES:
        spec = CLIENTS[client]
        merged = spec.merge(None, REQUEST, scope)  # type: ignore[arg-type]
        outputs = [
            merged,
            spec.snippet(REQUEST, scope),  # type: ignore[arg-type]
            json.dumps(spec.render_entry(REQUEST, scope)),  # type: ignore[arg-type]
            unified_diff(None, merged, str(spec.config_path(host, scope))),  # type: ignore[arg-type]
            repr(spec.read_entries(merged)),
        ]
        assert not [o for o in outputs if CANARY in o], client
    assert CANARY not in CLIENTS["generic"].snippet(REQUEST, "user")
    # The one function that does take the token puts it where the gateway reads it.
    assert gateway_headers(CANARY, "acme", "alice") == {
        "Authorization": f"Bearer {CANARY}",
        "X-Aegress-Tenant-Id": "acme",
        "X-Aegress-Actor-Id": "alice",
    }


def test_project_files_reference_the_token_in_each_clients_syntax() -> None:
    expected = {
        "claude-code": "Bearer ${AEGRESS_MCP_GATEWAY_TOKEN}",
        "cursor": "Bearer ${env:AEGRESS_MCP_GATEWAY_TOKEN}",
        "vscode": "Bearer ${env:AEGRESS_MCP_GATEWAY_TOKEN}",
        "gemini": "Bearer ${AEGRESS_MCP_GATEWAY_TOKEN}",
    }
    for client, auth in expected.items():
        assert CLIENTS[client].render_entry(REQUEST, "project")["headers"]["Authorization"] == auth
    assert CLIENTS["windsurf"].render_entry(REQUEST, "user")["headers"]["Authorization"] == (
        "Bearer ${env:AEGRESS_MCP_GATEWAY_TOKEN}"
    )


def test_jsonc_parser_reports_positions() -> None:
    with pytest.raises(_jsonc.JsonSyntaxError) as info:
        _jsonc.parse('{\n  "a": 1,\n}', _jsonc.STRICT)
    assert (info.value.line, info.value.column) == (2, 9)
