"""`aegress completion ...`: tab completion of commands, options and choices for bash, zsh and fish.

The scripts are Typer's: they run `aegress` with `_AEGRESS_COMPLETE` set, which answers with the
candidates instead of running a command (aegress_cli/main.py `run`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import typer

from aegress_cli._common import JsonOpt, handle_errors, print_json

app = typer.Typer(help="Shell completion: print or install the script for bash, zsh or fish.", no_args_is_help=True)

Shell = Literal["bash", "zsh", "fish"]
ShellArg = Annotated[Shell | None, typer.Argument(help="The shell. Default: the one $SHELL names.",
                                                  show_default=False)]
_ACTIVATE = {
    "bash": "Open a new shell (or `source ~/.bashrc`): ~/.bashrc now sources it.",
    "zsh": "Open a new shell (or `exec zsh`): ~/.zshrc now loads ~/.zfunc.",
    "fish": "Open a new shell: fish loads ~/.config/fish/completions by itself.",
}


def _shell(shell: str | None) -> str:
    from gateway.errors import UsageError

    if shell is not None:
        return shell
    name = Path(os.environ.get("SHELL", "")).name
    if name not in ("bash", "zsh", "fish"):
        raise UsageError(f"Cannot tell your shell from SHELL={os.environ.get('SHELL', '')!r}.",
                         hint="Name it: `aegress completion install bash` (or zsh, fish).")
    return name


@app.command("show")
@handle_errors
def show(shell: ShellArg = None) -> None:
    """Print the completion script, to put where your shell loads it (or `eval` it)."""
    from typer._completion_shared import get_completion_script

    from aegress_cli.main import COMPLETE_VAR, PROG

    print(get_completion_script(prog_name=PROG, complete_var=COMPLETE_VAR, shell=_shell(shell)))


@app.command("install")
@handle_errors
def install(shell: ShellArg = None, json_out: JsonOpt = False) -> None:
    """Install the completion script for your user (bash: ~/.bash_completions, zsh: ~/.zfunc, fish:
    ~/.config/fish/completions) and load it from the shell's start-up file."""
    from typer._completion_shared import install as typer_install

    from aegress_cli.main import COMPLETE_VAR, PROG

    chosen = _shell(shell)
    _, path = typer_install(shell=chosen, prog_name=PROG, complete_var=COMPLETE_VAR)
    if json_out:
        print_json({"shell": chosen, "path": str(path)})
        return
    print(f"Installed {chosen} completion for `{PROG}` in {path}.")
    print(_ACTIVATE[chosen])
