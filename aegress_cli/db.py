"""`aegress db ...`: the database behind the gateway (SQLite under the data dir, or Postgres) and its schema."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from aegress_cli._common import JsonOpt, handle_errors, print_json, print_table, store

app = typer.Typer(
    help="The database: which one is used, its schema version, and migrations. Postgres is chosen by "
    "AEGRESS_DATABASE_URL (or the variable AEGRESS_DATABASE_URL_FROM names); the default is SQLite in the "
    "data dir.",
    no_args_is_help=True,
)


def _status_json(status: Any) -> dict[str, Any]:
    from gateway.store.migrations import MIGRATIONS

    applied = {version: at for version, _, at in status.applied}
    return {
        "backend": status.backend,
        "location": status.location,
        "version": status.version,
        "latest": status.latest,
        "pending": [m.version for m in status.pending],
        "migrations": [{"version": m.version, "name": m.name, "applied": m.version <= status.version,
                        "applied_at": applied.get(m.version)} for m in MIGRATIONS],
    }


@app.command("status")
@handle_errors
def status(
    check: Annotated[bool, typer.Option("--check", help="Exit 3 when migrations are pending (for deploy "
                                        "scripts).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Show the database (password masked), its schema version and pending migrations. Applies nothing."""
    info = _status_json(store(migrate=False).schema_status())
    if json_out:
        print_json(info)
    else:
        print(f"Database: {info['backend']} at {info['location']}")
        newer = " (newer than this aegress: upgrade it)" if info["version"] > info["latest"] else ""
        print(f"Schema version: {info['version']} of {info['latest']}{newer}")
        print_table("Migrations", ["version", "name", "applied"],
                    [(m["version"], m["name"], (m["applied_at"] or "yes") if m["applied"] else "pending")
                     for m in info["migrations"]], "")
        if info["pending"]:
            print("Run `aegress db migrate` to apply the pending migrations (the gateway also applies them at "
                  "start).")
    if check and info["pending"]:
        raise typer.Exit(3)


@app.command("migrate")
@handle_errors
def migrate(json_out: JsonOpt = False) -> None:
    """Apply pending migrations, in order, in one transaction. Safe while gateways run and when several
    processes migrate at once (they take turns; the later ones find nothing to do)."""
    opened = store(migrate=False)
    applied = opened.migrate()
    info = _status_json(opened.schema_status())
    if json_out:
        print_json({**info, "applied": applied})
    elif applied:
        print(f"Migrated {info['backend']} at {info['location']} to schema version {info['version']} "
              f"(applied {', '.join(str(v) for v in applied)}).")
    else:
        print(f"Nothing to do: {info['backend']} at {info['location']} is at schema version {info['version']}.")
