"""`aegress serve`: run the gateway (Streamable HTTP at /mcp, health at /health)."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from aegress_cli._common import database_url, err, handle_errors, home, master_key, now, store
from gateway.config import Limits

_D = Limits()  # the flags' defaults are the library's


@handle_errors
def serve(
    host: Annotated[str, typer.Option(envvar="AEGRESS_HOST", help="Address to listen on (loopback only "
                                      "unless --allow-public-bind).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="AEGRESS_PORT", help="Port; 0 picks a free one.")] = 8765,
    demo: Annotated[bool, typer.Option("--demo", help="Create the demo tenant, actor, token and upstream "
                                       "(idempotent) before serving.")] = False,
    allowed_host: Annotated[list[str] | None, typer.Option("--allowed-host", help="Extra Host header value to "
                            "accept, e.g. gw.example.com or gw.example.com:* (repeatable).")] = None,
    allowed_origin: Annotated[list[str] | None, typer.Option("--allowed-origin", help="Extra browser Origin "
                              "to accept (repeatable).")] = None,
    allow_public_bind: Annotated[bool, typer.Option("--allow-public-bind", help="Allow a non-loopback "
                                 "--host.")] = False,
    log_level: Annotated[str, typer.Option(envvar="AEGRESS_LOG_LEVEL", help="debug, info, warning or "
                         "error.")] = "warning",
    no_evidence: Annotated[bool, typer.Option("--no-evidence", help="Benchmarks only: turn the record stage "
                           "off. Calls then leave NO sealed evidence (no intent, outcome, refusal or receipt) and "
                           "nothing proves what the gateway forwarded. No env var does this.")] = False,
    drain_grace: Annotated[float, typer.Option(envvar="AEGRESS_DRAIN_GRACE", help="On SIGTERM, seconds calls in "
                           "flight may still run before they are cut with an error.")] = _D.drain_grace_s,
    max_connections: Annotated[int, typer.Option(envvar="AEGRESS_MAX_CONNECTIONS", help="Open HTTP connections; "
                               "beyond it requests get 503.")] = _D.max_connections,
    max_connections_per_address: Annotated[int, typer.Option(envvar="AEGRESS_MAX_CONNECTIONS_PER_ADDRESS",
                                           help="Open HTTP connections from one client address; beyond it "
                                           "new connections get 503 (raise it behind a reverse proxy)."
                                           )] = _D.max_connections_per_address,
    header_timeout: Annotated[float, typer.Option(envvar="AEGRESS_HEADER_TIMEOUT", help="Seconds a client may "
                              "take to send a request's headers (then 408).")] = _D.header_timeout_s,
    body_timeout: Annotated[float, typer.Option(envvar="AEGRESS_BODY_TIMEOUT", help="Longest pause, in seconds, "
                            "while a request body arrives (then 408).")] = _D.body_idle_timeout_s,
    body_deadline: Annotated[float, typer.Option(envvar="AEGRESS_BODY_DEADLINE", help="Seconds a request body "
                             "may take in all, once its headers are in (then 408).")] = _D.body_deadline_s,
    max_sessions_per_actor: Annotated[int, typer.Option(envvar="AEGRESS_MAX_SESSIONS_PER_ACTOR", help="Open "
                                      "sessions per actor (then 429).")] = _D.max_sessions_per_actor,
    max_sessions_per_tenant: Annotated[int, typer.Option(envvar="AEGRESS_MAX_SESSIONS_PER_TENANT", help="Open "
                                       "sessions per tenant (then 429).")] = _D.max_sessions_per_tenant,
    session_reclaim_idle: Annotated[float, typer.Option(envvar="AEGRESS_SESSION_RECLAIM_IDLE", help="When a "
                                    "session cap is reached, that actor's (tenant's) sessions idle this many "
                                    "seconds with nothing in flight are closed to make room."
                                    )] = _D.session_reclaim_idle_s,
    max_calls_per_actor: Annotated[int, typer.Option(envvar="AEGRESS_MAX_CALLS_PER_ACTOR", help="Requests in "
                                   "flight per actor (then 429).")] = _D.max_calls_per_actor,
    max_calls_per_tenant: Annotated[int, typer.Option(envvar="AEGRESS_MAX_CALLS_PER_TENANT", help="Requests in "
                                    "flight per tenant (then 429).")] = _D.max_calls_per_tenant,
    auth_throttle: Annotated[int, typer.Option(envvar="AEGRESS_AUTH_THROTTLE", help="Failed authentications "
                             "per client address and --auth-throttle-window before 429 (valid tokens still "
                             "pass).")] = _D.auth_failures,
    auth_throttle_window: Annotated[float, typer.Option(envvar="AEGRESS_AUTH_THROTTLE_WINDOW", help="Seconds "
                                    "over which --auth-throttle counts failures.")] = _D.auth_failure_window_s,
    public_url: Annotated[str | None, typer.Option(envvar="AEGRESS_PUBLIC_URL", help="OAuth mode: the origin "
                          "clients reach the gateway at (https://gw.example.com); every metadata URL is built from "
                          "it. Default: the listening address (loopback only).")] = None,
    tenant_paths: Annotated[bool, typer.Option("--tenant-paths", envvar="AEGRESS_OAUTH_TENANT_PATHS", help="OAuth "
                            "mode: also serve each tenant at /t/<tenant>/mcp, its own resource (the token's "
                            "audience binds the tenant).")] = False,
) -> None:
    """Run the gateway in the foreground until Ctrl-C (SIGTERM drains calls in flight first)."""
    import logging

    from gateway.config import ServeSettings
    from gateway.errors import ConfigError
    from gateway.server import check_bind

    auth_mode = os.environ.get("MCP_AUTH_MODE", "bearer")
    if auth_mode not in ("bearer", "oauth"):
        raise ConfigError(f"MCP_AUTH_MODE={auth_mode!r} is not supported.",
                          hint="Use MCP_AUTH_MODE=bearer (tokens) or MCP_AUTH_MODE=oauth (sign-in and consent).")
    if auth_mode == "oauth" and public_url:
        from gateway.oauth.resource import check_public_url

        public_url = check_public_url(public_url)
    check_bind(host, allow_public_bind)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if os.environ.get("AEGRESS_AUDIT", "on").lower() in ("off", "0", "false") and not no_evidence:
        err("Warning: AEGRESS_AUDIT=off is ignored: evidence stays on. Pass --no-evidence to turn it off.")
    data = home()
    database = database_url()
    from gateway.datadir import hold

    lock = hold(data)  # before --demo or anything else touches the store: one gateway per data dir
    fresh_token: str | None = None
    if demo:
        from gateway import admin, credentials

        have = credentials.get_secret(credentials.token_key(admin.DEMO_TENANT, admin.DEMO_ACTOR)) is not None
        fresh_token = admin.ensure_demo(store(), master_key(), now(), have_token=have)
        if fresh_token:
            from aegress_cli.token import keep_token

            keep_token(admin.DEMO_TENANT, admin.DEMO_ACTOR, fresh_token)
    limits = Limits(drain_grace_s=drain_grace, max_connections=max_connections, header_timeout_s=header_timeout,
                    body_idle_timeout_s=body_timeout, body_deadline_s=body_deadline,
                    max_connections_per_address=max_connections_per_address,
                    max_sessions_per_actor=max_sessions_per_actor, max_sessions_per_tenant=max_sessions_per_tenant,
                    session_reclaim_idle_s=session_reclaim_idle, max_calls_per_actor=max_calls_per_actor,
                    max_calls_per_tenant=max_calls_per_tenant, auth_failures=auth_throttle,
                    auth_failure_window_s=auth_throttle_window)
    settings = ServeSettings(host=host, port=port, allowed_hosts=tuple(allowed_host or ()),
                             allowed_origins=tuple(allowed_origin or ()), auth_mode=auth_mode, limits=limits,
                             public_url=public_url, oauth_tenant_paths=tenant_paths)

    def ready(url: str) -> None:
        print(f"Aegress gateway listening on {url}", flush=True)
        print(f"Data dir: {data}", flush=True)
        if database:
            from gateway.store import mask_url

            print(f"Database: {mask_url(database)}", flush=True)
        if no_evidence:
            print("EVIDENCE IS OFF (--no-evidence): calls are not recorded and carry no receipts.", flush=True)
        if auth_mode == "oauth":
            origin = public_url or url.rsplit("/mcp", 1)[0]
            print(f"OAuth mode: clients sign in; resource {origin}/mcp"
                  + (f", per tenant {origin}/t/<tenant>/mcp" if tenant_paths else ""), flush=True)
        if demo:
            _print_demo(url, fresh_token)
        print("Press Ctrl-C to stop.", flush=True)

    from gateway.server import serve as run

    run(data, settings, database_url=database, on_ready=ready, log_level=log_level,
        evidence=not no_evidence, lock=lock)


def _print_demo(url: str, fresh_token: str | None) -> None:
    lines = [
        "",
        "Demo: tenant 'demo', actor 'demo-user', upstream 'demo' (tools demo__echo, demo__add, ...).",
    ]
    if fresh_token:
        lines.append(f"Demo token (shown once; also kept for client setup): {fresh_token}")
    else:
        lines.append("Demo token: kept from an earlier run (keyring or the data dir's secrets file).")
    lines += [
        "Try it:",
        "  export AEGRESS_MCP_GATEWAY_TOKEN=<the demo token>",
        f"  curl -s {url} -H 'Authorization: Bearer '$AEGRESS_MCP_GATEWAY_TOKEN \\",
        "       -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \\",
        "       -d '{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{\"protocolVersion\":"
        "\"2025-11-25\",\"capabilities\":{},\"clientInfo\":{\"name\":\"curl\",\"version\":\"0\"}}}'",
        "Connect a client (Streamable HTTP):",
        f"  aegress client setup claude-code --tenant demo --actor demo-user --url {url}",
        "",
    ]
    print("\n".join(lines), flush=True)
    if fresh_token is None:
        err("Hint: `aegress token issue --tenant demo --actor demo-user` prints a new demo token.")
    sys.stdout.flush()
