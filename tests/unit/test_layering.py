"""Imports flow one way: aegress_cli -> gateway. The library never imports the CLI stack."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"typer", "rich", "click", "aegress_cli"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_gateway_never_imports_the_cli_stack() -> None:
    offenders = {
        str(p.relative_to(ROOT)): sorted(_imports(p) & FORBIDDEN)
        for p in (ROOT / "gateway").rglob("*.py")
        if _imports(p) & FORBIDDEN
    }
    assert offenders == {}


def test_cli_never_imports_click_directly() -> None:
    offenders = [str(p) for p in (ROOT / "aegress_cli").rglob("*.py") if "click" in _imports(p)]
    assert offenders == []
