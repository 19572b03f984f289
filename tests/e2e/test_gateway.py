"""A real gateway process, real fixture upstreams (stdio and HTTP), the official SDK client."""

from __future__ import annotations

import json

import pytest

from tests.procs import (
    add_stdio_fixture,
    aegress,
    allow_all,
    mcp_client,
    run,
    run_gateway,
    run_http_upstream,
    setup_tenant,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Tenant acme with a stdio upstream `files` and an HTTP upstream `web`; gateway running."""
    aegress_home = tmp_path_factory.mktemp("gw") / "home"
    token = setup_tenant(aegress_home, "acme", "alice")
    allow_all(aegress_home, "acme")
    add_stdio_fixture(aegress_home, "acme", "files")
    with run_http_upstream("web") as (web_url, _):
        aegress(aegress_home, "upstream", "add", "--tenant", "acme", "web", "--url", web_url, "--allow-private",
                "--header", "X-Upstream-Key=upstream-secret")
        with run_gateway(aegress_home) as gw:
            gw.tokens[("acme", "alice")] = token
            yield gw


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28", "auto"])
def test_tools_are_aggregated_and_namespaced(world, mode: str) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        async with mcp_client(world.url, world.tokens[("acme", "alice")], mode=mode) as c:
            assert c.protocol_version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
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


def test_modern_revision_progress_resources_and_prompts(world) -> None:  # type: ignore[no-untyped-def]
    """2026-07-28: no session, envelope per request, progress on the request's own stream."""

    async def go() -> None:
        async with mcp_client(world.url, world.tokens[("acme", "alice")], mode="2026-07-28") as c:
            for upstream in ("files", "web"):
                seen: list[str] = []

                async def on_progress(p, total, message, seen=seen):  # type: ignore[no-untyped-def]
                    seen.append(str(message))

                r = await c.call_tool(f"{upstream}__nonce_echo", {"nonce": "m", "steps": 2},
                                      progress_callback=on_progress)
                assert r.content[0].text == f"{upstream}:m"
                assert seen == [f"{upstream}:m:1", f"{upstream}:m:2"]
            assert (await c.read_resource("files+fixture://info")).contents[0].text == "info from files"
            got = await c.get_prompt("web__greet", {"name": "Bo"})
            assert "Hello Bo from web" in got.messages[0].content.text

    run(go())


def test_modern_wire_rules(world) -> None:  # type: ignore[no-untyped-def]
    import httpx2

    token = world.tokens[("acme", "alice")]
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}}

    def post(body: dict, **headers: str) -> httpx2.Response:
        h = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
             "Content-Type": "application/json", "MCP-Protocol-Version": "2026-07-28",
             "Mcp-Method": body.get("method", ""), **headers}
        return httpx2.post(world.url, content=json.dumps(body), headers=h, timeout=30)

    r = post({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": meta}})
    assert r.status_code == 200 and "mcp-session-id" not in r.headers
    res = r.json()["result"]
    assert res["supportedVersions"] == ["2026-07-28"] and "tools" in res["capabilities"]
    assert res["resultType"] == "complete" and res["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "aegress"
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "web__echo", "arguments": {"text": "x"}, "_meta": meta}}
    assert post(call, **{"Mcp-Name": "web__echo"}).json()["result"]["content"][0]["text"] == "x"
    # optional whitespace around a header value is not part of it (RFC 9110 5.5); httpx2 will not send it
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(world.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.request("POST", parts.path, body=json.dumps(call), headers={
        "Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json", "MCP-Protocol-Version": " 2026-07-28 ", "Mcp-Method": "tools/call",
        "Mcp-Name": "  web__echo  "})
    answer = conn.getresponse()
    assert answer.status == 200 and json.loads(answer.read())["result"]["content"][0]["text"] == "x"
    conn.close()
    mismatch = post(call, **{"Mcp-Name": "files__echo"})
    assert mismatch.status_code == 400 and mismatch.json()["error"]["code"] == -32020
    assert mismatch.json()["id"] == 2
    wrong_method = post(call, **{"Mcp-Method": "tools/list", "Mcp-Name": "web__echo"})
    assert wrong_method.json()["error"]["code"] == -32020
    no_meta = post({"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {}})
    assert no_meta.status_code == 400 and no_meta.json()["error"]["code"] == -32602
    future = {**meta, "io.modelcontextprotocol/protocolVersion": "2099-01-01"}
    unsupported = post({"jsonrpc": "2.0", "id": 4, "method": "tools/list", "params": {"_meta": future}},
                       **{"MCP-Protocol-Version": "2099-01-01"})
    assert unsupported.status_code == 400 and unsupported.json()["error"]["code"] == -32022
    assert unsupported.json()["error"]["data"]["supported"] == ["2026-07-28"]
    for removed in ("initialize", "ping", "logging/setLevel", "resources/subscribe"):
        r = post({"jsonrpc": "2.0", "id": 5, "method": removed, "params": {"_meta": meta}})
        assert r.status_code == 404 and r.json()["error"]["code"] == -32601, removed
    get = httpx2.get(world.url, headers={"Authorization": f"Bearer {token}", "MCP-Protocol-Version": "2026-07-28",
                                         "Accept": "text/event-stream"})
    assert get.status_code == 405 and get.headers["allow"] == "POST"
    listed = post({"jsonrpc": "2.0", "id": 6, "method": "tools/list", "params": {"_meta": meta}}).json()["result"]
    assert listed["ttlMs"] == 0 and listed["cacheScope"] == "private"


def test_upstream_credentials_come_from_the_keyring(tmp_path_factory: pytest.TempPathFactory) -> None:
    """`--header K=keyring:NAME`: the database holds the reference, the upstream receives the value."""
    home = tmp_path_factory.mktemp("kr") / "home"
    token = setup_tenant(home, "acme", "alice")
    allow_all(home, "acme")
    aegress(home, "upstream", "secret", "set", "web-key", "--stdin", input="s3cret-from-keyring\n")
    with run_http_upstream("web") as (url, _):
        aegress(home, "upstream", "add", "--tenant", "acme", "web", "--url", url, "--allow-private",
                "--header", "X-Api-Key=keyring:web-key")
        db = (home / "aegress.db").read_bytes()
        assert b"s3cret-from-keyring" not in db
        with run_gateway(home) as gw:
            async def go() -> None:
                async with mcp_client(gw.url, token) as c:
                    seen = json.loads((await c.call_tool("web__seen_headers", {})).content[0].text)
                assert seen[-1].get("x-api-key") == "s3cret-from-keyring"

            run(go())


@pytest.mark.parametrize("upstream", ["files", "web"])
def test_cancellation_reaches_the_upstream(world, upstream: str) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    async def go() -> None:
        async with mcp_client(world.url, world.tokens[("acme", "alice")]) as c:
            before = int((await c.call_tool(f"{upstream}__cancellations", {})).content[0].text)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(c.call_tool(f"{upstream}__slow", {"seconds": 20}), 1.0)
            for _ in range(50):  # bounded: up to 5 s for the cancellation to arrive upstream
                now = int((await c.call_tool(f"{upstream}__cancellations", {})).content[0].text)
                if now > before:
                    break
                await asyncio.sleep(0.1)
            assert now == before + 1
            assert (await c.call_tool(f"{upstream}__echo", {"text": "still here"})).content[0].text == "still here"

    run(go())


def test_upstream_changes_apply_to_a_running_gateway(tmp_path_factory: pytest.TempPathFactory) -> None:
    import asyncio
    import time

    home = tmp_path_factory.mktemp("hot") / "home"
    token = setup_tenant(home, "acme", "alice")
    allow_all(home, "acme")
    add_stdio_fixture(home, "acme", "one")
    with run_gateway(home) as gw:
        async def names() -> set[str]:
            async with mcp_client(gw.url, token) as c:
                return {t.name for t in (await c.list_tools()).tools}

        async def wait_for(predicate, timeout: float = 10.0) -> set[str]:  # type: ignore[no-untyped-def]
            deadline = time.monotonic() + timeout
            while True:
                got = await names()
                if predicate(got) or time.monotonic() > deadline:
                    return got
                await asyncio.sleep(0.3)

        async def go() -> None:
            assert "one__echo" in await names()
            add_stdio_fixture(home, "acme", "two")
            assert "two__echo" in await wait_for(lambda n: "two__echo" in n)
            aegress(home, "upstream", "remove", "--tenant", "acme", "one", "--yes")
            got = await wait_for(lambda n: "one__echo" not in n)
            assert "one__echo" not in got and "two__echo" in got

        run(go())
