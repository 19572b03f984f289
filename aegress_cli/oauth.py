"""`aegress oauth ...`: OAuth mode (MCP_AUTH_MODE=oauth). Which identity providers each tenant trusts,
and the embedded authorization server's clients, grants, login links and signing keys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
    master_key,
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


clients_app = typer.Typer(help="Clients of the embedded authorization server (registered or by metadata "
                          "document).", no_args_is_help=True)
grants_app = typer.Typer(help="Consents given at the embedded authorization server.", no_args_is_help=True)
key_app = typer.Typer(help="The embedded authorization server's token signing keys (kept outside the database).",
                      no_args_is_help=True)
app.add_typer(clients_app, name="clients")
app.add_typer(grants_app, name="grants")
app.add_typer(key_app, name="key")


@clients_app.command("list")
@handle_errors
def clients_list(json_out: JsonOpt = False) -> None:
    """List OAuth clients."""
    from gateway.oauth import admin

    clients = store().list_oauth_clients()
    if json_out:
        print_json([admin.client_view(c) for c in clients])
        return
    print_table("OAuth clients", ["id", "name", "kind", "redirect URIs", "created", "revoked"],
                [(c.id, c.name, c.kind, " ".join(c.redirect_uris), c.created_at, c.revoked_at or "") for c in clients],
                "No OAuth clients yet.")


@clients_app.command("revoke")
@handle_errors
def clients_revoke(client_id: Annotated[str, typer.Argument(help="Client id (see `aegress oauth clients list`).")],
                   yes: YesOpt = False, json_out: JsonOpt = False) -> None:
    """Revoke a client and every grant it holds (its tokens are refused from the next request)."""
    from gateway.oauth import admin

    confirm(f"Revoke OAuth client {client_id!r} and all its grants?", yes)
    client, changed = admin.revoke_client(store(), client_id, now())
    if json_out:
        print_json({**admin.client_view(client), "changed": changed})
    else:
        print(f"Revoked OAuth client {client_id}." if changed else f"OAuth client {client_id} was revoked already.")


@grants_app.command("list")
@handle_errors
def grants_list(tenant: Annotated[str | None, typer.Option("--tenant", "-t", help="Only this tenant.")] = None,
                client: Annotated[str | None, typer.Option("--client", help="Only this client id.")] = None,
                all_: Annotated[bool, typer.Option("--all", help="Revoked grants too.")] = False,
                json_out: JsonOpt = False) -> None:
    """List grants (active ones unless --all)."""
    from gateway.oauth import admin

    grants = [g for g in store().list_oauth_grants(tenant, client) if all_ or g.active]
    if json_out:
        print_json([admin.grant_view(g) for g in grants])
        return
    print_table("OAuth grants", ["id", "tenant", "actor", "client", "resource", "created", "revoked"],
                [(g.id, g.tenant_id, g.actor_id, g.client_id, g.resource, g.created_at,
                  f"{g.revoked_at} ({g.revoked_reason})" if g.revoked_at else "") for g in grants], "No grants.")


@grants_app.command("revoke")
@handle_errors
def grants_revoke(grant_id: Annotated[str, typer.Argument(help="Grant id (see `aegress oauth grants list`).")],
                  yes: YesOpt = False, json_out: JsonOpt = False) -> None:
    """Revoke a grant: its access tokens are refused from the next request, its refresh tokens at once."""
    from gateway.oauth import admin

    confirm(f"Revoke grant {grant_id!r}?", yes)
    done = admin.revoke_grant(store(), grant_id, now())
    if json_out:
        print_json({"revoked": grant_id, "changed": done})
    else:
        print(f"Revoked grant {grant_id}." if done else f"Grant {grant_id} was revoked already.")


@app.command("login-link")
@handle_errors
def login_link(
    tenant: TenantOpt,
    actor: ActorOpt,
    ttl: Annotated[int, typer.Option(help="Seconds the link stays valid (used once).", min=60,
                                     max=7 * 24 * 3600)] = 900,
    public_url: Annotated[str | None, typer.Option(envvar="AEGRESS_PUBLIC_URL", help="The gateway's public URL. "
                                                   "Default: the running gateway's address.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Print a one-time sign-in link for an actor (the embedded authorization server's sign-in page)."""
    import time

    from gateway.oauth import admin
    from gateway.oauth.resource import check_public_url

    origin = check_public_url(public_url) if public_url else admin.gateway_origin(home())
    code = admin.issue_login_link(store(), master_key(), tenant, actor, time.time(), ttl)
    link = f"{origin}/oauth/link/{code}" if origin else None
    if json_out:
        print_json({"tenant": tenant, "actor": actor, "code": code, "link": link, "expires_in": ttl})
        return
    print(link or code)
    if link is None:
        err("No running gateway found: open <public URL>/oauth/link/<the code above> (or pass --public-url).")
    err(f"One-time sign-in for {actor} in {tenant}, valid {ttl} s. Anyone with the link can use it once.")


@key_app.command("rotate")
@handle_errors
def key_rotate(json_out: JsonOpt = False) -> None:
    """Make a new signing key active; old keys stay published (tokens they signed verify until they expire)."""
    from gateway.oauth import keys

    ring = keys.rotate(home(), now())
    if json_out:
        print_json({"active": ring.active.kid, "keys": [k.kid for k in ring.keys]})
    else:
        print(f"Active signing key: {ring.active.kid} ({len(ring.keys)} published). A running gateway on this data "
              "dir signs with it within a second; copy secrets/oauth-signing-keys.json to other replicas.")


@key_app.command("retire")
@handle_errors
def key_retire(yes: YesOpt = False, json_out: JsonOpt = False) -> None:
    """Drop every signing key but the active one (tokens they signed are refused at once)."""
    from gateway.oauth import keys

    confirm("Drop the retired signing keys? Access tokens they signed stop working.", yes)
    ring = keys.retire(home(), now())
    if json_out:
        print_json({"active": ring.active.kid, "keys": [k.kid for k in ring.keys]})
    else:
        print(f"Only {ring.active.kid} is published now; a running gateway on this data dir refuses tokens signed "
              "by the others within a second (copy the file to other replicas).")
