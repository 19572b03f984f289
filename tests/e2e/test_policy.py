"""The policy gate end to end: a real gateway, the fixture upstream, the official SDK client and
`aegress policy` / `aegress review` run as separate processes.

Tenant `acme` holds review calls for 20 s (long enough to approve from another process); tenant
`quick` holds for 2 s and approvals live 6 s, for the timeout, single-use, expiry and confirm cases.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from tests.procs import add_stdio_fixture, aegress, mcp_client, run, run_gateway, setup_tenant

ACME = """
version = 1
default = "block"
trusted_upstreams = ["files"]    # echo says readOnlyHint: allowed by the built-in

[review]
mode = "approve"
hold_timeout_seconds = 20
approval_lifetime_seconds = 60

[builtin]
destructive = "block"            # tools no rule grants (log_and_echo here) are hidden

[[rules]]
id = "files-basics"
upstream = "files"
name = ["whoami", "nonce_echo", "slow", "ask_model", "ask_user"]
verdict = "allow"

[[rules]]
id = "no-bad-nonces"
upstream = "files"
name = "nonce_echo"
verdict = "block"
reason = "nonces starting with bad- are refused"
[rules.args]
nonce = { prefix = "bad-" }

[[rules]]
id = "slow-needs-review"
upstream = "files"
name = "slow"
verdict = "review"
reason = "slow calls need an operator"

[[rules]]
id = "no-fail"
upstream = "files"
name = ["fail", "seen_headers", "env_keys"]
verdict = "block"

[[rules]]
id = "allow-elicitation"
kind = "client_request"
name = "elicitation"
verdict = "allow"
"""

QUICK = """
version = 1
trusted_upstreams = ["files"]

[review]
mode = "approve"
hold_timeout_seconds = 2
approval_lifetime_seconds = 6

[[rules]]
id = "quick-basics"
upstream = "files"
name = ["slow", "whoami"]
verdict = "allow"

[[rules]]
id = "slow-review"
upstream = "files"
name = "slow"
verdict = "review"

[[rules]]
id = "echo-confirm"
upstream = "files"
name = "echo"
verdict = "review"
review_mode = "confirm"
reason = "confirm- texts need the caller's confirmation"
[rules.args]
text = { prefix = "confirm-" }
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    home = tmp_path_factory.mktemp("policy") / "home"
    files = tmp_path_factory.mktemp("policy-files")
    tokens = {}
    for tenant, text in (("acme", ACME), ("quick", QUICK)):
        tokens[(tenant, "alice")] = setup_tenant(home, tenant, "alice")
        tokens[(tenant, "bob")] = setup_tenant(home, tenant, "bob")
        add_stdio_fixture(home, tenant, "files")
        path = files / f"{tenant}.toml"
        path.write_text(text)
        aegress(home, "policy", "apply", str(path), "--tenant", tenant, "--yes", "--as", "setup")
    tokens[("plain", "alice")] = setup_tenant(home, "plain", "alice")
    add_stdio_fixture(home, "plain", "files")
    with run_gateway(home) as g:
        g.tokens = tokens
        yield g


def _text(result) -> str:  # type: ignore[no-untyped-def]
    return result.content[0].text


async def _cli(home: Path, *args: str, check: bool = True):  # type: ignore[no-untyped-def]
    return await asyncio.to_thread(aegress, home, *args, check=check)


async def _pending(home: Path, tenant: str, tool: str, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = json.loads((await _cli(home, "review", "list", "--tenant", tenant, "--json")).stdout)
        rows = [r for r in rows if r["tool"] == tool]
        if rows:
            return rows[0]
        await asyncio.sleep(0.2)
    raise AssertionError(f"no pending review for {tool}")


def _held_id(text: str) -> str:
    import re

    found = re.search(r"Held for review as (rev_[a-z0-9]+)", text)
    assert found, text
    return found.group(1)


# -- visibility and block -------------------------------------------------------------------------
def test_tools_list_shows_only_callable_tools(gw) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        async with mcp_client(gw.url, gw.tokens[("acme", "alice")]) as c:
            names = {t.name for t in (await c.list_tools()).tools}
        assert {"files__echo", "files__whoami", "files__slow", "files__nonce_echo"} <= names
        assert not names & {"files__fail", "files__seen_headers", "files__env_keys", "files__log_and_echo"}

    run(go())


def test_hidden_tools_answer_exactly_like_unknown_ones(gw) -> None:  # type: ignore[no-untyped-def]
    from mcp.shared.exceptions import MCPError

    async def go() -> None:
        answers = []
        async with mcp_client(gw.url, gw.tokens[("acme", "alice")]) as c:
            # blocked by a rule, blocked by the default (nothing grants it), and truly unknown
            for name in ("files__fail", "files__log_and_echo", "files__no_such_tool", "nowhere__fail"):
                with pytest.raises(MCPError) as exc:
                    await c.call_tool(name, {"message": "x", "text": "x"})
                answers.append((exc.value.error.code, exc.value.error.message.replace(name, "NAME"),
                                exc.value.error.data))
        assert len(set(map(repr, answers))) == 1, answers

    run(go())


def test_allowed_call_is_forwarded(gw) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        async with mcp_client(gw.url, gw.tokens[("acme", "alice")]) as c:
            assert _text(await c.call_tool("files__echo", {"text": "hello"})) == "hello"
            assert _text(await c.call_tool("files__whoami", {})) == "files"

    run(go())


def test_argument_rule_blocks_with_rule_and_audit_id_and_forwards_nothing(gw) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        progress: list[str] = []

        async def on_progress(p, total, message):  # type: ignore[no-untyped-def]
            progress.append(str(message))

        async with mcp_client(gw.url, gw.tokens[("acme", "alice")]) as c:
            r = await c.call_tool("files__nonce_echo", {"nonce": "bad-1", "steps": 2}, progress_callback=on_progress)
            assert r.is_error
            assert "no-bad-nonces" in _text(r) and "nonces starting with bad- are refused" in _text(r)
            assert "audit id aud_" in _text(r)
            assert progress == []  # the upstream would have reported progress had it run
            ok = await c.call_tool("files__nonce_echo", {"nonce": "good-1", "steps": 2}, progress_callback=on_progress)
            assert _text(ok) == "files:good-1" and len(progress) == 2

    run(go())


# -- review, approve mode: held, released from another process, denied -------------------------------
def test_held_call_is_released_by_review_approve_from_another_process(gw) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        progress: list[str] = []

        async def on_progress(p, total, message):  # type: ignore[no-untyped-def]
            progress.append(str(message))

        async with mcp_client(gw.url, gw.tokens[("acme", "alice")]) as c:
            call = asyncio.ensure_future(
                c.call_tool("files__slow", {"seconds": 0.1}, progress_callback=on_progress))
            held = await _pending(gw.home, "acme", "files__slow")
            assert held["actor"] == "alice" and held["rule"] == "slow-needs-review"
            assert held["arguments"] == {"seconds": 0.1}
            # separation of duties: the caller cannot approve its own call
            mine = await _cli(gw.home, "review", "approve", held["id"], "--as", "alice", check=False)
            assert mine.returncode == 1 and "cannot approve its own" in mine.stderr
            assert not call.done()
            await _cli(gw.home, "review", "approve", held["id"], "--as", "ops-lead")
            r = await asyncio.wait_for(call, 15)
            assert not r.is_error and _text(r) == "done"
            assert progress and f"held for review as {held['id']}" in progress[0]
            shown = json.loads((await _cli(gw.home, "review", "show", held["id"], "--json")).stdout)
            assert shown["decided_by"] == "ops-lead" and shown["state"] == "approved, used"

    run(go())


def test_denied_call_gets_the_reason(gw) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        async with mcp_client(gw.url, gw.tokens[("acme", "bob")]) as c:
            call = asyncio.ensure_future(c.call_tool("files__slow", {"seconds": 0.2}))
            held = await _pending(gw.home, "acme", "files__slow")
            await _cli(gw.home, "review", "deny", held["id"], "--reason", "not during the freeze", "--as", "ops")
            r = await asyncio.wait_for(call, 15)
            assert r.is_error and "not during the freeze" in _text(r) and held["id"] in _text(r)

    run(go())


def test_timeout_then_approval_releases_exactly_one_identical_call(gw) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        async with mcp_client(gw.url, gw.tokens[("quick", "alice")]) as alice, \
                mcp_client(gw.url, gw.tokens[("quick", "bob")]) as bob:
            t0 = time.monotonic()
            r = await alice.call_tool("files__slow", {"seconds": 0})
            assert 1.5 < time.monotonic() - t0 < 10
            assert r.is_error and "Held for review as rev_" in _text(r) and "then call again" in _text(r)
            held_id = _held_id(_text(r))
            await _cli(gw.home, "review", "approve", held_id, "--as", "ops")
            # the approval is bound to actor, tool and arguments: other arguments, another actor: held
            other_args = await alice.call_tool("files__slow", {"seconds": 0.01})
            assert "Held for review" in _text(other_args)
            other_actor = await bob.call_tool("files__slow", {"seconds": 0})
            assert "Held for review" in _text(other_actor)
            first = await alice.call_tool("files__slow", {"seconds": 0})
            assert _text(first) == "done"
            again = await alice.call_tool("files__slow", {"seconds": 0})  # single use
            assert "Held for review" in _text(again)

    run(go())


def test_an_approval_expires(gw) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        async with mcp_client(gw.url, gw.tokens[("quick", "bob")]) as c:
            r = await c.call_tool("files__slow", {"seconds": 0.3})
            held_id = _held_id(_text(r))
            await _cli(gw.home, "review", "approve", held_id, "--as", "ops")
            await asyncio.sleep(6.5)
            late = await c.call_tool("files__slow", {"seconds": 0.3})
            assert "Held for review" in _text(late)
            shown = json.loads((await _cli(gw.home, "review", "show", held_id, "--json")).stdout)
            assert shown["state"] == "approved, expired"

    run(go())


# -- review, confirm mode ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("answer", "expect"),
    [
        ({"action": "accept", "content": {"decision": "approve", "reason": "looks fine"}}, "confirm-ok"),
        ({"action": "accept", "content": {"decision": "deny", "reason": "wrong text"}}, "wrong text"),
        ({"action": "decline"}, "decline"),
        ({"action": "cancel"}, "cancel"),
    ],
)
def test_confirm_mode_asks_the_caller(gw, answer: dict, expect: str) -> None:  # type: ignore[no-untyped-def]
    from mcp_types import ElicitResult

    asked: list[str] = []

    async def elicit(ctx, params):  # type: ignore[no-untyped-def]
        asked.append(params.message)
        return ElicitResult(**answer)

    async def go() -> None:
        async with mcp_client(gw.url, gw.tokens[("quick", "alice")], elicitation_callback=elicit) as c:
            plain = await c.call_tool("files__echo", {"text": "plain"})
            assert _text(plain) == "plain" and asked == []
            r = await c.call_tool("files__echo", {"text": "confirm-ok"})
        assert len(asked) == 1 and "files__echo" in asked[0] and "confirm-ok" in asked[0]
        assert expect in _text(r)
        assert r.is_error is (answer.get("content", {}).get("decision") != "approve")

    run(go())


def test_confirm_mode_without_elicitation_falls_back_to_approve(gw) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        async with mcp_client(gw.url, gw.tokens[("quick", "bob")]) as c:
            r = await c.call_tool("files__echo", {"text": "confirm-fallback"})
            assert r.is_error and "Held for review as rev_" in _text(r)
            held_id = _held_id(_text(r))
            await _cli(gw.home, "review", "approve", held_id, "--as", "ops")
            ok = await c.call_tool("files__echo", {"text": "confirm-fallback"})
            assert _text(ok) == "confirm-fallback"

    run(go())


# -- requests from the upstream to the client ----------------------------------------------------------
def test_sampling_is_denied_unless_a_rule_allows_it_elicitation_allowed(gw) -> None:  # type: ignore[no-untyped-def]
    from mcp.shared.exceptions import MCPError
    from mcp_types import CreateMessageResult, ElicitResult, TextContent

    sampled: list[str] = []

    async def sampling(ctx, params):  # type: ignore[no-untyped-def]
        sampled.append("called")
        return CreateMessageResult(role="assistant", content=TextContent(type="text", text="x"), model="m")

    async def elicit(ctx, params):  # type: ignore[no-untyped-def]
        return ElicitResult(action="accept", content={"answer": "yes"})

    async def go() -> None:
        async with mcp_client(gw.url, gw.tokens[("acme", "alice")], sampling_callback=sampling,
                              elicitation_callback=elicit) as c:
            # the upstream's sampling request is refused; this upstream passes the refusal on as an error
            with pytest.raises(MCPError) as refused:
                await c.call_tool("files__ask_model", {"prompt": "hi"})
            assert "Denied by Aegress policy rule default:client-request" in refused.value.error.message
            assert sampled == []
            assert _text(await c.call_tool("files__ask_user", {"question": "ok?"})) == "user said: yes"

    run(go())


# -- the built-in default, the record, the CLI previews -----------------------------------------------
def test_a_tenant_without_policy_gets_the_builtin_default(gw) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        async with mcp_client(gw.url, gw.tokens[("plain", "alice")]) as c:
            names = {t.name for t in (await c.list_tools()).tools}
        assert {"files__echo", "files__fail"} <= names  # untrusted upstream: every tool reviewable

    run(go())
    r = aegress(gw.home, "policy", "test", "--tenant", "plain", "--tool", "files__echo", "--args", '{"text":"x"}',
                "--actor", "alice", "--json", check=False)
    assert r.returncode == 3
    out = json.loads(r.stdout)
    assert (out["verdict"], out["rule"], out["policy_version"]) == ("review", "builtin:destructive", 0)
    shown = aegress(gw.home, "policy", "show", "--tenant", "plain")
    assert "built-in default" in shown.stderr and 'default = "block"' in shown.stdout


def test_decisions_reach_the_record_with_rule_ids(gw) -> None:  # type: ignore[no-untyped-def]
    from gateway.store.sqlite import SQLiteStore

    async def go() -> None:
        async with mcp_client(gw.url, gw.tokens[("acme", "alice")]) as c:
            await c.call_tool("files__echo", {"text": "rec"})
            await c.call_tool("files__nonce_echo", {"nonce": "bad-rec", "steps": 1})

    run(go())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        calls = SQLiteStore(gw.home / "aegress.db").list_calls("acme", 50)
        seen = {(c.target, c.verdict, c.rule_id, c.outcome) for c in calls}
        if ("files__nonce_echo", "block", "no-bad-nonces", "refused") in seen:
            break
        time.sleep(0.2)
    assert ("files__echo", "allow", "builtin:trusted-read-only", "completed") in seen
    assert ("files__nonce_echo", "block", "no-bad-nonces", "refused") in seen
    assert any(v == "review" and r == "slow-needs-review" for _, v, r, _ in seen)


def test_policy_test_diff_and_replay(gw, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ok = aegress(gw.home, "policy", "test", "--tenant", "acme", "--tool", "files__echo", "--args", '{"text":"a"}',
                 "--actor", "alice")
    assert "allow" in ok.stdout and "builtin:trusted-read-only" in ok.stdout
    blocked = aegress(gw.home, "policy", "test", "--tenant", "acme", "--tool", "files__nonce_echo",
                      "--args", '{"nonce":"bad-x","steps":1}', "--json", check=False)
    assert blocked.returncode == 3 and json.loads(blocked.stdout)["rule"] == "no-bad-nonces"
    stricter = tmp_path / "stricter.toml"
    stricter.write_text(ACME + '\n[[rules]]\nid = "no-echo"\nupstream = "files"\nname = "echo"\nverdict = "block"\n')
    diff = aegress(gw.home, "policy", "diff", str(stricter), "--tenant", "acme", "--json")
    changes = json.loads(diff.stdout)["changes"]
    assert {(c["tool"], c["new_verdict"], c["new_visible"]) for c in changes} == {("echo", "block", False)}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the record stage writes in the background
        report = json.loads(aegress(gw.home, "policy", "replay", str(stricter), "--tenant", "acme", "--json").stdout)
        if report["changed"]:
            break
        time.sleep(0.3)
    assert report["arguments_replayed"] is False
    assert {(c["tool"], c["old"], c["new"], c["rule"]) for c in report["changed"]} >= {
        ("echo", "allow", "block", "no-echo")}
    assert report["transitions"].get("allow->block", 0) >= 1


def test_policy_apply_refuses_an_invalid_file_with_file_line_field(gw, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.toml"
    bad.write_text('version = 1\n\n[[rules]]\nid = "x"\nverdict = "alow"\n')
    before = json.loads(aegress(gw.home, "policy", "list", "--tenant", "acme", "--json").stdout)
    r = aegress(gw.home, "policy", "apply", str(bad), "--tenant", "acme", "--yes", check=False)
    assert r.returncode == 1
    assert f"{bad}:5: rules[0].verdict" in r.stderr and "Hint:" in r.stderr
    assert json.loads(aegress(gw.home, "policy", "list", "--tenant", "acme", "--json").stdout) == before


def test_policy_init_writes_the_starter(tmp_path: Path, aegress_home: Path) -> None:
    target = tmp_path / "p.toml"
    aegress(aegress_home, "policy", "init", str(target))
    assert 'default = "block"' in target.read_text()
    again = aegress(aegress_home, "policy", "init", str(target), check=False)
    assert again.returncode == 1 and "--force" in again.stderr
    assert aegress(aegress_home, "policy", "check", str(target)).returncode == 0


# -- the Inspector CLI, a second real client ----------------------------------------------------------
INSPECTOR = Path(__file__).resolve().parents[1] / "node_modules" / ".bin" / "mcp-inspector"


def _inspector(gw, token: str, *args: str):  # type: ignore[no-untyped-def]
    import subprocess

    return subprocess.run([str(INSPECTOR), "--cli", gw.url, "--transport", "http", "--header",
                           f"Authorization: Bearer {token}", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.npm
def test_inspector_sees_blocks_and_hidden_tools(gw) -> None:  # type: ignore[no-untyped-def]
    # the test command installs the Inspector: its absence is a failure, never a skip
    assert INSPECTOR.exists(), "tests/node_modules missing: run bash scripts/install-test-deps.sh"
    token = gw.tokens[("acme", "alice")]
    listed = _inspector(gw, token, "--method", "tools/list")
    assert listed.returncode == 0, listed.stderr
    names = {t["name"] for t in json.loads(listed.stdout)["tools"]}
    assert "files__echo" in names and "files__fail" not in names
    blocked = _inspector(gw, token, "--method", "tools/call", "--tool-name", "files__nonce_echo",
                         "--tool-args-json", '{"nonce": "bad-insp", "steps": 1}')
    body = json.loads(blocked.stdout)
    assert body["isError"] is True and "no-bad-nonces" in body["content"][0]["text"]
    hidden = _inspector(gw, token, "--method", "tools/call", "--tool-name", "files__fail",
                        "--tool-args-json", '{"message": "x"}')
    unknown = _inspector(gw, token, "--method", "tools/call", "--tool-name", "files__no_such_tool",
                         "--tool-args-json", '{"message": "x"}')
    assert hidden.returncode == unknown.returncode != 0
    assert (hidden.stdout + hidden.stderr).replace("files__fail", "N") == \
        (unknown.stdout + unknown.stderr).replace("files__no_such_tool", "N")
