"""Option and argument values converted without pydantic, where the conversion is plain.

Typer 0.29 converts every parameter's value through a pydantic TypeAdapter (built on first use, even for
an absent option). Importing pydantic and building one costs a command about 0.1 s, more than the rest of
`aegress token list`. Most of our parameters are `str`, `int`, `float`, a `Literal` choice, a `Path` or a
`list[str]`: for those the value arrives as a string (or already converted) and Python converts it
exactly as pydantic would. Anything else, or a value of an unexpected shape, goes to Typer's own
conversion, so its error messages and edge cases stay Typer's.

This leans on Typer's private runtime-parameter hook (`_runtime_param`): `tests/unit/test_cli_coerce.py`
compares the conversions with Typer's own, `tests/e2e/test_cli.py` checks that commands keep clear of pydantic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from typer._coercion import RuntimeParam, TypeDescriptor, build_runtime_param
from typer._param_types import coerce_cli_choice, coerce_cli_path

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_UNSET = object()


def _plain_path(info: Any) -> bool:
    """A plain `Path` option: no `path_type` to convert to (pydantic's job) and no resolving."""
    return info.path_type is None and not info.resolve_path


def plain_value(annotation: Any, info: Any, value: Any, param: Any, ctx: Any) -> Any:
    """The converted value, or `_UNSET` when the conversion is not plain (then Typer's own runs)."""
    if annotation is str:
        return value if isinstance(value, str) else _UNSET
    if annotation is bool:
        return value if isinstance(value, bool) else _UNSET
    if annotation is int or annotation is float:
        if info.min is not None or info.max is not None or isinstance(value, bool):
            return _UNSET
        if isinstance(value, int | float) and (annotation is float or isinstance(value, int)):
            return annotation(value)
        pattern = _INT if annotation is int else _FLOAT
        if isinstance(value, str) and pattern.fullmatch(value):
            return annotation(value)
        return _UNSET
    if get_origin(annotation) is Literal:
        choices = get_args(annotation)
        if not all(isinstance(c, str) for c in choices) or not isinstance(value, str):
            return _UNSET
        try:
            return coerce_cli_choice(value, choices=choices, case_sensitive=info.case_sensitive, ctx=ctx)
        except ValueError:
            return _UNSET  # Typer words the refusal
    if annotation is Path and _plain_path(info):
        if isinstance(value, str):
            value = Path(value)
        if not isinstance(value, Path):
            return _UNSET
        return coerce_cli_path(value, info, path_type=Path, param=param, ctx=ctx)
    if get_origin(annotation) is list and get_args(annotation) == (str,):
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return list(value)
        return _UNSET
    return _UNSET


@dataclass(frozen=True)
class PlainRuntimeParam(RuntimeParam):
    """Typer's runtime parameter with the plain conversions first."""

    descriptor: TypeDescriptor

    def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
        out = plain_value(self.annotation, self.parameter_info, value, param, ctx)
        if out is not _UNSET:
            return out
        return build_runtime_param(self.descriptor)._coerce_value(value, param=param, ctx=ctx)


def install(command: Any) -> None:
    """Give every parameter of `command` (and of its loaded subcommands) the plain conversions."""
    for param in getattr(command, "params", ()):
        descriptor = getattr(param, "type_descriptor", None)
        if descriptor is None or descriptor.file_annotation is not None or descriptor.parameter_info.parser:
            continue
        if getattr(param, "_runtime_param", _UNSET) is None:  # not built yet: Typer builds it on first use
            param._runtime_param = PlainRuntimeParam(parameter_info=descriptor.parameter_info,
                                                     annotation=descriptor.annotation, descriptor=descriptor)
    commands = getattr(command, "commands", None)
    if commands is not None and not getattr(commands, "lazy", False):
        for sub in commands.values():
            install(sub)
