"""The CLI's fixed choices are the library's sets, so the parser accepts exactly what the library knows."""

from __future__ import annotations

from typing import get_args


def test_audit_filters_are_the_record_vocabulary() -> None:
    from aegress_cli.audit import Kind, Outcome, Verdict
    from gateway.audit.records import KINDS, OUTCOME_STATUSES
    from gateway.record import VERDICTS

    assert set(get_args(Kind)) == set(KINDS)
    assert set(get_args(Outcome)) == set(OUTCOME_STATUSES) | {"outcome_unknown"}
    assert set(get_args(Verdict)) == set(VERDICTS.values())


def test_export_formats_are_the_library_formats() -> None:
    from aegress_cli.audit import ExportFormat
    from gateway.evidence import export

    assert get_args(ExportFormat) == get_args(export.ExportFormat)


def test_clients_are_the_supported_clients() -> None:
    from aegress_cli.client import Client
    from gateway.clients import CLIENTS

    assert list(get_args(Client)) == list(CLIENTS)


def test_help_metavars() -> None:
    """Flags have none; values show their kind; a long choice list shows the option's name."""
    from typer.main import get_command

    from aegress_cli._help import metavar
    from aegress_cli.main import app

    export = get_command(app).commands["audit"].commands["export"]  # type: ignore[attr-defined]
    shown = {p.name: metavar(p) for p in export.params}
    assert shown["json_out"] is None and shown["force"] is None and shown["sign"] is None
    assert shown["fmt"] == "[jsonl|csv|bundle]" and shown["out"] == "PATH" and shown["tenant"] == "TEXT"
    query = get_command(app).commands["audit"].commands["query"]  # type: ignore[attr-defined]
    kind = next(p for p in query.params if p.name == "kind")
    assert metavar(kind) == "KIND" and "One of: intent, decision," in kind.help
