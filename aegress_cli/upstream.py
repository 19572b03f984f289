"""`aegress upstream ...`: the MCP servers a tenant's tools come from (stdio commands or HTTP URLs)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from aegress_cli._common import (
    JsonOpt,
    TenantOpt,
    YesOpt,
    confirm,
    err,
    handle_errors,
    now,
    print_json,
    print_table,
    printable,
    progress,
    store,
)
from gateway.types import MIB, UpstreamLimits

app = typer.Typer(help="Register, list, test, change and remove a tenant's upstream MCP servers.",
                  no_args_is_help=True)

_D = UpstreamLimits()
MaxBytesOpt = Annotated[int | None, typer.Option(
    "--max-message-bytes",
    help="Largest message accepted from the upstream (one JSON body, SSE event or stdio line); a larger answer "
    f"fails its call. Default: {_D.max_message_bytes} ({_D.max_message_bytes // MIB} MiB).")]
ConnectOpt = Annotated[float | None, typer.Option(
    "--connect-timeout",
    help=f"Seconds to connect (TCP/TLS) or spawn the process. Default: {_D.connect_timeout_s:g}.")]
InitOpt = Annotated[float | None, typer.Option(
    "--init-timeout", help=f"Seconds for the upstream to answer initialize. Default: {_D.init_timeout_s:g}.")]
CallOpt = Annotated[float | None, typer.Option(
    "--call-timeout", help=f"Seconds for one request to be answered in full. Default: {_D.call_timeout_s:g}.")]
IdleOpt = Annotated[float | None, typer.Option(
    "--idle-timeout",
    help=f"Longest silence in seconds while an HTTP answer is still arriving. Default: {_D.idle_timeout_s:g}.")]
ErrorDataOpt = Annotated[bool | None, typer.Option(
    "--forward-error-data/--no-forward-error-data",
    help="Pass the `data` of the upstream's errors (stack traces, internal names) to clients. Default: off.",
    show_default=False)]


def _limit_changes(max_message_bytes: int | None, connect_timeout: float | None, init_timeout: float | None,
                   call_timeout: float | None, idle_timeout: float | None,
                   forward_error_data: bool | None) -> dict[str, int | float | bool]:
    """The limits given on the command line, by their UpstreamLimits field names."""
    given = {"max_message_bytes": max_message_bytes, "connect_timeout_s": connect_timeout,
             "init_timeout_s": init_timeout, "call_timeout_s": call_timeout, "idle_timeout_s": idle_timeout,
             "forward_error_data": forward_error_data}
    return {k: v for k, v in given.items() if v is not None}


def _spec_json(spec) -> dict:  # type: ignore[no-untyped-def]
    from gateway.admin import limits_view

    return {
        "tenant": spec.tenant_id,
        "name": spec.name,
        "transport": spec.transport,
        "command": list(spec.command) if spec.command else None,
        "url": spec.url,
        "headers": {k: ("<from keyring>" if v.startswith("keyring:") else "<from env>" if v.startswith("env:")
                        else "<set>") for k, v in spec.headers.items()},
        "env": sorted(spec.env),
        "prefix": spec.prefix,
        "allow_private": spec.allow_private,
        "created_at": spec.created_at,
        "limits": limits_view(spec.limits),
    }


def _probe(admin: Any, spec: Any, timeout: float, *, registered: bool, quiet: bool) -> Any:
    """Probe with a spinner on a terminal: the time spent and the server's latest stderr line (an `npx`
    download says what it is doing). What the library noticed about the server (a line on stdout that is
    not JSON) is added to the error when it fails."""
    import asyncio
    import logging

    from gateway.errors import UpstreamError

    noticed: list[str] = []

    class Notice(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            text = record.getMessage()
            if record.levelno >= logging.WARNING and not text.endswith(" exited") and text not in noticed:
                noticed.append(text)

    logger = logging.getLogger("aegress.upstream")
    handler, propagate = Notice(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False  # collected, not printed as bare log lines
    target = " ".join(spec.command[:3]) + (" ..." if len(spec.command) > 3 else "") if spec.command else spec.url
    with progress(quiet, spinner=True) as shown:
        task = shown.add_task(f"Starting upstream {spec.name} ({target})", total=None)
        shown.refresh()  # at once, not at the first tick

        def on_stderr(line: str) -> None:
            shown.update(task, description=f"Starting upstream {spec.name}: {line[:70]}")

        try:
            return asyncio.run(admin.probe(spec, timeout, registered=registered, on_stderr=on_stderr))
        except UpstreamError as exc:
            if not noticed:
                raise
            raise UpstreamError(exc.message + "\nAlso seen while starting it: " + "; ".join(noticed[:5]) + ".",
                                hint=exc.hint, code=exc.code) from exc
        finally:
            logger.removeHandler(handler)
            logger.propagate = propagate


@app.command("add", context_settings={"allow_extra_args": False})
@handle_errors
def add(
    name: Annotated[str, typer.Argument(help="Upstream name: lowercase letters, digits, hyphens. Prefixes its tools.")],
    tenant: TenantOpt,
    command: Annotated[
        list[str] | None,
        typer.Option("--command", "-c", help="Stdio server: the program and each argument (repeat the option, "
                     "or give one quoted command line; it is split, never run by a shell)."),
    ] = None,
    url: Annotated[str | None, typer.Option("--url", help="Streamable HTTP server URL (https://...).")] = None,
    header: Annotated[
        list[str] | None,
        typer.Option("--header", "-H", help="NAME=VALUE sent to an HTTP upstream; VALUE may be keyring:KEY or "
                     "env:VAR so the secret is looked up at connect time."),
    ] = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="NAME=VALUE for a stdio upstream.")] = None,
    cwd: Annotated[str | None, typer.Option("--cwd", help="Working directory for a stdio upstream.")] = None,
    no_prefix: Annotated[bool, typer.Option("--no-prefix", help="Expose its tools unprefixed (refused on a "
                                            "name collision).")] = False,
    allow_private: Annotated[bool, typer.Option("--allow-private", help="Allow loopback/private-range URLs.")] = False,
    probe: Annotated[bool, typer.Option("--probe/--no-probe", help="Connect and list tools before saving "
                                        "(needed for --no-prefix).")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the probe (a first `npx` run downloads the "
                                           "server: give it more).")] = 30.0,
    max_message_bytes: MaxBytesOpt = None,
    connect_timeout: ConnectOpt = None,
    init_timeout: InitOpt = None,
    call_timeout: CallOpt = None,
    idle_timeout: IdleOpt = None,
    forward_error_data: ErrorDataOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Register an upstream MCP server for a tenant: start it, list its tools, then save it.

    When it does not start, nothing is saved and the error shows what the server wrote to stderr."""
    from gateway import admin
    from gateway.errors import InvalidInput

    spec = admin.make_upstream_spec(
        tenant, name, command=command, url=url, headers=admin.parse_headers(header or []),
        env=admin.parse_env(env or []), cwd=cwd, prefix=not no_prefix, allow_private=allow_private, now=now(),
        limits=UpstreamLimits(**_limit_changes(max_message_bytes, connect_timeout, init_timeout, call_timeout,
                                                idle_timeout, forward_error_data)),  # type: ignore[arg-type]
    )
    s = store()
    admin.require_tenant(s, tenant)
    if no_prefix and not probe:
        raise InvalidInput("--no-prefix needs the probe to check for name collisions.", hint="Drop --no-probe.")
    probed = _probe(admin, spec, timeout, registered=False, quiet=json_out) if probe else None
    tools = admin.add_upstream(s, spec, probed)
    if json_out:
        print_json({**_spec_json(spec), "tools": tools})
    else:
        shown = printable(", ".join(tools[:8])) + (" ..." if len(tools) > 8 else "") if tools else "(not probed)"
        print(f"Added upstream {name} to tenant {tenant}: {len(tools)} tools: {shown}")
        if not probe:
            err(f"Note: not probed; check it with `aegress upstream test --tenant {tenant} {name}`.")


@app.command("list")
@handle_errors
def list_(tenant: TenantOpt, json_out: JsonOpt = False) -> None:
    """List a tenant's upstreams."""
    from gateway import admin

    s = store()
    admin.require_tenant(s, tenant)
    specs = s.list_upstreams(tenant)
    if json_out:
        print_json([_spec_json(u) for u in specs])
        return
    rows = [(u.name, u.transport, " ".join(u.command) if u.command else u.url, "yes" if u.prefix else "no")
            for u in specs]
    print_table(f"Upstreams of {tenant}", ["name", "transport", "target", "prefixed"], rows, "No upstreams yet.")


@app.command("show")
@handle_errors
def show(name: Annotated[str, typer.Argument(help="Upstream name.")], tenant: TenantOpt,
         json_out: JsonOpt = False) -> None:
    """Show one upstream's registration and its limits (secrets are never shown)."""
    from gateway import admin

    spec = admin.require_upstream(store(), tenant, name)
    view = _spec_json(spec)
    if json_out:
        print_json(view)
        return
    rows = [(k, str(v)) for k, v in view.items() if k != "limits"] + [(k, str(v)) for k, v in view["limits"].items()]
    print_table(f"Upstream {name} of {tenant}", ["setting", "value"], rows, "")


@app.command("set")
@handle_errors
def set_(
    name: Annotated[str, typer.Argument(help="Upstream name.")],
    tenant: TenantOpt,
    max_message_bytes: MaxBytesOpt = None,
    connect_timeout: ConnectOpt = None,
    init_timeout: InitOpt = None,
    call_timeout: CallOpt = None,
    idle_timeout: IdleOpt = None,
    forward_error_data: ErrorDataOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Change an upstream's limits (only those given); a running gateway applies them within a second."""
    from gateway import admin

    spec = admin.set_upstream_limits(store(), tenant, name, _limit_changes(
        max_message_bytes, connect_timeout, init_timeout, call_timeout, idle_timeout, forward_error_data))
    if json_out:
        print_json(_spec_json(spec))
    else:
        changed = ", ".join(f"{k}={v}" for k, v in spec.limits.changed().items()) or "all defaults"
        print(f"Updated upstream {name} of tenant {tenant}: {changed}.")


@app.command("remove")
@handle_errors
def remove(name: Annotated[str, typer.Argument(help="Upstream name.")], tenant: TenantOpt, yes: YesOpt = False,
           json_out: JsonOpt = False) -> None:
    """Remove an upstream; a running gateway drops its tools within a second."""
    from gateway import admin

    s = store()
    admin.require_upstream(s, tenant, name)
    confirm(f"Remove upstream {name!r} from tenant {tenant!r}? A running gateway drops its tools within a second.",
            yes)
    admin.remove_upstream(s, tenant, name)
    if json_out:
        print_json({"removed": name, "tenant": tenant})
    else:
        print(f"Removed upstream {name} from tenant {tenant}.")


@app.command("test")
@handle_errors
def test(name: Annotated[str, typer.Argument(help="Upstream name.")], tenant: TenantOpt,
         timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 30.0, json_out: JsonOpt = False) -> None:
    """Connect to an upstream as the gateway would and list its tools."""
    from gateway import admin

    s = store()
    spec = admin.require_upstream(s, tenant, name)
    result = _probe(admin, spec, timeout, registered=True, quiet=json_out)
    s.set_upstream_tools(tenant, name, [str(t.get("name")) for t in result.tools])
    if json_out:
        print_json({"name": name, "server": result.server_name, "protocol_version": result.protocol_version,
                    "tools": [{"name": t.get("name"), "description": t.get("description", "")} for t in result.tools]})
        return
    print(f"Connected to {name} ({printable(result.server_name or 'unnamed server')}, "
          f"protocol {printable(result.protocol_version)}).")
    print_table("Tools", ["name", "description"],
                [(t.get("name"), (t.get("description") or "").split("\n")[0][:80]) for t in result.tools],
                "It offers no tools.")


secret_app = typer.Typer(help="Keep upstream credentials in the keyring (referenced as keyring:NAME in --header).",
                         no_args_is_help=True)
app.add_typer(secret_app, name="secret")


@secret_app.command("set")
@handle_errors
def secret_set(
    name: Annotated[str, typer.Argument(help="Secret name, used as --header 'Authorization=keyring:NAME'.")],
    value_stdin: Annotated[bool, typer.Option("--stdin", help="Read the value from standard input instead of "
                                              "a hidden prompt.")] = False,
) -> None:
    """Store an upstream credential in the keyring (or the 0600 fallback file); it is never printed."""
    import sys

    from aegress_cli._common import home
    from gateway import credentials
    from gateway.errors import InvalidInput

    home()
    value = sys.stdin.read().rstrip("\n") if value_stdin else typer.prompt(f"Value for {name}", hide_input=True)
    if not value:
        raise InvalidInput("The secret is empty.", hint="Pipe the value with --stdin, or type it at the prompt.")
    where = credentials.store_secret(f"upstream:{name}", value)
    print(f"Stored upstream secret {name} in {where}. Use it as: --header 'Authorization=keyring:{name}'")


@secret_app.command("remove")
@handle_errors
def secret_remove(name: Annotated[str, typer.Argument(help="Secret name.")]) -> None:
    """Forget an upstream credential."""
    from aegress_cli._common import home
    from gateway import credentials

    home()
    credentials.delete_secret(f"upstream:{name}")
    print(f"Removed upstream secret {name}.")
