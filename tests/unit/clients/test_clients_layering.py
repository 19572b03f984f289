"""gateway.clients stays a pure library: no CLI toolkits, and only write.py touches files."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import gateway.clients

PACKAGE = Path(gateway.clients.__file__).parent
IO_MODULES = {"os", "io", "shutil", "tempfile", "subprocess", "socket", "time", "datetime", "random"}


def test_no_typer_or_rich_imported() -> None:
    code = (
        "import sys, gateway.clients, gateway.clients.write;"
        "bad = [m for m in ('typer', 'rich', 'click', 'aegress_cli') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent.parent, timeout=60)


def test_only_write_module_does_io() -> None:
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name == "write.py":
            continue
        tree = ast.parse(path.read_text("utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
                names = {"open"}
            else:
                continue
            assert not names & (IO_MODULES | {"open"}), f"{path.name} uses {names & (IO_MODULES | {'open'})}"
