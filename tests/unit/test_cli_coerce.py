"""aegress_cli._coerce converts plain option values without pydantic, exactly as Typer's own conversion does,
and hands everything else (and every refusal) to Typer's."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest
from typer._click.exceptions import BadParameter
from typer._coercion import build_runtime_param, resolve_type_descriptor
from typer.models import OptionInfo

from aegress_cli._coerce import _UNSET, PlainRuntimeParam, plain_value

CASES: list[tuple[Any, dict[str, Any], list[Any]]] = [
    (str, {}, ["", "acme", "ünïcode", " spaced ", "-1"]),
    (int, {}, ["0", "7", "-3", "+5", "007", 12, " 4", "1_000", "4.0", "x", "", 2.5, True]),
    (float, {}, ["0", "1.5", "-2e3", ".5", "5.", "+1E-2", 3, 2.5, "inf", "nan", "x", " 1", True]),
    (int, {"min": 1}, ["5", "0"]),
    (Literal["allow", "deny"], {}, ["allow", "deny", "ALLOW", "nope"]),
    (Literal["allow", "deny"], {"case_sensitive": False}, ["ALLOW", "Deny", "nope"]),
    (Path, {}, ["a/b.toml", "/", ".", Path("x")]),
    (list[str], {}, [("a", "b"), ["c"], ()]),
    (bool, {}, [True, False, "true", "0"]),
]


def typer_value(annotation: Any, info: OptionInfo, value: Any) -> tuple[str, Any]:
    runtime = build_runtime_param(resolve_type_descriptor(annotation, info))
    try:
        return "ok", runtime._coerce_value(value, param=None, ctx=None)  # type: ignore[arg-type]
    except BadParameter as exc:
        return "error", exc.message


@pytest.mark.parametrize(("annotation", "flags", "values"), CASES)
def test_plain_conversions_match_typers_own(annotation: Any, flags: dict[str, Any], values: list[Any]) -> None:
    info = OptionInfo(**flags)
    converted = 0
    for value in values:
        expected = typer_value(annotation, info, value)
        mine = plain_value(annotation, info, value, None, None)
        if mine is not _UNSET:
            converted += 1
            assert expected == ("ok", mine) and type(mine) is type(expected[1]), (annotation, value)
        runtime = PlainRuntimeParam(parameter_info=info, annotation=annotation,
                                    descriptor=resolve_type_descriptor(annotation, info))
        try:
            got: tuple[str, Any] = ("ok", runtime._coerce_value(value, param=None, ctx=None))  # type: ignore[arg-type]
        except BadParameter as exc:
            got = ("error", exc.message)
        assert (got[0], repr(got[1])) == (expected[0], repr(expected[1])), (annotation, value)  # nan == nan
    if not flags.get("min"):
        assert converted, f"nothing of {annotation} was converted without pydantic"
