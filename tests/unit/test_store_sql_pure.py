"""The shared SQL layer's pure parts: the Postgres rewrite of a shared statement, and the statements
themselves (a textual rewrite is only safe when nothing else in them looks like its input)."""

from __future__ import annotations

import inspect

from gateway.store import sql


def test_postgres_rewrite_placeholders_and_byte_order() -> None:
    shared = "SELECT id FROM t WHERE a = ? AND b = ? ORDER BY name COLLATE BINARY, id"
    assert sql.postgres_sql(shared) == 'SELECT id FROM t WHERE a = %s AND b = %s ORDER BY name COLLATE "C", id'
    already = "SELECT 1 FROM t WHERE a = %s"
    assert sql.postgres_sql(already) == already  # a Postgres-only statement passes through unchanged


def test_where_lists_only_the_filters_set() -> None:
    assert sql.where(tenant_id=None, status=None) == ("", [])
    assert sql.where(tenant_id="acme", status=None, actor_id="al") == (" WHERE tenant_id = ? AND actor_id = ?",
                                                                        ["acme", "al"])


def test_shared_statements_hold_no_literal_percent() -> None:
    """psycopg reads `%` as the start of a placeholder: a shared statement must not hold one."""
    source = inspect.getsource(sql).split('"""', 2)[2]  # the code, not the module docstring
    assert "%" not in source.replace('"%s"', "")
