"""Postgres store: several gateway replicas (and CLI processes) on one database.

psycopg 3 with its connection pool (imported only when a `postgresql://` URL is used: CLI start-up
time). Connections are autocommit; `transaction()` opens one explicit transaction on a pooled
connection and binds it to the calling thread, so store calls made on that thread inside the block
(or inside `sealed()`) join it; nested blocks are savepoints.

Evidence: each touched log's write lock is a transaction-scoped advisory lock
(`pg_advisory_xact_lock(EVIDENCE_LOCK, <origin key>)`) taken in one global order (by key), so writers on
different replicas serialise per log, never deadlock, and read the head while holding it; `UNIQUE
(origin, seq)` is the backstop against a fork. Records are the exact hashed bytes (`bytea`). The group
commit (`append_evidence`) is ONE statement, `aegress_append_evidence` (migration 9): the batch is sealed
on the heads this replica last saw, and the function, holding the locks, writes it only if those are still
the stored heads, else returns them and the batch is sealed again on those. After APPEND_TRIES misses (other
replicas keep moving the heads) the calls run in a transaction: the first returns the heads under the locks,
which the transaction keeps, so the second cannot miss. Operator changes (`sealed()`) use the shared
`extend_logs` (gateway.store.base) in their own transaction. Every connection runs with
`synchronous_commit = on` (a commit is durable when it returns, whatever the server default) and a
`lock_timeout` of the store's busy timeout.

The statements both stores share live once in `gateway.store.sql` (`SQLStore`), in SQLite's dialect;
`postgres_sql` rewrites each once per process (`?` -> `%s`, byte-order collation). This module holds
the pool, transactions, advisory locks, migrations, error mapping and the statements that differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from gateway.errors import ConfigError, StoreUnavailable
from gateway.store.base import (
    BeforeCommit,
    HeldCall,
    WouldBlock,
    extend_logs,
)
from gateway.store.migrations import MIGRATION_LOCK, MIGRATIONS, SchemaStatus
from gateway.store.sql import (
    FIND_TOKEN,
    HELD_COLS,
    INSERT_CALL,
    INSERT_EVIDENCE,
    UPSERT_HEAD,
    SQLStore,
    postgres_sql,
    sealed_rows,
)
from gateway.types import TokenInfo

if TYPE_CHECKING:
    import psycopg

    from gateway.audit.log import Entry, Sealed
    from gateway.audit.records import ChainHead
    from gateway.store import DatabaseUrl

log = logging.getLogger("aegress.store")

EVIDENCE_LOCK = 0x4AE6
"""First key of the per-origin advisory locks (the two-int form: class, origin key)."""
POOL_SIZE_ENV = "AEGRESS_DATABASE_POOL_SIZE"
_HINT = "Check the database server is up and AEGRESS_DATABASE_URL (user, password, database name)."

# the evidence append's statements, rewritten once here rather than on every batch
_INSERT_EVIDENCE = postgres_sql(INSERT_EVIDENCE)
_UPSERT_HEAD = postgres_sql(UPSERT_HEAD)
_INSERT_CALL = postgres_sql(INSERT_CALL)
_APPEND = "SELECT * FROM aegress_append_evidence(%s::jsonb)"
_FIND_TOKEN = postgres_sql(FIND_TOKEN)
ASYNC_CONNECTIONS = 4
"""Connections `find_token_async` keeps for the event loop (lookups beyond that many at once wait for one)."""
APPEND_TRIES = 3
"""One-statement appends before the transaction: each after a miss seals on the heads the miss returned, and
holds the locks only while the server runs it (a transaction holds them across a round trip to the client)."""
_HEADS_KEPT = 10_000
"""Heads remembered for the next append (one per tenant log): beyond that the memory starts again (only a hint)."""


def origin_lock_key(origin: str) -> int:
    """A stable signed 32-bit key per origin (two origins sharing one only serialise more)."""
    return int.from_bytes(hashlib.sha256(origin.encode()).digest()[:4], "big", signed=True)




class _EvidenceTx:
    """`EvidenceTx` on a connection inside an open transaction: one advisory lock per origin."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def lock_heads(self, origins: Sequence[str]) -> dict[str, ChainHead]:
        from gateway.audit.records import ChainHead

        keys = sorted({origin_lock_key(o) for o in origins})
        # one round trip; the target list is evaluated left to right, so locks are taken in key order
        calls = ", ".join(f"pg_advisory_xact_lock({EVIDENCE_LOCK}, %s)" for _ in keys)
        self.conn.execute(f"SELECT {calls}", keys)
        rows = self.conn.execute("SELECT origin, size, last_hash FROM evidence_heads WHERE origin = ANY(%s)",
                                 (list(origins),)).fetchall()
        return {str(o): ChainHead(str(o), int(s), bytes(h)) for o, s, h in rows}

    def insert_sealed(self, sealed: Sequence[Sealed], heads: Mapping[str, ChainHead], replica: str) -> None:
        records, head_rows, calls = sealed_rows(sealed, heads, replica)
        with self.conn.cursor() as cur:
            cur.executemany(_INSERT_EVIDENCE, records)
            cur.executemany(_UPSERT_HEAD, head_rows)
            if calls:
                cur.executemany(_INSERT_CALL, calls)


def append_batch(sealed: Sequence[Sealed], expected: Mapping[str, ChainHead], new_heads: Mapping[str, ChainHead],
                 replica: str) -> str:
    """Pure: the JSON `aegress_append_evidence` takes: lock keys in order, the heads the batch was sealed on,
    the rows (bytes as hex), the new heads and the calls copies."""
    records, head_rows, calls = sealed_rows(sealed, new_heads, replica)
    return orjson.dumps({
        "locks": sorted({origin_lock_key(o) for o in expected}),
        "heads": [[o, h.size, None if h.last_hash is None else h.last_hash.hex()] for o, h in expected.items()],
        "records": [[*r[:10], r[10].hex(), r[11].hex()] for r in records],  # type: ignore[attr-defined]
        "new_heads": [[o, size, h.hex()] for o, size, h in head_rows],  # type: ignore[attr-defined]
        "calls": calls,
        "replica": replica,
    }).decode()


class PostgresStore(SQLStore):
    inline_safe = False
    """Every call is a network round trip: the request path uses worker threads (`find_token_nowait`
    keeps the interface's default, WouldBlock, so token lookups go to a thread too)."""
    exclusive = False
    """Replicas share the database: start-up recovery closes only this replica's open intents."""

    def __init__(self, url: DatabaseUrl, *, busy_timeout_s: float = 5.0, replica_id: str = "",
                 migrate: bool = True, pool_size: int | None = None) -> None:
        try:
            import psycopg
            from psycopg_pool import ConnectionPool
        except ImportError as exc:
            raise ConfigError("The Postgres store needs psycopg and psycopg-pool, which are not installed.",
                              hint="Install the extra: pip install 'aegress[postgres]'.") from exc
        self._url = url
        self.location = url.masked
        self._password = urlsplit(str(url)).password or ""
        self.busy_timeout_s = busy_timeout_s
        self.replica_id = replica_id
        self._local = threading.local()
        self._heads: dict[str, ChainHead] = {}  # the heads of the last appends: a hint, checked under the locks
        self._heads_lock = threading.Lock()
        self._connect_kwargs: dict[str, Any] = {}
        self._aidle: list[psycopg.AsyncConnection[Any]] = []  # find_token_async's idle connections
        self._aslots: asyncio.Semaphore | None = None
        self._aloop: asyncio.AbstractEventLoop | None = None
        size = pool_size or _pool_size()
        lock_ms = max(1, int(busy_timeout_s * 1000))

        def configure(conn: psycopg.Connection[Any]) -> None:
            conn.execute("SET synchronous_commit TO on")
            conn.execute(f"SET lock_timeout TO {lock_ms}")
            conn.execute("SET idle_in_transaction_session_timeout TO 60000")

        connect = {"autocommit": True, "connect_timeout": 10, "application_name": f"aegress {replica_id}".strip()}
        self._connect_kwargs = connect
        self._lock_ms = lock_ms
        try:  # one plain connection first: a wrong URL fails at once with the server's reason
            psycopg.connect(str(url), **connect).close()  # type: ignore[arg-type]
        except psycopg.Error as exc:
            raise StoreUnavailable(f"Cannot connect to the database {self.location}{self._why(exc)}.",
                                   hint=_HINT) from exc
        self._pool = ConnectionPool(str(url), min_size=1, max_size=size, open=False, configure=configure,
                                    kwargs=connect, timeout=max(10.0, busy_timeout_s), name="aegress",
                                    reconnect_timeout=60)
        try:
            self._pool.open(wait=True, timeout=15)
        except Exception as exc:  # PoolTimeout: the first pooled connection never came up
            reason = self._why(exc)
            self._pool.close(timeout=1)
            raise StoreUnavailable(f"Cannot connect to the database {self.location}{reason}.", hint=_HINT) from exc
        if migrate:
            self.migrate()

    def __repr__(self) -> str:
        return f"PostgresStore({self.location!r})"

    # -- connections ---------------------------------------------------------------------------
    def _why(self, exc: BaseException) -> str:
        """A one-line reason from a driver error, the password (if any) masked."""
        text = str(exc).strip().splitlines()
        reason = text[-1].strip() if text else type(exc).__name__
        if self._password:
            reason = reason.replace(self._password, "***")
        return f": {reason}" if reason else ""

    @contextlib.contextmanager
    def _guard(self, what: str = "The database is unavailable") -> Iterator[None]:
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            yield
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as exc:
            raise StoreUnavailable(f"{what}{self._why(exc)}.", hint=_HINT) from exc

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """This thread's open transaction, else a pooled autocommit connection for one statement."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            yield conn
            return
        with self._guard(), self._pool.connection() as conn:
            yield conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        conn = getattr(self._local, "conn", None)
        if conn is not None:  # nested: a savepoint of the open transaction
            with conn.transaction():
                yield conn
            return
        with self._guard(), self._pool.connection() as conn:
            self._local.conn = conn
            try:
                with conn.transaction():
                    yield conn
            finally:
                self._local.conn = None

    def _read(self, sql: str, params: Sequence[object], *, one: bool) -> Any:
        """A read; outside a transaction it is tried once more on a fresh connection when the pooled one
        turns out dead (the server restarted, or an operator ended the backend): nothing was changed."""
        sql = postgres_sql(sql)
        for attempt in (1, 2):
            try:
                with self._connection() as conn:
                    cur = conn.execute(sql, params)
                    return cur.fetchone() if one else cur.fetchall()
            except StoreUnavailable as exc:
                if attempt == 2 or getattr(self._local, "conn", None) is not None or exc.__cause__ is None:
                    raise
                log.info("retrying a read on a fresh connection: %s", type(exc.__cause__).__name__)
        raise AssertionError("unreachable")

    def _all(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return list(self._read(sql, params, one=False))

    def _one(self, sql: str, params: Sequence[object] = ()) -> tuple[Any, ...] | None:
        row = self._read(sql, params, one=True)
        return None if row is None else tuple(row)

    def _exec(self, sql: str, params: Sequence[object] = ()) -> int:
        with self._connection() as conn:
            return conn.execute(postgres_sql(sql), params).rowcount

    # -- the shared SQL's hooks (gateway.store.sql) ----------------------------------------------
    _NOCASE_ID = "lower(id) = lower(?)"  # ids are ASCII (gateway.naming)
    _CONTAINS = "position(convert_to(?, 'UTF8') IN data) > 0"
    _FOR_UPDATE = " FOR UPDATE"  # the row's lock serialises a read-then-write across processes

    @staticmethod
    def _evidence_tx(conn: psycopg.Connection[Any]) -> _EvidenceTx:
        return _EvidenceTx(conn)

    @staticmethod
    def _bump(conn: psycopg.Connection[Any], key: str) -> None:
        conn.execute("UPDATE meta SET value = (value::bigint + 1)::text WHERE key = %s", (key,))

    @staticmethod
    def _violation(exc: BaseException) -> str | None:
        import psycopg

        if isinstance(exc, psycopg.errors.UniqueViolation):
            return "unique"
        if isinstance(exc, psycopg.errors.ForeignKeyViolation):
            return "foreign-key"
        return None

    @staticmethod
    def _x(conn: psycopg.Connection[Any], sql: str, params: Sequence[object] = ()) -> psycopg.Cursor[Any]:
        return conn.execute(postgres_sql(sql), params)

    @staticmethod
    def _many(conn: psycopg.Connection[Any], sql: str, rows: Sequence[Sequence[object]]) -> None:
        with conn.cursor() as cur:
            cur.executemany(postgres_sql(sql), rows)

    _UPSERT_DEFINITION = ("INSERT INTO tool_definitions (tenant_id, upstream, name, definition, hash, seen_at)"
                          " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (tenant_id, upstream, name) DO UPDATE SET"
                          " definition = excluded.definition, hash = excluded.hash, seen_at = excluded.seen_at")
    _INSERT_PIN_CHANGES = ("INSERT INTO pin_changes (tenant_id, upstream, tool, old_hash, new_hash, seen_at)"
                           " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING")
    _INSERT_BASELINE = ("INSERT INTO pin_baselines (tenant_id, upstream, at) VALUES (%s, %s, %s)"
                        " ON CONFLICT DO NOTHING")
    _UPSERT_PIN = ("INSERT INTO pins (tenant_id, upstream, tool, hash, approved_by, approved_at)"
                   " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (tenant_id, upstream, tool) DO UPDATE SET"
                   " hash = excluded.hash, approved_by = excluded.approved_by, approved_at = excluded.approved_at")

    def close(self) -> None:
        self._pool.close(timeout=5)
        idle, self._aidle = self._aidle, []
        for conn in idle:  # no round trip: the server ends the backend when the socket closes
            conn.pgconn.finish()

    def ping(self) -> None:
        self._one("SELECT 1")

    # -- schema ----------------------------------------------------------------------------------
    def _applied(self, conn: psycopg.Connection[Any]) -> list[tuple[int, str, str | None]]:
        (table,) = conn.execute("SELECT to_regclass('aegress_migrations') IS NOT NULL").fetchone() or (False,)
        if not table:
            return []
        rows = conn.execute("SELECT version, name, applied_at FROM aegress_migrations ORDER BY version").fetchall()
        return [(int(v), str(n), a.isoformat() if a is not None else None) for v, n, a in rows]

    def schema_status(self) -> SchemaStatus:
        with self._connection() as conn:
            applied = self._applied(conn)
        return SchemaStatus("postgres", self.location, max((v for v, _, _ in applied), default=0), tuple(applied))

    def migrate(self) -> list[int]:
        """Apply the missing steps in ONE transaction holding the migration advisory lock: replicas that
        start at once wait for each other, and the later ones find the steps applied."""
        with self._connection() as conn:
            if len(self._applied(conn)) >= len(MIGRATIONS):
                return []
        done: list[int] = []
        with self._guard("Could not migrate the database"), self.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS aegress_migrations (version integer PRIMARY KEY,"
                         " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
            version = max((v for v, _, _ in self._applied(conn)), default=0)
            for step in MIGRATIONS[version:]:
                for statement in step.postgres:
                    conn.execute(statement)
                conn.execute("INSERT INTO aegress_migrations (version, name) VALUES (%s, %s)",
                             (step.version, step.name))
                done.append(step.version)
        if done:
            log.info("database migrated to version %d", done[-1])
        return done

    inline_commits = False
    """Every statement is a network round trip: evidence commits stay on the writer's thread."""

    def append_evidence_nowait(self, entries: Sequence[Entry],
                               before_commit: BeforeCommit | None = None) -> list[Sealed]:
        raise WouldBlock

    # -- tokens ------------------------------------------------------------------------------
    def find_token_nowait(self, token_hash: str) -> TokenInfo | None:
        """The interface's default: a lookup is a network round trip, so the caller uses a thread."""
        raise WouldBlock

    async def find_token_async(self, token_hash: str) -> TokenInfo | None:
        """`find_token` as one awaited query on the caller's event loop: no worker thread to hand it to and take
        it back from (on a busy replica that hand-over costs more CPU than the query). At most ASYNC_CONNECTIONS
        at once; bounded like a pooled lookup (the pool's timeout), so a stalled database refuses the request."""
        import psycopg

        loop = asyncio.get_running_loop()
        if self._aslots is None or self._aloop is not loop:  # connections and slots belong to one event loop
            for conn in self._aidle:
                conn.pgconn.finish()
            self._aidle, self._aslots, self._aloop = [], asyncio.Semaphore(ASYNC_CONNECTIONS), loop
        try:
            async with asyncio.timeout(self._pool.timeout), self._aslots:
                conn = await self._aconnection()
                try:
                    cur = await conn.execute(_FIND_TOKEN, (token_hash,), prepare=True)
                    row = await cur.fetchone()
                except BaseException:
                    conn.pgconn.finish()  # in an unknown state (cancelled mid-query, or broken): never reused
                    raise
                self._aidle.append(conn)
        except (psycopg.OperationalError, psycopg.InterfaceError, TimeoutError) as exc:
            raise StoreUnavailable(f"The database is unavailable{self._why(exc)}.", hint=_HINT) from exc
        return TokenInfo(*row) if row else None

    async def _aconnection(self) -> psycopg.AsyncConnection[Any]:
        """An idle async connection, else a new one (the caller holds one of the ASYNC_CONNECTIONS slots)."""
        import psycopg

        while self._aidle:
            conn = self._aidle.pop()
            if not conn.closed and conn.pgconn.status == psycopg.pq.ConnStatus.OK:
                return conn
        conn = await psycopg.AsyncConnection.connect(str(self._url), **self._connect_kwargs)
        await conn.execute(f"SET lock_timeout TO {self._lock_ms}")
        return conn

    # -- sealed evidence -----------------------------------------------------------------------
    @contextlib.contextmanager
    def sealed(self) -> Iterator[list[Entry]]:
        """An operator change and its evidence records in ONE transaction (see `Store.sealed`)."""
        import psycopg

        entries: list[Entry] = []
        with self._guard("Could not seal the change"), self.transaction() as conn:
            yield entries
            if entries:
                try:
                    extend_logs(_EvidenceTx(conn), entries, self.replica_id)
                except psycopg.Error as exc:
                    raise StoreUnavailable(f"Could not seal the change{self._why(exc)}.",
                                           hint="Nothing was changed. Check the database, then run the command "
                                                "again.") from exc

    def evidence_prefix(self, default: str) -> str:
        """The deployment's origin prefix: chosen once (first writer wins, on any replica), then fixed."""
        self._exec("INSERT INTO meta (key, value) VALUES ('audit_origin_prefix', %s) ON CONFLICT (key) DO NOTHING",
                   (default,))
        row = self._one("SELECT value FROM meta WHERE key = 'audit_origin_prefix'")
        assert row is not None
        return str(row[0])

    def append_evidence(self, entries: Sequence[Entry], before_commit: BeforeCommit | None = None) -> list[Sealed]:
        """The group commit in one statement (see the module docstring): durable when it returns."""
        import psycopg

        if not entries:
            return []
        if getattr(self._local, "conn", None) is not None:  # inside the caller's transaction: join it
            with self._guard("Could not commit evidence"), self.transaction() as conn:
                sealed = extend_logs(_EvidenceTx(conn), entries, self.replica_id)
                if before_commit is not None:
                    before_commit(sealed)
            return sealed
        origins = sorted({entry.origin for entry in entries})
        try:
            with self._guard("Could not commit evidence"), self._pool.connection() as conn:
                heads: dict[str, ChainHead] | None = None  # the first try seals on the heads last seen
                for _ in range(APPEND_TRIES):
                    sealed, heads = self._try_append(conn, entries, origins, before_commit, heads)
                    if sealed is not None:
                        return sealed
                with conn.transaction():  # the locks stay held between the two calls: the second cannot miss
                    sealed, heads = self._try_append(conn, entries, origins, before_commit, heads)
                    if sealed is None:
                        sealed, heads = self._try_append(conn, entries, origins, before_commit, heads)
                    if sealed is None:  # only a writer ignoring the locks can get here
                        raise StoreUnavailable("Could not commit evidence: a log's head moved while its lock was held.",
                                               hint=_HINT)
            return sealed
        except psycopg.Error as exc:  # e.g. a (origin, seq) clash: nothing of the batch was stored
            raise StoreUnavailable(f"Could not commit evidence{self._why(exc)}.", hint=_HINT) from exc

    def _try_append(self, conn: psycopg.Connection[Any], entries: Sequence[Entry], origins: Sequence[str],
                    before_commit: BeforeCommit | None,
                    heads: Mapping[str, ChainHead] | None = None) -> tuple[list[Sealed] | None, dict[str, ChainHead]]:
        """Seal on `heads` (default: the last seen) and call `aegress_append_evidence` once: (the sealed records,
        the new heads) when it appended, else (None, the stored heads)."""
        from gateway.audit.log import seal
        from gateway.audit.records import ChainHead

        if heads is None:
            with self._heads_lock:
                heads = {o: self._heads[o] for o in origins if o in self._heads}
        expected = {o: heads.get(o) or ChainHead.genesis(o) for o in origins}
        sealed, new_heads = seal(entries, expected)
        if before_commit is not None:
            before_commit(sealed)
        rows = conn.execute(_APPEND, (append_batch(sealed, expected, new_heads, self.replica_id),),
                            prepare=True).fetchall()
        appended = bool(rows and rows[0][0])
        found = new_heads if appended else {str(o): ChainHead(str(o), int(n), bytes(h)) for _, o, n, h in rows if n}
        with self._heads_lock:
            if len(self._heads) >= _HEADS_KEPT:
                self._heads.clear()
            self._heads.update((o, found[o]) for o in origins if o in found)
        return (sealed if appended else None), found

    def add_checkpoint(self, origin: str, size: int, root: bytes, note: str, now: str) -> None:
        with self._guard("Could not store a checkpoint"):
            self._exec("INSERT INTO checkpoints (origin, size, root, note, signed_at) VALUES (%s, %s, %s, %s, %s)"
                       " ON CONFLICT (origin, size) DO NOTHING", (origin, size, root, note, now))

    def probe_write(self, now: str) -> None:
        """A real, durable write (health check after a failure): proves the store takes commits again."""
        with self._guard("The database does not take writes"), self.transaction() as conn:
            conn.execute("INSERT INTO meta (key, value) VALUES ('last_write_probe', %s) ON CONFLICT (key)"
                         " DO UPDATE SET value = excluded.value", (now,))

    # -- held calls and approvals ------------------------------------------------------------------
    def consume_approval(self, tenant_id: str, actor_id: str, upstream: str, tool: str, args_digest: str,
                         now: float) -> HeldCall | None:
        """Use an approval exactly once, across replicas: the row is locked (FOR UPDATE SKIP LOCKED, so a
        concurrent consumer takes the next matching approval or none) and marked used in one transaction."""
        with self.transaction() as conn:
            row = conn.execute(
                f"SELECT {HELD_COLS} FROM held_calls WHERE tenant_id = %s AND actor_id = %s AND upstream = %s"
                " AND tool = %s AND args_digest = %s AND status = 'approved' AND used_at IS NULL AND expires_at > %s"
                " ORDER BY decided_at LIMIT 1 FOR UPDATE SKIP LOCKED",
                (tenant_id, actor_id, upstream, tool, args_digest, now),
            ).fetchone()
            if row is None:
                return None
            cur = conn.execute("UPDATE held_calls SET used_at = %s WHERE id = %s AND used_at IS NULL", (now, row[0]))
            return HeldCall(*row[:-1], used_at=now) if cur.rowcount == 1 else None


def _pool_size() -> int:
    raw = os.environ.get(POOL_SIZE_ENV, "")
    if not raw:
        return 8
    try:
        size = int(raw)
    except ValueError:
        size = 0
    if not 1 <= size <= 1000:
        raise ConfigError(f"{POOL_SIZE_ENV} must be a whole number from 1 to 1000.", hint="The default is 8.")
    return size
