"""`aegress actor ...`: actors are the people (or agents) a tenant's tokens are issued to."""

from __future__ import annotations

from typing import Annotated

import typer

from aegress_cli._common import JsonOpt, TenantOpt, YesOpt, confirm, handle_errors, now, print_json, print_table, store

app = typer.Typer(help="Add, list and remove actors of a tenant.", no_args_is_help=True)


PasswordOpt = Annotated[bool, typer.Option("--password", help="OAuth mode: also set the password the actor signs "
                                            "in with (asked for; read from stdin when it is not a terminal).")]


def _read_password() -> str:
    """Asked twice on a terminal (hidden); else the first line of stdin. Checked before anything changes."""
    import sys

    from gateway.oauth.passwords import check_password

    if sys.stdin.isatty():
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    check_password(password)
    return str(password)


@app.command("add")
@handle_errors
def add(name: Annotated[str, typer.Argument(help="Actor id, e.g. alice or alice@example.com.")],
        tenant: TenantOpt, password: PasswordOpt = False, json_out: JsonOpt = False) -> None:
    """Add an actor to a tenant."""
    from gateway import admin

    secret = _read_password() if password else None
    s = store()
    actor = admin.add_actor(s, tenant, name, now())
    if secret is not None:
        from gateway.oauth import admin as oauth_admin

        oauth_admin.set_password(s, tenant, name, secret, now())
    if json_out:
        print_json({"tenant": actor.tenant_id, "id": actor.id, "created_at": actor.created_at})
    else:
        print(f"Added actor {actor.id} to tenant {tenant}.")
        print(f"Next: aegress token issue --tenant {tenant} --actor {actor.id}")


@app.command("list")
@handle_errors
def list_(tenant: TenantOpt, json_out: JsonOpt = False) -> None:
    """List a tenant's actors."""
    from gateway import admin

    s = store()
    admin.require_tenant(s, tenant)
    actors = s.list_actors(tenant)
    if json_out:
        print_json([{"tenant": a.tenant_id, "id": a.id, "created_at": a.created_at} for a in actors])
    else:
        print_table(f"Actors of {tenant}", ["id", "created"], [(a.id, a.created_at) for a in actors], "No actors yet.")


@app.command("remove")
@handle_errors
def remove(name: Annotated[str, typer.Argument(help="Actor id.")], tenant: TenantOpt, yes: YesOpt = False,
           json_out: JsonOpt = False) -> None:
    """Remove an actor and its tokens (they stop working on the next request)."""
    from gateway import admin

    s = store()
    admin.require_actor(s, tenant, name)
    active = sum(1 for t in s.list_tokens(tenant, name) if t.active)
    confirm(f"Remove actor {name!r} of tenant {tenant!r} and revoke its {active} active token(s)?", yes)
    admin.remove_actor(s, tenant, name)
    if json_out:
        print_json({"removed": name, "tenant": tenant})
    else:
        print(f"Removed actor {name} from tenant {tenant}.")


@app.command("password")
@handle_errors
def password(name: Annotated[str, typer.Argument(help="Actor id.")], tenant: TenantOpt,
             json_out: JsonOpt = False) -> None:
    """Set or replace the password an actor signs in with (OAuth mode's embedded authorization server)."""
    from gateway.oauth import admin as oauth_admin

    oauth_admin.set_password(store(), tenant, name, _read_password(), now())
    if json_out:
        print_json({"tenant": tenant, "actor": name, "password": "set"})
    else:
        print(f"Password set for {name} in tenant {tenant}.")
