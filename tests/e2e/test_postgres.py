"""The CLI and the gateway on the machine's real Postgres: choosing the database, migrations, real calls
through `aegress serve`, then `aegress audit query/verify` on what it sealed. And a DATABASE_URL meant for
another program changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.store.migrations import MIGRATIONS
from tests.procs import aegress, aegress_json, gateway_with_fixture, mcp_client, run

FOREIGN = "postgresql://someone:foreign-secret@127.0.0.1:1/their_app"


def test_a_database_url_meant_for_another_program_is_ignored(aegress_home: Path) -> None:
    aegress(aegress_home, "tenant", "create", "acme", DATABASE_URL=FOREIGN)
    status = aegress_json(aegress_home, "db", "status")
    assert status["backend"] == "sqlite" and status["location"].endswith("aegress.db")
    assert [t["id"] for t in aegress_json(aegress_home, "tenant", "list")] == ["acme"]


def test_the_operator_may_name_the_variable_to_read_and_the_password_never_shows(aegress_home: Path) -> None:
    r = aegress(aegress_home, "tenant", "list", check=False, DATABASE_URL=FOREIGN,
                AEGRESS_DATABASE_URL_FROM="DATABASE_URL")
    assert r.returncode == 1 and "Cannot connect to the database postgresql://someone:***@127.0.0.1:1" in r.stderr
    assert "foreign-secret" not in r.stdout + r.stderr
    r = aegress(aegress_home, "tenant", "list", check=False, AEGRESS_DATABASE_URL_FROM="NOT_SET_ANYWHERE")
    assert r.returncode == 1 and "NOT_SET_ANYWHERE, which is not set" in r.stderr
    r = aegress(aegress_home, "tenant", "list", check=False, AEGRESS_DATABASE_URL="mysql://u:pw@h/db")
    assert r.returncode == 1 and "scheme 'mysql'" in r.stderr and "pw@" not in r.stderr


def test_db_status_and_migrate_on_postgres(aegress_home: Path, pg_database: object) -> None:
    url = pg_database.schema_url()  # type: ignore[attr-defined]
    env = {"AEGRESS_DATABASE_URL": url}
    r = aegress(aegress_home, "db", "status", "--check", "--json", check=False, **env)
    status = json.loads(r.stdout)
    assert r.returncode == 3 and status["backend"] == "postgres" and status["version"] == 0
    every = [m.version for m in MIGRATIONS]
    assert status["pending"] == every
    migrated = json.loads(aegress(aegress_home, "db", "migrate", "--json", **env).stdout)
    assert migrated["applied"] == every and migrated["pending"] == []
    assert all(m["applied_at"] for m in migrated["migrations"])
    assert "Nothing to do" in aegress(aegress_home, "db", "migrate", **env).stdout
    assert aegress(aegress_home, "db", "status", "--check", **env).returncode == 0
    assert not (aegress_home / "aegress.db").exists()  # nothing went to SQLite


@pytest.mark.slow
def test_the_gateway_on_postgres_seals_real_calls_that_verify(tmp_path: Path, pg_database: object,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    url = pg_database.schema_url()  # type: ignore[attr-defined]
    monkeypatch.setenv("AEGRESS_DATABASE_URL", url)  # every `aegress` process of this test (cli_env copies it)
    monkeypatch.setenv("AEGRESS_REPLICA_ID", "replica-a")
    home = tmp_path / "home"
    with gateway_with_fixture(home) as gw:
        shown = gw.proc.wait_for("Database:", timeout=10)
        assert "postgresql://postgres@127.0.0.1" in shown and "search_path" not in shown  # the query is masked
        token = gw.tokens[("acme", "alice")]

        async def go() -> None:
            async with mcp_client(gw.url, token) as client:
                names = {t.name for t in (await client.list_tools()).tools}
                assert "tools__echo" in names
                for i in range(6):
                    result = await client.call_tool("tools__echo", {"text": f"pg {i}"})
                    assert f"pg {i}" in result.content[0].text
                    assert result.meta["aegress"]

        run(go())
    assert not (home / "aegress.db").exists()
    rows = aegress_json(home, "audit", "query", "--tenant", "acme", "--kind", "intent")
    assert len(rows) >= 6
    verified = json.loads(aegress(home, "audit", "verify", "--all", "--final", "--json").stdout)
    assert verified["ok"] and verified["records"] >= 12
    from tests.pg import sql

    replicas = {r[0] for r in sql(url, "SELECT DISTINCT replica FROM evidence WHERE kind = 'intent'")}
    assert replicas == {"replica-a"}
