"""`aegress deploy ...`: the five ways to run Aegress (gateway.deploy) and their recipes, filled in."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aegress_cli._common import JsonOpt, handle_errors, print_json

app = typer.Typer(help="The deployment paths and their recipes: list them, render one with your values.",
                  no_args_is_help=True)


@app.command("list")
@handle_errors
def list_(json_out: JsonOpt = False) -> None:
    """Show the five deployment paths: runtime, tenant binding, client transport, boundary, recipe files."""
    from gateway import deploy

    root = deploy.recipes_root()
    rows = []
    for path in deploy.PATHS:
        _, missing = deploy.recipe_status(path, root)
        rows.append({**path.as_dict(), "recipe_files_missing": [f"recipes/{m}" for m in missing]})
    if json_out:
        print_json(rows)
        return
    for r in rows:
        files = [f + (" (missing)" if f in r["recipe_files_missing"] else "") for f in r["recipe_files"]]
        print(f"{r['name']}{' (recommended)' if r['recommended'] else ''}: {r['title']}")
        for label, value in (("runtime", r["runtime"]), ("tenant binding", r["tenant_binding"]),
                             ("client transport", r["client_transport"]), ("boundary", r["boundary"]),
                             ("recipe files", ", ".join(files)), ("runbook", r["runbook"])):
            print(f"  {label + ':':<18}{value}")
        print()
    print("Render one: aegress deploy render PATH --out DIR [--public-url URL] [--set KEY=VALUE ...]")


@app.command("render")
@handle_errors
def render(
    path: Annotated[str, typer.Argument(help="managed, tunnel, docker, azure or aws-lambda.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the recipe into (created).")],
    public_url: Annotated[str | None, typer.Option("--public-url", help="The MCP URL clients use "
                          "(AEGRESS_PUBLIC_URL; also fills AEGRESS_PUBLIC_HOST).")] = None,
    image: Annotated[str | None, typer.Option("--image", help="The gateway's container image "
                     "(AEGRESS_IMAGE).")] = None,
    database_host: Annotated[str | None, typer.Option("--database-host", help="The Postgres host "
                             "(AEGRESS_DATABASE_HOST).")] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", "-t", help="The tenant id (AEGRESS_TENANT_ID).")] = None,
    replicas: Annotated[int | None, typer.Option("--replicas", help="Gateway replicas (AEGRESS_REPLICAS).")] = None,
    values: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE for any other placeholder, e.g. "
                      "--set region=eu-west-1 (repeatable). Secrets are refused: they stay placeholders.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite files that exist in --out.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Write a path's recipe with your values in its ${AEGRESS_...} placeholders; secrets stay placeholders."""
    from gateway import deploy

    chosen = deploy.find_path(path)
    given = {"AEGRESS_PUBLIC_URL": public_url, "AEGRESS_IMAGE": image, "AEGRESS_DATABASE_HOST": database_host,
             "AEGRESS_TENANT_ID": tenant, "AEGRESS_REPLICAS": None if replicas is None else str(replicas)}
    checked = deploy.parse_values(values or [], given)
    root = deploy.recipes_root()
    rendered = deploy.render(deploy.read_recipe(chosen, root), checked)
    written = deploy.write_rendered(rendered, out, root, force=force)
    if json_out:
        print_json({"path": chosen.name, "out": str(out), "files": [str(w) for w in written],
                    "filled": rendered.filled, "unfilled": rendered.unfilled, "secrets": rendered.secrets,
                    "runbook": chosen.runbook})
        return
    print(f"Wrote the {chosen.name} recipe to {out} ({len(written)} files).")
    if rendered.filled:
        print("Filled: " + ", ".join(sorted(rendered.filled)))
    if rendered.unfilled:
        print("Still placeholders (fill them, or export them where the recipe reads the environment): "
              + ", ".join(sorted(rendered.unfilled)))
    if rendered.secrets:
        print("Secrets, left for your secret store at deploy time: " + ", ".join(sorted(rendered.secrets)))
    print(f"Next: the recipe's README.md, and the runbook {chosen.runbook}.")
