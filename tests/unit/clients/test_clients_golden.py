"""Golden files per client: fresh file, merge into an existing file, update of a stale entry, and
removal back to the original. Inputs are `<case>-<scope>.in.<ext>`, outputs `.out.<ext>`."""

from __future__ import annotations

from pathlib import Path

import pytest
from clients_support import CANARY, GOLDEN, REQUEST, check_golden

from gateway.clients import CLIENTS

EXT = {"codex": "toml"}


def _cases() -> list[tuple[str, str, str]]:
    cases = []
    for name, spec in CLIENTS.items():
        for scope in spec.scopes:
            cases.append((name, "fresh", scope))
        for path in sorted((GOLDEN / name).glob("*.in.*")):
            case, scope = path.name.split(".", 1)[0].rsplit("-", 1)
            cases.append((name, case, scope))
    return cases


def _in_path(client: str, case: str, scope: str) -> Path:
    return GOLDEN / client / f"{case}-{scope}.in.{EXT.get(client, 'json')}"


def _out_path(client: str, case: str, scope: str, kind: str = "out") -> Path:
    return GOLDEN / client / f"{case}-{scope}.{kind}.{EXT.get(client, 'json')}"


@pytest.mark.parametrize(("client", "case", "scope"), _cases())
def test_merge_matches_golden(client: str, case: str, scope: str) -> None:
    spec = CLIENTS[client]
    source = _in_path(client, case, scope)
    existing = source.read_text("utf-8") if source.exists() else None
    merged = spec.merge(existing, REQUEST, scope, source=source.name)  # type: ignore[arg-type]
    check_golden(_out_path(client, case, scope), merged)
    assert CANARY not in merged
    # Idempotent: a second run changes nothing, byte for byte.
    assert spec.merge(merged, REQUEST, scope) == merged  # type: ignore[arg-type]
    # What we wrote reads back as our entry.
    [entry] = [e for e in spec.read_entries(merged) if e.name == REQUEST.name]
    assert (entry.url, entry.tenant, entry.actor) == (REQUEST.url, REQUEST.tenant, REQUEST.actor)


@pytest.mark.parametrize(("client", "case", "scope"), [c for c in _cases() if c[1] != "fresh"])
def test_remove_restores_or_matches_golden(client: str, case: str, scope: str) -> None:
    """Removing our entry again gives back the user's file (or its golden when it had to change)."""
    spec = CLIENTS[client]
    merged = _out_path(client, case, scope).read_text("utf-8")
    removed = spec.remove(merged, REQUEST.name)
    assert removed is not None
    assert spec.read_entries(removed) == [e for e in spec.read_entries(removed) if e.name != REQUEST.name]
    expected = _out_path(client, case, scope, "removed")
    if expected.exists() or case != "existing":
        check_golden(expected, removed)
    else:
        assert removed == _in_path(client, case, scope).read_text("utf-8")


def test_generic_snippet_matches_golden() -> None:
    snippet = CLIENTS["generic"].snippet(REQUEST, "user")
    check_golden(GOLDEN / "generic" / "snippet.txt", snippet)
    assert CANARY not in snippet
    assert '"Authorization: Bearer $AEGRESS_MCP_GATEWAY_TOKEN"' in snippet
