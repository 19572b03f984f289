"""Ordered schema migrations, one list shared by every store; each step has its DDL per dialect.

A database records how far it got: SQLite in `PRAGMA user_version` (as every release before this
one did, so existing files upgrade in place), Postgres in the `aegress_migrations` table (version,
name, applied_at). A store applies the missing steps in ONE transaction that also holds the
database's migration lock, so several processes starting at once apply each step once:
SQLite `BEGIN IMMEDIATE` (one writer at a time), Postgres `pg_advisory_xact_lock(MIGRATION_LOCK)`.

Never edit a released step: add the next one. Both dialects' columns must keep the same names, and
the rules that keep the evidence log from forking are in the schema of both (`UNIQUE (origin, seq)`).
SQLite steps 1-4 use sqlite-utils, imported only when a step runs, so opening a current store stays fast.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("aegress.store")

MIGRATION_LOCK = 0x4AE6_0001
"""Postgres advisory lock key (one bigint) held while migrations run; other keys: `postgres.EVIDENCE_LOCK`."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: `sqlite` runs on a sqlite3 connection (or a sqlite-utils Database for the first
    four), `postgres` is a list of statements run in order."""

    version: int
    name: str
    sqlite: Callable[[object], None]
    postgres: tuple[str, ...]


def _sqlite_1(db: object) -> None:
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


def _sqlite_2(db: object) -> None:
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


def _sqlite_3(db: object) -> None:
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


def _sqlite_4(db: object) -> None:
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


def _sqlite_5(db: object) -> None:
    """Replica ids: each intent records which gateway process wrote it, so start-up recovery of open
    intents touches only its own (several replicas share one Postgres database)."""
    execute = db.execute  # type: ignore[attr-defined]
    # a database whose user_version was set back by hand may have the column already
    if "replica" not in {row[1] for row in execute("PRAGMA table_info(evidence)").fetchall()}:
        execute("ALTER TABLE evidence ADD COLUMN replica TEXT NOT NULL DEFAULT ''")
    execute("CREATE INDEX IF NOT EXISTS evidence_open_intents ON evidence (replica, origin, seq)"
            " WHERE kind = 'intent'")


def _sqlite_6(db: object) -> None:
    """Ended sessions (issue 11): a session id carries its own state, so any replica can serve it; ending one
    (DELETE, or reclaimed at a cap) is recorded here by the id's sha256, for every replica to refuse it.
    Rows older than the longest session lifetime are pruned."""
    execute = db.execute  # type: ignore[attr-defined]
    execute("CREATE TABLE IF NOT EXISTS ended_sessions (digest TEXT PRIMARY KEY, ended_at REAL NOT NULL)")
    execute("CREATE INDEX IF NOT EXISTS ended_sessions_at ON ended_sessions (ended_at)")


def _sqlite_7(db: object) -> None:
    """OAuth mode (issue 13): trusted issuers per tenant, the embedded authorization server's clients,
    grants, single-use codes and refresh tokens, actor passwords and one-time login links.

    Codes, refresh tokens and login links are stored as keyed hashes; single use is one conditional
    UPDATE (`... WHERE used_at IS NULL`), atomic across processes and replicas."""
    execute = db.execute  # type: ignore[attr-defined]
    for statement in _OAUTH_TABLES:
        execute(_oauth_ddl(statement, "TEXT", "REAL"))
    execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('oauth_version', '0')")


_OAUTH_TABLES = (
    "CREATE TABLE oauth_issuers (tenant_id <text> NOT NULL, issuer <text> NOT NULL, audience <text> NOT NULL,"
    " tenant_claim <text> NOT NULL, tenant_value <text> NOT NULL, actor_claim <text> NOT NULL, scopes <text> NOT NULL,"
    " jwks_uri <text> NOT NULL, require_known_actor integer NOT NULL, created_at <text> NOT NULL,"
    " PRIMARY KEY (tenant_id, issuer))",
    "CREATE INDEX oauth_issuers_issuer ON oauth_issuers (issuer)",
    "CREATE TABLE oauth_clients (id <text> PRIMARY KEY, name <text> NOT NULL, redirect_uris <text> NOT NULL,"
    " auth_method <text> NOT NULL, secret_hash <text> NOT NULL, kind <text> NOT NULL, metadata <text> NOT NULL,"
    " created_at <text> NOT NULL, revoked_at <text>)",
    "CREATE TABLE oauth_grants (id <text> PRIMARY KEY, tenant_id <text> NOT NULL, actor_id <text> NOT NULL,"
    " client_id <text> NOT NULL, resource <text> NOT NULL, scope <text> NOT NULL, created_at <text> NOT NULL,"
    " revoked_at <text>, revoked_reason <text>)",
    "CREATE INDEX oauth_grants_tenant ON oauth_grants (tenant_id, actor_id)",
    "CREATE INDEX oauth_grants_client ON oauth_grants (client_id)",
    "CREATE TABLE oauth_codes (hash <text> PRIMARY KEY, grant_id <text> NOT NULL, client_id <text> NOT NULL,"
    " redirect_uri <text> NOT NULL, code_challenge <text> NOT NULL, resource <text> NOT NULL, scope <text> NOT NULL,"
    " expires_at <real> NOT NULL, used_at <real>)",
    "CREATE TABLE oauth_refresh_tokens (hash <text> PRIMARY KEY, grant_id <text> NOT NULL, client_id <text> NOT NULL,"
    " created_at <real> NOT NULL, expires_at <real> NOT NULL, used_at <real>)",
    "CREATE INDEX oauth_refresh_tokens_grant ON oauth_refresh_tokens (grant_id)",
    "CREATE TABLE actor_passwords (tenant_id <text> NOT NULL, actor_id <text> NOT NULL, hash <text> NOT NULL,"
    " updated_at <text> NOT NULL, PRIMARY KEY (tenant_id, actor_id))",
    "CREATE TABLE oauth_login_links (hash <text> PRIMARY KEY, tenant_id <text> NOT NULL, actor_id <text> NOT NULL,"
    " created_at <real> NOT NULL, expires_at <real> NOT NULL, used_at <real>)",
)
"""The OAuth tables of step 7, one text for both dialects (`<text>`, `<real>`: each dialect's type)."""


def _oauth_ddl(statement: str, text: str, real: str) -> str:
    """A step 7 statement in one dialect, with IF NOT EXISTS: a SQLite database whose user_version was set
    back by hand may have the tables already."""
    statement = statement.replace("CREATE TABLE ", "CREATE TABLE IF NOT EXISTS ", 1)
    statement = statement.replace("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1)
    return statement.replace("<text>", text).replace("<real>", real)


def _sqlite_8(db: object) -> None:
    """The operator view (issue 14): operator credentials for the console, and an index for "recent calls"."""
    execute = db.execute  # type: ignore[attr-defined]
    for statement in _OPERATOR_8:
        execute(statement)


_OPERATOR_8 = (
    # the console's operator credentials: never the token, only its keyed hash (like `tokens`)
    # IF NOT EXISTS: a SQLite file whose user_version was set back by hand may hold them already (as in step 5)
    "CREATE TABLE IF NOT EXISTS operator_tokens (id text PRIMARY KEY, hash text NOT NULL,"
    " label text NOT NULL DEFAULT '', created_at text NOT NULL, created_by text NOT NULL DEFAULT '', revoked_at text)",
    "CREATE UNIQUE INDEX IF NOT EXISTS operator_tokens_hash ON operator_tokens (hash)",
    # `aegress status`: calls of the last minutes per upstream (health) without scanning every call
    "CREATE INDEX IF NOT EXISTS calls_started_at ON calls (started_at)",
)


_PG_1 = (
    "CREATE TABLE tenants (id text PRIMARY KEY, created_at text NOT NULL)",
    "CREATE TABLE actors (tenant_id text NOT NULL REFERENCES tenants (id), id text NOT NULL,"
    " created_at text NOT NULL, PRIMARY KEY (tenant_id, id))",
    "CREATE TABLE tokens (id text PRIMARY KEY, tenant_id text NOT NULL, actor_id text NOT NULL,"
    " hash text NOT NULL, label text, created_at text NOT NULL, revoked_at text)",
    "CREATE UNIQUE INDEX idx_tokens_hash ON tokens (hash)",
    "CREATE INDEX idx_tokens_tenant_id_actor_id ON tokens (tenant_id, actor_id)",
    "CREATE TABLE upstreams (tenant_id text NOT NULL REFERENCES tenants (id), name text NOT NULL,"
    " transport text, config text, prefix integer, allow_private integer, created_at text, tools text,"
    " PRIMARY KEY (tenant_id, name))",
    "CREATE TABLE calls (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, tenant_id text, actor_id text,"
    " token_id text, session_id text, client_name text, method text, target text, upstream text, verdict text,"
    " rule_id text, outcome text, error_code integer, started_at text, duration_ms double precision)",
    "CREATE INDEX idx_calls_tenant_id_id ON calls (tenant_id, id)",
    "CREATE TABLE meta (key text PRIMARY KEY, value text)",
    "INSERT INTO meta (key, value) VALUES ('upstreams_version', '0')",
)

_PG_2 = (
    "CREATE TABLE policies (tenant_id text NOT NULL, version integer NOT NULL, text text, filename text,"
    " digest text, applied_at text, applied_by text, PRIMARY KEY (tenant_id, version))",
    "CREATE TABLE tool_definitions (tenant_id text NOT NULL, upstream text NOT NULL, name text NOT NULL,"
    " definition text, hash text, seen_at text, PRIMARY KEY (tenant_id, upstream, name))",
    "CREATE TABLE pins (tenant_id text NOT NULL, upstream text NOT NULL, tool text NOT NULL, hash text,"
    " approved_by text, approved_at text, PRIMARY KEY (tenant_id, upstream, tool))",
    "CREATE TABLE pin_baselines (tenant_id text NOT NULL, upstream text NOT NULL, at text,"
    " PRIMARY KEY (tenant_id, upstream))",
    "CREATE TABLE pin_changes (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, tenant_id text,"
    " upstream text, tool text, old_hash text, new_hash text, seen_at text, resolved_at text, resolved_by text)",
    "CREATE UNIQUE INDEX idx_pin_changes_once ON pin_changes (tenant_id, upstream, tool, old_hash, new_hash)",
    "CREATE TABLE held_calls (id text PRIMARY KEY, tenant_id text, actor_id text, upstream text, tool text,"
    " exposed text, args_digest text, arguments text, rule_id text, reason text, policy_version integer,"
    " mode text, status text, created_at double precision, decided_by text, decided_at double precision,"
    " decision_reason text, expires_at double precision, used_at double precision)",
    "CREATE INDEX idx_held_calls_tenant_id_status ON held_calls (tenant_id, status)",
    "CREATE INDEX idx_held_calls_match ON held_calls (tenant_id, actor_id, upstream, tool, args_digest)",
    "ALTER TABLE calls ADD COLUMN policy_version integer",
    "ALTER TABLE calls ADD COLUMN audit_id text",
    "INSERT INTO meta (key, value) VALUES ('policies_version', '0')",
    # as in SQLite: deleting a tenant removes its policy state, so a tenant created again under the
    # same id never inherits it
    """CREATE FUNCTION aegress_tenant_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         DELETE FROM policies WHERE tenant_id = OLD.id;
         DELETE FROM tool_definitions WHERE tenant_id = OLD.id;
         DELETE FROM pins WHERE tenant_id = OLD.id;
         DELETE FROM pin_baselines WHERE tenant_id = OLD.id;
         DELETE FROM pin_changes WHERE tenant_id = OLD.id;
         DELETE FROM held_calls WHERE tenant_id = OLD.id;
         UPDATE meta SET value = (value::bigint + 1)::text WHERE key = 'policies_version';
         RETURN OLD;
       END $$""",
    "CREATE TRIGGER tenants_delete_policy AFTER DELETE ON tenants FOR EACH ROW"
    " EXECUTE FUNCTION aegress_tenant_deleted()",
)

_PG_3 = (
    # `data` holds the exact canonical bytes that were hashed (bytea, never rebuilt from jsonb)
    "CREATE TABLE evidence (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, origin text NOT NULL,"
    " seq bigint NOT NULL, kind text NOT NULL, time text NOT NULL, tenant text NOT NULL, actor text NOT NULL,"
    " tool text NOT NULL, verdict text NOT NULL, status text NOT NULL, intent_seq bigint, leaf_hash bytea NOT NULL,"
    " data bytea NOT NULL)",
    "CREATE UNIQUE INDEX evidence_origin_seq ON evidence (origin, seq)",
    "CREATE INDEX evidence_answers ON evidence (origin, intent_seq) WHERE intent_seq IS NOT NULL",
    "CREATE INDEX evidence_tenant ON evidence (tenant, id)",
    "CREATE INDEX evidence_time ON evidence (time)",
    "CREATE TABLE evidence_heads (origin text PRIMARY KEY, size bigint NOT NULL, last_hash bytea NOT NULL)",
    "CREATE TABLE checkpoints (origin text NOT NULL, size bigint NOT NULL, root bytea NOT NULL, note text NOT NULL,"
    " signed_at text NOT NULL, PRIMARY KEY (origin, size))",
)

_PG_4 = (
    # ids unique ignoring ASCII case, as SQLite's COLLATE NOCASE indexes (ids are ASCII: gateway.naming)
    "CREATE UNIQUE INDEX tenants_id_nocase ON tenants (lower(id))",
    "CREATE UNIQUE INDEX actors_tenant_id_nocase ON actors (tenant_id, lower(id))",
)

_PG_5 = (
    "ALTER TABLE evidence ADD COLUMN replica text NOT NULL DEFAULT ''",
    "CREATE INDEX evidence_open_intents ON evidence (replica, origin, seq) WHERE kind = 'intent'",
)

_PG_6 = (
    "CREATE TABLE ended_sessions (digest text PRIMARY KEY, ended_at double precision NOT NULL)",
    "CREATE INDEX ended_sessions_at ON ended_sessions (ended_at)",
)

_PG_7 = (
    *(_oauth_ddl(statement, "text", "double precision") for statement in _OAUTH_TABLES),
    "INSERT INTO meta (key, value) VALUES ('oauth_version', '0') ON CONFLICT (key) DO NOTHING",
)

def _sqlite_9(db: object) -> None:
    """Nothing: SQLite appends in process (one writer holds the database's lock)."""


_PG_9 = (
    # One evidence append in ONE statement (gateway.store.postgres `append_evidence`): the logs' advisory locks
    # (`postgres.EVIDENCE_LOCK` = 19174, the keys in the order given), then the heads the batch was sealed on
    # are compared with the stored ones: equal, the rows, the new heads and the calls copies are inserted;
    # else nothing is written and the current heads are returned, so the caller seals again. The function
    # is volatile: under READ COMMITTED each statement in it reads a snapshot taken after the locks are held.
    # Bytes travel as hex in the JSON batch: `decode` gives back exactly the hashed bytes.
    """CREATE FUNCTION aegress_append_evidence(batch jsonb)
       RETURNS TABLE (appended boolean, head_origin text, head_size bigint, head_hash bytea)
       LANGUAGE plpgsql VOLATILE AS $$
       DECLARE
         k integer;
       BEGIN
         FOR k IN SELECT x::integer FROM jsonb_array_elements_text(batch->'locks') WITH ORDINALITY AS t(x, n)
                  ORDER BY n LOOP
           PERFORM pg_advisory_xact_lock(19174, k);
         END LOOP;
         IF EXISTS (SELECT 1 FROM jsonb_array_elements(batch->'heads') AS t(h)
                    LEFT JOIN evidence_heads AS cur ON cur.origin = t.h->>0
                    WHERE coalesce(cur.size, 0) <> (t.h->>1)::bigint
                       OR cur.last_hash IS DISTINCT FROM decode(t.h->>2, 'hex')) THEN
           RETURN QUERY SELECT false, t.h->>0, coalesce(cur.size, 0), cur.last_hash
                        FROM jsonb_array_elements(batch->'heads') AS t(h)
                        LEFT JOIN evidence_heads AS cur ON cur.origin = t.h->>0;
           RETURN;
         END IF;
         INSERT INTO evidence (origin, seq, kind, time, tenant, actor, tool, verdict, status, intent_seq,
                               leaf_hash, data, replica)
           SELECT r->>0, (r->>1)::bigint, r->>2, r->>3, r->>4, r->>5, r->>6, r->>7, r->>8, (r->>9)::bigint,
                  decode(r->>10, 'hex'), decode(r->>11, 'hex'), batch->>'replica'
           FROM jsonb_array_elements(batch->'records') WITH ORDINALITY AS t(r, n) ORDER BY n;
         INSERT INTO evidence_heads (origin, size, last_hash)
           SELECT h->>0, (h->>1)::bigint, decode(h->>2, 'hex') FROM jsonb_array_elements(batch->'new_heads') AS t(h)
           ON CONFLICT (origin) DO UPDATE SET size = excluded.size, last_hash = excluded.last_hash;
         INSERT INTO calls (tenant_id, actor_id, token_id, method, target, upstream, verdict, rule_id, outcome,
                            started_at, duration_ms, error_code, session_id, client_name)
           SELECT c->>0, c->>1, c->>2, c->>3, c->>4, c->>5, c->>6, c->>7, c->>8, c->>9, (c->>10)::float8,
                  (c->>11)::integer, c->>12, c->>13
           FROM jsonb_array_elements(batch->'calls') WITH ORDINALITY AS t(c, n) ORDER BY n;
         RETURN QUERY SELECT true, NULL::text, NULL::bigint, NULL::bytea;
       END $$""",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "tenants, actors, tokens, upstreams, calls", _sqlite_1, _PG_1),
    Migration(2, "policies, tool definitions, pins, held calls", _sqlite_2, _PG_2),
    Migration(3, "sealed evidence, chain heads, checkpoints", _sqlite_3, _PG_3),
    Migration(4, "tenant and actor ids unique ignoring case", _sqlite_4, _PG_4),
    Migration(5, "replica id of each evidence record", _sqlite_5, _PG_5),
    Migration(6, "ended sessions", _sqlite_6, _PG_6),
    Migration(7, "oauth: trusted issuers, clients, grants, codes, refresh tokens, passwords, login links",
              _sqlite_7, _PG_7),
    Migration(8, "operator tokens (the console), calls by start time", _sqlite_8, _OPERATOR_8),
    Migration(9, "postgres: evidence appended in one statement", _sqlite_9, _PG_9),
)
"""In order; `version` is the position + 1."""


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """What `aegress db status` shows: the store, how far its schema is, and each step."""

    backend: str
    location: str
    """Where the data is: a file path, or a database URL with its password masked."""
    version: int
    applied: tuple[tuple[int, str, str | None], ...]
    """(version, name, applied_at or None when the database did not record it) per applied step."""

    @property
    def latest(self) -> int:
        return len(MIGRATIONS)

    @property
    def pending(self) -> tuple[Migration, ...]:
        return MIGRATIONS[self.version:]
