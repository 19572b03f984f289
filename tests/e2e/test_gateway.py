"""A real gateway process, real fixture upstreams (stdio and HTTP), the official SDK client."""

from __future__ import annotations

import json
import pytest

from tests.procs import add_stdio_fixture, aegress, mcp_client, run, run_gateway, run_http_upstream, setup_tenant


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Tenant acme with a stdio upstream `files` and an HTTP upstream `web`; gateway running."""
    aegress_home = tmp_path_factory.mktemp("gw") / "home"
    token = setup_tenant(aegress_home, "acme", "alice")
    add_stdio_fixture(aegress_home, "acme", "files")
    with run_http_upstream("web") as (web_url, _):
        aegress(aegress_home, "upstream", "add", "--tenant", "acme", "web", "--url", web_url, "--allow-private",
                "--header", "X-Upstream-Key=upstream-secret")
        with run_gateway(aegress_home) as gw:
            gw.tokens[("acme", "alice")] = token
            yield gw


def test_tools_are_aggregated_and_namespaced(world) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        async with mcp_client(world.url, world.tokens[("acme", "alice")]) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert {"files__echo", "web__echo", "files__whoami", "web__whoami"} <= names
            assert not any(n == "echo" for n in names)
            assert (await c.call_tool("files__whoami", {})).content[0].text == "files"
            assert (await c.call_tool("web__whoami", {})).content[0].text == "web"
            assert (await c.call_tool("web__echo", {"text": "héllo \"x\""})).content[0].text == "héllo \"x\""

    run(go())


@pytest.mark.parametrize("upstream", ["files", "web"])
def test_progress_logs_sampling_elicitation_travel_with_the_call(world, upstream: str) -> None:  # type: ignore[no-untyped-def]
    from mcp_types import CreateMessageResult, ElicitResult, TextContent

    async def sampling(ctx, params):  # type: ignore[no-untyped-def]
        text = params.messages[0].content.text
        return CreateMessageResult(role="assistant", content=TextContent(type="text", text=f"echo {text}"),
                                   model="test-model")

    async def elicit(ctx, params):  # type: ignore[no-untyped-def]
        return ElicitResult(action="accept", content={"answer": "yes please"})

    logs: list[str] = []

    async def on_log(params):  # type: ignore[no-untyped-def]
        logs.append(str(params.data))

    async def go() -> None:
        async with mcp_client(world.url, world.tokens[("acme", "alice")], sampling_callback=sampling,
                              elicitation_callback=elicit, logging_callback=on_log) as c:
            progress: list[tuple[float, str | None]] = []

            async def on_progress(p, total, message):  # type: ignore[no-untyped-def]
                progress.append((p, message))

            r = await c.call_tool(f"{upstream}__nonce_echo", {"nonce": "n1", "steps": 3}, progress_callback=on_progress)
            assert r.content[0].text == f"{upstream}:n1"
            assert progress == [(1.0, f"{upstream}:n1:1"), (2.0, f"{upstream}:n1:2"), (3.0, f"{upstream}:n1:3")]
            r = await c.call_tool(f"{upstream}__ask_model", {"prompt": "ping"})
            assert r.content[0].text == "model said: echo ping"
            r = await c.call_tool(f"{upstream}__ask_user", {"question": "ok?"})
            assert r.content[0].text == "user said: yes please"
            r = await c.call_tool(f"{upstream}__log_and_echo", {"text": "hello"})
            assert r.content[0].text == "hello"
            assert "log:hello" in logs

    run(go())


def test_resources_prompts_and_errors(world) -> None:  # type: ignore[no-untyped-def]
    from mcp.shared.exceptions import MCPError

    async def go() -> None:
        async with mcp_client(world.url, world.tokens[("acme", "alice")]) as c:
            uris = {str(r.uri) for r in (await c.list_resources()).resources}
            assert {"files+fixture://info", "web+fixture://info"} <= uris
            read = await c.read_resource("web+fixture://info")
            assert read.contents[0].text == "info from web"
            assert str(read.contents[0].uri) == "web+fixture://info"
            prompts = {p.name for p in (await c.list_prompts()).prompts}
            assert {"files__greet", "web__greet"} <= prompts
            got = await c.get_prompt("files__greet", {"name": "Ann"})
            assert "Hello Ann from files" in got.messages[0].content.text
            failed = await c.call_tool("files__fail", {"message": "boom"})
            assert failed.is_error
            with pytest.raises(MCPError) as unknown:
                await c.call_tool("files__no_such_tool", {})
            with pytest.raises(MCPError) as unknown_upstream:
                await c.call_tool("nowhere__echo", {})
            assert unknown.value.error.code == unknown_upstream.value.error.code == -32602
            assert unknown.value.error.message == "Unknown tool: files__no_such_tool"
            assert unknown_upstream.value.error.message == "Unknown tool: nowhere__echo"

    run(go())


def test_no_client_credential_reaches_the_upstream(world) -> None:  # type: ignore[no-untyped-def]
    token = world.tokens[("acme", "alice")]

    async def go() -> None:
        async with mcp_client(
            world.url + "?tenantId=acme&actorId=alice", token,
            headers={"X-Aegress-Tenant-Id": "acme", "X-Aegress-Actor-Id": "alice", "Cookie": "session=abc123"},
        ) as c:
            await c.call_tool("web__echo", {"text": "x"})
            seen = json.loads((await c.call_tool("web__seen_headers", {})).content[0].text)
        assert seen, "the upstream recorded no requests"
        for headers in seen:
            lowered = {k.lower(): v for k, v in headers.items()}
            assert "authorization" not in lowered
            assert "cookie" not in lowered
            assert not any(k.startswith("x-aegress") for k in lowered)
            assert token not in json.dumps(headers)
            assert lowered.get("x-upstream-key") == "upstream-secret"

    run(go())


def test_stdio_child_gets_an_explicit_environment(world) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        async with mcp_client(world.url, world.tokens[("acme", "alice")]) as c:
            keys = set(json.loads((await c.call_tool("files__env_keys", {})).content[0].text))
        assert "AEGRESS_HOME" not in keys and "PYTHON_KEYRING_BACKEND" not in keys
        assert {"FIXTURE_NAME", "PATH"} <= keys

    run(go())


def test_health(world) -> None:  # type: ignore[no-untyped-def]
    import httpx2

    r = httpx2.get(world.base + "/health")
    assert r.status_code == 200
    assert r.json()["ready"] is True
