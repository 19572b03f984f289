"""`aegress operator token ...`: operator credentials (`aegop_...`) that open the read-only console.

They are not actor tokens: they name no tenant or actor, never reach an upstream, and only `/console` takes
them (docs/console.md). Shown once; the database keeps a keyed hash; issuing and revoking are sealed in the
security log.
"""

from __future__ import annotations

from typing import Annotated

import typer

from aegress_cli._common import (
    JsonOpt,
    YesOpt,
    confirm,
    err,
    handle_errors,
    master_key,
    now,
    print_json,
    print_table,
    store,
)

app = typer.Typer(help="Operator credentials for the read-only console (/console).", no_args_is_help=True)
token_app = typer.Typer(help="Issue, list and revoke operator tokens (aegop_...), which open /console.",
                        no_args_is_help=True)
app.add_typer(token_app, name="token")


@token_app.command("issue")
@handle_errors
def issue(
    label: Annotated[str, typer.Option(help="A note to recognise the token by (who or what uses it).")] = "",
    json_out: JsonOpt = False,
) -> None:
    """Issue an operator token for the console. Printed once; the database keeps only a keyed hash."""
    from gateway import operators

    info, token = operators.issue(store(), master_key(), now(), label=label)
    if json_out:
        print_json({"id": info.id, "token": token, "label": info.label, "created_at": info.created_at})
        return
    print(token)
    err(f"Issued operator token {info.id}. This is the only time it is shown. Open <gateway>/console and log in "
        "with it (it opens the console only, never /mcp).")


@token_app.command("list")
@handle_errors
def list_(json_out: JsonOpt = False) -> None:
    """List operator tokens (ids and state; the tokens themselves are never stored)."""
    tokens = store().list_operator_tokens()
    if json_out:
        print_json([{"id": t.id, "label": t.label, "created_at": t.created_at, "created_by": t.created_by,
                     "revoked_at": t.revoked_at, "active": t.active} for t in tokens])
        return
    rows = [(t.id, t.created_at, t.created_by, "active" if t.active else f"revoked {t.revoked_at}", t.label)
            for t in tokens]
    print_table("Operator tokens", ["id", "created", "by", "state", "label"], rows, "No operator tokens.")


@token_app.command("revoke")
@handle_errors
def revoke(
    token_id: Annotated[str, typer.Argument(help="Operator token id (op_...), from `aegress operator token list`.")],
    yes: YesOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Revoke an operator token: console sessions opened with it end at their next request."""
    from gateway import operators

    s = store()
    before = operators.require(s, token_id)
    if before.active:
        confirm(f"Revoke operator token {token_id}{f' ({before.label})' if before.label else ''}? Its console "
                "sessions end at once.", yes)
    info, changed = operators.revoke(s, token_id, now())
    if json_out:
        print_json({"id": info.id, "revoked_at": info.revoked_at, "already_revoked": not changed})
    elif changed:
        print(f"Revoked operator token {info.id}.")
    else:
        print(f"Operator token {info.id} was already revoked (at {info.revoked_at}); nothing changed.")
