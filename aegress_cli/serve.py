"""`aegress serve`: run the gateway (Streamable HTTP at /mcp, health at /health)."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Literal

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
    log_level: Annotated[Literal["debug", "info", "warning", "error"], typer.Option(
        envvar="AEGRESS_LOG_LEVEL", case_sensitive=False, help="How much the gateway logs.")] = "warning",
    no_evidence: Annotated[bool, typer.Option("--no-evidence", help="Benchmarks only: turn the record stage "
                           "off. Calls then leave NO sealed evidence (no intent, outcome, refusal or receipt) and "
                           "nothing proves what the gateway forwarded. No env var does this.")] = False,
    drain_grace: Annotated[float, typer.Option(envvar="AEGRESS_DRAIN_GRACE", help="On SIGTERM, seconds calls in "
                           "flight may still run before they are cut with an error.")] = _D.drain_grace_s,
    max_connections: Annotated[int, typer.Option(envvar="AEGRESS_MAX_CONNECTIONS", help="Open HTTP connections; "
                               "beyond it requests get 503.")] = _D.max_connections,
    max_connections_per_address: Annotated[int | None, typer.Option(
        envvar="AEGRESS_MAX_CONNECTIONS_PER_ADDRESS", show_default=False,
        help=f"Open HTTP connections from one client address; beyond it new connections get 503 (raise it "
        f"behind a reverse proxy). Default: {_D.max_connections_per_address}; with --ingress tunnel, "
        "--max-connections (every connection comes from the tunnel's address).")] = None,
    keep_alive: Annotated[float, typer.Option(envvar="AEGRESS_KEEP_ALIVE", min=0.5, help="Seconds an idle keep-alive "
                          "connection stays open. Behind a proxy or load balancer, keep it above the balancer's "
                          "idle timeout (AWS ALB and ingress-nginx 60 s; Google Cloud's 600 s needs 620).")
                          ] = _D.keep_alive_s,
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
    session_max_age: Annotated[float, typer.Option(envvar="AEGRESS_SESSION_MAX_AGE", help="Seconds a session "
                               "id stays valid after initialize: any replica serves it until then unless it was "
                               "ended (DELETE); then 404 and the client starts a new session.")
                               ] = _D.session_max_age_s,
    max_calls_per_actor: Annotated[int, typer.Option(envvar="AEGRESS_MAX_CALLS_PER_ACTOR", help="Requests in "
                                   "flight per actor (then 429).")] = _D.max_calls_per_actor,
    max_calls_per_tenant: Annotated[int, typer.Option(envvar="AEGRESS_MAX_CALLS_PER_TENANT", help="Requests in "
                                    "flight per tenant (then 429).")] = _D.max_calls_per_tenant,
    auth_throttle: Annotated[int, typer.Option(envvar="AEGRESS_AUTH_THROTTLE", help="Failed authentications "
                             "per client address and --auth-throttle-window before 429 (valid tokens still "
                             "pass).")] = _D.auth_failures,
    auth_throttle_window: Annotated[float, typer.Option(envvar="AEGRESS_AUTH_THROTTLE_WINDOW", help="Seconds "
                                    "over which --auth-throttle counts failures.")] = _D.auth_failure_window_s,
    ingress: Annotated[Literal["direct", "tunnel"], typer.Option(
                       "--ingress", envvar="MCP_INGRESS_MODE", case_sensitive=False, help="direct, or tunnel: an "
                       "outbound tunnel client beside the gateway carries MCP traffic (loopback bind only, "
                       "--public-url required). See docs/operations/tunnel.md.")] = "direct",
    public_url: Annotated[str | None, typer.Option("--public-url", envvar=["MCP_PUBLIC_URL", "AEGRESS_PUBLIC_URL"],
                          help="The URL clients use (the tunnel's or reverse proxy's, ending in /mcp; an origin "
                          "alone means its /mcp): every URL the gateway prints, and OAuth mode's metadata, are "
                          "built from it, and its host passes the Host and Origin checks.")] = None,
    auth_mode: Annotated[str, typer.Option("--auth-mode", envvar="MCP_AUTH_MODE", help="bearer (Aegress "
                         "tokens) or oauth (clients sign in and consent, or bring a trusted issuer's token; "
                         "docs/oauth.md).")] = "bearer",
    trusted_proxy: Annotated[list[str] | None, typer.Option("--trusted-proxy", envvar="AEGRESS_TRUSTED_PROXIES",
                             help="Address or CIDR of a proxy whose X-Forwarded-For and X-Forwarded-Host are "
                             "believed (repeatable; in the env var, space-separated). From any other peer "
                             "they are ignored.")] = None,
    static_tenant: Annotated[str | None, typer.Option("--static-tenant", envvar="AEGRESS_STATIC_TENANT",
                             help="Static binding, for a customer-hosted pilot: accept only one token, that "
                             "of this tenant and --static-actor (start-up fails when it is missing, revoked or "
                             "bound elsewhere).")] = None,
    static_actor: Annotated[str | None, typer.Option("--static-actor", envvar="AEGRESS_STATIC_ACTOR",
                            help="The static binding's actor (see --static-tenant).")] = None,
    static_token_ref: Annotated[str | None, typer.Option("--static-token-ref", envvar="AEGRESS_STATIC_TOKEN_REF",
                                help="Where that token is kept: keyring:NAME or file:/path (mode 0600), never "
                                "the token itself. Default: keyring:token:TENANT:ACTOR, where `aegress token "
                                "issue` keeps it.")] = None,
    metrics: Annotated[Literal["token", "loopback", "off"], typer.Option(
                       "--metrics", envvar="AEGRESS_METRICS", case_sensitive=False, help="Prometheus metrics at "
                       "/metrics: token (an operator token as bearer token), loopback (no token, loopback clients "
                       "only, refused through a proxy) or off (404). See docs/observability.md.")] = "token",
    metrics_tenant_label: Annotated[bool, typer.Option("--metrics-tenant-label", envvar="AEGRESS_METRICS_TENANT_LABEL",
                                    help="Label request, stage and upstream-error metrics (and spans) with the "
                                    "tenant id: one series per tenant, so only with few tenants.")] = False,
    tenant_paths: Annotated[bool, typer.Option("--tenant-paths", envvar="AEGRESS_OAUTH_TENANT_PATHS", help="OAuth "
                            "mode: also serve each tenant at /t/<tenant>/mcp, its own resource (the token's "
                            "audience binds the tenant).")] = False,
) -> None:
    """Run the gateway in the foreground until Ctrl-C (SIGTERM drains calls in flight first)."""
    import logging

    from gateway.config import ServeSettings
    from gateway.ingress import (
        check_auth_mode,
        check_ingress,
        parse_trusted_proxies,
        static_binding,
        with_mcp_path,
    )
    from gateway.server import check_bind

    auth_mode = check_auth_mode(auth_mode)
    ingress = ingress.strip().lower()
    public = check_ingress(ingress, host, with_mcp_path(public_url) if public_url else None, allow_public_bind)
    if auth_mode == "oauth" and public is not None:
        from gateway.oauth.resource import check_public_url

        check_public_url(public.base)  # OAuth's resource is <origin>/mcp: an https origin (http on loopback)
    check_bind(host, allow_public_bind)
    pinned = static_binding(static_tenant, static_actor, static_token_ref)
    proxies = tuple(trusted_proxy or ())
    parse_trusted_proxies(proxies)
    if max_connections_per_address is None:  # behind a tunnel every peer is its loopback address
        max_connections_per_address = (max_connections if ingress == "tunnel"
                                       else _D.max_connections_per_address)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if os.environ.get("AEGRESS_AUDIT", "on").lower() in ("off", "0", "false") and not no_evidence:
        err("Warning: AEGRESS_AUDIT=off is ignored: evidence stays on. Pass --no-evidence to turn it off.")
    data = home()
    database = database_url()
    from gateway.datadir import hold

    lock = hold(data)  # before --demo or anything else touches the store: one gateway per data dir
    fresh_token: str | None = None
    if demo:
        from gateway import credentials
        from gateway.demo import setup as demo_setup

        have = credentials.get_secret(credentials.token_key(demo_setup.DEMO_TENANT, demo_setup.DEMO_ACTOR)) is not None
        fresh_token = demo_setup.ensure_demo(store(), master_key(), now(), have_token=have)
        if fresh_token:
            from aegress_cli.token import keep_token

            keep_token(demo_setup.DEMO_TENANT, demo_setup.DEMO_ACTOR, fresh_token)
    limits = Limits(drain_grace_s=drain_grace, max_connections=max_connections, header_timeout_s=header_timeout,
                    keep_alive_s=keep_alive,
                    body_idle_timeout_s=body_timeout, body_deadline_s=body_deadline,
                    max_connections_per_address=max_connections_per_address,
                    max_sessions_per_actor=max_sessions_per_actor, max_sessions_per_tenant=max_sessions_per_tenant,
                    session_reclaim_idle_s=session_reclaim_idle, session_max_age_s=session_max_age,
                    max_calls_per_actor=max_calls_per_actor,
                    max_calls_per_tenant=max_calls_per_tenant, auth_failures=auth_throttle,
                    auth_failure_window_s=auth_throttle_window)
    settings = ServeSettings(host=host, port=port, allowed_hosts=tuple(allowed_host or ()),
                             allowed_origins=tuple(allowed_origin or ()), auth_mode=auth_mode, limits=limits,
                             public_url=public.url if public else None, ingress=ingress, trusted_proxies=proxies,
                             static_binding=pinned, oauth_tenant_paths=tenant_paths,
                             metrics=metrics.lower(), metrics_tenant_label=metrics_tenant_label)

    def ready(url: str) -> None:
        print(f"Aegress gateway listening on {url}", flush=True)
        if public is not None:
            print(f"Public URL ({ingress} ingress): {public.url}", flush=True)
        if pinned is not None:
            print(f"Static binding: only the token under {pinned.token_ref} (tenant {pinned.tenant}, actor "
                  f"{pinned.actor}) is accepted.", flush=True)
        print(f"Data dir: {data}", flush=True)
        from gateway.store import mask_url

        if database:
            print(f"Database: {mask_url(database)}", flush=True)
        redis_url = os.environ.get("AEGRESS_REDIS_URL", "").strip()
        if redis_url:
            print(f"Redis: {mask_url(redis_url)} (signals and shared limits across replicas)", flush=True)
        if metrics.lower() != "off":
            print(f"Metrics: {url.rsplit('/mcp', 1)[0]}/metrics ("
                  + ("operator token" if metrics.lower() == "token" else "loopback clients, no token") + ")",
                  flush=True)
        if no_evidence:
            print("EVIDENCE IS OFF (--no-evidence): calls are not recorded and carry no receipts.", flush=True)
        if auth_mode == "oauth":
            origin = (public.url if public else url).rsplit("/mcp", 1)[0]
            print(f"OAuth mode: clients sign in; resource {origin}/mcp"
                  + (f", per tenant {origin}/t/<tenant>/mcp" if tenant_paths else ""), flush=True)
        if demo:
            _print_demo(public.url if public else url, fresh_token)
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
