"""Moving evidence between stores with the real CLI: a gateway seals calls on SQLite, `aegress audit export --all`,
`aegress audit import` into the machine's Postgres, `audit verify` there, back into a fresh SQLite; every
record and checkpoint byte-identical, bundles too. A gateway on Postgres then continues the imported logs,
and they move again. Refusals (a tampered bundle, another key, a gap, a fork) write nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from gateway.audit.keys import generate_signing_key
from tests.pg import sql
from tests.procs import aegress, gateway_with_fixture, mcp_client, run

ROWS = ("SELECT origin, seq, kind, time, tenant, actor, tool, verdict, status, intent_seq, leaf_hash, data"
        " FROM evidence ORDER BY origin, seq")
CHECKPOINTS = "SELECT origin, size, root, note FROM checkpoints ORDER BY origin, size"


def _calls(url: str, token: str, tag: str, n: int) -> None:
    async def go() -> None:
        async with mcp_client(url, token) as client:
            for i in range(n):
                result = await client.call_tool("tools__echo", {"text": f"{tag} {i}"})
                assert f"{tag} {i}" in result.content[0].text

    run(go())


def _table(url: str, statement: str) -> list[tuple[Any, ...]]:
    """A table's rows with byte columns as bytes, whichever database holds them."""
    return [tuple(bytes(v) if isinstance(v, (bytes, memoryview)) else v for v in row) for row in sql(url, statement)]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _json(proc: Any) -> Any:
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite deployment whose gateway sealed real calls and stopped (final checkpoint signed)."""
    home = tmp_path_factory.mktemp("import-source") / "home"
    with gateway_with_fixture(home) as gw:
        _calls(gw.url, gw.tokens[("acme", "alice")], "sqlite", 4)
    return home


@pytest.mark.slow
def test_logs_move_to_postgres_and_back_bit_for_bit(source: Path, tmp_path: Path, pg_database: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    lite_a = f"sqlite:///{source / 'aegress.db'}"
    pg = {"AEGRESS_DATABASE_URL": pg_database.schema_url()}
    pg_home, lite_home = tmp_path / "pg-home", tmp_path / "lite-home"
    lite_c = f"sqlite:///{lite_home / 'aegress.db'}"
    pubkey = aegress(source, "audit", "pubkey").stdout.strip()

    aegress(source, "audit", "export", "--all", "--out", str(tmp_path / "moved"))
    assert sorted(p.name for p in (tmp_path / "moved").iterdir()) == ["security", "tenant-acme"]
    imported = _json(aegress(pg_home, "audit", "import", str(tmp_path / "moved"), "--key", pubkey, "--yes", "--json",
                             **pg))
    assert {log["status"] for log in imported["logs"]} == {"created"} and imported["keys_trusted"] == [pubkey]
    verified = _json(aegress(pg_home, "audit", "verify", "--all", "--final", "--json", **pg))
    assert verified["ok"] and verified["records"] >= 14 and len(verified["logs"]) == 2
    assert _table(pg["AEGRESS_DATABASE_URL"], ROWS) == _table(lite_a, ROWS)  # every byte and column
    assert _table(pg["AEGRESS_DATABASE_URL"], CHECKPOINTS) == _table(lite_a, CHECKPOINTS)
    rows = _json(aegress(pg_home, "audit", "query", "--tenant", "acme", "--kind", "intent", "--json", **pg))
    assert len(rows) == 4 and {r["tool"] for r in rows} == {"tools__echo"}  # queryable like its own

    aegress(pg_home, "audit", "export", "--all", "--out", str(tmp_path / "back"), **pg)
    assert _files(tmp_path / "back") == _files(tmp_path / "moved")  # the bundles themselves, byte for byte
    back = _json(aegress(lite_home, "audit", "import", str(tmp_path / "back"), "--yes", "--json"))
    assert {log["status"] for log in back["logs"]} == {"created"} and back["keys_trusted"] == [pubkey]
    assert _json(aegress(lite_home, "audit", "verify", "--all", "--final", "--json"))["ok"]
    assert _table(lite_c, ROWS) == _table(lite_a, ROWS) and _table(lite_c, CHECKPOINTS) == _table(lite_a, CHECKPOINTS)
    again = aegress(lite_home, "audit", "import", str(tmp_path / "back"), "--yes")
    assert "Nothing to import" in again.stderr and again.stdout.count("unchanged") == 2
    assert _table(lite_c, ROWS) == _table(lite_a, ROWS)

    # a gateway on Postgres continues the imported logs (its own new key signs from now on) ...
    monkeypatch.setenv("AEGRESS_DATABASE_URL", pg["AEGRESS_DATABASE_URL"])
    monkeypatch.setenv("AEGRESS_REPLICA_ID", "replica-pg")
    with gateway_with_fixture(pg_home) as gw:
        _calls(gw.url, gw.tokens[("acme", "alice")], "postgres", 3)
    assert _json(aegress(pg_home, "audit", "verify", "--all", "--final", "--json"))["ok"]
    grown = _table(pg["AEGRESS_DATABASE_URL"], ROWS)
    assert set(_table(lite_a, ROWS)) < set(grown)  # the imported records, unchanged, and more after them
    aegress(pg_home, "audit", "export", "--all", "--out", str(tmp_path / "grown"))
    pg_key = aegress(pg_home, "audit", "pubkey").stdout.strip()
    monkeypatch.delenv("AEGRESS_DATABASE_URL")
    # ... and the grown logs move on to the SQLite copy, which only takes what it lacks
    more = _json(aegress(lite_home, "audit", "import", str(tmp_path / "grown"), "--yes", "--json"))
    assert {log["status"] for log in more["logs"]} == {"extended"} and more["keys_trusted"] == [pg_key]
    assert all(log["first_seq"] == log["size_before"] for log in more["logs"])
    assert _json(aegress(lite_home, "audit", "verify", "--all", "--final", "--json"))["ok"]
    assert _table(lite_c, ROWS) == grown
    assert _table(lite_c, CHECKPOINTS) == _table(pg["AEGRESS_DATABASE_URL"], CHECKPOINTS)


def test_refused_imports_write_nothing(source: Path, tmp_path: Path) -> None:
    home = tmp_path / "source"
    shutil.copytree(source, home)  # this test changes its source
    aegress(home, "audit", "export", "--all", "--out", str(tmp_path / "moved"))
    target = tmp_path / "target"
    target_db = f"sqlite:///{target / 'aegress.db'}"

    # a record changed in the bundle (the manifest is not fixed up: either way the bundle is refused)
    tampered = tmp_path / "tampered"
    shutil.copytree(tmp_path / "moved", tampered)
    records = tampered / "tenant-acme" / "records.jsonl"
    records.write_bytes(records.read_bytes().replace(b'"actor":"alice"', b'"actor":"mallory"', 1))
    r = aegress(target, "audit", "import", str(tampered), "--yes", check=False)
    assert r.returncode == 3 and "the bundle does not verify: modified" in r.stderr
    assert "Nothing was imported" in r.stderr
    assert _table(target_db, "SELECT count(*) FROM evidence") == [(0,)]
    assert not (target / "audit" / "keys.txt").exists()

    # checkpoints signed by a key other than the one the operator names
    other_key = generate_signing_key("someone-else").verifier_key
    r = aegress(target, "audit", "import", str(tmp_path / "moved"), "--key", other_key, "--yes", check=False)
    assert r.returncode == 3 and "bad_signature" in r.stderr
    assert _table(target_db, "SELECT count(*) FROM evidence") == [(0,)]

    # without --yes and no terminal: asked, not answered, nothing written
    r = aegress(target, "audit", "import", str(tmp_path / "moved"), check=False, input="")
    assert r.returncode == 2 and "will trust the verifier key" in r.stderr
    assert _table(target_db, "SELECT count(*) FROM evidence") == [(0,)]

    # a partial bundle that would leave a gap
    last = _json(aegress(home, "audit", "query", "--tenant", "acme", "--limit", "1", "--json"))[0]
    aegress(home, "audit", "export", "--tenant", "acme", "--since", last["time"], "--out", str(tmp_path / "tail"))
    r = aegress(target, "audit", "import", str(tmp_path / "tail"), "--yes", check=False)
    assert r.returncode == 3 and "would be missing" in r.stderr
    assert _table(target_db, "SELECT count(*) FROM evidence") == [(0,)]

    # a fork: both deployments go on from the same log, each its own way
    aegress(target, "audit", "import", str(tmp_path / "moved"), "--yes")
    aegress(target, "tenant", "create", "acme")  # sealed in the imported log of the target ...
    aegress(home, "actor", "add", "--tenant", "acme", "bob")  # ... and something else in the source's
    aegress(home, "audit", "export", "--all", "--out", str(tmp_path / "forked"))
    before = (_table(target_db, ROWS), _table(target_db, CHECKPOINTS))
    r = aegress(target, "audit", "import", str(tmp_path / "forked"), "--yes", check=False)
    assert r.returncode == 3 and "forked" in r.stderr and "Nothing was imported" in r.stderr
    assert (_table(target_db, ROWS), _table(target_db, CHECKPOINTS)) == before
