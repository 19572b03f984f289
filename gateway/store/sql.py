"""The SQL both stores share: each statement that means the same on SQLite and Postgres, written once.

Statements are written in SQLite's dialect (`?` placeholders) and SQLite runs them as they are; the
Postgres store rewrites each one once (`postgres_sql`, cached) before psycopg sees it:

    ?                   ->  %s              (placeholders)
    COLLATE BINARY      ->  COLLATE "C"     (sort text by its bytes: SQLite's default, not Postgres's)

A dialect class supplies the rest, small and explicit:

* `_one(sql, params)`, `_all(sql, params)`, `_exec(sql, params) -> rowcount`: one statement, with the
  dialect's connection handling and error mapping; `_x(conn, sql, params)` and `_many(conn, sql, rows)`
  run one inside `transaction()`;
* `_bump(conn, key)`: add one to a `meta` counter;
* `_violation(exc)`: which constraint a driver error broke: "unique", "foreign-key", "constraint"
  (SQLite: it does not say which) or None (not a constraint);
* `_NOCASE_ID`: "id equals ? ignoring ASCII case", as the unique case-insensitive indexes compare;
* `_CONTAINS`: "the evidence record's bytes contain the UTF-8 of ?";
* `_FOR_UPDATE`: the row lock a read-then-write takes (Postgres); SQLite's BEGIN IMMEDIATE already
  holds every other writer off;
* `_guard(what)`: the driver's errors of a write, as StoreUnavailable("<what>: <reason>.");
* `_evidence_tx(conn)`: the dialect's `EvidenceTx` (its per-log write locks) on a connection inside
  `transaction()`, for an import;
* `_UPSERT_DEFINITION`, `_INSERT_PIN_CHANGES`, `_INSERT_BASELINE`, `_UPSERT_PIN`: upserts. They stay
  per dialect because they are not the same: `INSERT OR REPLACE` deletes the old row, `ON CONFLICT DO
  UPDATE` updates it; `OR IGNORE` skips more than a duplicate key.

What differs in substance stays in the dialect modules: connections and transactions, locking
(BEGIN IMMEDIATE against advisory locks and FOR UPDATE SKIP LOCKED), consuming an approval, sealing,
migrations and the mapping of driver errors to ours. A shared statement never holds a literal `?`,
`%` or `COLLATE BINARY` other than as above (the rewrite is textual).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from gateway.errors import AegressError, AlreadyExists, NotFound, StoreUnavailable
from gateway.store.base import (
    EvidenceFilter,
    EvidenceRow,
    EvidenceTx,
    HeldCall,
    ImportedLog,
    LogImported,
    OAuthClient,
    OAuthCode,
    OAuthGrant,
    OperatorToken,
    PinChange,
    PolicyVersion,
    TrustedIssuer,
    plan_import,
)
from gateway.types import Actor, CallRecord, Tenant, TokenInfo, UpstreamLimits, UpstreamSpec

if TYPE_CHECKING:
    from gateway.audit.log import Sealed
    from gateway.audit.records import ChainHead

CALL_COLS = (
    "tenant_id, actor_id, token_id, method, target, upstream, verdict, rule_id, outcome,"
    " started_at, duration_ms, error_code, session_id, client_name"
)
TOKEN_COLS = "id, tenant_id, actor_id, created_at, revoked_at, label"
UP_COLS = "tenant_id, name, transport, config, prefix, allow_private, created_at"
POL_COLS = "tenant_id, version, text, filename, digest, applied_at, applied_by"
HELD_COLS = (
    "id, tenant_id, actor_id, upstream, tool, exposed, args_digest, arguments, rule_id, reason, policy_version,"
    " mode, status, created_at, decided_by, decided_at, decision_reason, expires_at, used_at"
)
_ID_BATCH = 500  # ids per `IN (...)`: far below SQLite's and Postgres's parameter limits
ISSUER_COLS = ("tenant_id, issuer, audience, tenant_claim, tenant_value, actor_claim, scopes, jwks_uri,"
               " require_known_actor, created_at")
CLIENT_COLS = "id, name, redirect_uris, auth_method, kind, created_at, secret_hash, metadata, revoked_at"
GRANT_COLS = "id, tenant_id, actor_id, client_id, resource, scope, created_at, revoked_at, revoked_reason"
CODE_COLS = "grant_id, client_id, redirect_uri, code_challenge, resource, scope, expires_at, used_at"
OP_COLS = "id, label, created_at, created_by, revoked_at"
EV_COLS = "id, origin, seq, kind, time, tenant, actor, tool, verdict, status, intent_seq, leaf_hash, data"

ENDED_BATCH = 500
"""Session digests looked up per statement (`ended_sessions`): bounded statements, few round trips."""

# statements on the request path, built once (not per call)
FIND_TOKEN = f"SELECT {TOKEN_COLS} FROM tokens WHERE hash = ?"


# statements of the evidence append, the same on both (Postgres rewrites them once, at import)
INSERT_EVIDENCE = (
    "INSERT INTO evidence (origin, seq, kind, time, tenant, actor, tool, verdict, status, intent_seq,"
    " leaf_hash, data, replica) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
UPSERT_HEAD = (
    "INSERT INTO evidence_heads (origin, size, last_hash) VALUES (?, ?, ?) ON CONFLICT (origin)"
    " DO UPDATE SET size = excluded.size, last_hash = excluded.last_hash"
)
INSERT_CALL = f"INSERT INTO calls ({CALL_COLS}) VALUES ({', '.join('?' * 14)})"
PREFIX_KEY = "audit_origin_prefix"


def sealed_rows(sealed: Sequence[Sealed], heads: Mapping[str, ChainHead],
                replica: str) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]], list[tuple[object, ...]]]:
    """The rows an `EvidenceTx.insert_sealed` writes with INSERT_EVIDENCE, UPSERT_HEAD and INSERT_CALL
    (the last list empty when no record carries a call)."""
    records = [
        (s.record.origin, s.record.seq, s.record.kind, s.entry.time, s.entry.columns.tenant,
         s.entry.columns.actor, s.entry.columns.tool, s.entry.columns.verdict, s.entry.columns.status,
         s.entry.columns.intent_seq, s.record.leaf_hash, s.record.canonical, replica)
        for s in sealed
    ]
    head_rows = [(o, h.size, h.last_hash) for o, h in heads.items() if h.last_hash is not None]
    calls = [
        (r.tenant_id, r.actor_id, r.token_id, r.method, r.target, r.upstream, r.verdict, r.rule_id, r.outcome,
         r.started_at, r.duration_ms, r.error_code, r.session_id, r.client_name)
        for r in (s.entry.call for s in sealed) if r is not None
    ]
    return records, head_rows, calls


@lru_cache(maxsize=1024)
def postgres_sql(sql: str) -> str:
    """A shared statement in Postgres's dialect (see the module docstring); cached, so a statement is
    rewritten once per process (the filtered queries build at most a few thousand distinct texts)."""
    return sql.replace("?", "%s").replace("COLLATE BINARY", 'COLLATE "C"')


def where(**filters: object) -> tuple[str, list[object]]:
    """` WHERE a = ? AND b = ?` for the filters that are set (column names come from code, never input)."""
    used = {k: v for k, v in filters.items() if v is not None}
    if not used:
        return "", []
    return " WHERE " + " AND ".join(f"{k} = ?" for k in used), list(used.values())


def already_exists(kind: str, wanted: str, existing: str, where: str) -> AlreadyExists:
    """Refuse an id that exists, or exists under another case (ids are unique ignoring case)."""
    if existing == wanted:
        return AlreadyExists(f"{kind} {wanted!r} already exists{where}.")
    return AlreadyExists(f"{kind} {wanted!r} would differ from the existing {kind.lower()} {existing!r}{where} only "
                         "by case.", hint=f"Use {existing!r}, or pick a name that differs by more than case.")


def upstream_config(spec: UpstreamSpec) -> str:
    """The `config` column of an upstream: everything about it but its key and flags, as JSON."""
    return json.dumps({"transport": spec.transport, "command": list(spec.command), "env": spec.env,
                       "cwd": spec.cwd, "url": spec.url, "headers": spec.headers,
                       "limits": spec.limits.changed()})


def upstream_spec(row: Sequence[object]) -> UpstreamSpec:
    tenant_id, name, _transport, config, prefix, allow_private, created_at = row
    cfg = json.loads(str(config))
    return UpstreamSpec(
        tenant_id=str(tenant_id), name=str(name), transport=cfg["transport"],
        command=tuple(cfg.get("command", ())), env=dict(cfg.get("env", {})), cwd=cfg.get("cwd"),
        url=cfg.get("url"), headers=dict(cfg.get("headers", {})), prefix=bool(prefix),
        allow_private=bool(allow_private), created_at=str(created_at),
        limits=UpstreamLimits.from_changed(cfg.get("limits")),
    )


def evidence_row(r: Sequence[Any]) -> EvidenceRow:
    return EvidenceRow(int(r[0]), str(r[1]), int(r[2]), str(r[3]), str(r[4]), str(r[5]), str(r[6]), str(r[7]),
                       str(r[8]), str(r[9]), None if r[10] is None else int(r[10]), bytes(r[11]), bytes(r[12]))


class SQLStore:
    """The store methods whose SQL is the same on both backends; a dialect class supplies the hooks."""

    _NOCASE_ID: str
    _CONTAINS: str
    _FOR_UPDATE: str
    _UPSERT_DEFINITION: str
    _INSERT_PIN_CHANGES: str
    _INSERT_BASELINE: str
    _UPSERT_PIN: str
    replica_id: str

    # -- dialect hooks ---------------------------------------------------------------------------
    def _one(self, sql: str, params: Sequence[object] = ()) -> Sequence[Any] | None:
        raise NotImplementedError

    def _all(self, sql: str, params: Sequence[object] = ()) -> Sequence[Sequence[Any]]:
        raise NotImplementedError

    def _exec(self, sql: str, params: Sequence[object] = ()) -> int:
        raise NotImplementedError

    def _x(self, conn: Any, sql: str, params: Sequence[object] = ()) -> Any:
        raise NotImplementedError

    def _many(self, conn: Any, sql: str, rows: Sequence[Sequence[object]]) -> None:
        raise NotImplementedError

    def _bump(self, conn: Any, key: str) -> None:
        raise NotImplementedError

    def _guard(self, what: str) -> AbstractContextManager[None]:
        raise NotImplementedError

    def _violation(self, exc: BaseException) -> str | None:
        raise NotImplementedError

    def _evidence_tx(self, conn: Any) -> EvidenceTx:
        raise NotImplementedError

    def transaction(self) -> Any:
        raise NotImplementedError

    def _counter(self, key: str) -> int:
        row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return int(row[0]) if row else 0

    def shared_value(self, key: str, proposed: str) -> str:
        """The `meta` value under `key`, set to `proposed` by whichever process asks first (the rest read
        the winner's): how replicas agree on a fleet id or a shared session key without a coordinator."""
        with self.transaction() as conn:
            self._x(conn, "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING", (key, proposed))
            row = self._x(conn, "SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0])

    # -- ended sessions (gateway.sessions) -----------------------------------------------------------
    def end_session(self, digest: str, now: float) -> None:
        """Record a session as ended (by its id's sha256); ending it again keeps the first time."""
        with self._guard("Cannot record the ended session"):
            self._exec("INSERT INTO ended_sessions (digest, ended_at) VALUES (?, ?) ON CONFLICT (digest) DO NOTHING",
                       (digest, now))

    def ended_sessions(self, digests: Sequence[str]) -> set[str]:
        """Those of `digests` that were ended, in batches of ENDED_BATCH per statement."""
        found: set[str] = set()
        unique = sorted(set(digests))
        for start in range(0, len(unique), ENDED_BATCH):
            batch = unique[start:start + ENDED_BATCH]
            marks = ", ".join("?" * len(batch))
            found.update(str(r[0]) for r in self._all(
                f"SELECT digest FROM ended_sessions WHERE digest IN ({marks})", batch))
        return found

    def prune_ended_sessions(self, before: float) -> int:
        """Forget sessions ended before `before` (their ids have expired by then); how many went."""
        with self._guard("Cannot prune ended sessions"):
            return self._exec("DELETE FROM ended_sessions WHERE ended_at < ?", (before,))

    # -- calls and evidence reads ------------------------------------------------------------------
    def list_calls(self, tenant_id: str | None = None, limit: int = 100) -> list[CallRecord]:
        sql, params = where(tenant_id=tenant_id)
        rows = self._all(f"SELECT {CALL_COLS} FROM calls{sql} ORDER BY id DESC LIMIT ?", [*params, limit])
        return [CallRecord(*r) for r in rows]

    def evidence_origins(self) -> list[str]:
        return [str(r[0]) for r in self._all("SELECT origin FROM evidence_heads ORDER BY origin COLLATE BINARY")]

    def evidence_size(self, origin: str) -> int:
        row = self._one("SELECT size FROM evidence_heads WHERE origin = ?", (origin,))
        return int(row[0]) if row else 0

    def evidence_records(self, origin: str, start: int = 0, end: int | None = None) -> list[tuple[int, bytes]]:
        """(seq column, exact bytes) in storage order (id), which is what a verifier must check."""
        sql = "SELECT seq, data FROM evidence WHERE origin = ? AND seq >= ?"
        params: list[object] = [origin, start]
        if end is not None:
            sql += " AND seq < ?"
            params.append(end)
        return [(int(s), bytes(d)) for s, d in self._all(sql + " ORDER BY id", params)]

    def evidence_leaf_hashes(self, origin: str, start: int = 0) -> list[bytes]:
        rows = self._all("SELECT leaf_hash FROM evidence WHERE origin = ? AND seq >= ? ORDER BY seq", (origin, start))
        return [bytes(r[0]) for r in rows]

    def open_intents(self, replica: str | None = None) -> list[tuple[str, int, str]]:
        mine = "" if replica is None else " AND i.replica = ?"
        rows = self._all(
            "SELECT i.origin, i.seq, i.tenant FROM evidence i WHERE i.kind = 'intent'" + mine + " AND NOT EXISTS"
            " (SELECT 1 FROM evidence o WHERE o.origin = i.origin AND o.intent_seq = i.seq"
            "  AND o.kind IN ('outcome', 'outcome_unknown')) ORDER BY i.origin COLLATE BINARY, i.seq",
            () if replica is None else (replica,),
        )
        return [(str(o), int(s), str(t)) for o, s, t in rows]

    def query_evidence(self, where: EvidenceFilter, limit: int = 100,
                       newest_first: bool = True) -> list[EvidenceRow]:
        sql = f"SELECT {EV_COLS} FROM evidence WHERE id > ?"
        params: list[object] = [where.after_id]
        for column in ("origin", "tenant", "actor", "tool", "verdict", "status", "kind"):
            value = getattr(where, column)
            if value:
                sql += f" AND {column} = ?"
                params.append(value)
        if where.since:
            sql += " AND evidence.time >= ?"
            params.append(where.since)
        if where.until:
            sql += " AND evidence.time < ?"
            params.append(where.until)
        if where.contains:
            sql += " AND " + self._CONTAINS
            params.append(where.contains)
        sql += f" ORDER BY id {'DESC' if newest_first else 'ASC'} LIMIT ?"
        params.append(limit)
        return [evidence_row(r) for r in self._all(sql, params)]

    def get_evidence(self, record_id: int) -> EvidenceRow | None:
        row = self._one(f"SELECT {EV_COLS} FROM evidence WHERE id = ?", (record_id,))
        return evidence_row(row) if row else None

    def get_evidence_at(self, origin: str, seq: int) -> EvidenceRow | None:
        row = self._one(f"SELECT {EV_COLS} FROM evidence WHERE origin = ? AND seq = ?", (origin, seq))
        return evidence_row(row) if row else None

    def list_checkpoints(self, origin: str) -> list[tuple[int, str]]:
        rows = self._all("SELECT size, note FROM checkpoints WHERE origin = ? ORDER BY size", (origin,))
        return [(int(s), str(n)) for s, n in rows]

    # -- importing logs sealed elsewhere (aegress audit import) ---------------------------------------
    def import_evidence(self, logs: Sequence[ImportedLog], prefix: str, now: str) -> list[LogImported]:
        """See `Store.import_evidence`: heads locked and read, the overlap compared, the rule applied
        (`plan_import`) and the records inserted by the same `insert_sealed` as an append, in ONE transaction."""
        if not logs:
            return []
        try:
            with self._guard("Could not import evidence"), self.transaction() as conn:
                self._claim_prefix(conn, prefix)
                tx = self._evidence_tx(conn)
                heads = tx.lock_heads(sorted({log.origin for log in logs}))
                results: list[LogImported] = []
                for log in logs:
                    head = heads.get(log.origin)
                    size = head.size if head is not None else 0
                    stored = [bytes(r[0]) for r in self._x(
                        conn, "SELECT data FROM evidence WHERE origin = ? AND seq >= ? AND seq < ? ORDER BY seq",
                        (log.origin, log.start, min(log.end, size))).fetchall()]
                    roots = {int(n): bytes(r) for n, r in self._x(
                        conn, "SELECT size, root FROM checkpoints WHERE origin = ?", (log.origin,)).fetchall()}
                    plan = plan_import(log, head, stored, roots)
                    if plan.head is not None:
                        tx.insert_sealed(plan.records, {log.origin: plan.head}, self.replica_id)
                    if plan.checkpoints:
                        self._many(conn, "INSERT INTO checkpoints (origin, size, root, note, signed_at)"
                                   " VALUES (?, ?, ?, ?, ?)",
                                   [(log.origin, n, root, note, now) for n, root, note in plan.checkpoints])
                    results.append(plan.result)
                return results
        except AegressError:
            raise
        except Exception as exc:
            if self._violation(exc) is None:
                raise
            raise StoreUnavailable("Could not import evidence: another writer stored a record or checkpoint of "
                                   "these logs at the same moment.",
                                   hint="Nothing was imported. Run the import again.") from exc

    def _claim_prefix(self, conn: Any, prefix: str) -> None:
        """Make `prefix` this database's origin prefix: set it when there is none, replace one that names no
        record (a command that only read may have chosen one); refuse another deployment's."""
        from gateway.audit.errors import ImportConflict

        row = self._x(conn, "SELECT value FROM meta WHERE key = ?" + self._FOR_UPDATE, (PREFIX_KEY,)).fetchone()
        if row is None:
            self._x(conn, "INSERT INTO meta (key, value) VALUES (?, ?)", (PREFIX_KEY, prefix))
        elif str(row[0]) != prefix:
            if self._x(conn, "SELECT 1 FROM evidence_heads LIMIT 1").fetchone() is not None:
                raise ImportConflict(
                    f"This database's logs belong to the deployment {str(row[0])!r}; the bundle's to {prefix!r}.",
                    hint="Nothing was imported. Import into the database of the deployment that wrote the logs, "
                         "or into a new one before the gateway first starts on it.",
                    code="import-other-deployment")
            self._x(conn, "UPDATE meta SET value = ? WHERE key = ?", (prefix, PREFIX_KEY))

    # -- tokens ------------------------------------------------------------------------------------
    def add_token(self, info: TokenInfo, token_hash: str) -> None:
        self._exec(
            "INSERT INTO tokens (id, tenant_id, actor_id, hash, label, created_at, revoked_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (info.id, info.tenant_id, info.actor_id, token_hash, info.label, info.created_at, info.revoked_at),
        )

    def find_token(self, token_hash: str) -> TokenInfo | None:
        row = self._one(FIND_TOKEN, (token_hash,))
        return TokenInfo(*row) if row else None

    async def find_token_async(self, token_hash: str) -> TokenInfo | None:
        import asyncio  # here: the CLI opens the store and never this (asyncio costs it ~17 ms)

        return await asyncio.to_thread(self.find_token, token_hash)

    def get_token(self, token_id: str) -> TokenInfo | None:
        row = self._one(f"SELECT {TOKEN_COLS} FROM tokens WHERE id = ?", (token_id,))
        return TokenInfo(*row) if row else None

    def active_tokens(self, token_ids: Iterable[str]) -> set[str]:
        ids = sorted(set(token_ids))
        active: set[str] = set()
        for start in range(0, len(ids), _ID_BATCH):
            batch = ids[start:start + _ID_BATCH]
            marks = ", ".join("?" * len(batch))
            rows = self._all(f"SELECT id FROM tokens WHERE revoked_at IS NULL AND id IN ({marks})", batch)
            active.update(str(r[0]) for r in rows)
        return active

    def list_tokens(self, tenant_id: str | None = None, actor_id: str | None = None) -> list[TokenInfo]:
        sql, params = where(tenant_id=tenant_id, actor_id=actor_id)
        rows = self._all(f"SELECT {TOKEN_COLS} FROM tokens{sql} ORDER BY created_at, id COLLATE BINARY", params)
        return [TokenInfo(*r) for r in rows]

    def revoke_token(self, token_id: str, now: str) -> TokenInfo:
        self._exec("UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now, token_id))
        info = self.get_token(token_id)
        if info is None:
            raise NotFound(f"No token {token_id!r}.", hint="List tokens with `aegress token list`.")
        return info

    # -- operator credentials (the console) ---------------------------------------------------------
    def add_operator_token(self, info: OperatorToken, token_hash: str) -> None:
        self._exec("INSERT INTO operator_tokens (id, hash, label, created_at, created_by, revoked_at)"
                   " VALUES (?, ?, ?, ?, ?, ?)",
                   (info.id, token_hash, info.label, info.created_at, info.created_by, info.revoked_at))

    def find_operator_token(self, token_hash: str) -> OperatorToken | None:
        row = self._one(f"SELECT {OP_COLS} FROM operator_tokens WHERE hash = ?", (token_hash,))
        return OperatorToken(*row) if row else None

    def get_operator_token(self, token_id: str) -> OperatorToken | None:
        row = self._one(f"SELECT {OP_COLS} FROM operator_tokens WHERE id = ?", (token_id,))
        return OperatorToken(*row) if row else None

    def list_operator_tokens(self) -> list[OperatorToken]:
        rows = self._all(f"SELECT {OP_COLS} FROM operator_tokens ORDER BY created_at, id COLLATE BINARY")
        return [OperatorToken(*r) for r in rows]

    def revoke_operator_token(self, token_id: str, now: str) -> OperatorToken:
        self._exec("UPDATE operator_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now, token_id))
        info = self.get_operator_token(token_id)
        if info is None:
            raise NotFound(f"No operator token {token_id!r}.", hint="List them with `aegress operator token list`.")
        return info

    # -- the operator view (gateway.status) ----------------------------------------------------------
    def count_evidence(self, tenant: str | None = None, since: str = "") -> list[tuple[str, str, int]]:
        sql, params = "SELECT kind, verdict, COUNT(*) FROM evidence WHERE 1 = 1", []
        if tenant is not None:
            sql += " AND tenant = ?"
            params.append(tenant)
        if since:
            sql += " AND evidence.time >= ?"
            params.append(since)
        rows = self._all(sql + " GROUP BY kind, verdict", params)
        return [(str(k), str(v), int(n)) for k, v, n in rows]

    def evidence_sizes(self) -> dict[str, int]:
        return {str(o): int(n) for o, n in self._all("SELECT origin, size FROM evidence_heads")}

    def latest_checkpoints(self) -> list[tuple[str, int, str]]:
        rows = self._all("SELECT c.origin, c.size, c.signed_at FROM checkpoints c WHERE c.size ="
                         " (SELECT MAX(size) FROM checkpoints m WHERE m.origin = c.origin)"
                         " ORDER BY c.origin COLLATE BINARY")
        return [(str(o), int(n), str(t)) for o, n, t in rows]

    def client_activity(self, tenant: str | None = None) -> list[tuple[str, int, str]]:
        sql, params = where(tenant_id=tenant)
        rows = self._all(f"SELECT COALESCE(client_name, ''), COUNT(*), MAX(started_at) FROM calls{sql}"
                         " GROUP BY COALESCE(client_name, '') ORDER BY 3 DESC", params)
        return [(str(c), int(n), str(t or "")) for c, n, t in rows]

    def upstream_activity(self, since: str, tenant: str | None = None) -> list[tuple[str, str, str, int]]:
        sql, params = "SELECT tenant_id, upstream, outcome, COUNT(*) FROM calls WHERE started_at >= ?", [since]
        if tenant is not None:
            sql += " AND tenant_id = ?"
            params.append(tenant)
        rows = self._all(sql + " GROUP BY tenant_id, upstream, outcome", params)
        return [(str(t), str(u or ""), str(o or ""), int(n)) for t, u, o, n in rows]

    def record_verification(self, summary: str) -> None:
        self._exec("INSERT INTO meta (key, value) VALUES ('last_verification', ?) ON CONFLICT (key)"
                   " DO UPDATE SET value = excluded.value", (summary,))

    def last_verification(self) -> str | None:
        row = self._one("SELECT value FROM meta WHERE key = 'last_verification'")
        return str(row[0]) if row else None

    # -- tenants and actors ------------------------------------------------------------------------
    def create_tenant(self, tenant_id: str, now: str) -> Tenant:
        try:
            with self.transaction() as conn:
                row = self._x(conn, f"SELECT id FROM tenants WHERE {self._NOCASE_ID} ORDER BY id = ? DESC, id LIMIT 1",
                              (tenant_id, tenant_id)).fetchone()
                if row is not None:
                    raise already_exists("Tenant", tenant_id, str(row[0]), "")
                self._x(conn, "INSERT INTO tenants (id, created_at) VALUES (?, ?)", (tenant_id, now))
        except Exception as exc:
            if self._violation(exc) != "unique":
                raise
            # a twin committed by another process meanwhile
            raise AlreadyExists(f"Tenant {tenant_id!r} already exists (or differs from one only by case).") from exc
        return Tenant(tenant_id, now)

    def add_actor(self, tenant_id: str, actor_id: str, now: str) -> Actor:
        try:
            with self.transaction() as conn:
                if self._x(conn, "SELECT 1 FROM tenants WHERE id = ?", (tenant_id,)).fetchone() is None:
                    raise NotFound(f"No tenant {tenant_id!r}.", hint="Create it with `aegress tenant create`.")
                row = self._x(conn, f"SELECT id FROM actors WHERE tenant_id = ? AND {self._NOCASE_ID}"
                              " ORDER BY id = ? DESC, id LIMIT 1", (tenant_id, actor_id, actor_id)).fetchone()
                if row is not None:
                    raise already_exists("Actor", actor_id, str(row[0]), f" in tenant {tenant_id!r}")
                self._x(conn, "INSERT INTO actors (tenant_id, id, created_at) VALUES (?, ?, ?)",
                        (tenant_id, actor_id, now))
        except Exception as exc:
            violation = self._violation(exc)
            if violation == "unique":
                raise AlreadyExists(f"Actor {actor_id!r} already exists in tenant {tenant_id!r}.") from exc
            if violation == "foreign-key":
                raise NotFound(f"No tenant {tenant_id!r}.", hint="Create it with `aegress tenant create`.") from exc
            raise
        return Actor(tenant_id, actor_id, now)

    def get_tenant(self, tenant_id: str) -> Tenant | None:
        row = self._one("SELECT id, created_at FROM tenants WHERE id = ?", (tenant_id,))
        return Tenant(*row) if row else None

    def list_tenants(self) -> list[Tenant]:
        return [Tenant(*r) for r in self._all("SELECT id, created_at FROM tenants ORDER BY id COLLATE BINARY")]

    def delete_tenant(self, tenant_id: str) -> None:
        with self.transaction() as conn:
            self._x(conn, "DELETE FROM upstreams WHERE tenant_id = ?", (tenant_id,))
            self._x(conn, "DELETE FROM tokens WHERE tenant_id = ?", (tenant_id,))
            self._x(conn, "DELETE FROM actors WHERE tenant_id = ?", (tenant_id,))
            self._forget_oauth(conn, tenant_id)
            if self._x(conn, "DELETE FROM tenants WHERE id = ?", (tenant_id,)).rowcount == 0:
                raise NotFound(f"No tenant {tenant_id!r}.", hint="List tenants with `aegress tenant list`.")
            self._bump(conn, "upstreams_version")

    def get_actor(self, tenant_id: str, actor_id: str) -> Actor | None:
        row = self._one("SELECT tenant_id, id, created_at FROM actors WHERE tenant_id = ? AND id = ?",
                        (tenant_id, actor_id))
        return Actor(*row) if row else None

    def list_actors(self, tenant_id: str) -> list[Actor]:
        rows = self._all("SELECT tenant_id, id, created_at FROM actors WHERE tenant_id = ? ORDER BY id COLLATE BINARY",
                         (tenant_id,))
        return [Actor(*r) for r in rows]

    def remove_actor(self, tenant_id: str, actor_id: str) -> None:
        with self.transaction() as conn:
            self._x(conn, "DELETE FROM tokens WHERE tenant_id = ? AND actor_id = ?", (tenant_id, actor_id))
            self._forget_oauth(conn, tenant_id, actor_id)
            if self._x(conn, "DELETE FROM actors WHERE tenant_id = ? AND id = ?", (tenant_id, actor_id)).rowcount == 0:
                raise NotFound(f"No actor {actor_id!r} in tenant {tenant_id!r}.")

    # -- upstreams ---------------------------------------------------------------------------------
    def add_upstream(self, spec: UpstreamSpec) -> None:
        try:
            with self.transaction() as conn:
                self._x(conn, f"INSERT INTO upstreams ({UP_COLS}, tools) VALUES (?, ?, ?, ?, ?, ?, ?, '[]')",
                        (spec.tenant_id, spec.name, spec.transport, upstream_config(spec), int(spec.prefix),
                         int(spec.allow_private), spec.created_at))
                self._bump(conn, "upstreams_version")
        except Exception as exc:
            violation = self._violation(exc)
            if violation is None:
                raise
            if violation == "foreign-key" or (violation == "constraint" and self.get_tenant(spec.tenant_id) is None):
                raise NotFound(f"No tenant {spec.tenant_id!r}.",
                               hint="Create it with `aegress tenant create`.") from exc
            raise AlreadyExists(
                f"Upstream {spec.name!r} already exists in tenant {spec.tenant_id!r}.",
                hint="Remove it first with `aegress upstream remove`, or pick another name.",
            ) from exc

    def update_upstream(self, spec: UpstreamSpec) -> None:
        with self.transaction() as conn:
            cur = self._x(
                conn,
                "UPDATE upstreams SET transport = ?, config = ?, prefix = ?, allow_private = ?"
                " WHERE tenant_id = ? AND name = ?",
                (spec.transport, upstream_config(spec), int(spec.prefix), int(spec.allow_private), spec.tenant_id,
                 spec.name),
            )
            if cur.rowcount == 0:
                raise NotFound(f"No upstream {spec.name!r} in tenant {spec.tenant_id!r}.")
            self._bump(conn, "upstreams_version")

    def get_upstream(self, tenant_id: str, name: str) -> UpstreamSpec | None:
        row = self._one(f"SELECT {UP_COLS} FROM upstreams WHERE tenant_id = ? AND name = ?", (tenant_id, name))
        return upstream_spec(row) if row else None

    def list_upstreams(self, tenant_id: str) -> list[UpstreamSpec]:
        rows = self._all(f"SELECT {UP_COLS} FROM upstreams WHERE tenant_id = ? ORDER BY name COLLATE BINARY",
                         (tenant_id,))
        return [upstream_spec(r) for r in rows]

    def remove_upstream(self, tenant_id: str, name: str) -> None:
        with self.transaction() as conn:
            if self._x(conn, "DELETE FROM upstreams WHERE tenant_id = ? AND name = ?", (tenant_id, name)).rowcount == 0:
                raise NotFound(f"No upstream {name!r} in tenant {tenant_id!r}.")
            self._bump(conn, "upstreams_version")

    def set_upstream_tools(self, tenant_id: str, name: str, tool_names: Sequence[str]) -> None:
        self._exec("UPDATE upstreams SET tools = ? WHERE tenant_id = ? AND name = ?",
                   (json.dumps(sorted(tool_names)), tenant_id, name))

    def get_upstream_tools(self, tenant_id: str) -> dict[str, list[str]]:
        rows = self._all("SELECT name, tools FROM upstreams WHERE tenant_id = ?", (tenant_id,))
        return {str(n): list(json.loads(t or "[]")) for n, t in rows}

    def upstreams_version(self) -> int:
        return self._counter("upstreams_version")

    # -- policies ----------------------------------------------------------------------------------
    def add_policy_version(self, tenant_id: str, text: str, filename: str, digest: str, applied_at: str,
                           applied_by: str) -> PolicyVersion:
        with self.transaction() as conn:
            if self._x(conn, "SELECT 1 FROM tenants WHERE id = ?" + self._FOR_UPDATE, (tenant_id,)).fetchone() is None:
                raise NotFound(f"No tenant {tenant_id!r}.", hint="List tenants with `aegress tenant list`.")
            (latest,) = self._x(conn, "SELECT COALESCE(MAX(version), 0) FROM policies WHERE tenant_id = ?",
                                (tenant_id,)).fetchone() or (0,)
            row = PolicyVersion(tenant_id, int(latest) + 1, text, filename, digest, applied_at, applied_by)
            self._x(conn, f"INSERT INTO policies ({POL_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (row.tenant_id, row.version, row.text, row.filename, row.digest, row.applied_at, row.applied_by))
            self._bump(conn, "policies_version")
            return row

    def get_policy_version(self, tenant_id: str, version: int | None = None) -> PolicyVersion | None:
        if version is None:
            row = self._one(f"SELECT {POL_COLS} FROM policies WHERE tenant_id = ? ORDER BY version DESC LIMIT 1",
                            (tenant_id,))
        else:
            row = self._one(f"SELECT {POL_COLS} FROM policies WHERE tenant_id = ? AND version = ?",
                            (tenant_id, version))
        return PolicyVersion(*row) if row else None

    def list_policy_versions(self, tenant_id: str) -> list[PolicyVersion]:
        rows = self._all(f"SELECT {POL_COLS} FROM policies WHERE tenant_id = ? ORDER BY version", (tenant_id,))
        return [PolicyVersion(*r) for r in rows]

    def latest_policy_versions(self) -> dict[str, int]:
        rows = self._all("SELECT tenant_id, MAX(version) FROM policies GROUP BY tenant_id")
        return {str(t): int(v) for t, v in rows}

    def policies_version(self) -> int:
        return self._counter("policies_version")

    # -- tool definitions and pins -----------------------------------------------------------------
    def _replace_definitions(self, conn: Any, tenant_id: str, upstream: str, tools: Sequence[Mapping[str, Any]],
                             hashes: Sequence[str], now: str) -> None:
        self._x(conn, "DELETE FROM tool_definitions WHERE tenant_id = ? AND upstream = ?", (tenant_id, upstream))
        self._many(conn, self._UPSERT_DEFINITION,
                   [(tenant_id, upstream, str(t.get("name")), json.dumps(dict(t)), h, now)
                    for t, h in zip(tools, hashes, strict=True)])

    def _add_pin_changes(self, conn: Any, tenant_id: str, upstream: str, changes: Sequence[tuple[str, str, str]],
                         now: str) -> None:
        if changes:
            self._many(conn, self._INSERT_PIN_CHANGES, [(tenant_id, upstream, t, o, n, now) for t, o, n in changes])

    def set_tool_definitions(self, tenant_id: str, upstream: str, tools: Sequence[Mapping[str, Any]],
                             hashes: Sequence[str], now: str) -> None:
        with self.transaction() as conn:
            self._replace_definitions(conn, tenant_id, upstream, tools, hashes, now)

    def observe_tools(self, tenant_id: str, upstream: str, tools: Sequence[Mapping[str, Any]],
                      hashes: Sequence[str], first_pins: Mapping[str, str] | None,
                      changes: Sequence[tuple[str, str, str]], by: str, now: str) -> None:
        """An upstream's tool listing, in ONE transaction: definitions replaced, pin changes recorded and,
        on first use (`first_pins`), pins set; a crash or a lock never leaves half of it."""
        with self._guard("Could not store tool definitions"), self.transaction() as conn:
            self._replace_definitions(conn, tenant_id, upstream, tools, hashes, now)
            self._add_pin_changes(conn, tenant_id, upstream, changes, now)
            if first_pins is not None:
                self._pin(conn, tenant_id, upstream, first_pins, by, now)

    def get_tool_definitions(self, tenant_id: str) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        rows = self._all("SELECT upstream, definition FROM tool_definitions WHERE tenant_id = ?"
                         " ORDER BY upstream COLLATE BINARY, name COLLATE BINARY", (tenant_id,))
        for upstream, definition in rows:
            out.setdefault(str(upstream), []).append(json.loads(definition))
        return out

    def get_pins(self, tenant_id: str) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for upstream, tool, digest in self._all("SELECT upstream, tool, hash FROM pins WHERE tenant_id = ?",
                                                (tenant_id,)):
            out.setdefault(str(upstream), {})[str(tool)] = str(digest)
        return out

    def pinned_upstreams(self, tenant_id: str) -> set[str]:
        return {str(r[0]) for r in self._all("SELECT upstream FROM pin_baselines WHERE tenant_id = ?", (tenant_id,))}

    def set_pins(self, tenant_id: str, upstream: str, pins: Mapping[str, str], by: str, now: str) -> None:
        """Approve definitions: upsert pins, mark the upstream as pinned, resolve matching change records."""
        with self.transaction() as conn:
            self._pin(conn, tenant_id, upstream, pins, by, now)

    def _pin(self, conn: Any, tenant_id: str, upstream: str, pins: Mapping[str, str], by: str, now: str) -> None:
        self._x(conn, self._INSERT_BASELINE, (tenant_id, upstream, now))
        for tool, digest in pins.items():
            self._x(conn, self._UPSERT_PIN, (tenant_id, upstream, tool, digest, by, now))
            self._x(conn, "UPDATE pin_changes SET resolved_at = ?, resolved_by = ? WHERE tenant_id = ?"
                    " AND upstream = ? AND tool = ? AND new_hash = ? AND resolved_at IS NULL",
                    (now, by, tenant_id, upstream, tool, digest))
        self._bump(conn, "policies_version")

    def record_pin_changes(self, tenant_id: str, upstream: str, changes: Sequence[tuple[str, str, str]],
                           now: str) -> None:
        """(tool, old_hash or "", new_hash) each recorded once."""
        if changes:
            with self.transaction() as conn:
                self._add_pin_changes(conn, tenant_id, upstream, changes, now)

    def list_pin_changes(self, tenant_id: str, limit: int = 200) -> list[PinChange]:
        rows = self._all(
            "SELECT id, tenant_id, upstream, tool, old_hash, new_hash, seen_at, resolved_at, resolved_by"
            " FROM pin_changes WHERE tenant_id = ? ORDER BY id DESC LIMIT ?", (tenant_id, limit),
        )
        return [PinChange(*r) for r in rows]

    # -- held calls --------------------------------------------------------------------------------
    def add_held_call(self, held: HeldCall) -> None:
        self._exec(
            f"INSERT INTO held_calls ({HELD_COLS}) VALUES ({', '.join('?' * 19)})",
            (held.id, held.tenant_id, held.actor_id, held.upstream, held.tool, held.exposed, held.args_digest,
             held.arguments, held.rule_id, held.reason, held.policy_version, held.mode, held.status,
             held.created_at, held.decided_by, held.decided_at, held.decision_reason, held.expires_at,
             held.used_at),
        )

    def get_held_call(self, held_id: str) -> HeldCall | None:
        row = self._one(f"SELECT {HELD_COLS} FROM held_calls WHERE id = ?", (held_id,))
        return HeldCall(*row) if row else None

    def list_held_calls(self, tenant_id: str | None = None, status: str | None = None,
                        limit: int = 100) -> list[HeldCall]:
        sql, params = where(tenant_id=tenant_id, status=status)
        rows = self._all(f"SELECT {HELD_COLS} FROM held_calls{sql} ORDER BY created_at DESC, id COLLATE BINARY"
                         " LIMIT ?", [*params, limit])
        return [HeldCall(*r) for r in rows]

    def count_held_calls(self, tenant_id: str | None = None, status: str | None = None) -> int:
        sql, params = where(tenant_id=tenant_id, status=status)
        row = self._one(f"SELECT COUNT(*) FROM held_calls{sql}", params)
        return int(row[0]) if row else 0

    def find_pending_hold(self, tenant_id: str, actor_id: str, upstream: str, tool: str,
                          args_digest: str) -> HeldCall | None:
        row = self._one(
            f"SELECT {HELD_COLS} FROM held_calls WHERE tenant_id = ? AND actor_id = ? AND upstream = ?"
            " AND tool = ? AND args_digest = ? AND status = 'pending' ORDER BY created_at DESC LIMIT 1",
            (tenant_id, actor_id, upstream, tool, args_digest),
        )
        return HeldCall(*row) if row else None

    def decide_held_call(self, held_id: str, status: str, by: str, at: float, reason: str,
                         expires_at: float | None) -> bool:
        """pending -> approved/denied, once: one conditional UPDATE, atomic across processes and replicas;
        False when it was already decided (or does not exist)."""
        return self._exec(
            "UPDATE held_calls SET status = ?, decided_by = ?, decided_at = ?, decision_reason = ?, expires_at = ?"
            " WHERE id = ? AND status = 'pending'", (status, by, at, reason, expires_at, held_id),
        ) == 1

    # -- OAuth mode (issue 13) ---------------------------------------------------------------------
    def _forget_oauth(self, conn: Any, tenant_id: str, actor_id: str | None = None) -> None:
        """A deleted tenant (or removed actor) keeps no trust, password, grant or pending code: one created
        again under the same id starts from nothing. Grants are deleted, not revoked: their ids are not
        evidence (the consent and revocation records are)."""
        if actor_id is None:
            self._x(conn, "DELETE FROM oauth_issuers WHERE tenant_id = ?", (tenant_id,))
            self._x(conn, "DELETE FROM actor_passwords WHERE tenant_id = ?", (tenant_id,))
            self._x(conn, "DELETE FROM oauth_login_links WHERE tenant_id = ?", (tenant_id,))
            grants = "SELECT id FROM oauth_grants WHERE tenant_id = ?"
            params: tuple[str, ...] = (tenant_id,)
        else:
            self._x(conn, "DELETE FROM actor_passwords WHERE tenant_id = ? AND actor_id = ?", (tenant_id, actor_id))
            self._x(conn, "DELETE FROM oauth_login_links WHERE tenant_id = ? AND actor_id = ?", (tenant_id, actor_id))
            grants = "SELECT id FROM oauth_grants WHERE tenant_id = ? AND actor_id = ?"
            params = (tenant_id, actor_id)
        self._x(conn, f"DELETE FROM oauth_codes WHERE grant_id IN ({grants})", params)
        self._x(conn, f"DELETE FROM oauth_refresh_tokens WHERE grant_id IN ({grants})", params)
        self._x(conn, f"DELETE FROM oauth_grants WHERE id IN ({grants})", params)
        self._bump(conn, "oauth_version")

    def oauth_version(self) -> int:
        return self._counter("oauth_version")

    def add_trusted_issuer(self, entry: TrustedIssuer) -> None:
        try:
            with self.transaction() as conn:
                if self._x(conn, "SELECT 1 FROM tenants WHERE id = ?", (entry.tenant_id,)).fetchone() is None:
                    raise NotFound(f"No tenant {entry.tenant_id!r}.", hint="Create it with `aegress tenant create`.")
                self._x(conn, f"INSERT INTO oauth_issuers ({ISSUER_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (entry.tenant_id, entry.issuer, entry.audience, entry.tenant_claim, entry.tenant_value,
                         entry.actor_claim, json.dumps(list(entry.scopes)), entry.jwks_uri,
                         int(entry.require_known_actor), entry.created_at))
                self._bump(conn, "oauth_version")
        except Exception as exc:
            if self._violation(exc) is None:
                raise
            raise AlreadyExists(f"Tenant {entry.tenant_id!r} already trusts issuer {entry.issuer!r}.",
                                hint="Remove it first with `aegress oauth issuer remove`.") from exc

    def list_trusted_issuers(self, tenant_id: str | None = None) -> list[TrustedIssuer]:
        sql, params = where(tenant_id=tenant_id)
        rows = self._all(f"SELECT {ISSUER_COLS} FROM oauth_issuers{sql} ORDER BY tenant_id COLLATE BINARY,"
                         " issuer COLLATE BINARY", params)
        return [TrustedIssuer(str(t), str(i), str(a), str(tc), str(tv), str(ac), tuple(json.loads(sc)), str(j),
                              bool(k), str(c)) for t, i, a, tc, tv, ac, sc, j, k, c in rows]

    def remove_trusted_issuer(self, tenant_id: str, issuer: str) -> None:
        with self.transaction() as conn:
            if self._x(conn, "DELETE FROM oauth_issuers WHERE tenant_id = ? AND issuer = ?",
                       (tenant_id, issuer)).rowcount == 0:
                raise NotFound(f"Tenant {tenant_id!r} does not trust issuer {issuer!r}.",
                               hint="List them with `aegress oauth issuer list`.")
            self._bump(conn, "oauth_version")

    def add_oauth_client(self, client: OAuthClient) -> None:
        with self.transaction() as conn:
            conflict = " ON CONFLICT (id) DO NOTHING" if client.kind == "metadata-document" else ""
            self._x(conn, f"INSERT INTO oauth_clients ({CLIENT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?){conflict}",
                    (client.id, client.name, json.dumps(list(client.redirect_uris)), client.auth_method, client.kind,
                     client.created_at, client.secret_hash, client.metadata, client.revoked_at))
            self._bump(conn, "oauth_version")

    @staticmethod
    def _client(row: Sequence[Any]) -> OAuthClient:
        return OAuthClient(str(row[0]), str(row[1]), tuple(json.loads(row[2])), str(row[3]), str(row[4]), str(row[5]),
                           str(row[6]), str(row[7]), row[8])

    def get_oauth_client(self, client_id: str) -> OAuthClient | None:
        row = self._one(f"SELECT {CLIENT_COLS} FROM oauth_clients WHERE id = ?", (client_id,))
        return self._client(row) if row else None

    def list_oauth_clients(self) -> list[OAuthClient]:
        rows = self._all(f"SELECT {CLIENT_COLS} FROM oauth_clients ORDER BY created_at, id COLLATE BINARY")
        return [self._client(r) for r in rows]

    def revoke_oauth_client(self, client_id: str, now: str) -> OAuthClient:
        with self.transaction() as conn:
            self._x(conn, "UPDATE oauth_clients SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                    (now, client_id))
            self._x(conn, "UPDATE oauth_grants SET revoked_at = ?, revoked_reason = 'client revoked'"
                    " WHERE client_id = ? AND revoked_at IS NULL", (now, client_id))
            self._bump(conn, "oauth_version")
        client = self.get_oauth_client(client_id)
        if client is None:
            raise NotFound(f"No OAuth client {client_id!r}.", hint="List them with `aegress oauth clients list`.")
        return client

    def add_oauth_grant(self, grant: OAuthGrant) -> None:
        self._exec(f"INSERT INTO oauth_grants ({GRANT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (grant.id, grant.tenant_id, grant.actor_id, grant.client_id, grant.resource, grant.scope,
                    grant.created_at, grant.revoked_at, grant.revoked_reason))

    def get_oauth_grant(self, grant_id: str) -> OAuthGrant | None:
        row = self._one(f"SELECT {GRANT_COLS} FROM oauth_grants WHERE id = ?", (grant_id,))
        return OAuthGrant(*row) if row else None

    def list_oauth_grants(self, tenant_id: str | None = None, client_id: str | None = None) -> list[OAuthGrant]:
        sql, params = where(tenant_id=tenant_id, client_id=client_id)
        rows = self._all(f"SELECT {GRANT_COLS} FROM oauth_grants{sql} ORDER BY created_at, id COLLATE BINARY", params)
        return [OAuthGrant(*r) for r in rows]

    def revoke_oauth_grant(self, grant_id: str, now: str, reason: str) -> bool:
        with self.transaction() as conn:
            done = self._x(conn, "UPDATE oauth_grants SET revoked_at = ?, revoked_reason = ? WHERE id = ?"
                           " AND revoked_at IS NULL", (now, reason, grant_id)).rowcount == 1
            if done:
                self._bump(conn, "oauth_version")
        return done

    def active_grant(self, grant_id: str) -> OAuthGrant | None:
        cols = ", ".join(f"g.{c.strip()}" for c in GRANT_COLS.split(","))
        row = self._one(
            f"SELECT {cols} FROM oauth_grants g JOIN oauth_clients c ON c.id = g.client_id JOIN actors a"
            " ON a.tenant_id = g.tenant_id AND a.id = g.actor_id WHERE g.id = ? AND g.revoked_at IS NULL"
            " AND c.revoked_at IS NULL", (grant_id,))
        return OAuthGrant(*row) if row else None

    def add_oauth_code(self, code_hash: str, code: OAuthCode) -> None:
        self._exec(f"INSERT INTO oauth_codes (hash, {CODE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (code_hash, code.grant_id, code.client_id, code.redirect_uri, code.code_challenge, code.resource,
                    code.scope, code.expires_at, code.used_at))

    def consume_oauth_code(self, code_hash: str, now: float) -> tuple[str, OAuthCode | None]:
        with self.transaction() as conn:
            spent = self._x(conn, "UPDATE oauth_codes SET used_at = ? WHERE hash = ? AND used_at IS NULL"
                            " AND expires_at > ?", (now, code_hash, now)).rowcount == 1
            row = self._x(conn, f"SELECT {CODE_COLS} FROM oauth_codes WHERE hash = ?", (code_hash,)).fetchone()
        if row is None:
            return "unknown", None
        code = OAuthCode(*row)
        if spent:
            return "ok", code
        return ("used" if code.used_at is not None else "expired"), code

    def add_refresh_token(self, token_hash: str, grant_id: str, client_id: str, now: float,
                          expires_at: float) -> None:
        self._exec("INSERT INTO oauth_refresh_tokens (hash, grant_id, client_id, created_at, expires_at)"
                   " VALUES (?, ?, ?, ?, ?)", (token_hash, grant_id, client_id, now, expires_at))

    def find_refresh_token(self, token_hash: str) -> tuple[str, str] | None:
        row = self._one("SELECT grant_id, client_id FROM oauth_refresh_tokens WHERE hash = ?", (token_hash,))
        return (str(row[0]), str(row[1])) if row else None

    def rotate_refresh_token(self, old_hash: str, new_hash: str, now: float,
                             expires_at: float) -> tuple[str, str | None]:
        with self.transaction() as conn:
            spent = self._x(conn, "UPDATE oauth_refresh_tokens SET used_at = ? WHERE hash = ? AND used_at IS NULL"
                            " AND expires_at > ?", (now, old_hash, now)).rowcount == 1
            row = self._x(conn, "SELECT grant_id, client_id, used_at FROM oauth_refresh_tokens WHERE hash = ?",
                          (old_hash,)).fetchone()
            if row is None:
                return "unknown", None
            grant_id, client_id = str(row[0]), str(row[1])
            if not spent:
                if row[2] is None:
                    return "expired", grant_id
                # a spent refresh token presented again: stolen or replayed, so the whole grant goes
                self._x(conn, "UPDATE oauth_grants SET revoked_at = ?, revoked_reason = 'refresh token reused'"
                        " WHERE id = ? AND revoked_at IS NULL", (_iso(now), grant_id))
                self._bump(conn, "oauth_version")
                return "reused", grant_id
            alive = self._x(
                conn, "SELECT 1 FROM oauth_grants g JOIN oauth_clients c ON c.id = g.client_id JOIN actors a"
                " ON a.tenant_id = g.tenant_id AND a.id = g.actor_id WHERE g.id = ? AND g.revoked_at IS NULL"
                " AND c.revoked_at IS NULL", (grant_id,)).fetchone()
            if alive is None:
                return "revoked", grant_id
            self._x(conn, "INSERT INTO oauth_refresh_tokens (hash, grant_id, client_id, created_at, expires_at)"
                    " VALUES (?, ?, ?, ?, ?)", (new_hash, grant_id, client_id, now, expires_at))
        return "ok", grant_id

    def set_actor_password(self, tenant_id: str, actor_id: str, password_hash: str, now: str) -> None:
        with self.transaction() as conn:
            if self._x(conn, "SELECT 1 FROM actors WHERE tenant_id = ? AND id = ?", (tenant_id, actor_id)).fetchone() \
                    is None:
                raise NotFound(f"No actor {actor_id!r} in tenant {tenant_id!r}.")
            self._x(conn, "DELETE FROM actor_passwords WHERE tenant_id = ? AND actor_id = ?", (tenant_id, actor_id))
            self._x(conn, "INSERT INTO actor_passwords (tenant_id, actor_id, hash, updated_at) VALUES (?, ?, ?, ?)",
                    (tenant_id, actor_id, password_hash, now))

    def get_actor_password(self, tenant_id: str, actor_id: str) -> str | None:
        row = self._one("SELECT hash FROM actor_passwords WHERE tenant_id = ? AND actor_id = ?", (tenant_id, actor_id))
        return str(row[0]) if row else None

    def add_login_link(self, link_hash: str, tenant_id: str, actor_id: str, now: float, expires_at: float) -> None:
        self._exec("INSERT INTO oauth_login_links (hash, tenant_id, actor_id, created_at, expires_at)"
                   " VALUES (?, ?, ?, ?, ?)", (link_hash, tenant_id, actor_id, now, expires_at))

    def consume_login_link(self, link_hash: str, now: float) -> tuple[str, str] | None:
        with self.transaction() as conn:
            if self._x(conn, "UPDATE oauth_login_links SET used_at = ? WHERE hash = ? AND used_at IS NULL"
                       " AND expires_at > ?", (now, link_hash, now)).rowcount != 1:
                return None
            row = self._x(conn, "SELECT tenant_id, actor_id FROM oauth_login_links WHERE hash = ?",
                          (link_hash,)).fetchone()
        return (str(row[0]), str(row[1])) if row else None


def _iso(seconds: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")
