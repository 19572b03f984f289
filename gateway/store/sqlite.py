"""SQLite store: the zero-set-up default, one file under the data dir.

WAL mode with synchronous=FULL: a committed record survives power loss. One connection per thread
(sqlite3 connections are not shared across threads); readers never block the writer in WAL.
Schema changes go through `_MIGRATIONS` (ordered, recorded in `PRAGMA user_version`); sqlite-utils
is imported only when a migration runs, so opening the store stays fast for CLI commands.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway.errors import AlreadyExists, NotFound, StoreUnavailable
from gateway.types import Actor, CallRecord, Tenant, TokenInfo, UpstreamSpec


def _m1(db: object) -> None:
    from sqlite_utils import Database

    assert isinstance(db, Database)
    db["tenants"].create({"id": str, "created_at": str}, pk="id")
    db["actors"].create(
        {"tenant_id": str, "id": str, "created_at": str},
        pk=("tenant_id", "id"),
        foreign_keys=[("tenant_id", "tenants", "id")],
    )
    db["tokens"].create(
        {
            "id": str,
            "tenant_id": str,
            "actor_id": str,
            "hash": str,
            "label": str,
            "created_at": str,
            "revoked_at": str,
        },
        pk="id",
        not_null={"tenant_id", "actor_id", "hash", "created_at"},
    )
    db["tokens"].create_index(["hash"], unique=True)
    db["tokens"].create_index(["tenant_id", "actor_id"])
    db["upstreams"].create(
        {
            "tenant_id": str,
            "name": str,
            "transport": str,
            "config": str,
            "prefix": int,
            "allow_private": int,
            "created_at": str,
            "tools": str,
        },
        pk=("tenant_id", "name"),
        foreign_keys=[("tenant_id", "tenants", "id")],
    )
    db["calls"].create(
        {
            "id": int,
            "tenant_id": str,
            "actor_id": str,
            "token_id": str,
            "session_id": str,
            "client_name": str,
            "method": str,
            "target": str,
            "upstream": str,
            "verdict": str,
            "rule_id": str,
            "outcome": str,
            "error_code": int,
            "started_at": str,
            "duration_ms": float,
        },
        pk="id",
    )
    db["calls"].create_index(["tenant_id", "id"])
    db["meta"].create({"key": str, "value": str}, pk="key")
    db["meta"].insert({"key": "upstreams_version", "value": "0"})


_MIGRATIONS: list[Callable[[object], None]] = [_m1]


class SQLiteStore:
    inline_safe = True

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._migrate()

    # -- connections -------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=True)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
                conn.execute("PRAGMA busy_timeout=5000")
            except sqlite3.Error as exc:
                raise StoreUnavailable(
                    f"Cannot open the database {self.path}: {exc}.",
                    hint="Check the data dir exists and is writable (AEGRESS_HOME or --data-dir).",
                ) from exc
            self._local.conn = conn
        return conn

    def _run(self, sql: str, params: Sequence[object] = ()) -> sqlite3.Cursor:
        try:
            return self._conn().execute(sql, params)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(
                f"The database is unavailable: {exc}.", hint="Check disk space and file permissions."
            ) from exc

    def _migrate(self) -> None:
        conn = self._conn()
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version >= len(_MIGRATIONS):
            return
        from sqlite_utils import Database

        db = Database(conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            for index in range(version, len(_MIGRATIONS)):
                _MIGRATIONS[index](db)
                conn.execute(f"PRAGMA user_version={index + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def ping(self) -> None:
        self._run("SELECT 1").fetchone()

    # -- tenants -----------------------------------------------------------------------------
    def create_tenant(self, tenant_id: str, now: str) -> Tenant:
        try:
            self._run("INSERT INTO tenants (id, created_at) VALUES (?, ?)", (tenant_id, now))
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(f"Tenant {tenant_id!r} already exists.") from exc
        return Tenant(tenant_id, now)

    def get_tenant(self, tenant_id: str) -> Tenant | None:
        row = self._run("SELECT id, created_at FROM tenants WHERE id = ?", (tenant_id,)).fetchone()
        return Tenant(*row) if row else None

    def list_tenants(self) -> list[Tenant]:
        return [Tenant(*r) for r in self._run("SELECT id, created_at FROM tenants ORDER BY id")]

    def delete_tenant(self, tenant_id: str) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("DELETE FROM upstreams WHERE tenant_id = ?", (tenant_id,))
            conn.execute("DELETE FROM tokens WHERE tenant_id = ?", (tenant_id,))
            conn.execute("DELETE FROM actors WHERE tenant_id = ?", (tenant_id,))
            cur = conn.execute("DELETE FROM tenants WHERE id = ?", (tenant_id,))
            if cur.rowcount == 0:
                raise NotFound(f"No tenant {tenant_id!r}.", hint="List tenants with `aegress tenant list`.")
            self._bump_upstreams(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- actors ------------------------------------------------------------------------------
    def add_actor(self, tenant_id: str, actor_id: str, now: str) -> Actor:
        try:
            self._run(
                "INSERT INTO actors (tenant_id, id, created_at) VALUES (?, ?, ?)", (tenant_id, actor_id, now)
            )
        except sqlite3.IntegrityError as exc:
            if self.get_tenant(tenant_id) is None:
                raise NotFound(f"No tenant {tenant_id!r}.", hint="Create it with `aegress tenant create`.") from exc
            raise AlreadyExists(f"Actor {actor_id!r} already exists in tenant {tenant_id!r}.") from exc
        return Actor(tenant_id, actor_id, now)

    def get_actor(self, tenant_id: str, actor_id: str) -> Actor | None:
        row = self._run(
            "SELECT tenant_id, id, created_at FROM actors WHERE tenant_id = ? AND id = ?", (tenant_id, actor_id)
        ).fetchone()
        return Actor(*row) if row else None

    def list_actors(self, tenant_id: str) -> list[Actor]:
        rows = self._run(
            "SELECT tenant_id, id, created_at FROM actors WHERE tenant_id = ? ORDER BY id", (tenant_id,)
        )
        return [Actor(*r) for r in rows]

    def remove_actor(self, tenant_id: str, actor_id: str) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("DELETE FROM tokens WHERE tenant_id = ? AND actor_id = ?", (tenant_id, actor_id))
            cur = conn.execute("DELETE FROM actors WHERE tenant_id = ? AND id = ?", (tenant_id, actor_id))
            if cur.rowcount == 0:
                raise NotFound(f"No actor {actor_id!r} in tenant {tenant_id!r}.")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- tokens ------------------------------------------------------------------------------
    _TOKEN_COLS = "id, tenant_id, actor_id, created_at, revoked_at, label"

    def add_token(self, info: TokenInfo, token_hash: str) -> None:
        self._run(
            "INSERT INTO tokens (id, tenant_id, actor_id, hash, label, created_at, revoked_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (info.id, info.tenant_id, info.actor_id, token_hash, info.label, info.created_at, info.revoked_at),
        )

    def find_token(self, token_hash: str) -> TokenInfo | None:
        row = self._run(f"SELECT {self._TOKEN_COLS} FROM tokens WHERE hash = ?", (token_hash,)).fetchone()
        return TokenInfo(*row) if row else None

    def get_token(self, token_id: str) -> TokenInfo | None:
        row = self._run(f"SELECT {self._TOKEN_COLS} FROM tokens WHERE id = ?", (token_id,)).fetchone()
        return TokenInfo(*row) if row else None

    def list_tokens(self, tenant_id: str | None = None, actor_id: str | None = None) -> list[TokenInfo]:
        sql = f"SELECT {self._TOKEN_COLS} FROM tokens WHERE 1=1"
        params: list[object] = []
        if tenant_id is not None:
            sql += " AND tenant_id = ?"
            params.append(tenant_id)
        if actor_id is not None:
            sql += " AND actor_id = ?"
            params.append(actor_id)
        return [TokenInfo(*r) for r in self._run(sql + " ORDER BY created_at, id", params)]

    def revoke_token(self, token_id: str, now: str) -> TokenInfo:
        self._run("UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now, token_id))
        info = self.get_token(token_id)
        if info is None:
            raise NotFound(f"No token {token_id!r}.", hint="List tokens with `aegress token list`.")
        return info

    # -- upstreams ---------------------------------------------------------------------------
    @staticmethod
    def _bump_upstreams(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'upstreams_version'")

    @staticmethod
    def _to_spec(row: Sequence[object]) -> UpstreamSpec:
        tenant_id, name, _transport, config, prefix, allow_private, created_at = row
        cfg = json.loads(str(config))
        return UpstreamSpec(
            tenant_id=str(tenant_id),
            name=str(name),
            transport=cfg["transport"],
            command=tuple(cfg.get("command", ())),
            env=dict(cfg.get("env", {})),
            cwd=cfg.get("cwd"),
            url=cfg.get("url"),
            headers=dict(cfg.get("headers", {})),
            prefix=bool(prefix),
            allow_private=bool(allow_private),
            created_at=str(created_at),
        )

    _UP_COLS = "tenant_id, name, transport, config, prefix, allow_private, created_at"

    def add_upstream(self, spec: UpstreamSpec) -> None:
        config = {
            "transport": spec.transport,
            "command": list(spec.command),
            "env": spec.env,
            "cwd": spec.cwd,
            "url": spec.url,
            "headers": spec.headers,
        }
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                f"INSERT INTO upstreams ({self._UP_COLS}, tools) VALUES (?, ?, ?, ?, ?, ?, ?, '[]')",
                (
                    spec.tenant_id,
                    spec.name,
                    spec.transport,
                    json.dumps(config),
                    int(spec.prefix),
                    int(spec.allow_private),
                    spec.created_at,
                ),
            )
            self._bump_upstreams(conn)
            conn.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            conn.execute("ROLLBACK")
            if self.get_tenant(spec.tenant_id) is None:
                raise NotFound(
                    f"No tenant {spec.tenant_id!r}.", hint="Create it with `aegress tenant create`."
                ) from exc
            raise AlreadyExists(
                f"Upstream {spec.name!r} already exists in tenant {spec.tenant_id!r}.",
                hint="Remove it first with `aegress upstream remove`, or pick another name.",
            ) from exc
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def get_upstream(self, tenant_id: str, name: str) -> UpstreamSpec | None:
        row = self._run(
            f"SELECT {self._UP_COLS} FROM upstreams WHERE tenant_id = ? AND name = ?", (tenant_id, name)
        ).fetchone()
        return self._to_spec(row) if row else None

    def list_upstreams(self, tenant_id: str) -> list[UpstreamSpec]:
        rows = self._run(f"SELECT {self._UP_COLS} FROM upstreams WHERE tenant_id = ? ORDER BY name", (tenant_id,))
        return [self._to_spec(r) for r in rows]

    def remove_upstream(self, tenant_id: str, name: str) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute("DELETE FROM upstreams WHERE tenant_id = ? AND name = ?", (tenant_id, name))
            if cur.rowcount == 0:
                raise NotFound(f"No upstream {name!r} in tenant {tenant_id!r}.")
            self._bump_upstreams(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def set_upstream_tools(self, tenant_id: str, name: str, tool_names: Sequence[str]) -> None:
        self._run(
            "UPDATE upstreams SET tools = ? WHERE tenant_id = ? AND name = ?",
            (json.dumps(sorted(tool_names)), tenant_id, name),
        )

    def get_upstream_tools(self, tenant_id: str) -> dict[str, list[str]]:
        rows = self._run("SELECT name, tools FROM upstreams WHERE tenant_id = ?", (tenant_id,))
        return {str(n): list(json.loads(t or "[]")) for n, t in rows}

    def upstreams_version(self) -> int:
        row = self._run("SELECT value FROM meta WHERE key = 'upstreams_version'").fetchone()
        return int(row[0]) if row else 0

    # -- calls -------------------------------------------------------------------------------
    _CALL_COLS = (
        "tenant_id, actor_id, token_id, method, target, upstream, verdict, rule_id, outcome,"
        " started_at, duration_ms, error_code, session_id, client_name"
    )

    def record_calls(self, records: Sequence[CallRecord]) -> None:
        """One transaction (and one fsync) for a whole batch: group commit."""
        if not records:
            return
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                f"INSERT INTO calls ({self._CALL_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        r.tenant_id, r.actor_id, r.token_id, r.method, r.target, r.upstream, r.verdict,
                        r.rule_id, r.outcome, r.started_at, r.duration_ms, r.error_code, r.session_id,
                        r.client_name,
                    )
                    for r in records
                ],
            )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreUnavailable(f"Could not write call records: {exc}.") from exc

    def list_calls(self, tenant_id: str | None = None, limit: int = 100) -> list[CallRecord]:
        sql = f"SELECT {self._CALL_COLS} FROM calls"
        params: list[object] = []
        if tenant_id is not None:
            sql += " WHERE tenant_id = ?"
            params.append(tenant_id)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        return [CallRecord(*r) for r in self._run(sql, params)]
