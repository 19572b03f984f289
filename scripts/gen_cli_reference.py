"""Write docs/cli-reference.md from the CLI's own --help, so the reference cannot go stale.

    .venv/bin/python scripts/gen_cli_reference.py          # rewrite the file
    .venv/bin/python scripts/gen_cli_reference.py --check  # exit 1 if it is out of date (run by the tests)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "docs" / "cli-reference.md"
sys.path.insert(0, str(ROOT))  # document this checkout's CLI, not whatever the venv installed


def _help(args: list[str]) -> str:
    from typer.testing import CliRunner

    from aegress_cli.main import app

    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"},
                                terminal_width=100)
    return "\n".join(line.rstrip() for line in result.output.strip().splitlines())


def _commands() -> list[list[str]]:
    import typer.main

    from aegress_cli.main import app

    group = typer.main.get_command(app)
    out: list[list[str]] = [[]]

    def walk(cmd, path: list[str]) -> None:  # type: ignore[no-untyped-def]
        for name in sorted(getattr(cmd, "commands", {}) or {}):
            sub = cmd.commands[name]
            out.append([*path, name])
            walk(sub, [*path, name])

    walk(group, [])
    return out


def render() -> str:
    os.environ["COLUMNS"] = "100"
    parts = [
        "# CLI reference",
        "",
        "Generated from `aegress ... --help` by `scripts/gen_cli_reference.py`; the test suite fails when it is",
        "out of date. Exit codes: 0 success, 1 failure, 2 usage error, 3 a check ran and found a problem.",
        "",
    ]
    for path in _commands():
        title = " ".join(["aegress", *path])
        parts += [f"## `{title}`", "", "```text", _help(path), "```", ""]
    return "\n".join(parts)


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        current = TARGET.read_text() if TARGET.exists() else ""
        if current != text:
            print("docs/cli-reference.md is out of date: run .venv/bin/python scripts/gen_cli_reference.py",
                  file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
