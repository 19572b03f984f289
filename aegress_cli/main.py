"""`aegress`: the operator CLI. A thin shell over the `gateway` library; each group is its own module.

Commands that do not serve import neither the MCP SDK nor the server stack, so they start fast. To
that end the root group loads a command or group (its module, and the Click command Typer builds for
it) only when it is used: `aegress tenant list` never imports or builds `aegress audit`. `--help`, the
suggestions for a mistyped command and the generated docs still see every command, in this order.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Iterator, MutableMapping
from importlib import import_module
from pathlib import Path
from typing import Annotated, Any

import typer

from aegress_cli import _coerce, _common, _help

COMMANDS: dict[str, str] = {
    "serve": "aegress_cli.serve:serve",
    "status": "aegress_cli.status:status",
    "bridge": "aegress_cli.bridge:bridge",
    "tenant": "aegress_cli.tenant:app",
    "actor": "aegress_cli.actor:app",
    "token": "aegress_cli.token:app",
    "upstream": "aegress_cli.upstream:app",
    "policy": "aegress_cli.policy:app",
    "review": "aegress_cli.review:app",
    "audit": "aegress_cli.audit:app",
    "client": "aegress_cli.client:app",
    "tunnel": "aegress_cli.tunnel:app",
    "oauth": "aegress_cli.oauth:app",
    "db": "aegress_cli.db:app",
    "deploy": "aegress_cli.deploy:app",
    "completion": "aegress_cli.completion:app",
    "operator": "aegress_cli.operator:app",
}
"""The root's commands as `module:attribute`: a function joins with `command()`, a group's Typer with
`add_typer()`. This is the order of `aegress --help`."""


# -- pydantic only where a command needs it ---------------------------------------------------------
# Typer 0.29 converts every parameter's value through a pydantic TypeAdapter, built on first use even
# when the parameter is absent, unless the value is a bool already. Importing pydantic for that takes
# about 0.1 s, longer than all the rest of `aegress tenant list`. The help flag (absent, its value is
# None; a default of False makes it a bool) is spared it here, every other parameter of a plain type by
# `_coerce` (str, int, float, Literal, Path, list[str]).
HELP_FLAG_DEFAULT = {"default_map": {"help": False}}


def _help_flag_default_false(command: Any) -> None:
    command.context_settings = {**command.context_settings, **HELP_FLAG_DEFAULT}
    for sub in getattr(command, "commands", {}).values():
        _help_flag_default_false(sub)


# -- loading commands when they are used ------------------------------------------------------------
def _joined(name: str, target: str) -> tuple[typer.Typer, bool]:
    """A holder with the command or group `target` names joined as `name`, as `app.command()` /
    `app.add_typer()` would join it; True when it is a group."""
    module, _, attribute = target.partition(":")
    obj = getattr(import_module(module), attribute)
    holder = typer.Typer(add_completion=False)
    if isinstance(obj, typer.Typer):
        holder.add_typer(obj, name=name)
        return holder, True
    holder.command(name)(obj)
    return holder, False


def load_command(name: str, target: str) -> Any:
    """Join one command or group to a root and return the Click command Typer builds for it."""
    holder, group = _joined(name, target)
    built = typer.main.get_command(holder)  # for one command and no callback, Typer builds just that one
    command = built.commands[name] if group else built  # type: ignore[attr-defined]
    _help_flag_default_false(command)
    _coerce.install(command)
    _help.polish(command)
    return command


def summarize_command(name: str, target: str) -> Any:
    """What the root's help lists of a command (its help, short help, panel, hidden and deprecated
    flags), resolved by Typer's own rules, in a command without parameters or subcommands. Building
    the real one means reading every parameter's type hints: for all seventeen, more than half of
    `aegress --help`'s time."""
    from typer.main import solve_typer_info_defaults

    holder, group = _joined(name, target)
    info: Any
    if group:
        info = solve_typer_info_defaults(holder.registered_groups[0])
        text = info.help
    else:
        info = holder.registered_commands[0]
        text = inspect.getdoc(info.callback) if info.help is None else inspect.cleandoc(info.help)
    return _help.Command(name=name, help=text, short_help=info.short_help, hidden=info.hidden,
                         deprecated=info.deprecated, rich_help_panel=info.rich_help_panel)


class LazyCommands(MutableMapping[str, Any]):
    """Subcommands by name; one named in `COMMANDS` is loaded on first access. Listing the names (help,
    completion, "did you mean") loads nothing; looking a command up loads that one, or, while the
    root's help is drawn (`summaries`), only what that help shows of it."""

    lazy = True  # `_help.polish` must not walk (and so load) these

    def __init__(self, targets: dict[str, str]) -> None:
        self._items: dict[str, Any] = dict(targets)
        self._pending = set(targets)
        self.summaries = False

    def __getitem__(self, name: str) -> Any:
        if name in self._pending:
            if self.summaries:
                return summarize_command(name, self._items[name])
            self._items[name] = load_command(name, self._items[name])
            self._pending.discard(name)
        return self._items[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self._items[name] = command
        self._pending.discard(name)

    def __delitem__(self, name: str) -> None:
        del self._items[name]
        self._pending.discard(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


class RootGroup(_help.Group):
    """The `aegress` group: its subcommands come from `COMMANDS`, loaded when used."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        _coerce.install(self)  # the root's own options too (`--data-dir`)
        _help.polish(self)
        commands = LazyCommands(COMMANDS)
        for name, command in self.commands.items():  # any registered on `app` itself
            _help_flag_default_false(command)
            _coerce.install(command)
            _help.polish(command)
            commands[name] = command
        self.commands = commands

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)  # the names only (Typer's walks the items, which loads them)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        commands = self.commands
        if not isinstance(commands, LazyCommands):
            return super().format_help(ctx, formatter)
        commands.summaries = True
        try:
            return super().format_help(ctx, formatter)
        finally:
            commands.summaries = False

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> Any:
        """With `--json` anywhere on the line, usage errors (unknown option, missing argument, a value
        not among the choices) are printed as JSON on stderr too, like the commands' own errors."""
        argv = list(sys.argv[1:] if args is None else args)
        if "--json" not in argv or extra.get("standalone_mode") is False:
            return super().main(args=argv, prog_name=prog_name, **extra)
        from typer._click.exceptions import ClickException
        from typer.exceptions import Abort

        _common.json_errors()
        try:
            code = super().main(args=argv, prog_name=prog_name, standalone_mode=False, **extra)
        except ClickException as exc:
            _common.print_error_json("usage", exc.format_message(), _usage_hint(exc), exc.exit_code)
            sys.exit(exc.exit_code)
        except Abort:
            _common.print_error_json("aborted", "Aborted; nothing changed.", None, 1)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _usage_hint(exc: Any) -> str | None:
    ctx = getattr(exc, "ctx", None)
    if ctx is None:
        return None
    return f"See `{ctx.command_path} --help`."


def _print_version(value: bool) -> None:
    if value:
        print(f"aegress {_common.version()}")
        raise typer.Exit(0)


app = typer.Typer(
    name="aegress",
    cls=RootGroup,
    help="Aegress: an MCP gateway that binds every tool call to a tenant and a person, decides it by "
    "policy, and keeps verifiable evidence.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"], **HELP_FLAG_DEFAULT},
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
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_print_version)
    ] = False,
) -> None:
    _common.set_home(data_dir)


PROG = "aegress"
COMPLETE_VAR = "_AEGRESS_COMPLETE"
"""Set by the shell completion scripts (`aegress completion show`) when they ask for candidates."""


def run() -> None:
    if os.environ.get(COMPLETE_VAR):
        from typer._completion_classes import completion_init

        completion_init()  # Typer registers its shells only when the app adds the completion options
    app(prog_name=PROG, complete_var=COMPLETE_VAR)


if __name__ == "__main__":
    run()
