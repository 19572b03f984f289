"""`aegress`: the operator CLI. A thin shell over the `gateway` library; each group is its own module.

Commands that do not serve import neither the MCP SDK nor the server stack, so they start fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aegress_cli import _common, actor, bridge, client, serve, tenant, token, upstream
from aegress_cli import audit as audit_cli
from aegress_cli import policy as policy_cli
from aegress_cli import review as review_cli

app = typer.Typer(
    name="aegress",
    help="Aegress: an MCP gateway that binds every tool call to a tenant and a person, decides it by "
    "policy, and keeps verifiable evidence.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def main(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            envvar="AEGRESS_HOME",
            help="Where all state lives (database, keys). Default: ~/.aegress.",
            show_default=False,
        ),
    ] = None,
) -> None:
    _common.set_home(data_dir)


app.add_typer(tenant.app, name="tenant")
app.add_typer(actor.app, name="actor")
app.add_typer(token.app, name="token")
app.add_typer(upstream.app, name="upstream")
app.add_typer(policy_cli.app, name="policy")
app.add_typer(review_cli.app, name="review")
app.add_typer(audit_cli.app, name="audit")
app.command("serve")(serve.serve)
app.add_typer(client.app, name="client")
app.command("bridge")(bridge.bridge)
app.add_typer(__import__("aegress_cli.db").db.app, name="db")


def run() -> None:
    app()


if __name__ == "__main__":
    run()
