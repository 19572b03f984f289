"""The policy library stays pure: it imports only the standard library, rfc8785 and gateway.errors."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import gateway.policy

ALLOWED_THIRD_PARTY = {"rfc8785"}


def test_policy_imports_only_what_it_may() -> None:
    root = Path(gateway.policy.__file__).parent
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                ok = (
                    top in sys.stdlib_module_names
                    or top in ALLOWED_THIRD_PARTY
                    or name == "gateway.errors"
                    or name.startswith("gateway.policy")
                )
                assert ok, f"{path.name} imports {name}"
