"""How commands present themselves: flags shown as flags, values as metavars, bare groups as help.

Typer 0.29 labels every parameter with its Python type (`--json <bool>`, `--header <list[str]>`) and
writes required arguments as `{name}` in the usage line. Operators read `--json`, `--header TEXT`
and `NAME`, as Click and most CLIs write them. The Click commands Typer builds are adjusted here once,
when `aegress_cli.main` loads them, by switching their classes to the subclasses below (no state is
added), so no command module has to spell out metavars.

A group run without a subcommand (`aegress`, `aegress tenant`) prints its help and exits 0: asking
what a group can do is not a usage error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from typer._typing import get_args, get_origin
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

_NAMES: dict[Any, str] = {str: "TEXT", int: "INTEGER", float: "NUMBER", bool: "BOOLEAN"}
_MAX_CHOICES_WIDTH = 28
"""Longer choice lists are shown as the option's name (KIND) and listed in its help instead."""


def _choices(param: Any) -> list[str] | None:
    from typer._param_types import choice_as_str

    desc = param.type_descriptor
    if not desc.is_choice:
        return None
    return [choice_as_str(c) for c in desc.choices or ()]


def metavar(param: Any) -> str | None:
    """The value placeholder of an option or argument: None for a flag, `[a|b]` for a choice, else TEXT,
    INTEGER, NUMBER, PATH, FILE or DIRECTORY (a list option takes one value per use, so its element's)."""
    if param.metavar is not None:
        return str(param.metavar)
    if getattr(param, "is_flag", False):
        return None
    choices = _choices(param)
    if choices is not None:
        shown = "[" + "|".join(choices) + "]"
        return shown if len(shown) <= _MAX_CHOICES_WIDTH else param.name.upper()
    desc = param.type_descriptor
    annotation = desc.annotation
    if get_origin(annotation) is list:
        (annotation,) = get_args(annotation)
    if (isinstance(annotation, type) and issubclass(annotation, Path)) or desc.is_path:
        kind = desc.path_type
        return "DIRECTORY" if kind == "directory" else "FILE" if kind == "file" else "PATH"
    return _NAMES.get(annotation, getattr(annotation, "__name__", "VALUE").upper())


class Option(TyperOption):
    """An option whose help shows `--json`, `--tenant TEXT`, `--format [jsonl|csv|bundle]`."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return metavar(self)

    def make_metavar(self, ctx: Any = None) -> str:
        return metavar(self) or ""


class Argument(TyperArgument):
    """An argument shown as `NAME` (`[NAME]` when optional, `NAME...` when repeated)."""

    @property
    def display_name_raw(self) -> str:
        return str(self.metavar) if self.metavar is not None else self.name.upper()

    def display_type_rich(self, ctx: Any) -> str | None:
        choices = _choices(self)
        return None if choices is None else "[" + "|".join(choices) + "]"

    def _usage_display_name(self) -> str:
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return name + ("..." if self.nargs != 1 else "")


def _polish_params(command: Any, params: list[Any]) -> None:
    for param in params:
        if type(param) is TyperOption:
            param.__class__ = Option
        elif type(param) is TyperArgument:
            param.__class__ = Argument
        else:
            continue
        choices = _choices(param)
        if choices is not None and metavar(param) == param.name.upper():
            param.help = f"{param.help or ''} One of: {', '.join(choices)}.".strip()


class Command(TyperCommand):
    """A leaf command whose help option is shown as a flag too."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        _polish_params(self, [option] if option is not None else [])
        return option


class Group(TyperGroup):
    """A group that prints its help and exits 0 when run bare."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        _polish_params(self, [option] if option is not None else [])
        return option

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args and self.no_args_is_help and not ctx.resilient_parsing:
            from typer._click import echo

            echo(ctx.get_help(), color=ctx.color)
            ctx.exit(0)
        return super().parse_args(ctx, args)


def polish(command: Any) -> None:
    """Adjust one command Typer built, and its subcommands already built (see the module docstring)."""
    _polish_params(command, command.params)
    if type(command) is TyperCommand:
        command.__class__ = Command
    elif type(command) is TyperGroup:
        command.__class__ = Group
    commands = getattr(command, "commands", None)
    if commands is not None and not getattr(commands, "lazy", False):
        for sub in commands.values():
            polish(sub)
