"""`aegress client ...`: point coding agents (Claude Code, Codex, Cursor, VS Code, Gemini CLI,
Windsurf, Claude Desktop, anything else) at the gateway, and check that they really connect.

The file editing is `gateway.clients` (pure merge/render) plus `gateway.clients.write` (atomic,
backed-up writes); the connection check is `gateway.bridge.probe`. No token is ever written to a
file; `client env` and `client headers` print one only because that is what they are asked for.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from aegress_cli._common import (
    ActorOpt,
    JsonOpt,
    TenantOpt,
    YesOpt,
    confirm,
    err,
    handle_errors,
    home,
    print_json,
    print_table,
    store,
)

if TYPE_CHECKING:
    from gateway.clients import ClientSpec, Entry, EntryRequest, Host, Scope
    from gateway.clients.doctor import Check, Plan

DEFAULT_URL = "http://127.0.0.1:8765/mcp"

app = typer.Typer(help="Set up coding agents to use the gateway, and check them.", no_args_is_help=True)

Client = Literal["claude-code", "codex", "cursor", "vscode", "gemini", "windsurf", "claude-desktop", "generic"]
"""The names of gateway.clients.CLIENTS (a unit test keeps them equal), so the parser checks them."""
ClientArg = Annotated[Client, typer.Argument(help="The client.", show_default=False)]
UrlOpt = Annotated[str, typer.Option("--url", envvar="AEGRESS_URL", help="The gateway's MCP endpoint.")]
ScopeOpt = Annotated[
    Literal["user", "project"] | None,
    typer.Option("--scope", help="user (your own config) or project (a file in --project-dir, meant to be "
                 "committed; it holds no token). Default: user, or the only scope the client has.",
                 show_default=False),
]
NameOpt = Annotated[str, typer.Option("--name", help="Name of the entry in the client's config.")]
ProjectOpt = Annotated[
    Path | None,
    typer.Option("--project-dir", help="Project directory for project scope. Default: the current directory.",
                 show_default=False),
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the diff it would make; write nothing.")]


# ---- shared helpers ---------------------------------------------------------------------------------


def stored_token(tenant: str, actor: str) -> str | None:
    """The token `aegress token issue` kept for this tenant and actor (keyring or the 0600 file)."""
    from gateway import credentials

    home()
    return credentials.get_secret(credentials.token_key(tenant, actor))


def resolve_token(tenant: str, actor: str) -> str | None:
    """Keyring first (it is bound to this tenant and actor), then AEGRESS_MCP_GATEWAY_TOKEN."""
    from gateway.clients import TOKEN_ENV

    return stored_token(tenant, actor) or os.environ.get(TOKEN_ENV) or None


def _spec(client: str) -> ClientSpec:
    from gateway.clients import CLIENTS
    from gateway.errors import UsageError

    spec = CLIENTS.get(client)
    if spec is None:
        raise UsageError(f"unknown client {client!r}", hint=f"Choose one of: {', '.join(CLIENTS)}.")
    return spec


def _host(project_dir: Path | None) -> Host:
    from gateway.clients import Host

    return Host(home=Path.home(), project=(project_dir or Path.cwd()).absolute(), env=dict(os.environ),
                platform=sys.platform)


def _scope(spec: ClientSpec, scope: str | None) -> Scope:
    from gateway.clients.model import check_scope
    from gateway.errors import UsageError

    if scope is None:
        return spec.scopes[0] if spec.scopes else "user"
    if scope not in ("user", "project"):
        raise UsageError(f"unknown scope {scope!r}", hint="Use --scope user or --scope project.")
    check_scope(spec, scope)  # type: ignore[arg-type]
    return scope  # type: ignore[return-value]


def aegress_command() -> tuple[str, ...]:
    """The argv prefix a client should run for `aegress` (headersHelper, bridge): an absolute path,
    since GUI clients start with a minimal PATH, plus `--data-dir` when state is not in ~/.aegress
    (a client started from the dock does not see AEGRESS_HOME)."""
    import shutil

    argv0 = Path(sys.argv[0])
    beside = Path(sys.executable).parent / "aegress"
    if argv0.name == "aegress" and argv0.exists():
        base: tuple[str, ...] = (str(argv0.absolute()),)
    elif beside.exists():
        base = (str(beside),)
    elif found := shutil.which("aegress"):
        base = (str(Path(found).absolute()),)
    else:
        base = (sys.executable, "-m", "aegress_cli.main")
    data = home()
    if data.absolute() != (Path.home() / ".aegress").absolute():
        base += ("--data-dir", str(data.absolute()))
    return base


def _request(url: str, tenant: str, actor: str, name: str, oauth: bool = False) -> EntryRequest:
    from gateway.clients import EntryRequest

    return EntryRequest(url=url, tenant=tenant, actor=actor, name=name, aegress_command=aegress_command(),
                        oauth=oauth)


def _require_token(tenant: str, actor: str) -> None:
    """The tenant and actor exist in the store, and a token for them is kept on this machine."""
    from gateway.admin import require_actor
    from gateway.errors import NotFound

    try:
        require_actor(store(), tenant, actor)
    except NotFound as exc:
        raise NotFound(exc.message, hint=f"{exc.hint} Then `aegress token issue --tenant T --actor A` keeps a "
                       "token for the clients.") from None
    if stored_token(tenant, actor) is None:
        raise NotFound(
            f"no token is stored for actor {actor!r} in tenant {tenant!r}",
            hint=f"Run `aegress token issue --tenant {shlex.quote(tenant)} --actor {shlex.quote(actor)}` first "
            "(it keeps the token in your keyring for the clients).",
        )


def _next_steps(spec: ClientSpec, scope: Scope, tenant: str, actor: str, oauth: bool = False) -> list[str]:
    from gateway.clients.doctor import env_hint

    if oauth:
        how = {"claude-code": "In Claude Code run /mcp, pick the entry and choose Authenticate",
               "codex": "Run `codex mcp login aegress`"}.get(spec.name, f"Start {spec.title}")
        return [f"{how}: a browser opens to sign in and consent (tenant {tenant}). No token is stored anywhere."]

    check = f"Check it: aegress client doctor {spec.name}" + (" --scope project" if scope == "project" else "")
    if spec.name == "claude-code" and scope == "user":
        return ["Claude Code gets the token from `aegress client headers` (your keyring) on each connect.", check]
    if spec.name == "claude-desktop":
        return ["Restart Claude Desktop; it runs `aegress bridge`, which reads the token from your keyring.", check]
    return [f"{spec.title} reads the token from the environment. {env_hint(tenant, actor)}", check]


# ---- setup / remove ------------------------------------------------------------------------------------


AuthOpt = Annotated[str, typer.Option("--auth", envvar="MCP_AUTH_MODE", help="bearer (the client sends a token "
                    "from `aegress token issue`) or oauth (the gateway runs MCP_AUTH_MODE=oauth: the client signs "
                    "in itself, and the entry holds no token at all).")]


@app.command("setup")
@handle_errors
def setup(
    client: ClientArg,
    tenant: TenantOpt,
    actor: Annotated[str, typer.Option("--actor", "-a", help="Actor id (with --auth oauth: optional, whoever signs "
                                       "in).", envvar="AEGRESS_ACTOR_ID")] = "",
    url: UrlOpt = DEFAULT_URL,
    scope: ScopeOpt = None,
    name: NameOpt = "aegress",
    project_dir: ProjectOpt = None,
    auth: AuthOpt = "bearer",
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Add (or update) the aegress entry in a client's config.

    Merges: other servers, settings and comments stay as they were; a backup is kept. `generic` prints
    a config snippet and a curl check instead of writing a file. With --auth oauth the entry holds no
    token (the client signs in), and Claude Desktop gets the custom connector steps instead of a file.
    """
    from gateway.clients import unified_diff
    from gateway.clients.write import read_config, write_config
    from gateway.errors import UsageError

    if auth not in ("bearer", "oauth"):
        raise UsageError(f"unknown --auth {auth!r}", hint="Use --auth bearer or --auth oauth.")
    oauth = auth == "oauth"
    spec = _spec(client)
    if not actor and not oauth:
        raise UsageError("--actor is required (with --auth bearer).", hint="Pass --actor A, or --auth oauth.")
    request = _request(url, tenant, actor, name, oauth)
    if oauth:
        from gateway.admin import require_actor, require_tenant

        require_actor(store(), tenant, actor) if actor else require_tenant(store(), tenant)
    else:
        _require_token(tenant, actor)
    if oauth and spec.name == "claude-desktop":
        from gateway.clients.claude_desktop import oauth_steps

        text = oauth_steps(request)
        if json_out:
            print_json({"client": spec.name, "auth": "oauth", "url": url, "steps": text})
        else:
            sys.stdout.write(text)
        return
    if spec.name == "generic":
        text = spec.snippet(request, "user")
        if json_out:
            print_json({"client": spec.name, "entry": spec.render_entry(request, "user"), "snippet": text})
        else:
            sys.stdout.write(text)
        return
    chosen = _scope(spec, scope)
    path = Path(spec.config_path(_host(project_dir), chosen))
    before = read_config(path)
    after = spec.merge(before, request, chosen, source=str(path))
    diff = unified_diff(before, after, str(path))
    summary: dict[str, Any] = {"client": spec.name, "scope": chosen, "path": str(path), "name": name,
                               "tenant": tenant, "actor": actor or None, "url": url, "auth": auth}
    if dry_run:
        if json_out:
            print_json({**summary, "dry_run": True, "changed": before != after, "diff": diff})
        else:
            sys.stdout.write(diff or f"{path} already has this entry; nothing would change.\n")
        return
    if before != after:
        _confirm_replace(spec, before, request, path, yes)
    result = write_config(path, after, expected=before, new_file_mode=spec.new_file_mode(chosen))
    steps = _next_steps(spec, chosen, tenant, actor, oauth)
    if json_out:
        print_json({**summary, "changed": result.changed, "created": result.created,
                    "backup": str(result.backup) if result.backup else None, "next": steps})
        return
    if not result.changed:
        print(f"{spec.title} ({chosen} scope) already points at {url} in {path}; nothing changed.")
    else:
        verb = "Created" if result.created else "Updated"
        print(f"{verb} {path}: entry {name!r} for {spec.title} ({chosen} scope) -> {url}")
        if result.backup:
            print(f"Backup of the previous file: {result.backup}")
    for step in steps:
        print(step)


def _confirm_replace(spec: ClientSpec, before: str | None, request: EntryRequest, path: Path, yes: bool) -> None:
    """Ask before repointing an entry that already exists with another tenant, actor or URL."""
    for entry in spec.read_entries(before, source=str(path)):
        if entry.name != request.name:
            continue
        if (entry.tenant, entry.actor) != (request.tenant, request.actor or None) or (
            entry.url is not None and entry.url.split("?")[0] != request.url.split("?")[0]
        ):
            confirm(f"Entry {request.name!r} in {path} points at tenant {entry.tenant!r}, actor {entry.actor!r}, "
                    f"{entry.url}. Replace it?", yes)


@app.command("remove")
@handle_errors
def remove(
    client: ClientArg,
    scope: ScopeOpt = None,
    name: NameOpt = "aegress",
    project_dir: ProjectOpt = None,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Remove the aegress entry from a client's config; other entries stay and a backup is kept."""
    from gateway.clients import unified_diff
    from gateway.clients.write import read_config, write_config

    spec = _spec(client)
    if spec.name == "generic":
        err("generic writes no file, so there is nothing to remove.")
        return
    chosen = _scope(spec, scope)
    path = Path(spec.config_path(_host(project_dir), chosen))
    before = read_config(path)
    after = spec.remove(before, name, source=str(path))
    summary = {"client": spec.name, "scope": chosen, "path": str(path), "name": name}
    if before == after or after is None:
        if json_out:
            print_json({**summary, "changed": False})
        else:
            print(f"No entry {name!r} in {path}; nothing changed.")
        return
    if dry_run:
        diff = unified_diff(before, after, str(path))
        if json_out:
            print_json({**summary, "dry_run": True, "changed": True, "diff": diff})
        else:
            sys.stdout.write(diff)
        return
    confirm(f"Remove entry {name!r} from {path}?", yes)
    result = write_config(path, after, expected=before)
    if json_out:
        print_json({**summary, "changed": True, "backup": str(result.backup) if result.backup else None})
    else:
        print(f"Removed {name!r} from {path}." + (f" Backup: {result.backup}" if result.backup else ""))


# ---- list ------------------------------------------------------------------------------------------------


@app.command("list")
@handle_errors
def list_(project_dir: ProjectOpt = None, json_out: JsonOpt = False) -> None:
    """Show which clients on this machine have an aegress entry, with tenant, actor and URL.

    Reads every client's user file and the project files in --project-dir.
    """
    from gateway.clients import CLIENTS
    from gateway.clients.write import read_config
    from gateway.errors import AegressError

    host = _host(project_dir)
    found: list[dict[str, Any]] = []
    for spec in CLIENTS.values():
        for scope in spec.scopes:
            path = Path(spec.config_path(host, scope))
            try:
                entries = spec.read_entries(read_config(path), source=str(path))
            except AegressError as exc:
                found.append({"client": spec.name, "scope": scope, "path": str(path), "error": exc.message})
                continue
            for entry in entries:
                found.append({"client": spec.name, "scope": scope, "path": str(path), "name": entry.name,
                              "tenant": entry.tenant, "actor": entry.actor, "url": entry.url,
                              "token_from": _token_from(spec.name, entry)})
    if json_out:
        print_json(found)
        return
    rows = [(f["client"], f["scope"], f.get("name", "-"), f.get("tenant"), f.get("actor"),
             f.get("url") or f.get("error"), f["path"]) for f in found]
    print_table("Aegress entries", ["client", "scope", "name", "tenant", "actor", "url", "file"], rows,
                "No client on this machine has an aegress entry. Add one with `aegress client setup`.")


def _token_from(client: str, entry: Entry) -> str | None:
    if client == "claude-desktop" and entry.helper:
        return "aegress bridge (keyring)"
    if entry.helper:
        return "aegress client headers (keyring)"
    return f"${entry.token_env}" if entry.token_env else None


# ---- env / headers ---------------------------------------------------------------------------------------


@app.command("env")
@handle_errors
def env(tenant: TenantOpt, actor: ActorOpt) -> None:
    """Print shell exports of the stored token, tenant and actor, for eval.

    Use as `eval "$(aegress client env --tenant T --actor A)"`. The output holds the token: do not paste it
    anywhere.
    """
    from gateway.clients import ACTOR_ENV, TENANT_ENV, TOKEN_ENV

    _require_token(tenant, actor)
    token = stored_token(tenant, actor)
    assert token is not None
    sys.stdout.write(
        f"export {TOKEN_ENV}={shlex.quote(token)} {TENANT_ENV}={shlex.quote(tenant)} {ACTOR_ENV}={shlex.quote(actor)}\n"
    )


@app.command("headers")
@handle_errors
def headers(tenant: TenantOpt, actor: ActorOpt) -> None:
    """Print the gateway's request headers as JSON, for Claude Code's headersHelper.

    Reads the stored token (keyring or the data dir's 0600 file), else AEGRESS_MCP_GATEWAY_TOKEN.
    """
    from gateway.clients import gateway_headers
    from gateway.errors import NotFound

    token = resolve_token(tenant, actor)
    if token is None:
        raise NotFound(
            f"no token for actor {actor!r} in tenant {tenant!r} in the keyring or AEGRESS_MCP_GATEWAY_TOKEN",
            hint=f"Run `aegress token issue --tenant {shlex.quote(tenant)} --actor {shlex.quote(actor)}`.",
        )
    sys.stdout.write(json.dumps(gateway_headers(token, tenant, actor)) + "\n")


# ---- doctor ----------------------------------------------------------------------------------------------


@app.command("doctor")
@handle_errors
def doctor(
    client: ClientArg,
    scope: ScopeOpt = None,
    name: NameOpt = "aegress",
    project_dir: ProjectOpt = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for the gateway.")] = 15.0,
    json_out: JsonOpt = False,
) -> None:
    """Check a client's aegress entry by connecting through it; exit 3 when a check fails.

    Reads the entry, gets the token the way the client would (its environment variable, its
    headersHelper, or the bridge's keyring), connects to the gateway and lists the tools the actor
    sees; or says exactly what is wrong: gateway down, token missing, revoked, tenant mismatch.
    """
    from gateway.clients.write import read_config
    from gateway.errors import UsageError

    spec = _spec(client)
    if spec.name == "generic":
        raise UsageError("generic writes no config to check",
                         hint="Run the curl command `aegress client setup generic` prints.")
    chosen = _scope(spec, scope)
    path = Path(spec.config_path(_host(project_dir), chosen))
    checks, tools, plan = _diagnose(spec, chosen, path, name, read_config, timeout)
    ok = all(c.ok for c in checks)
    if json_out:
        print_json({"client": spec.name, "scope": chosen, "path": str(path), "name": name, "ok": ok,
                    "url": plan.url if plan else None, "tenant": plan.tenant if plan else None,
                    "actor": plan.actor if plan else None, "checks": [c.to_dict() for c in checks],
                    "tools": [t.get("name") for t in tools] if ok else None})
    else:
        for c in checks:
            print(f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}")
            if c.hint and not c.ok:
                print(f"     Hint: {c.hint}")
        if ok and plan is not None and plan.source == "oauth":
            print("Sign in through the client to see the tools (it opens a browser).")
        elif ok:
            print(f"{len(tools)} tools visible to actor {plan.actor!r} in tenant {plan.tenant!r}:"  # type: ignore[union-attr]
                  if tools else "No tools are visible to this actor (the gateway answered; check its upstreams "
                  "and policy).")
            for tool in tools:
                print(f"  {tool.get('name')}")
    if not ok:
        raise typer.Exit(3)


def _diagnose(spec: ClientSpec, scope: Scope, path: Path, name: str, read_config: Any,
              timeout: float) -> tuple[list[Check], list[dict[str, Any]], Plan | None]:
    from gateway.clients.doctor import Check, PlanProblem, plan
    from gateway.errors import AegressError

    checks: list[Check] = []
    rerun = f"Run `aegress client setup {spec.name}" + (" --scope project" if scope == "project" else "") + " ...`."
    try:
        text = read_config(path)
        entries = spec.read_entries(text, source=str(path))
    except AegressError as exc:
        return [Check("config", False, exc.message, exc.hint, code=exc.code)], [], None
    if text is None:
        return [Check("config", False, f"{path} does not exist", rerun, code="no-config")], [], None
    entry = next((e for e in entries if e.name == name), None)
    if entry is None:
        return [Check("entry", False, f"{path} has no aegress entry named {name!r}", rerun, code="no-entry")], [], None
    checks.append(Check("entry", True, f"{name!r} in {path}: tenant {entry.tenant!r}, actor {entry.actor!r}, "
                        f"{entry.url}"))
    try:
        how = plan(spec.name, entry)
    except PlanProblem as exc:
        return [*checks, exc.check], [], None
    if how.source == "oauth":
        return [*checks, _oauth_probe(how, timeout)], [], how
    token_check, headers = _credentials(how, timeout)
    checks.append(token_check)
    if not token_check.ok:
        return checks, [], how
    return _connect(checks, how, headers, timeout)


def _oauth_probe(how: Plan, timeout: float) -> Check:
    """An entry without a token: does the gateway offer sign-in (a 401 naming its resource metadata)?"""
    import re

    import httpx2

    from gateway.clients.doctor import explain_challenge

    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "aegress-doctor", "version": "0"}}}
    headers = {**how.identity_headers, "accept": "application/json, text/event-stream"}
    try:
        r = httpx2.post(how.url, json=body, headers=headers, timeout=timeout)
        challenge = r.headers.get("www-authenticate", "")
        found = re.search(r'resource_metadata="([^"]+)"', challenge)
        metadata = httpx2.get(found.group(1), timeout=timeout).json() if found and r.status_code == 401 else None
    except (httpx2.HTTPError, ValueError):
        return explain_challenge(how, None, "", None)
    return explain_challenge(how, r.status_code, challenge, metadata)


def _credentials(how: Plan, timeout: float) -> tuple[Check, dict[str, str]]:
    """Get the request headers the way the client would: its env var, its helper, or the bridge's keyring."""
    from gateway.clients.doctor import Check, env_hint, issue_hint

    if how.source == "env":
        assert how.token_env is not None
        token = os.environ.get(how.token_env)
        if not token:
            return Check("token", False,
                         f"token missing from the environment: ${how.token_env} is not set in this shell, so the "
                         "client would send no valid token", env_hint(how.tenant, how.actor),
                         code="token-missing"), {}
        return (Check("token", True, f"${how.token_env} is set (the client reads it from its environment)"),
                {**how.identity_headers, "Authorization": f"Bearer {token}"})
    if how.source == "bridge":
        exe = how.command[0] if how.command else ""
        if not (Path(exe).is_absolute() and os.access(exe, os.X_OK)):
            import shutil

            if not shutil.which(exe):
                return Check("command", False, f"the entry runs {exe!r}, which is not an executable here",
                             "Run `aegress client setup claude-desktop ...` again to write an absolute path.",
                             code="bridge-missing"), {}
        if how.tenant is None or how.actor is None:
            return Check("entry", False, "the bridge command names no --tenant/--actor", code="entry-incomplete"), {}
        token = resolve_token(how.tenant, how.actor)
        if token is None:
            return Check("token", False, "no token in the keyring (or AEGRESS_MCP_GATEWAY_TOKEN) for the bridge",
                         issue_hint(how.tenant, how.actor), code="token-missing"), {}
        return (Check("token", True, "the bridge finds the token in the keyring"),
                {**how.identity_headers, "Authorization": f"Bearer {token}"})
    # headersHelper: run it as Claude Code does (through the shell) and use what it prints.
    try:
        proc = subprocess.run(how.command[0], shell=True, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Check("token", False, "the headersHelper did not finish in time", code="helper-failed"), {}
    lines = proc.stderr.strip().splitlines()
    first_error = next((line for line in lines if line.startswith("Error:")), lines[0] if lines else "")
    if proc.returncode != 0:
        return Check("token", False, f"the headersHelper failed (exit {proc.returncode}): {first_error}",
                     issue_hint(how.tenant, how.actor), code="token-missing"), {}
    try:
        got = json.loads(proc.stdout)
        assert isinstance(got, dict) and all(isinstance(v, str) for v in got.values())
    except (ValueError, AssertionError):
        return Check("token", False, "the headersHelper did not print a JSON object of headers",
                     code="helper-failed"), {}
    return Check("token", True, "the headersHelper supplies the token (from the keyring)"), got


def _connect(checks: list[Check], how: Plan, headers: dict[str, str],
             timeout: float) -> tuple[list[Check], list[dict[str, Any]], Plan]:
    import asyncio

    from gateway.bridge import probe
    from gateway.clients.doctor import Check, explain
    from gateway.errors import UpstreamError

    try:
        result = asyncio.run(asyncio.wait_for(probe(how.url, headers, timeout=timeout), timeout * 3))
    except (UpstreamError, TimeoutError) as exc:
        return [*checks, explain(exc, how)], [], how
    server = result.server_info.get("name", "?")
    checks.append(Check("gateway", True, f"{how.url} answered as {server!r} (MCP {result.protocol_version}), "
                        f"token accepted for tenant {how.tenant!r}, actor {how.actor!r}"))
    return checks, result.tools, how
