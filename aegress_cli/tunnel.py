"""`aegress tunnel ...`: the private MCP tunnel's inventory and an end-to-end check (gateway/tunnel.py).

Neither command imports the MCP SDK or the server stack: the check speaks HTTP with the standard library.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from aegress_cli._common import JsonOpt, database_url, err, handle_errors, home, print_json

app = typer.Typer(help="The private MCP tunnel: what it is on record, and whether it works end to end.",
                  no_args_is_help=True)


@app.command("status")
@handle_errors
def status(json_out: JsonOpt = False) -> None:
    """Show the tunnel on record and name exactly what is missing.

    Reads MCP_TUNNEL_PROVIDER, MCP_TUNNEL_ID, MCP_TUNNEL_WORKSPACE and MCP_TUNNEL_OWNER from the
    environment. Exit 3 when one is missing or a value is wrong."""
    from gateway.tunnel import INVENTORY_ENV, inventory

    inv = inventory(os.environ)
    if json_out:
        print_json(inv.to_dict())
    else:
        for name, var in INVENTORY_ENV:
            value = inv.fields[name]
            shown = value if value is not None else "MISSING"
            if name == "provider" and inv.provider_name:
                shown = f"{value} ({inv.provider_name})"
            print(f"{name:<10} {shown}   [{var}]")
        print(f"{'ingress':<10} {inv.ingress or '(MCP_INGRESS_MODE not set here: direct)'}")
        print(f"{'public':<10} {inv.public_url or '(MCP_PUBLIC_URL not set here)'}")
        print(f"{'auth':<10} {inv.auth_mode or '(MCP_AUTH_MODE not set here: bearer)'}")
        if inv.missing:
            err(f"Error: missing from the tunnel inventory: {', '.join(inv.missing)}.")
            err("Hint: set them where the tunnel client and gateway run (docs/operations/tunnel.md, Inventory).")
        for problem in inv.problems:
            err(f"Error: {problem}")
    if not inv.ok:
        raise typer.Exit(3)


@app.command("check")
@handle_errors
def check(
    url: Annotated[str, typer.Option("--url", envvar="MCP_PUBLIC_URL", help="The tunnel's public URL, ending "
                   "in /mcp.")],
    token_ref: Annotated[str | None, typer.Option("--token-ref", envvar="AEGRESS_STATIC_TOKEN_REF", help="Where "
                         "the token to check with is kept: keyring:NAME or file:/path. Else "
                         "AEGRESS_MCP_GATEWAY_TOKEN, else the token kept for --tenant/--actor.")] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", "-t", envvar="AEGRESS_STATIC_TENANT", help="With "
                      "--actor: check with the token `aegress token issue` kept for them.")] = None,
    actor: Annotated[str | None, typer.Option("--actor", "-a", envvar="AEGRESS_STATIC_ACTOR",
                     help="See --tenant.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds each HTTP request may take.")] = 10.0,
    evidence_wait: Annotated[float, typer.Option(help="Seconds to wait for the probe's record to reach the "
                             "evidence.")] = 10.0,
    json_out: JsonOpt = False,
) -> None:
    """Check the tunnel end to end, through it, and find the check's call in the evidence.

    Steps: /health through the tunnel, an authenticated initialize and tools/list, and a probe call (to
    a tool no upstream has: refused, nothing forwarded, recorded) that must then be in the gateway's
    evidence. Run it where the gateway runs (it reads the evidence from the data dir or
    AEGRESS_DATABASE_URL). Exit 3 with the reason when a step fails: tunnel-down, target-down,
    wrong-target, gateway-unready, host-refused, auth-failed, protocol or evidence-missing."""
    from gateway.tunnel import check_tunnel, local_evidence

    def read_token() -> str | None:
        from gateway.ingress import read_secret_ref, static_binding

        if token_ref:
            return read_secret_ref(token_ref)
        if os.environ.get("AEGRESS_MCP_GATEWAY_TOKEN"):
            return os.environ["AEGRESS_MCP_GATEWAY_TOKEN"].strip()
        binding = static_binding(tenant, actor, None) if (tenant or actor) else None
        return read_secret_ref(binding.token_ref) if binding else None

    data = home()
    report = check_tunnel(url, read_token, local_evidence(data, database_url()), timeout=timeout,
                          evidence_wait=evidence_wait)
    if json_out:
        print_json(report.to_dict())
    else:
        print(f"Tunnel check of {url}")
        for step in report.steps:
            print(f"  {'ok  ' if step.ok else 'FAIL'}  {step.name:<10}  {step.detail}")
        if report.ok:
            print("Tunnel check passed.")
        else:
            err(f"Error: {report.reason}: {report.message}")
            if report.hint:
                err(f"Hint: {report.hint}")
    if not report.ok:
        raise typer.Exit(3)
