"""The --dry-run diff: correct, empty when nothing changes, and never printing other secrets."""

from __future__ import annotations

from clients_support import REQUEST

from gateway.clients import CLIENTS, unified_diff
from gateway.clients.diff import redact_line


def test_new_file_diff() -> None:
    text = CLIENTS["cursor"].merge(None, REQUEST, "project")
    diff = unified_diff(None, text, ".cursor/mcp.json")
    assert diff.startswith("--- /dev/null\n+++ b/.cursor/mcp.json\n@@ -0,0 +1,")
    assert '+        "Authorization": "Bearer ${env:AEGRESS_MCP_GATEWAY_TOKEN}",\n' in diff


def test_no_change_is_empty() -> None:
    assert unified_diff("{}\n", "{}\n", "x") == ""


def test_context_secrets_are_masked_but_references_shown() -> None:
    before = (
        '{\n  "mcpServers": {\n    "stripe": {\n      "url": "https://s/mcp",\n'
        '      "headers": {"Authorization": "Bearer sk_live_abc"},\n'
        '      "env": {"API_KEY": "xyz-123"}\n    }\n  }\n}\n'
    )
    after = CLIENTS["cursor"].merge(before, REQUEST, "user")
    diff = unified_diff(before, after, "~/.cursor/mcp.json")
    assert "sk_live_abc" not in diff and "xyz-123" not in diff
    assert '"Authorization": "Bearer ${env:AEGRESS_MCP_GATEWAY_TOKEN}"' in diff


def test_redact_line_cases() -> None:
    assert redact_line(' "token": "abc",\n') == ' "token": "***",\n'
    assert redact_line('-api_key = "abc"\n') == '-api_key = "***"\n'
    assert redact_line(' "headers": {"Authorization": "Bearer sk_x"}, "x": 1\n') == (
        ' "headers": {"Authorization": "***"}, "x": 1\n'
    )
    assert redact_line(' "args": ["--key", "ghp_0123456789abcdefghijklmnopqrstuv"]\n') == (
        ' "args": ["--key", "***"]\n'
    )
    keep = [
        '+bearer_token_env_var = "AEGRESS_MCP_GATEWAY_TOKEN"\n',
        '+        "Authorization": "Bearer ${env:AEGRESS_MCP_GATEWAY_TOKEN}",\n',
        '+        "X-Aegress-Tenant-Id": "0b6c1f9e-1d2c-4a8b-9e3f-7a6b5c4d3e2f",\n',
        ' "oauthAccount": {\n',
        ' "url": "https://api.githubcopilot.com/mcp/"\n',
        ' "headers": { "Authorization": "Bearer ${input:gh-token}" }, // inline\n',
    ]
    for line in keep:
        assert redact_line(line) == line


def test_missing_final_newline_is_marked() -> None:
    assert "\\ No newline at end of file" in unified_diff("{}", '{"a": 1}', "x")


def test_a_users_line_that_only_gained_a_comma_is_masked_like_context() -> None:
    secret = "sk-live-0123456789abcdefghijklmnop"
    before = f'{{\n  "mcpServers": {{\n    "other": {{"command": "x", "args": ["--key", "{secret}"]}}\n  }}\n}}\n'
    after = CLIENTS["claude-code"].merge(before, REQUEST, "project")
    diff = unified_diff(before, after, ".mcp.json")
    assert secret not in diff
    assert '+    "other": {"command": "x", "args": ["--key", "***"]},' in diff
    assert "${AEGRESS_MCP_GATEWAY_TOKEN}" in diff  # our own lines still show the reference
