"""`aegress tenant ...`: tenants are the isolation boundary: tools, calls and evidence never cross them."""

from __future__ import annotations

from typing import Annotated

import typer

from aegress_cli._common import JsonOpt, YesOpt, confirm, handle_errors, now, print_json, print_table, store

app = typer.Typer(help="Create, list, show and delete tenants.", no_args_is_help=True)


@app.command("create")
@handle_errors
def create(name: Annotated[str, typer.Argument(help="Tenant id (ASCII letters, digits, . _ @ -).")],
           json_out: JsonOpt = False) -> None:
    """Create a tenant."""
    from gateway import admin

    tenant = admin.create_tenant(store(), name, now())
    if json_out:
        print_json({"id": tenant.id, "created_at": tenant.created_at})
    else:
        print(f"Created tenant {tenant.id}. Next: aegress actor add --tenant {tenant.id} NAME")


@app.command("list")
@handle_errors
def list_(json_out: JsonOpt = False) -> None:
    """List tenants."""
    tenants = store().list_tenants()
    if json_out:
        print_json([{"id": t.id, "created_at": t.created_at} for t in tenants])
    else:
        print_table("Tenants", ["id", "created"], [(t.id, t.created_at) for t in tenants], "No tenants yet.")


@app.command("show")
@handle_errors
def show(name: Annotated[str, typer.Argument(help="Tenant id.")], json_out: JsonOpt = False) -> None:
    """Show a tenant's actors, upstreams and token counts."""
    from gateway import admin

    info = admin.describe_tenant(store(), name)
    if json_out:
        print_json(info)
        return
    print_table(
        f"Tenant {info['id']}",
        ["field", "value"],
        [
            ("created", info["created_at"]),
            ("actors", ", ".join(info["actors"]) or "-"),
            ("upstreams", ", ".join(info["upstreams"]) or "-"),
            ("tokens", f"{info['tokens_active']} active, {info['tokens_revoked']} revoked"),
        ],
        "",
    )


@app.command("delete")
@handle_errors
def delete(name: Annotated[str, typer.Argument(help="Tenant id.")], yes: YesOpt = False,
           json_out: JsonOpt = False) -> None:
    """Delete a tenant with its actors, tokens and upstreams (recorded calls are kept)."""
    from gateway import admin

    s = store()
    info = admin.describe_tenant(s, name)
    confirm(f"Delete tenant {name!r} with its {len(info['actors'])} actor(s), {info['tokens_active']} active "
            f"token(s) and {len(info['upstreams'])} upstream(s)? Its recorded evidence is kept.", yes)
    admin.delete_tenant(s, name)
    if json_out:
        print_json({"deleted": name})
    else:
        print(f"Deleted tenant {name}.")
