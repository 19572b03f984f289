"""`aegress oauth ...`: OAuth mode (MCP_AUTH_MODE=oauth). Which identity providers each tenant trusts,
and the embedded authorization server's clients, grants, login links and signing keys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
    store,
)

app = typer.Typer(help="OAuth mode: trusted identity providers, clients, grants, login links.", no_args_is_help=True)
issuer_app = typer.Typer(help="Which identity providers a tenant trusts, and how their claims map.",
                         no_args_is_help=True)
app.add_typer(issuer_app, name="issuer")

IssuerOpt = Annotated[str, typer.Option("--issuer", help="The issuer URL, exactly as tokens' `iss` claim spells it.")]


@issuer_app.command("add")
@handle_errors
def issuer_add(
    tenant: TenantOpt,
    issuer: IssuerOpt,
    audience: Annotated[str, typer.Option(help="The `aud` tokens must carry. Default: the gateway's canonical "
                                          "resource URI (<public URL>/mcp, or /t/<tenant>/mcp).")] = "",
    tenant_claim: Annotated[str, typer.Option(help="Claim naming the tenant, when one identity provider serves "
                                              "several tenants (e.g. tid, org_id). Default: none, the issuer alone "
                                              "names the tenant.")] = "",
    tenant_value: Annotated[str, typer.Option(help="The --tenant-claim value of this tenant. Default: the "
                                              "tenant id.")] = "",
    actor_claim: Annotated[str, typer.Option(help="Claim naming the actor (e.g. sub, email, "
                                             "preferred_username, oid).")] = "sub",
    scope: Annotated[list[str] | None, typer.Option("--scope", help="A scope tokens must carry (repeatable). "
                                                    "Default: mcp.")] = None,
    no_scope: Annotated[bool, typer.Option("--no-scope", help="Require no scope at all.")] = False,
    jwks_uri: Annotated[str, typer.Option(help="The issuer's JWKS URL. Default: discovered from its "
                                          "metadata.")] = "",
    require_known_actor: Annotated[bool, typer.Option("--require-known-actor", help="Refuse actors not added "
                                                      "with `aegress actor add`.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Trust an identity provider's access tokens for a tenant."""
    from gateway.oauth import admin
    from gateway.store.base import TrustedIssuer

    scopes = () if no_scope else tuple(scope or ("mcp",))
    s = store()
    entry = admin.add_issuer(s, TrustedIssuer(tenant, issuer, audience, tenant_claim, tenant_value, actor_claim, scopes,
                                              jwks_uri, require_known_actor), now())
    others = admin.ambiguous_with(s, entry)
    if others:
        err(f"Warning: tenants {', '.join(others)} trust this issuer too, and a token could fit both; such tokens "
            "are refused. Give each a --tenant-claim, or serve tenants at their own URIs (serve --tenant-paths).")
    if json_out:
        print_json(admin.issuer_view(entry))
    else:
        print(f"Tenant {tenant} now trusts {issuer}.")


@issuer_app.command("list")
@handle_errors
def issuer_list(tenant: Annotated[str | None, typer.Option("--tenant", "-t", help="Only this tenant.")] = None,
                json_out: JsonOpt = False) -> None:
    """List trusted identity providers."""
    from gateway.oauth import admin

    entries = store().list_trusted_issuers(tenant)
    if json_out:
        print_json([admin.issuer_view(e) for e in entries])
        return
    print_table("Trusted issuers", ["tenant", "issuer", "audience", "tenant claim", "actor claim", "scopes"],
                [(e.tenant_id, e.issuer, e.audience or "(resource URI)",
                  f"{e.tenant_claim}={e.tenant_value or e.tenant_id}" if e.tenant_claim else "-", e.actor_claim,
                  " ".join(e.scopes) or "-") for e in entries], "No trusted issuers: tenants sign in at the gateway.")


@issuer_app.command("remove")
@handle_errors
def issuer_remove(tenant: TenantOpt, issuer: IssuerOpt, yes: YesOpt = False, json_out: JsonOpt = False) -> None:
    """Stop trusting an identity provider for a tenant (its tokens are refused within a second)."""
    from gateway.oauth import admin

    confirm(f"Stop trusting {issuer} for tenant {tenant!r}?", yes)
    admin.remove_issuer(store(), tenant, issuer)
    if json_out:
        print_json({"removed": issuer, "tenant": tenant})
    else:
        print(f"Tenant {tenant} no longer trusts {issuer}.")


@issuer_app.command("import")
@handle_errors
def issuer_import(path: Annotated[Path, typer.Argument(help="A TOML or JSON file with an `issuers` list.")],
                  json_out: JsonOpt = False) -> None:
    """Add the trust entries of a file (entries a tenant has already are left as they are)."""
    from gateway.oauth import admin

    entries = admin.read_issuers_file(path)
    added = admin.import_issuers(store(), entries, now())
    if json_out:
        print_json({"read": len(entries), "added": added})
    else:
        print(f"Added {added} of {len(entries)} trust entries.")
