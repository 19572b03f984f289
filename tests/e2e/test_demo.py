"""The README's first command runs `aegress serve --demo`: idempotent, and every verdict shows on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.procs import aegress, aegress_json, mcp_client, run, run_gateway


def test_demo_is_idempotent_and_shows_every_verdict(tmp_path: Path) -> None:
    from mcp.shared.exceptions import MCPError

    home = tmp_path / "home"
    with run_gateway(home, "--demo") as first:
        first.proc.wait_for("Press Ctrl-C")
        printed = "".join(first.proc.output)
        assert "Demo token (shown once" in printed and "aegress client setup claude-code" in printed
    with run_gateway(home, "--demo") as gw:
        gw.proc.wait_for("Press Ctrl-C")
        assert "kept from an earlier run" in "".join(gw.proc.output)
        assert len([t for t in aegress_json(home, "token", "list", "--tenant", "demo") if t["active"]]) == 1
        assert [u["name"] for u in aegress_json(home, "upstream", "list", "--tenant", "demo")] == ["demo"]
        creds = json.loads((home / "secrets" / "credentials.json").read_text())
        token = creds["token:demo:demo-user"]

        async def go() -> None:
            async with mcp_client(gw.url, token) as c:
                names = {t.name for t in (await c.list_tools()).tools}
                assert {"demo__echo", "demo__write_note", "demo__delete_note"} <= names
                assert "demo__shell_preview" not in names  # blocked by the demo policy: hidden
                assert (await c.call_tool("demo__echo", {"text": "hi"})).content[0].text == "hi"
                with pytest.raises(MCPError) as hidden:
                    await c.call_tool("demo__shell_preview", {"command": "ls"})
                assert hidden.value.error.message == "Unknown tool: demo__shell_preview"

        run(go())
        held = aegress(home, "policy", "test", "--tenant", "demo", "--tool", "demo__delete_note",
                       "--args", '{"name": "x"}', "--actor", "demo-user", "--json", check=False)
        assert held.returncode == 3 and json.loads(held.stdout)["verdict"] == "review"
