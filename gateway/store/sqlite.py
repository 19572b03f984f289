"""SQLite store: the zero-set-up default, one file under the data dir.

WAL mode with synchronous=FULL: a committed record survives power loss. One connection per thread
(sqlite3 connections are not shared across threads); readers never block the writer in WAL.
Schema changes go through `gateway.store.migrations` (ordered, shared with Postgres, recorded in
`PRAGMA user_version`); sqlite-utils is imported only when a migration runs, so opening the store
stays fast for CLI commands. Evidence is appended by the shared `extend_logs` inside BEGIN IMMEDIATE
(SQLite's one write lock holds every other writer off until COMMIT).

The statements both stores share live once in `gateway.store.sql` (`SQLStore`), written in this
dialect; this module holds connections, transactions, locking, migrations, error mapping and the
few statements that differ.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import StoreUnavailable
from gateway.store.base import (
    BeforeCommit,
    HeldCall,
    WouldBlock,
    extend_logs,
)
from gateway.store.migrations import MIGRATIONS, SchemaStatus
from gateway.store.sql import (
    FIND_TOKEN,
    HELD_COLS,
    INSERT_CALL,
    INSERT_EVIDENCE,
    UPSERT_HEAD,
    SQLStore,
    sealed_rows,
)
from gateway.types import TokenInfo

if TYPE_CHECKING:
    from gateway.audit.log import Entry, Sealed
    from gateway.audit.records import ChainHead

log = logging.getLogger("aegress.store")

INLINE_COMMITS_PER_CHECKPOINT = 100
"""Inline evidence commits (about 6-13 pages each) between WAL checkpoints, which the evidence writer's thread
runs: close to SQLite's own automatic checkpoint at 1,000 pages, which the event loop must not run."""





def _unavailable(exc: sqlite3.Error) -> StoreUnavailable:
    return StoreUnavailable(f"The database is unavailable: {exc}.", hint="Check disk space and file permissions.")


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





def _evidence_unavailable(exc: sqlite3.Error) -> StoreUnavailable:
    return StoreUnavailable(f"Could not commit evidence: {exc}.", hint="Check disk space, file permissions and locks.")


class _EvidenceTx:
    """`EvidenceTx` on a connection inside BEGIN IMMEDIATE: the database's write lock is every log's lock."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def lock_heads(self, origins: Sequence[str]) -> dict[str, ChainHead]:
        from gateway.audit.records import ChainHead

        heads: dict[str, ChainHead] = {}
        for origin in origins:
            row = self.conn.execute("SELECT size, last_hash FROM evidence_heads WHERE origin = ?",
                                    (origin,)).fetchone()
            if row:
                heads[origin] = ChainHead(origin, int(row[0]), bytes(row[1]))
        return heads

    def insert_sealed(self, sealed: Sequence[Sealed], heads: Mapping[str, ChainHead], replica: str) -> None:
        records, head_rows, calls = sealed_rows(sealed, heads, replica)
        self.conn.executemany(INSERT_EVIDENCE, records)
        self.conn.executemany(UPSERT_HEAD, head_rows)
        if calls:
            self.conn.executemany(INSERT_CALL, calls)


class SQLiteStore(SQLStore):
    inline_safe = False
    """A write can wait for another process's lock (busy timeout) or a full disk: the request path calls
    the store in a worker thread (the review desk, /health), never on the event loop."""
    exclusive = True
    """One gateway per data dir (the data dir lock): start-up recovery closes every open intent."""
    inline_commits = True
    """A commit is a local fsync (about 0.1-0.3 ms): a lone call's intent may commit on the event loop."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 5.0, replica_id: str = "",
                 migrate: bool = True) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self.replica_id = replica_id
        self._local = threading.local()
        self._inline_commits = 0  # since the last `checkpoint_wal`
        try:
            _create_private(path)
        except OSError as exc:
            raise StoreUnavailable(
                f"Cannot create the database {path}: {exc.strerror}.",
                hint="Check the data dir exists and is writable (AEGRESS_HOME or --data-dir).",
            ) from exc
        if migrate:
            self.migrate()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

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
            raise _unavailable(exc) from exc

    # -- the shared SQL's hooks (gateway.store.sql) ----------------------------------------------
    _NOCASE_ID = "id = ? COLLATE NOCASE"
    _CONTAINS = "instr(data, CAST(? AS BLOB)) > 0"
    _FOR_UPDATE = ""  # BEGIN IMMEDIATE already holds every other writer off

    def _one(self, sql: str, params: Sequence[object] = ()) -> tuple[Any, ...] | None:
        try:  # `_run` written out: `find_token` is on the request path
            cur = self._conn().execute(sql, params)
        except sqlite3.OperationalError as exc:
            raise _unavailable(exc) from exc
        row: tuple[Any, ...] | None = cur.fetchone()
        return row

    def _all(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return self._run(sql, params).fetchall()

    def _exec(self, sql: str, params: Sequence[object] = ()) -> int:
        return self._run(sql, params).rowcount

    @staticmethod
    def _x(conn: sqlite3.Connection, sql: str, params: Sequence[object] = ()) -> sqlite3.Cursor:
        return conn.execute(sql, params)

    @staticmethod
    def _many(conn: sqlite3.Connection, sql: str, rows: Sequence[Sequence[object]]) -> None:
        conn.executemany(sql, rows)

    @staticmethod
    def _evidence_tx(conn: sqlite3.Connection) -> _EvidenceTx:
        return _EvidenceTx(conn)

    @staticmethod
    def _bump(conn: sqlite3.Connection, key: str) -> None:
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = ?", (key,))

    @staticmethod
    def _violation(exc: BaseException) -> str | None:
        """Any IntegrityError, as "constraint": its type does not say which one broke, so adding an
        upstream looks the tenant up. Creating a tenant or an actor checks for a twin inside BEGIN
        IMMEDIATE and maps only "unique" and "foreign-key": there it propagates as it always did."""
        return "constraint" if isinstance(exc, sqlite3.IntegrityError) else None

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{what}: {exc}.", hint="Check disk space, file permissions and locks.") from exc

    # INSERT OR REPLACE deletes the old row and inserts the new one; OR IGNORE keeps the old one
    _UPSERT_DEFINITION = ("INSERT OR REPLACE INTO tool_definitions"
                          " (tenant_id, upstream, name, definition, hash, seen_at) VALUES (?, ?, ?, ?, ?, ?)")
    _INSERT_PIN_CHANGES = ("INSERT OR IGNORE INTO pin_changes (tenant_id, upstream, tool, old_hash, new_hash, seen_at)"
                           " VALUES (?, ?, ?, ?, ?, ?)")
    _INSERT_BASELINE = "INSERT OR IGNORE INTO pin_baselines (tenant_id, upstream, at) VALUES (?, ?, ?)"
    _UPSERT_PIN = ("INSERT OR REPLACE INTO pins (tenant_id, upstream, tool, hash, approved_by, approved_at)"
                   " VALUES (?, ?, ?, ?, ?, ?)")

    def _schema_version(self) -> int:
        try:
            (version,) = self._conn().execute("PRAGMA user_version").fetchone()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"Cannot read the database {self.path}: {exc}.",
                                   hint="Check the file is an Aegress database and readable.") from exc
        return int(version)

    def migrate(self) -> list[int]:
        """Apply the missing steps in one BEGIN IMMEDIATE transaction (several processes at once: the
        second finds them applied), recording each in `PRAGMA user_version`."""
        conn = self._conn()
        if self._schema_version() >= len(MIGRATIONS):
            return []
        from sqlite_utils import Database

        db = Database(conn)
        applied: list[int] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"Cannot migrate the database {self.path}: {exc}.",
                                   hint="Check disk space, file permissions and locks.") from exc
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            for step in MIGRATIONS[version:]:
                step.sqlite(db)
                conn.execute(f"PRAGMA user_version={step.version}")
                applied.append(step.version)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return applied

    def schema_status(self) -> SchemaStatus:
        version = self._schema_version()
        return SchemaStatus("sqlite", str(self.path), version,
                            tuple((m.version, m.name, None) for m in MIGRATIONS[:version]))

    def close(self) -> None:
        for name in ("conn", "reader", "inline"):
            conn = getattr(self._local, name, None)
            if conn is not None:
                conn.close()
                setattr(self._local, name, None)

    def ping(self) -> None:
        self._run("SELECT 1").fetchone()

    # -- tokens ------------------------------------------------------------------------------
    def find_token_nowait(self, token_hash: str) -> TokenInfo | None:
        """On the event loop, every request: a read-only connection that never waits for a lock (WAL readers
        see the last commit without one); a lock or any other trouble says WouldBlock instead."""
        try:
            row = self._reader().execute(FIND_TOKEN, (token_hash,)).fetchone()
        except sqlite3.Error as exc:
            raise WouldBlock from exc
        return TokenInfo(*row) if row else None

    # -- transactions ------------------------------------------------------------------------------
    def _tx(self) -> sqlite3.Connection:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"The database is unavailable: {exc}.", hint="Check disk space and file "
                                   "permissions.") from exc
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT); inside `sealed()` (or another one) on
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
    def sealed(self) -> Iterator[list[Entry]]:
        """Run an operator change and seal it in ONE transaction.

            with store.sealed() as seal:
                info = store.revoke_token(token_id, now)     # any store writes, on this thread
                seal.append(entry)                            # the evidence entries that describe them

        The entries are chained and inserted after the change, before COMMIT: either both the change
        and its records are durable, or neither (an evidence failure rolls the change back)."""
        entries: list[Entry] = []
        with self.transaction() as conn:
            yield entries
            if entries:
                try:
                    extend_logs(_EvidenceTx(conn), entries, self.replica_id)
                except sqlite3.Error as exc:
                    raise StoreUnavailable(f"Could not seal the change: {exc}.",
                                           hint="Nothing was changed. Check disk space, file permissions and "
                                                "locks, then run the command again.") from exc

    # -- held calls and approvals ------------------------------------------------------------------
    def consume_approval(self, tenant_id: str, actor_id: str, upstream: str, tool: str, args_digest: str,
                         now: float) -> HeldCall | None:
        """Use an approval exactly once: the oldest approved, unused, unexpired matching hold, atomically
        (BEGIN IMMEDIATE + `used_at IS NULL`), so two calls or two gateway processes never share one."""
        conn = self._tx()
        try:
            row = conn.execute(
                f"SELECT {HELD_COLS} FROM held_calls WHERE tenant_id = ? AND actor_id = ? AND upstream = ?"
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
    def evidence_prefix(self, default: str) -> str:
        """The deployment's origin prefix: chosen once (first writer wins), then fixed."""
        self._run("INSERT OR IGNORE INTO meta (key, value) VALUES ('audit_origin_prefix', ?)", (default,))
        row = self._run("SELECT value FROM meta WHERE key = 'audit_origin_prefix'").fetchone()
        return str(row[0])

    def append_evidence(self, entries: Sequence[Entry], before_commit: BeforeCommit | None = None) -> list[Sealed]:
        """Seal and insert a batch in ONE transaction (one fsync): group commit, by the shared
        `extend_logs`; BEGIN IMMEDIATE holds every other writer (thread or process) off until COMMIT."""
        if not entries:
            return []
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _evidence_unavailable(exc) from exc
        return self._append(conn, entries, before_commit)

    def append_evidence_nowait(self, entries: Sequence[Entry],
                               before_commit: BeforeCommit | None = None) -> list[Sealed]:
        """`append_evidence` on the event loop (the evidence writer commits there when it is idle): a
        connection that never waits for another writer's lock; a lock, or a failure to begin, says WouldBlock
        and the records go to the writer thread, which waits and retries as it always does."""
        conn = self._inline()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise WouldBlock from exc
        sealed = self._append(conn, entries, before_commit)
        self._inline_commits += 1
        return sealed

    def _inline(self) -> sqlite3.Connection:
        """This thread's writing connection with no busy wait (for `append_evidence_nowait`). It never runs a
        WAL checkpoint: SQLite's automatic one (every 1,000 pages, in whichever commit crosses the mark) copies
        the WAL into the database and syncs it, a few milliseconds the event loop would wait; the writer's
        thread runs it instead (`wal_checkpoint_due`, `checkpoint_wal`)."""
        conn: sqlite3.Connection | None = getattr(self._local, "inline", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=True)
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
                conn.execute("PRAGMA wal_autocheckpoint=0")
            except sqlite3.Error as exc:
                raise WouldBlock from exc
            self._local.inline = conn
        return conn

    @property
    def wal_checkpoint_due(self) -> bool:
        """True once INLINE_COMMITS_PER_CHECKPOINT inline commits went by without a checkpoint."""
        return self._inline_commits >= INLINE_COMMITS_PER_CHECKPOINT

    def checkpoint_wal(self) -> None:
        """A PASSIVE WAL checkpoint on the calling thread's connection (the evidence writer's): it waits for
        no reader or writer, and copies the frames committed when it began. A failure is logged; the next
        inline commits ask again."""
        self._inline_commits = 0
        try:
            self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            self._inline_commits = INLINE_COMMITS_PER_CHECKPOINT
            log.warning("WAL checkpoint failed (tried again after the next inline commit): %s", exc)

    def _append(self, conn: sqlite3.Connection, entries: Sequence[Entry],
                before_commit: BeforeCommit | None) -> list[Sealed]:
        """Inside the open BEGIN IMMEDIATE: chain, insert, commit; roll back on any failure."""
        try:
            sealed = extend_logs(_EvidenceTx(conn), entries, self.replica_id)
            if before_commit is not None:
                before_commit(sealed)
            conn.execute("COMMIT")
            return sealed
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise _evidence_unavailable(exc) from exc
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def add_checkpoint(self, origin: str, size: int, root: bytes, note: str, now: str) -> None:
        try:
            self._run(
                "INSERT OR IGNORE INTO checkpoints (origin, size, root, note, signed_at) VALUES (?, ?, ?, ?, ?)",
                (origin, size, root, note, now),
            )
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"Could not store a checkpoint: {exc}.") from exc

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
