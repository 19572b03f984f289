"""`aegress --help` lists every command from summaries (no command is built for it), and shows exactly
what it shows with every command built."""

from __future__ import annotations

import pytest
import typer


def _root_help(group: typer.core.TyperGroup, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        group.main(["--help"], prog_name="aegress")
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_root_help_builds_no_command_and_matches_the_built_ones(capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from aegress_cli import main

    monkeypatch.setenv("COLUMNS", "120")
    group = typer.main.get_command(main.app)
    commands = group.commands  # type: ignore[attr-defined]
    assert isinstance(commands, main.LazyCommands)

    from_summaries = _root_help(group, capsys)
    assert commands._pending == set(main.COMMANDS)  # nothing was built, nor marked built

    for name in main.COMMANDS:  # build them all, as running each would
        assert commands[name].name == name
    assert not commands._pending
    from_built = _root_help(group, capsys)

    assert from_summaries == from_built
    for name in main.COMMANDS:
        assert f" {name} " in from_summaries


@pytest.mark.parametrize("name", ["status", "tenant", "oauth", "serve"])
def test_a_summary_carries_what_the_help_lists(name: str) -> None:
    from aegress_cli import main

    summary = main.summarize_command(name, main.COMMANDS[name])
    built = main.load_command(name, main.COMMANDS[name])
    for attribute in ("name", "help", "short_help", "hidden", "deprecated", "rich_help_panel"):
        assert getattr(summary, attribute) == getattr(built, attribute), attribute
    assert summary.params == [] and not hasattr(summary, "commands")  # nothing else was built
