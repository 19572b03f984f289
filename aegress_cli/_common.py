"""What every command shares: the data dir, opening the store, output (--json / tables), and the
one place where library errors become `Error:` / `Hint:` lines and exit codes."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Sequence
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer

from gateway.errors import AegressError

P = ParamSpec("P")
R = TypeVar("R")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout (for scripts) instead of a table.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
TenantOpt = Annotated[str, typer.Option("--tenant", "-t", help="Tenant id.", envvar="AEGRESS_TENANT_ID")]
ActorOpt = Annotated[str, typer.Option("--actor", "-a", help="Actor id.", envvar="AEGRESS_ACTOR_ID")]

_state: dict[str, Any] = {"home": None, "json": False}


def set_home(path: Path | None) -> None:
    _state["home"] = path


def home() -> Path:
    from gateway.datadir import home_dir

    path = home_dir(_state["home"])
    from gateway import credentials

    credentials.set_home(path)
    return path


def database_url() -> str | None:
    """AEGRESS_DATABASE_URL, or the variable AEGRESS_DATABASE_URL_FROM names (never a bare DATABASE_URL)."""
    from gateway.store import database_url_from_env

    return database_url_from_env()


def store(*, migrate: bool = True):  # type: ignore[no-untyped-def]
    """The store of this command (closed when the process exits: a Postgres pool has threads)."""
    import atexit

    from gateway.store import open_store

    opened = open_store(home(), database_url(), migrate=migrate)
    atexit.register(opened.close)
    return opened


def master_key() -> bytes:
    from gateway.secrets import load_master_key

    return load_master_key(home())


def now() -> str:
    from gateway.admin import now_iso

    return now_iso()


def version() -> str:
    """This installation's version (the package metadata; a source tree run without installing has none)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("aegress")
    except PackageNotFoundError:
        return "0+unknown"


def err(text: str) -> None:
    print(text, file=sys.stderr)


def json_errors(on: bool = True) -> None:
    """From now on print errors as JSON (the command was given --json)."""
    _state["json"] = _state["json"] or on


def print_error_json(code: str, message: str, hint: str | None, exit_code: int) -> None:
    """The one shape of an error under --json, on stderr: stdout stays for results."""
    body = {"error": {"code": code, "message": message, "hint": hint, "exit_code": exit_code}}
    sys.stderr.write(json.dumps(body) + "\n")


def fail(exc: AegressError) -> typer.Exit:
    if _state["json"]:
        print_error_json(exc.code, exc.message, exc.hint, exc.exit_code)
        return typer.Exit(exc.exit_code)
    err(f"Error: {printable(exc.message, lines=True)}")  # messages quote names others chose
    if exc.hint:
        err(f"Hint: {printable(exc.hint, lines=True)}")
    return typer.Exit(exc.exit_code)


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Map our errors to the documented exit codes (as JSON on stderr with --json); anything else is a
    bug and shows its traceback."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        json_errors(bool(kwargs.get("json_out")))
        try:
            return fn(*args, **kwargs)
        except AegressError as exc:
            raise fail(exc) from None

    return wrapper


_BIDI = r"\u200e\u200f\u202a-\u202e\u2066-\u2069"
_UNSAFE = re.compile(rf"[\x00-\x1f\x7f-\x9f{_BIDI}]")
"""Control characters (escape sequences move the cursor, retitle the window, hide or rewrite text) and
bidirectional overrides (which reorder what is shown)."""
_UNSAFE_IN_LINES = re.compile(rf"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI}]")
"""The same but tab and newline (messages of several lines)."""


def printable(value: object, *, lines: bool = False) -> str:
    """`value` as text that cannot steer the operator's terminal: the characters of `_UNSAFE` are shown escaped
    (`\\x1b`, `\\u202e`), everything else as written (`lines`: tabs and newlines too). For anything someone
    else chose: tool, server and client names, arguments, reasons, and our messages that quote them. A held call
    whose tool name rewrote itself on screen could be approved unseen."""
    text = "" if value is None else str(value)
    unsafe = _UNSAFE_IN_LINES if lines else _UNSAFE
    return unsafe.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], empty: str,
                keep: Sequence[str] | None = None) -> None:
    """A table on stdout that never cuts the `keep` columns (default: the first), which hold what the next
    command needs (ids, tool names): they stay whole on one line and the other columns wrap. When the
    terminal is too narrow even for that, each row is printed as a block under its id instead."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(emoji=False)  # values are data: `:name:` in them stays as written (and no emoji table)
    if not rows:
        console.print(f"[dim]{empty}[/dim]")
        return
    cells = [[printable(v) for v in row] for row in rows]
    kept = [i for i, col in enumerate(columns) if col in (keep if keep is not None else columns[:1])]
    widths = {i: max(len(columns[i]), *(len(row[i]) for row in cells)) for i in kept}
    # each column costs its padding and a border (3); every other column needs a few characters to wrap in
    needed = sum(widths.values()) + 3 * len(columns) + 1 + _MIN_WRAPPED * (len(columns) - len(kept))
    if needed > console.width:
        _print_blocks(console, title, columns, cells, kept)
        return
    table = Table(title=title, title_justify="left", header_style="bold")
    for i, col in enumerate(columns):
        if i in kept:
            table.add_column(col, no_wrap=True, min_width=widths[i])
        else:
            table.add_column(col, overflow="fold")
    for row in cells:
        table.add_row(*(Text(cell) for cell in row))  # values are data, never markup
    console.print(table)


_MIN_WRAPPED = 6


def _print_blocks(console: Any, title: str, columns: Sequence[str], cells: list[list[str]], kept: list[int]) -> None:
    """A narrow terminal's table: one block per row, its first kept column as the heading, nothing cut."""
    from rich.markup import escape

    console.print(f"[bold]{escape(title)}[/bold]")
    head = kept[0] if kept else 0
    width = max(len(c) for c in columns)
    for row in cells:
        console.print(escape(row[head]), soft_wrap=True)
        for i, col in enumerate(columns):
            if i != head and row[i]:
                console.print(f"  {escape(col):<{width}}  {escape(row[i])}", soft_wrap=True)


def progress(quiet: bool = False, *, spinner: bool = False) -> Any:
    """A progress display on stderr for long work (a bar, or with `spinner` a spinner and the time spent), shown
    only when stderr is a terminal and not with --json; it disappears when done. Use as a context manager."""
    if quiet or _state["json"] or not sys.stderr.isatty():
        return _NoProgress()  # and rich.progress (tens of ms to import) stays unloaded
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = ([SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()] if spinner else
               [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()])
    return Progress(*columns, console=Console(stderr=True), transient=True)


class _NoProgress:
    """The progress display when none is shown: the calls rich.progress.Progress takes, doing nothing."""

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, **fields: Any) -> int:
        return 0

    def update(self, task: int, **fields: Any) -> None:
        return None

    def remove_task(self, task: int) -> None:
        return None

    def refresh(self) -> None:
        return None

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None


def confirm(question: str, yes: bool) -> None:
    """Ask `question` (it says what is about to change) unless --yes; without a terminal to ask, refuse."""
    if yes:
        return
    if not sys.stdin.isatty():
        from gateway.errors import UsageError

        raise UsageError(f"Confirmation needed, and stdin is not a terminal to ask: {question}",
                         hint="Pass --yes to confirm.", code="confirmation-needed")
    if not typer.confirm(question, default=False):
        raise AegressError("Aborted; nothing changed.", code="aborted")
