"""SQLite store: the zero-set-up default, one file under the data dir.

WAL mode with synchronous=FULL: a committed record survives power loss. One connection per thread
(sqlite3 connections are not shared across threads); readers never block the writer in WAL.
Schema changes go through `_MIGRATIONS` (ordered, recorded in `PRAGMA user_version`); sqlite-utils
is imported only when a migration runs, so opening the store stays fast for CLI commands.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.errors import AlreadyExists, NotFound, StoreUnavailable
from gateway.store.base import HeldCall, PinChange, PolicyVersion, WouldBlock
from gateway.types import Actor, CallRecord, Tenant, TokenInfo, UpstreamLimits, UpstreamSpec

log = logging.getLogger("aegress.store")


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


def _m2(db: object) -> None:
    """The policy gate: policy versions, cached tool definitions, pins and their changes, held calls."""
    from sqlite_utils import Database

    assert isinstance(db, Database)
    db["policies"].create(
        {"tenant_id": str, "version": int, "text": str, "filename": str, "digest": str, "applied_at": str,
         "applied_by": str},
        pk=("tenant_id", "version"),
    )
    db["tool_definitions"].create(
        {"tenant_id": str, "upstream": str, "name": str, "definition": str, "hash": str, "seen_at": str},
        pk=("tenant_id", "upstream", "name"),
    )
    db["pins"].create(
        {"tenant_id": str, "upstream": str, "tool": str, "hash": str, "approved_by": str, "approved_at": str},
        pk=("tenant_id", "upstream", "tool"),
    )
    db["pin_baselines"].create({"tenant_id": str, "upstream": str, "at": str}, pk=("tenant_id", "upstream"))
    db["pin_changes"].create(
        {"id": int, "tenant_id": str, "upstream": str, "tool": str, "old_hash": str, "new_hash": str,
         "seen_at": str, "resolved_at": str, "resolved_by": str},
        pk="id",
    )
    db["pin_changes"].create_index(["tenant_id", "upstream", "tool", "old_hash", "new_hash"], unique=True)
    db["held_calls"].create(
        {"id": str, "tenant_id": str, "actor_id": str, "upstream": str, "tool": str, "exposed": str,
         "args_digest": str, "arguments": str, "rule_id": str, "reason": str, "policy_version": int, "mode": str,
         "status": str, "created_at": float, "decided_by": str, "decided_at": float, "decision_reason": str,
         "expires_at": float, "used_at": float},
        pk="id",
    )
    db["held_calls"].create_index(["tenant_id", "status"])
    db["held_calls"].create_index(["tenant_id", "actor_id", "upstream", "tool", "args_digest"])
    db["calls"].add_column("policy_version", int)
    db["calls"].add_column("audit_id", str)
    db["meta"].insert({"key": "policies_version", "value": "0"})
    # delete_tenant predates these tables: a trigger removes a deleted tenant's policy state, so a
    # tenant created again under the same id never inherits it.
    db.execute(
        """CREATE TRIGGER tenants_delete_policy AFTER DELETE ON tenants BEGIN
             DELETE FROM policies WHERE tenant_id = OLD.id;
             DELETE FROM tool_definitions WHERE tenant_id = OLD.id;
             DELETE FROM pins WHERE tenant_id = OLD.id;
             DELETE FROM pin_baselines WHERE tenant_id = OLD.id;
             DELETE FROM pin_changes WHERE tenant_id = OLD.id;
             DELETE FROM held_calls WHERE tenant_id = OLD.id;
             UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'policies_version';
           END"""
    )


def _m3(db: object) -> None:
    """Sealed evidence (issue 4): exact record bytes per log, chain heads, signed checkpoints.

    `data` holds the canonical bytes that were hashed; every other column is a queryable copy.
    """
    from sqlite_utils import Database

    assert isinstance(db, Database)
    db.execute(
        """CREATE TABLE evidence (
             id INTEGER PRIMARY KEY, origin TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,
             time TEXT NOT NULL, tenant TEXT NOT NULL, actor TEXT NOT NULL, tool TEXT NOT NULL,
             verdict TEXT NOT NULL, status TEXT NOT NULL, intent_seq INTEGER, leaf_hash BLOB NOT NULL,
             data BLOB NOT NULL)"""
    )
    db.execute("CREATE UNIQUE INDEX evidence_origin_seq ON evidence (origin, seq)")
    db.execute("CREATE INDEX evidence_answers ON evidence (origin, intent_seq) WHERE intent_seq IS NOT NULL")
    db.execute("CREATE INDEX evidence_tenant ON evidence (tenant, id)")
    db.execute("CREATE INDEX evidence_time ON evidence (time)")
    db.execute(
        "CREATE TABLE evidence_heads (origin TEXT PRIMARY KEY, size INTEGER NOT NULL, last_hash BLOB NOT NULL)"
    )
    db.execute(
        """CREATE TABLE checkpoints (origin TEXT NOT NULL, size INTEGER NOT NULL, root BLOB NOT NULL,
             note TEXT NOT NULL, signed_at TEXT NOT NULL, PRIMARY KEY (origin, size))"""
    )


def _m4(db: object) -> None:
    """Tenant ids unique ignoring ASCII case; actor ids too, within their tenant (issue 9).

    `Acme` next to `acme` would look like one tenant to a person and be two to the gateway. New twins
    are refused in code (`create_tenant`, `add_actor` check inside their write transaction); these
    indexes (COLLATE NOCASE) are the backstop. A database that already holds two ids differing only
    by case keeps opening and working: the index for that table is skipped and a warning logged, and
    the check in code still refuses further twins. Lookups stay exact (binding compares exactly).
    """
    from sqlite_utils import Database

    assert isinstance(db, Database)
    for table, group, index in (
        ("tenants", "id COLLATE NOCASE", "tenants_id_nocase"),
        ("actors", "tenant_id, id COLLATE NOCASE", "actors_tenant_id_nocase"),
    ):
        twins = db.execute(f"SELECT group_concat(id, ', ') FROM {table} GROUP BY {group} HAVING count(*) > 1"
                           " LIMIT 1").fetchone()
        if twins:
            log.warning("%s holds ids differing only by case (%s): their case-insensitive unique index is "
                        "not created; new twins are still refused", table, twins[0])
            continue
        db.execute(f"CREATE UNIQUE INDEX {index} ON {table} ({group})")


_MIGRATIONS: list[Callable[[object], None]] = [_m1, _m2, _m3, _m4]


def _where(**filters: object) -> tuple[str, list[object]]:
    """` WHERE a = ? AND b = ?` for the filters that are set (column names come from code, never input)."""
    used = {k: v for k, v in filters.items() if v is not None}
    if not used:
        return "", []
    return " WHERE " + " AND ".join(f"{k} = ?" for k in used), list(used.values())


def _create_private(path: Path) -> None:
    """A new database file is created 0600 (SQLite gives -wal and -shm the same mode) and its dir, the
    data dir, made 0700: evidence, token hashes and upstream secrets are nobody else's business."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first
        return
    os.close(fd)
    if path.parent.stat().st_uid == os.getuid():
        os.chmod(path.parent, 0o700)


def _already_exists(kind: str, wanted: str, existing: str, where: str) -> AlreadyExists:
    """Refuse an id that exists, or exists under another case (ids are unique ignoring case)."""
    if existing == wanted:
        return AlreadyExists(f"{kind} {wanted!r} already exists{where}.")
    return AlreadyExists(f"{kind} {wanted!r} would differ from the existing {kind.lower()} {existing!r}{where} only "
                         "by case.", hint=f"Use {existing!r}, or pick a name that differs by more than case.")


class SQLiteStore:
    inline_safe = False
    """A write can wait for another process's lock (busy timeout) or a full disk: the request path calls
    the store in a worker thread (the review desk, /health), never on the event loop."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 5.0) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        try:
            _create_private(path)
        except OSError as exc:
            raise StoreUnavailable(
                f"Cannot create the database {path}: {exc.strerror}.",
                hint="Check the data dir exists and is writable (AEGRESS_HOME or --data-dir).",
            ) from exc
        self._migrate()

    # -- connections -------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None,
                                       check_same_thread=True)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
                conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
            except sqlite3.Error as exc:
                raise StoreUnavailable(
                    f"Cannot open the database {self.path}: {exc}.",
                    hint="Check the data dir exists and is writable (AEGRESS_HOME or --data-dir).",
                ) from exc
            self._local.conn = conn
        return conn

    def _reader(self) -> sqlite3.Connection:
        """This thread's read-only connection with no busy wait (for `*_nowait` reads)."""
        conn: sqlite3.Connection | None = getattr(self._local, "reader", None)
        if conn is None:
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=0,
                                   isolation_level=None, check_same_thread=True)
            conn.execute("PRAGMA query_only=ON")
            self._local.reader = conn
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
        for name in ("conn", "reader"):
            conn = getattr(self._local, name, None)
            if conn is not None:
                conn.close()
                setattr(self._local, name, None)

    def ping(self) -> None:
        self._run("SELECT 1").fetchone()

    # -- tenants -----------------------------------------------------------------------------
    def create_tenant(self, tenant_id: str, now: str) -> Tenant:
        with self._write() as conn:
            row = conn.execute("SELECT id FROM tenants WHERE id = ? COLLATE NOCASE ORDER BY id = ? DESC, id LIMIT 1",
                               (tenant_id, tenant_id)).fetchone()
            if row is not None:
                raise _already_exists("Tenant", tenant_id, str(row[0]), "")
            conn.execute("INSERT INTO tenants (id, created_at) VALUES (?, ?)", (tenant_id, now))
        return Tenant(tenant_id, now)

    def get_tenant(self, tenant_id: str) -> Tenant | None:
        row = self._run("SELECT id, created_at FROM tenants WHERE id = ?", (tenant_id,)).fetchone()
        return Tenant(*row) if row else None

    def list_tenants(self) -> list[Tenant]:
        return [Tenant(*r) for r in self._run("SELECT id, created_at FROM tenants ORDER BY id")]

    def delete_tenant(self, tenant_id: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM upstreams WHERE tenant_id = ?", (tenant_id,))
            conn.execute("DELETE FROM tokens WHERE tenant_id = ?", (tenant_id,))
            conn.execute("DELETE FROM actors WHERE tenant_id = ?", (tenant_id,))
            cur = conn.execute("DELETE FROM tenants WHERE id = ?", (tenant_id,))
            if cur.rowcount == 0:
                raise NotFound(f"No tenant {tenant_id!r}.", hint="List tenants with `aegress tenant list`.")
            self._bump_upstreams(conn)

    # -- actors ------------------------------------------------------------------------------
    def add_actor(self, tenant_id: str, actor_id: str, now: str) -> Actor:
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM tenants WHERE id = ?", (tenant_id,)).fetchone() is None:
                raise NotFound(f"No tenant {tenant_id!r}.", hint="Create it with `aegress tenant create`.")
            row = conn.execute(
                "SELECT id FROM actors WHERE tenant_id = ? AND id = ? COLLATE NOCASE ORDER BY id = ? DESC, id LIMIT 1",
                (tenant_id, actor_id, actor_id),
            ).fetchone()
            if row is not None:
                raise _already_exists("Actor", actor_id, str(row[0]), f" in tenant {tenant_id!r}")
            conn.execute("INSERT INTO actors (tenant_id, id, created_at) VALUES (?, ?, ?)", (tenant_id, actor_id, now))
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
        with self._write() as conn:
            conn.execute("DELETE FROM tokens WHERE tenant_id = ? AND actor_id = ?", (tenant_id, actor_id))
            cur = conn.execute("DELETE FROM actors WHERE tenant_id = ? AND id = ?", (tenant_id, actor_id))
            if cur.rowcount == 0:
                raise NotFound(f"No actor {actor_id!r} in tenant {tenant_id!r}.")

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

    def find_token_nowait(self, token_hash: str) -> TokenInfo | None:
        """On the event loop, every request: a read-only connection that never waits for a lock (WAL readers
        see the last commit without one); a lock or any other trouble says WouldBlock instead."""
        try:
            row = self._reader().execute(f"SELECT {self._TOKEN_COLS} FROM tokens WHERE hash = ?",
                                         (token_hash,)).fetchone()
        except sqlite3.Error as exc:
            raise WouldBlock from exc
        return TokenInfo(*row) if row else None

    def get_token(self, token_id: str) -> TokenInfo | None:
        row = self._run(f"SELECT {self._TOKEN_COLS} FROM tokens WHERE id = ?", (token_id,)).fetchone()
        return TokenInfo(*row) if row else None

    def list_tokens(self, tenant_id: str | None = None, actor_id: str | None = None) -> list[TokenInfo]:
        where, params = _where(tenant_id=tenant_id, actor_id=actor_id)
        return [TokenInfo(*r) for r in self._run(f"SELECT {self._TOKEN_COLS} FROM tokens{where}"
                                                 " ORDER BY created_at, id", params)]

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
            limits=UpstreamLimits.from_changed(cfg.get("limits")),
        )

    _UP_COLS = "tenant_id, name, transport, config, prefix, allow_private, created_at"

    @staticmethod
    def _config(spec: UpstreamSpec) -> dict[str, object]:
        return {
            "transport": spec.transport,
            "command": list(spec.command),
            "env": spec.env,
            "cwd": spec.cwd,
            "url": spec.url,
            "headers": spec.headers,
            "limits": spec.limits.changed(),
        }

    def update_upstream(self, spec: UpstreamSpec) -> None:
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE upstreams SET transport = ?, config = ?, prefix = ?, allow_private = ?"
                " WHERE tenant_id = ? AND name = ?",
                (spec.transport, json.dumps(self._config(spec)), int(spec.prefix), int(spec.allow_private),
                 spec.tenant_id, spec.name),
            )
            if cur.rowcount == 0:
                raise NotFound(f"No upstream {spec.name!r} in tenant {spec.tenant_id!r}.")
            self._bump_upstreams(conn)

    def add_upstream(self, spec: UpstreamSpec) -> None:
        config = self._config(spec)
        try:
            with self._write() as conn:
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
        except sqlite3.IntegrityError as exc:
            if self.get_tenant(spec.tenant_id) is None:
                raise NotFound(
                    f"No tenant {spec.tenant_id!r}.", hint="Create it with `aegress tenant create`."
                ) from exc
            raise AlreadyExists(
                f"Upstream {spec.name!r} already exists in tenant {spec.tenant_id!r}.",
                hint="Remove it first with `aegress upstream remove`, or pick another name.",
            ) from exc

    def get_upstream(self, tenant_id: str, name: str) -> UpstreamSpec | None:
        row = self._run(
            f"SELECT {self._UP_COLS} FROM upstreams WHERE tenant_id = ? AND name = ?", (tenant_id, name)
        ).fetchone()
        return self._to_spec(row) if row else None

    def list_upstreams(self, tenant_id: str) -> list[UpstreamSpec]:
        rows = self._run(f"SELECT {self._UP_COLS} FROM upstreams WHERE tenant_id = ? ORDER BY name", (tenant_id,))
        return [self._to_spec(r) for r in rows]

    def remove_upstream(self, tenant_id: str, name: str) -> None:
        with self._write() as conn:
            cur = conn.execute("DELETE FROM upstreams WHERE tenant_id = ? AND name = ?", (tenant_id, name))
            if cur.rowcount == 0:
                raise NotFound(f"No upstream {name!r} in tenant {tenant_id!r}.")
            self._bump_upstreams(conn)

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

    def list_calls(self, tenant_id: str | None = None, limit: int = 100) -> list[CallRecord]:
        sql = f"SELECT {self._CALL_COLS} FROM calls"
        params: list[object] = []
        if tenant_id is not None:
            sql += " WHERE tenant_id = ?"
            params.append(tenant_id)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        return [CallRecord(*r) for r in self._run(sql, params)]

    # -- policies (issue 3) ------------------------------------------------------------------------
    def _tx(self) -> sqlite3.Connection:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"The database is unavailable: {exc}.", hint="Check disk space and file "
                                   "permissions.") from exc
        return conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT); inside `sealed()` (or another `_write`) on
        this thread it is a SAVEPOINT of the open transaction instead, so the change commits with its seal."""
        depth: int = getattr(self._local, "depth", 0)
        conn = self._conn() if depth else self._tx()
        if depth:
            conn.execute(f"SAVEPOINT w{depth}")
        self._local.depth = depth + 1
        try:
            yield conn
        except BaseException:
            if depth:
                conn.execute(f"ROLLBACK TO w{depth}")
                conn.execute(f"RELEASE w{depth}")
            elif conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        else:
            conn.execute(f"RELEASE w{depth}" if depth else "COMMIT")
        finally:
            self._local.depth = depth

    @contextlib.contextmanager
    def sealed(self) -> Iterator[list[Any]]:
        """Run an operator change and seal it in ONE transaction.

            with store.sealed() as seal:
                info = store.revoke_token(token_id, now)     # any store writes, on this thread
                seal.append(entry)                            # the evidence entries that describe them

        The entries are chained and inserted after the change, before COMMIT: either both the change
        and its records are durable, or neither (an evidence failure rolls the change back)."""
        entries: list[Any] = []
        with self._write() as conn:
            yield entries
            if entries:
                try:
                    self._insert_evidence(conn, entries)
                except sqlite3.Error as exc:
                    raise StoreUnavailable(f"Could not seal the change: {exc}.",
                                           hint="Nothing was changed. Check disk space, file permissions and "
                                                "locks, then run the command again.") from exc

    @staticmethod
    def _bump_policies(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'policies_version'")

    _POL_COLS = "tenant_id, version, text, filename, digest, applied_at, applied_by"

    def add_policy_version(self, tenant_id: str, text: str, filename: str, digest: str, applied_at: str,
                           applied_by: str) -> PolicyVersion:
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM tenants WHERE id = ?", (tenant_id,)).fetchone() is None:
                raise NotFound(f"No tenant {tenant_id!r}.", hint="List tenants with `aegress tenant list`.")
            (latest,) = conn.execute(
                "SELECT COALESCE(MAX(version), 0) FROM policies WHERE tenant_id = ?", (tenant_id,)
            ).fetchone()
            row = PolicyVersion(tenant_id, int(latest) + 1, text, filename, digest, applied_at, applied_by)
            conn.execute(
                f"INSERT INTO policies ({self._POL_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (row.tenant_id, row.version, row.text, row.filename, row.digest, row.applied_at, row.applied_by),
            )
            self._bump_policies(conn)
            return row

    def get_policy_version(self, tenant_id: str, version: int | None = None) -> PolicyVersion | None:
        if version is None:
            row = self._run(
                f"SELECT {self._POL_COLS} FROM policies WHERE tenant_id = ? ORDER BY version DESC LIMIT 1",
                (tenant_id,),
            ).fetchone()
        else:
            row = self._run(
                f"SELECT {self._POL_COLS} FROM policies WHERE tenant_id = ? AND version = ?", (tenant_id, version)
            ).fetchone()
        return PolicyVersion(*row) if row else None

    def list_policy_versions(self, tenant_id: str) -> list[PolicyVersion]:
        rows = self._run(f"SELECT {self._POL_COLS} FROM policies WHERE tenant_id = ? ORDER BY version", (tenant_id,))
        return [PolicyVersion(*r) for r in rows]

    def latest_policy_versions(self) -> dict[str, int]:
        rows = self._run("SELECT tenant_id, MAX(version) FROM policies GROUP BY tenant_id")
        return {str(t): int(v) for t, v in rows}

    def policies_version(self) -> int:
        row = self._run("SELECT value FROM meta WHERE key = 'policies_version'").fetchone()
        return int(row[0]) if row else 0

    # -- tool definitions --------------------------------------------------------------------------
    def set_tool_definitions(self, tenant_id: str, upstream: str, tools: Sequence[Mapping[str, Any]],
                             hashes: Sequence[str], now: str) -> None:
        conn = self._tx()
        try:
            conn.execute("DELETE FROM tool_definitions WHERE tenant_id = ? AND upstream = ?", (tenant_id, upstream))
            conn.executemany(
                "INSERT OR REPLACE INTO tool_definitions (tenant_id, upstream, name, definition, hash, seen_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(tenant_id, upstream, str(t.get("name")), json.dumps(dict(t)), h, now)
                 for t, h in zip(tools, hashes, strict=True)],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def observe_tools(self, tenant_id: str, upstream: str, tools: Sequence[Mapping[str, Any]],
                      hashes: Sequence[str], first_pins: Mapping[str, str] | None,
                      changes: Sequence[tuple[str, str, str]], by: str, now: str) -> None:
        """An upstream's tool listing, in ONE transaction: definitions replaced, pin changes recorded and,
        on first use (`first_pins`), pins set; a crash or a lock never leaves half of it."""
        try:
            with self._write() as conn:
                conn.execute("DELETE FROM tool_definitions WHERE tenant_id = ? AND upstream = ?",
                             (tenant_id, upstream))
                conn.executemany(
                    "INSERT OR REPLACE INTO tool_definitions (tenant_id, upstream, name, definition, hash, seen_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    [(tenant_id, upstream, str(t.get("name")), json.dumps(dict(t)), h, now)
                     for t, h in zip(tools, hashes, strict=True)],
                )
                conn.executemany(
                    "INSERT OR IGNORE INTO pin_changes (tenant_id, upstream, tool, old_hash, new_hash, seen_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)", [(tenant_id, upstream, t, o, n, now) for t, o, n in changes],
                )
                if first_pins is not None:
                    self._pin(conn, tenant_id, upstream, first_pins, by, now)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"Could not store tool definitions: {exc}.",
                                   hint="Check disk space, file permissions and locks.") from exc

    def get_tool_definitions(self, tenant_id: str) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        rows = self._run(
            "SELECT upstream, definition FROM tool_definitions WHERE tenant_id = ? ORDER BY upstream, name",
            (tenant_id,),
        )
        for upstream, definition in rows:
            out.setdefault(str(upstream), []).append(json.loads(definition))
        return out

    # -- pins --------------------------------------------------------------------------------------
    def get_pins(self, tenant_id: str) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for upstream, tool, digest in self._run(
            "SELECT upstream, tool, hash FROM pins WHERE tenant_id = ?", (tenant_id,)
        ):
            out.setdefault(str(upstream), {})[str(tool)] = str(digest)
        return out

    def pinned_upstreams(self, tenant_id: str) -> set[str]:
        rows = self._run("SELECT upstream FROM pin_baselines WHERE tenant_id = ?", (tenant_id,))
        return {str(r[0]) for r in rows}

    def set_pins(self, tenant_id: str, upstream: str, pins: Mapping[str, str], by: str, now: str) -> None:
        """Approve definitions: upsert pins, mark the upstream as pinned, resolve matching change records."""
        with self._write() as conn:
            self._pin(conn, tenant_id, upstream, pins, by, now)

    def _pin(self, conn: sqlite3.Connection, tenant_id: str, upstream: str, pins: Mapping[str, str], by: str,
             now: str) -> None:
        conn.execute("INSERT OR IGNORE INTO pin_baselines (tenant_id, upstream, at) VALUES (?, ?, ?)",
                     (tenant_id, upstream, now))
        for tool, digest in pins.items():
            conn.execute(
                "INSERT OR REPLACE INTO pins (tenant_id, upstream, tool, hash, approved_by, approved_at)"
                " VALUES (?, ?, ?, ?, ?, ?)", (tenant_id, upstream, tool, digest, by, now),
            )
            conn.execute(
                "UPDATE pin_changes SET resolved_at = ?, resolved_by = ? WHERE tenant_id = ? AND upstream = ?"
                " AND tool = ? AND new_hash = ? AND resolved_at IS NULL",
                (now, by, tenant_id, upstream, tool, digest),
            )
        self._bump_policies(conn)

    def record_pin_changes(self, tenant_id: str, upstream: str, changes: Sequence[tuple[str, str, str]],
                           now: str) -> None:
        """(tool, old_hash or "", new_hash) each recorded once."""
        if not changes:
            return
        conn = self._tx()
        try:
            conn.executemany(
                "INSERT OR IGNORE INTO pin_changes (tenant_id, upstream, tool, old_hash, new_hash, seen_at)"
                " VALUES (?, ?, ?, ?, ?, ?)", [(tenant_id, upstream, t, o, n, now) for t, o, n in changes],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def list_pin_changes(self, tenant_id: str, limit: int = 200) -> list[PinChange]:
        rows = self._run(
            "SELECT id, tenant_id, upstream, tool, old_hash, new_hash, seen_at, resolved_at, resolved_by"
            " FROM pin_changes WHERE tenant_id = ? ORDER BY id DESC LIMIT ?", (tenant_id, limit),
        )
        return [PinChange(*r) for r in rows]

    # -- held calls and approvals ------------------------------------------------------------------
    _HELD_COLS = (
        "id, tenant_id, actor_id, upstream, tool, exposed, args_digest, arguments, rule_id, reason, policy_version,"
        " mode, status, created_at, decided_by, decided_at, decision_reason, expires_at, used_at"
    )

    def add_held_call(self, held: HeldCall) -> None:
        self._run(
            f"INSERT INTO held_calls ({self._HELD_COLS}) VALUES ({', '.join('?' * 19)})",
            (held.id, held.tenant_id, held.actor_id, held.upstream, held.tool, held.exposed, held.args_digest,
             held.arguments, held.rule_id, held.reason, held.policy_version, held.mode, held.status,
             held.created_at, held.decided_by, held.decided_at, held.decision_reason, held.expires_at,
             held.used_at),
        )

    def get_held_call(self, held_id: str) -> HeldCall | None:
        row = self._run(f"SELECT {self._HELD_COLS} FROM held_calls WHERE id = ?", (held_id,)).fetchone()
        return HeldCall(*row) if row else None

    def list_held_calls(self, tenant_id: str | None = None, status: str | None = None,
                        limit: int = 100) -> list[HeldCall]:
        where, params = _where(tenant_id=tenant_id, status=status)
        sql = f"SELECT {self._HELD_COLS} FROM held_calls{where} ORDER BY created_at DESC, id LIMIT ?"
        return [HeldCall(*r) for r in self._run(sql, [*params, limit])]

    def find_pending_hold(self, tenant_id: str, actor_id: str, upstream: str, tool: str,
                          args_digest: str) -> HeldCall | None:
        row = self._run(
            f"SELECT {self._HELD_COLS} FROM held_calls WHERE tenant_id = ? AND actor_id = ? AND upstream = ?"
            " AND tool = ? AND args_digest = ? AND status = 'pending' ORDER BY created_at DESC LIMIT 1",
            (tenant_id, actor_id, upstream, tool, args_digest),
        ).fetchone()
        return HeldCall(*row) if row else None

    def decide_held_call(self, held_id: str, status: str, by: str, at: float, reason: str,
                         expires_at: float | None) -> bool:
        """pending -> approved/denied, once: False when it was already decided (or does not exist)."""
        cur = self._run(
            "UPDATE held_calls SET status = ?, decided_by = ?, decided_at = ?, decision_reason = ?, expires_at = ?"
            " WHERE id = ? AND status = 'pending'", (status, by, at, reason, expires_at, held_id),
        )
        return cur.rowcount == 1

    def consume_approval(self, tenant_id: str, actor_id: str, upstream: str, tool: str, args_digest: str,
                         now: float) -> HeldCall | None:
        """Use an approval exactly once: the oldest approved, unused, unexpired matching hold, atomically
        (BEGIN IMMEDIATE + `used_at IS NULL`), so two calls or two gateway processes never share one."""
        conn = self._tx()
        try:
            row = conn.execute(
                f"SELECT {self._HELD_COLS} FROM held_calls WHERE tenant_id = ? AND actor_id = ? AND upstream = ?"
                " AND tool = ? AND args_digest = ? AND status = 'approved' AND used_at IS NULL AND expires_at > ?"
                " ORDER BY decided_at LIMIT 1", (tenant_id, actor_id, upstream, tool, args_digest, now),
            ).fetchone()
            held = None
            if row is not None:
                cur = conn.execute("UPDATE held_calls SET used_at = ? WHERE id = ? AND used_at IS NULL", (now, row[0]))
                if cur.rowcount == 1:
                    held = HeldCall(*row[:-1], used_at=now)
            conn.execute("COMMIT")
            return held
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- sealed evidence (issue 4) -----------------------------------------------------------------
    _EV_COLS = "id, origin, seq, kind, time, tenant, actor, tool, verdict, status, intent_seq, leaf_hash, data"

    def evidence_prefix(self, default: str) -> str:
        """The deployment's origin prefix: chosen once (first writer wins), then fixed."""
        self._run("INSERT OR IGNORE INTO meta (key, value) VALUES ('audit_origin_prefix', ?)", (default,))
        row = self._run("SELECT value FROM meta WHERE key = 'audit_origin_prefix'").fetchone()
        return str(row[0])

    def append_evidence(self, entries: Sequence[Any], before_commit: Any = None) -> list[Any]:
        """Seal and insert a batch in ONE transaction (one fsync): group commit.

        Heads are read inside the transaction (BEGIN IMMEDIATE serialises writers), so several processes
        can append to one log; the unique (origin, seq) index makes a fork impossible.
        """
        if not entries:
            return []
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            sealed = self._insert_evidence(conn, entries)
            if before_commit is not None:
                before_commit(sealed)
            conn.execute("COMMIT")
            return sealed
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreUnavailable(
                f"Could not commit evidence: {exc}.", hint="Check disk space, file permissions and locks."
            ) from exc
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _insert_evidence(self, conn: sqlite3.Connection, entries: Sequence[Any]) -> list[Any]:
        """Chain `entries` onto the heads read inside the caller's open transaction and insert them."""
        from gateway.audit.log import seal
        from gateway.audit.records import ChainHead

        heads: dict[str, ChainHead] = {}
        for origin in {e.origin for e in entries}:
            row = conn.execute("SELECT size, last_hash FROM evidence_heads WHERE origin = ?", (origin,)).fetchone()
            heads[origin] = ChainHead(origin, int(row[0]), bytes(row[1])) if row else ChainHead.genesis(origin)
        sealed, new_heads = seal(entries, heads)
        conn.executemany(
            "INSERT INTO evidence (origin, seq, kind, time, tenant, actor, tool, verdict, status, intent_seq,"
            " leaf_hash, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (s.record.origin, s.record.seq, s.record.kind, s.entry.time, s.entry.columns.tenant,
                 s.entry.columns.actor, s.entry.columns.tool, s.entry.columns.verdict, s.entry.columns.status,
                 s.entry.columns.intent_seq, s.record.leaf_hash, s.record.canonical)
                for s in sealed
            ],
        )
        conn.executemany(
            "INSERT INTO evidence_heads (origin, size, last_hash) VALUES (?, ?, ?) ON CONFLICT (origin)"
            " DO UPDATE SET size = excluded.size, last_hash = excluded.last_hash",
            [(o, h.size, h.last_hash) for o, h in new_heads.items() if h.last_hash is not None],
        )
        calls = [s.entry.call for s in sealed if s.entry.call is not None]
        if calls:
            conn.executemany(
                f"INSERT INTO calls ({self._CALL_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (r.tenant_id, r.actor_id, r.token_id, r.method, r.target, r.upstream, r.verdict,
                     r.rule_id, r.outcome, r.started_at, r.duration_ms, r.error_code, r.session_id,
                     r.client_name)
                    for r in calls
                ],
            )
        return sealed

    def evidence_origins(self) -> list[str]:
        return [str(r[0]) for r in self._run("SELECT origin FROM evidence_heads ORDER BY origin")]

    def evidence_size(self, origin: str) -> int:
        row = self._run("SELECT size FROM evidence_heads WHERE origin = ?", (origin,)).fetchone()
        return int(row[0]) if row else 0

    def evidence_records(self, origin: str, start: int = 0, end: int | None = None) -> list[tuple[int, bytes]]:
        """(seq column, exact bytes) in storage order (id), which is what a verifier must check."""
        sql = "SELECT seq, data FROM evidence WHERE origin = ? AND seq >= ?"
        params: list[object] = [origin, start]
        if end is not None:
            sql += " AND seq < ?"
            params.append(end)
        return [(int(s), bytes(d)) for s, d in self._run(sql + " ORDER BY id", params)]

    def evidence_leaf_hashes(self, origin: str, start: int = 0) -> list[bytes]:
        rows = self._run("SELECT leaf_hash FROM evidence WHERE origin = ? AND seq >= ? ORDER BY seq", (origin, start))
        return [bytes(r[0]) for r in rows]

    def open_intents(self) -> list[tuple[str, int, str]]:
        rows = self._run(
            "SELECT i.origin, i.seq, i.tenant FROM evidence i WHERE i.kind = 'intent' AND NOT EXISTS"
            " (SELECT 1 FROM evidence o WHERE o.origin = i.origin AND o.intent_seq = i.seq"
            "  AND o.kind IN ('outcome', 'outcome_unknown')) ORDER BY i.origin, i.seq"
        )
        return [(str(o), int(s), str(t)) for o, s, t in rows]

    @staticmethod
    def _ev_row(r: Sequence[Any]) -> Any:
        from gateway.store.base import EvidenceRow

        return EvidenceRow(int(r[0]), str(r[1]), int(r[2]), str(r[3]), str(r[4]), str(r[5]), str(r[6]), str(r[7]),
                           str(r[8]), str(r[9]), None if r[10] is None else int(r[10]), bytes(r[11]), bytes(r[12]))

    def query_evidence(self, where: Any, limit: int = 100, newest_first: bool = True) -> list[Any]:
        sql = f"SELECT {self._EV_COLS} FROM evidence WHERE id > ?"
        params: list[object] = [where.after_id]
        for column in ("origin", "tenant", "actor", "tool", "verdict", "status", "kind"):
            value = getattr(where, column)
            if value:
                sql += f" AND {column} = ?"
                params.append(value)
        if where.since:
            sql += " AND time >= ?"
            params.append(where.since)
        if where.until:
            sql += " AND time < ?"
            params.append(where.until)
        if where.contains:
            sql += " AND instr(data, CAST(? AS BLOB)) > 0"
            params.append(where.contains)
        sql += f" ORDER BY id {'DESC' if newest_first else 'ASC'} LIMIT ?"
        params.append(limit)
        return [self._ev_row(r) for r in self._run(sql, params)]

    def get_evidence(self, record_id: int) -> Any:
        row = self._run(f"SELECT {self._EV_COLS} FROM evidence WHERE id = ?", (record_id,)).fetchone()
        return self._ev_row(row) if row else None

    def get_evidence_at(self, origin: str, seq: int) -> Any:
        row = self._run(f"SELECT {self._EV_COLS} FROM evidence WHERE origin = ? AND seq = ?", (origin, seq)).fetchone()
        return self._ev_row(row) if row else None

    def add_checkpoint(self, origin: str, size: int, root: bytes, note: str, now: str) -> None:
        try:
            self._run(
                "INSERT OR IGNORE INTO checkpoints (origin, size, root, note, signed_at) VALUES (?, ?, ?, ?, ?)",
                (origin, size, root, note, now),
            )
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"Could not store a checkpoint: {exc}.") from exc

    def list_checkpoints(self, origin: str) -> list[tuple[int, str]]:
        rows = self._run("SELECT size, note FROM checkpoints WHERE origin = ? ORDER BY size", (origin,))
        return [(int(s), str(n)) for s, n in rows]

    def probe_write(self, now: str) -> None:
        """A real, durable write (health check after a failure): proves the store takes commits again."""
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_write_probe', ?)", (now,))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreUnavailable(f"The database does not take writes: {exc}.") from exc
