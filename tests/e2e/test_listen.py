"""2026-07-28 `subscriptions/listen` through the gateway to a stdio upstream (one pipe for every frame).

The upstream's acknowledgement and events carry only their `_meta` subscription id to say which listen
they belong to; the gateway must route them by it, or the client's listen waits out the gateway's
acknowledgement timeout and is told nothing is honoured."""

from __future__ import annotations

from pathlib import Path

from tests.procs import gateway_with_fixture, mcp_client, run


def test_a_stdio_upstreams_acknowledgement_reaches_the_client(tmp_path: Path) -> None:
    with gateway_with_fixture(tmp_path / "home") as gw:
        token = gw.tokens[("acme", "alice")]

        async def go() -> object:
            async with (
                mcp_client(gw.url, token, mode="2026-07-28") as client,
                client.listen(tools_list_changed=True) as sub,
            ):
                return sub.honored

        honored = run(go(), timeout=60)
        assert honored is not None and honored.tools_list_changed is True
