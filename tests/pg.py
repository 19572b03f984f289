"""The machine's real Postgres for tests: one database per test run, one schema per test.

`AEGRESS_TEST_POSTGRES_URL` (default postgresql://postgres@127.0.0.1:5432/test) names a server and a
database to connect to for administration only. A run creates its OWN database `aegress_test_<random>`,
gives each test a fresh schema in it (selected through the URL's `options=-csearch_path=...`), and drops
the database at the end. No other database is touched; no server-wide lock is taken.
"""

from __future__ import annotations

import os
import re
import secrets
import sqlite3
from collections.abc import Sequence
from urllib.parse import quote, urlsplit, urlunsplit

ADMIN_URL = os.environ.get("AEGRESS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _with_path(url: str, database: str, query: str = "") -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, query, ""))


class PgDatabase:
    """A database of this test run; `schema_url()` gives a URL on a new, empty schema of it."""

    def __init__(self) -> None:
        import psycopg

        self.name = f"aegress_test_{secrets.token_hex(6)}"
        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{self.name}"')
        self.url = _with_path(ADMIN_URL, self.name)

    def schema_url(self) -> str:
        import psycopg

        schema = f"s_{secrets.token_hex(6)}"
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        return _with_path(ADMIN_URL, self.name, "options=" + quote(f"-csearch_path={schema}"))

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def reachable() -> str | None:
    """None when the test server answers, else why not."""
    try:
        import psycopg

        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3):
            return None
    except Exception as exc:  # ImportError, OperationalError
        return f"no Postgres for tests at AEGRESS_TEST_POSTGRES_URL: {type(exc).__name__}"


def sql(url: str, statement: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
    """Run one statement on a store's database behind its back (tampering tests); `?` placeholders."""
    if url.startswith("sqlite:///"):
        db = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            return db.execute(statement, params).fetchall()
        finally:
            db.close()
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(re.sub(r"\?", "%s", statement), params)
        return cur.fetchall() if cur.description else []
