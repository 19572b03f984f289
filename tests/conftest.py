"""Shared fixtures: every test gets its own data dir, and no test touches the real home or keyring."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def aegress_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "aegress-home"
    monkeypatch.setenv("AEGRESS_HOME", str(home))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    for name in ("DATABASE_URL", "AEGRESS_DATABASE_URL", "AEGRESS_DATABASE_URL_FROM", "AEGRESS_REPLICA_ID",
                 "AEGRESS_DATABASE_POOL_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AEGRESS_TENANT_ID", "AEGRESS_ACTOR_ID", "AEGRESS_MCP_GATEWAY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    yield home


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")


@pytest.fixture(scope="session")
def pg_database() -> Iterator[object]:
    """This run's own Postgres database (tests.pg), dropped at the end. The machine's Postgres runs before
    every session and CI run: when no server answers, the tests that need it fail (never skip)."""
    from tests.pg import PgDatabase, reachable

    why = reachable()
    if why is not None:
        pytest.fail(f"{why} (the Postgres tests need the server at AEGRESS_TEST_POSTGRES_URL)")
    db = PgDatabase()
    try:
        yield db
    finally:
        db.drop()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store's URL: a SQLite file, or a new schema of this run's Postgres database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'aegress.db'}"
    return str(request.getfixturevalue("pg_database").schema_url())
