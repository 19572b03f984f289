"""`aegress token ...`: bearer tokens bind a client to one tenant and one actor.

A token is shown once, kept in the operator's keyring (or a 0600 file where there is none) so
`aegress client setup` can use it later, and stored in the database only as a keyed hash.
"""

from __future__ import annotations

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

app = typer.Typer(help="Issue, list and revoke bearer tokens.", no_args_is_help=True)


def keep_token(tenant: str, actor: str, token: str) -> str:
    """Store the token for later client setup; say once when it went to the fallback file."""
    from gateway import credentials

    data = home()
    first = not (data / "secrets" / "credentials.json").exists()
    where = credentials.store_secret(credentials.token_key(tenant, actor), token)
    if where != "keyring" and first:
        err(f"Note: no usable keyring here; tokens are kept in {where} (mode 0600) from now on.")
    return where


@app.command("issue")
@handle_errors
def issue(
    tenant: TenantOpt,
    actor: ActorOpt,
    label: Annotated[str, typer.Option(help="A note to recognise the token by.")] = "",
    keep: Annotated[bool, typer.Option("--keep/--no-keep", help="Keep it in the keyring for client setup.")] = True,
    json_out: JsonOpt = False,
) -> None:
    """Issue a token for an actor. It is printed once; the database keeps only a keyed hash."""
    from gateway import admin

    info, token = admin.issue_token(store(), master_key(), tenant, actor, now(), label)
    where = keep_token(tenant, actor, token) if keep else None
    if json_out:
        print_json({"id": info.id, "tenant": tenant, "actor": actor, "token": token, "stored": where})
        return
    print(token)
    err(f"Issued {info.id} for {actor} in {tenant}. This is the only time the token is shown.")


@app.command("list")
@handle_errors
def list_(
    tenant: Annotated[str | None, typer.Option("--tenant", "-t", help="Only this tenant.")] = None,
    actor: Annotated[str | None, typer.Option("--actor", "-a", help="Only this actor.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """List tokens (ids and state only; the tokens themselves are never stored)."""
    from gateway import admin

    s = store()
    if tenant is not None and actor is not None:
        admin.require_actor(s, tenant, actor)
    elif tenant is not None:
        admin.require_tenant(s, tenant)
    elif actor is not None:
        admin.require_any_actor(s, actor)
    tokens = s.list_tokens(tenant, actor)
    if json_out:
        print_json([
            {"id": t.id, "tenant": t.tenant_id, "actor": t.actor_id, "created_at": t.created_at,
             "revoked_at": t.revoked_at, "label": t.label, "active": t.active}
            for t in tokens
        ])
        return
    rows = [(t.id, t.tenant_id, t.actor_id, t.created_at, "active" if t.active else f"revoked {t.revoked_at}", t.label)
            for t in tokens]
    print_table("Tokens", ["id", "tenant", "actor", "created", "state", "label"], rows, "No tokens.")


@app.command("revoke")
@handle_errors
def revoke(token_id: Annotated[str, typer.Argument(help="Token id (tok_...), from `aegress token list`.")],
           yes: YesOpt = False, json_out: JsonOpt = False) -> None:
    """Revoke a token; the gateway refuses it from the next request on. Revoking it again changes nothing."""
    from gateway import admin

    s = store()
    before = admin.require_token(s, token_id)
    if not before.active:
        if json_out:
            print_json({"id": before.id, "revoked_at": before.revoked_at, "already_revoked": True})
        else:
            print(f"{before.id} ({before.actor_id} in {before.tenant_id}) was already revoked at {before.revoked_at}; "
                  "nothing changed.")
        return
    confirm(f"Revoke token {before.id} of actor {before.actor_id!r} in tenant {before.tenant_id!r}"
            f"{f' ({before.label})' if before.label else ''}? Clients using it are refused from their next request, "
            "and it cannot be undone.", yes)
    info = admin.revoke_token(s, token_id, now())
    if json_out:
        print_json({"id": info.id, "revoked_at": info.revoked_at, "already_revoked": False})
    else:
        print(f"Revoked {info.id} ({info.actor_id} in {info.tenant_id}).")
