"""The store interface every backend implements; the server and CLI depend on this only.

The rules that stop an evidence log from forking are part of this contract, not of one backend:

* every append runs in ONE write transaction that first takes each touched log's head with every
  other writer of that log held off until COMMIT (`EvidenceTx.lock_heads`: SQLite's write lock,
  Postgres an advisory lock per origin, in one global order so two writers never deadlock);
* records are chained onto those heads by the shared `extend_logs` (pure `gateway.audit.log.seal`),
  never by backend code;
* the schema keeps `(origin, seq)` unique (`gateway.store.migrations`), so a writer that slipped past
  the lock fails instead of forking the log, and stores the exact hashed bytes.

An import (`aegress audit import`, moving a log between stores) never seals: it inserts records that were
sealed elsewhere, exact bytes at their seqs, under the same locks, and only where they continue the log
(`plan_import`, the one import rule of every store).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from gateway.types import Actor, CallRecord, Tenant, TokenInfo, UpstreamSpec

if TYPE_CHECKING:
    from gateway.audit.log import Entry, Sealed
    from gateway.audit.records import ChainHead
    from gateway.store.migrations import SchemaStatus


# -- the policy gate's records (issue 3) ----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PolicyVersion:
    """One applied policy file of a tenant; versions count up from 1 per tenant."""

    tenant_id: str
    version: int
    text: str
    filename: str
    digest: str
    applied_at: str
    applied_by: str


@dataclass(frozen=True, slots=True)
class PinChange:
    """A tool definition that differs from its pin (old_hash "" = a new tool), and how it was resolved."""

    id: int
    tenant_id: str
    upstream: str
    tool: str
    old_hash: str
    new_hash: str
    seen_at: str
    resolved_at: str | None = None
    resolved_by: str | None = None


@dataclass(frozen=True, slots=True)
class HeldCall:
    """A call the policy sent to review, and its decision. Times are seconds since the epoch.

    status: pending -> approved | denied. An approved hold is the approval: bound to tenant, actor,
    upstream, tool and argument digest, valid until `expires_at`, used at most once (`used_at`)."""

    id: str
    tenant_id: str
    actor_id: str
    upstream: str
    tool: str
    exposed: str
    args_digest: str
    arguments: str
    rule_id: str
    reason: str
    policy_version: int
    mode: str
    status: str
    created_at: float
    decided_by: str | None = None
    decided_at: float | None = None
    decision_reason: str | None = None
    expires_at: float | None = None
    used_at: float | None = None


# -- sealed evidence (issue 4) ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class EvidenceRow:
    """One stored evidence record: `data` is the exact canonical bytes; the rest are queryable copies."""

    id: int
    origin: str
    seq: int
    kind: str
    time: str
    tenant: str
    actor: str
    tool: str
    verdict: str
    status: str
    intent_seq: int | None
    leaf_hash: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class EvidenceFilter:
    """Filters of `audit query`; empty strings mean "any". Times compare as RFC 3339 text."""

    origin: str = ""
    tenant: str = ""
    actor: str = ""
    tool: str = ""
    verdict: str = ""
    status: str = ""
    kind: str = ""
    since: str = ""
    until: str = ""
    after_id: int = 0
    contains: str = ""  # a digest (`hmac-sha256:...`) the record's bytes must contain


# -- OAuth mode (issue 13) -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TrustedIssuer:
    """An identity provider one tenant trusts, and how its tokens' claims map to tenant and actor.

    Empty strings mean the default: `audience` the gateway's canonical resource URI (the tenant's own
    with per-tenant resource URIs), `tenant_claim` none (the issuer alone names the tenant),
    `tenant_value` the tenant id, `jwks_uri` discovered from the issuer's metadata."""

    tenant_id: str
    issuer: str
    audience: str = ""
    tenant_claim: str = ""
    tenant_value: str = ""
    actor_claim: str = "sub"
    scopes: tuple[str, ...] = ("mcp",)
    jwks_uri: str = ""
    require_known_actor: bool = False
    created_at: str = ""


@dataclass(frozen=True, slots=True)
class OAuthClient:
    """A client of the embedded authorization server: registered (RFC 7591) or known by its client ID
    metadata document (`kind` "metadata-document", `id` the document's URL). `secret_hash` is the keyed
    hash of a confidential client's secret ("" for a public client)."""

    id: str
    name: str
    redirect_uris: tuple[str, ...]
    auth_method: str
    kind: str
    created_at: str
    secret_hash: str = ""
    metadata: str = "{}"
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


# -- the operator view (issue 14) -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class OperatorToken:
    """An operator credential for the console (`aegop_...`), as the database knows it: never the token
    itself, only its keyed hash. It opens the read-only console; it never binds an MCP client."""

    id: str
    label: str
    created_at: str
    created_by: str
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class OAuthGrant:
    """One consent: this actor of this tenant let this client act on this resource with these scopes."""

    id: str
    tenant_id: str
    actor_id: str
    client_id: str
    resource: str
    scope: str
    created_at: str
    revoked_at: str | None = None
    revoked_reason: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class OAuthCode:
    """A stored authorization code (keyed by its hash): what the token request must match."""

    grant_id: str
    client_id: str
    redirect_uri: str
    code_challenge: str
    resource: str
    scope: str
    expires_at: float
    used_at: float | None = None




class WouldBlock(Exception):
    """A `*_nowait` read that could only be answered after a wait (a lock, a network round trip): the caller
    asks again with the blocking method, in a worker thread."""


BeforeCommit = Callable[[list["Sealed"]], None]
"""Called with the sealed records inside the transaction, just before COMMIT (crash tests)."""


class EvidenceTx(Protocol):
    """What a store does to extend logs inside ONE open write transaction (see the module docstring)."""

    def lock_heads(self, origins: Sequence[str]) -> dict[str, ChainHead]:
        """The current head of each origin (missing: not started), read inside the transaction after
        taking the origin's write lock, held until COMMIT or ROLLBACK."""
        ...

    def insert_sealed(self, sealed: Sequence[Sealed], heads: Mapping[str, ChainHead], replica: str) -> None:
        """Insert the records (exact bytes, queryable copies, the writing replica), the new heads and the
        plain `calls` copies; a duplicate (origin, seq) raises instead of forking."""
        ...


@dataclass(frozen=True, slots=True)
class ImportedLog:
    """Records sealed elsewhere, to insert as they are: exact bytes at their seqs (with the columns they imply,
    `gateway.audit.log.restore`) from `start` on; `prev` is the leaf hash of the record before `start` (None
    at genesis); `checkpoints` are (size, root, signed note) that verified against them."""

    origin: str
    start: int
    prev: bytes | None
    records: tuple[Sealed, ...]
    checkpoints: tuple[tuple[int, bytes, str], ...] = ()

    @property
    def end(self) -> int:
        return self.start + len(self.records)


@dataclass(frozen=True, slots=True)
class LogImported:
    """What an import did to one log: `status` is `created` (the log was empty), `extended` (records appended
    after the ones it held) or `unchanged` (it already held every record); seqs [first, end) were written."""

    origin: str
    status: str
    first: int
    end: int
    size_before: int
    checkpoints: int

    @property
    def records(self) -> int:
        return self.end - self.first


@dataclass(frozen=True, slots=True)
class ImportPlan:
    """What `plan_import` decided: the records and checkpoints to insert and the log's new head (None: the
    records change nothing)."""

    records: tuple[Sealed, ...]
    head: ChainHead | None
    checkpoints: tuple[tuple[int, bytes, str], ...]
    result: LogImported


def plan_import(log: ImportedLog, head: ChainHead | None, stored: Sequence[bytes],
                stored_roots: Mapping[int, bytes]) -> ImportPlan:
    """The one import rule, pure: `log` goes in only where it continues the stored log exactly.

    `head` is the stored log's head (None: empty), `stored` the stored record bytes at seqs
    [log.start, min(log.end, head size)) in seq order, `stored_roots` the stored checkpoints' roots by size.
    The stored log must be empty, or end exactly where `log` starts with the leaf hash `log.prev`, or hold
    the same bytes where the two overlap (then only the records after its end are new: importing the same
    bundle twice changes nothing). Anything else raises ImportConflict and nothing may be written:
    `import-gap` (records before `log.start` are missing), `import-fork` (other bytes at a seq, another
    chain link at the join, another checkpoint root at a size)."""
    from gateway.audit.errors import ImportConflict
    from gateway.audit.records import ChainHead

    size = head.size if head is not None else 0
    where = f"log {log.origin}"
    if log.start > size:
        raise ImportConflict(
            f"The bundle of {where} starts at seq {log.start}, but this database's log ends at seq {size}: "
            f"records {size}..{log.start - 1} would be missing.",
            hint="Nothing was imported. Import the bundle that holds those records first, or export the whole "
                 "log (without --since).", code="import-gap")
    if log.start == size and size > 0 and log.records and (head is None or log.prev != head.last_hash):
        raise ImportConflict(
            f"The bundle of {where} does not continue this database's log: its first record (seq {size}) "
            f"does not link to the stored record {size - 1}. The two logs have forked.",
            hint="Nothing was imported. Both logs keep their own history; keep them apart (`aegress audit "
                 "verify` each) and find out which deployment wrote the other one.")
    overlap = max(0, min(log.end, size) - log.start)
    if len(stored) != overlap:
        raise ImportConflict(
            f"This database's {where} is missing records it counts ({len(stored)} of {overlap} between seq "
            f"{log.start} and {log.start + overlap}).", hint="Nothing was imported. Run `aegress audit verify`.")
    for i, data in enumerate(stored):
        if data != log.records[i].record.canonical:
            raise ImportConflict(
                f"The bundle of {where} holds other bytes at seq {log.start + i} than this database: the two "
                "logs have forked.",
                hint="Nothing was imported. Keep both for investigation (`aegress audit verify`; `aegress "
                     "audit show`) and find out which deployment wrote the other one.")
    checkpoints = []
    for cp_size, root, note in log.checkpoints:
        known = stored_roots.get(cp_size)
        if known is None:
            checkpoints.append((cp_size, root, note))
        elif known != root:
            raise ImportConflict(
                f"This database holds a checkpoint of {where} at size {cp_size} with another root than the "
                "bundle's: the two logs have forked.", hint="Nothing was imported. Run `aegress audit verify`.")
    new = log.records[overlap:]
    new_head = ChainHead(log.origin, log.end, new[-1].record.leaf_hash) if new else None
    status = "unchanged" if not new else ("created" if size == 0 else "extended")
    first = log.start + overlap
    result = LogImported(log.origin, status, first, first + len(new), size, len(checkpoints))
    return ImportPlan(tuple(new), new_head, tuple(checkpoints), result)


def extend_logs(tx: EvidenceTx, entries: Sequence[Entry], replica: str) -> list[Sealed]:
    """Chain `entries` onto their logs inside `tx`'s open transaction: the one append rule of every store."""
    from gateway.audit.log import seal

    if not entries:
        return []
    origins = sorted({entry.origin for entry in entries})
    heads = tx.lock_heads(origins)
    sealed, new_heads = seal(entries, heads)
    tx.insert_sealed(sealed, {origin: new_heads[origin] for origin in origins}, replica)
    return sealed


class Store(Protocol):
    """Synchronous by design: SQLite calls are microseconds; `inline_safe` tells the server whether it
    may call read methods on the event loop or must use a worker thread.

    `replica_id` names the gateway process that opened the store (`AEGRESS_REPLICA_ID`, else random at
    start); evidence records carry it (a column, not the hashed bytes). `exclusive` is True when one
    gateway at a time owns the whole database (SQLite: the data dir lock), so start-up recovery may close
    every open intent; otherwise only its own replica's."""

    inline_safe: bool
    replica_id: str
    exclusive: bool

    def close(self) -> None: ...
    def ping(self) -> None: ...

    # schema (gateway.store.migrations)
    def schema_status(self) -> SchemaStatus: ...
    def migrate(self) -> list[int]:
        """Apply the missing migrations (under the database's migration lock); the versions applied."""
        ...

    # transactions
    def transaction(self) -> AbstractContextManager[object]:
        """One write transaction: the block's store writes on this thread commit together or not at all.
        Nested on the same thread (or inside `sealed()`), it is a savepoint of the open transaction."""
        ...

    # tenants
    def create_tenant(self, tenant_id: str, now: str) -> Tenant: ...
    def get_tenant(self, tenant_id: str) -> Tenant | None: ...
    def list_tenants(self) -> list[Tenant]: ...
    def delete_tenant(self, tenant_id: str) -> None: ...

    # actors
    def add_actor(self, tenant_id: str, actor_id: str, now: str) -> Actor: ...
    def get_actor(self, tenant_id: str, actor_id: str) -> Actor | None: ...
    def list_actors(self, tenant_id: str) -> list[Actor]: ...
    def remove_actor(self, tenant_id: str, actor_id: str) -> None: ...

    # tokens
    def add_token(self, info: TokenInfo, token_hash: str) -> None: ...
    def find_token(self, token_hash: str) -> TokenInfo | None: ...
    def find_token_nowait(self, token_hash: str) -> TokenInfo | None:
        """`find_token` without waiting, safe on the event loop; raises WouldBlock when it cannot answer at once."""
        raise WouldBlock
    async def find_token_async(self, token_hash: str) -> TokenInfo | None:
        """`find_token` awaited on the event loop, for when `find_token_nowait` said WouldBlock: a worker thread
        by default; Postgres awaits the query itself (no thread hand-over on every request)."""
        ...
    def get_token(self, token_id: str) -> TokenInfo | None: ...
    def active_tokens(self, token_ids: Iterable[str]) -> set[str]:
        """Which of these token ids exist and are not revoked (one batched read: the gateway's re-check of
        what open sessions and streams hold)."""
        ...
    def list_tokens(self, tenant_id: str | None = None, actor_id: str | None = None) -> list[TokenInfo]: ...
    def revoke_token(self, token_id: str, now: str) -> TokenInfo: ...

    # upstreams
    def add_upstream(self, spec: UpstreamSpec) -> None: ...
    def update_upstream(self, spec: UpstreamSpec) -> None:
        """Replace a registered upstream's settings (same tenant and name); bumps `upstreams_version`."""
        ...
    def get_upstream(self, tenant_id: str, name: str) -> UpstreamSpec | None: ...
    def list_upstreams(self, tenant_id: str) -> list[UpstreamSpec]: ...
    def remove_upstream(self, tenant_id: str, name: str) -> None: ...
    def set_upstream_tools(self, tenant_id: str, name: str, tool_names: Sequence[str]) -> None: ...
    def get_upstream_tools(self, tenant_id: str) -> dict[str, list[str]]: ...
    def upstreams_version(self) -> int: ...

    # values the replicas of one database agree on (first writer wins; see SqlStore.shared_value)
    def shared_value(self, key: str, proposed: str) -> str: ...

    # ended sessions (gateway.sessions): a session id carries its state; ending it is recorded for all replicas
    def end_session(self, digest: str, now: float) -> None:
        """Record the session whose id has this sha256 as ended (epoch seconds); idempotent."""
        ...
    def ended_sessions(self, digests: Sequence[str]) -> set[str]:
        """Those of `digests` recorded as ended (bounded batches)."""
        ...
    def prune_ended_sessions(self, before: float) -> int:
        """Delete the records of sessions ended before `before`; how many were deleted."""
        ...

    # calls (the record stage's plain records)
    def list_calls(self, tenant_id: str | None = None, limit: int = 100) -> list[CallRecord]: ...

    # sealed evidence (issue 4): logs of exact record bytes, chain heads, signed checkpoints
    def evidence_prefix(self, default: str) -> str: ...
    def append_evidence(self, entries: Sequence[Entry], before_commit: BeforeCommit | None = None) -> list[Sealed]:
        """Seal and insert a batch in ONE transaction (group commit), by `extend_logs`."""
        ...
    inline_commits: bool
    """True when `append_evidence_nowait` can commit on the event loop (SQLite: a local file); the evidence
    writer then commits a lone call's intent there instead of handing it to its thread and back."""
    def append_evidence_nowait(self, entries: Sequence[Entry],
                               before_commit: BeforeCommit | None = None) -> list[Sealed]:
        """`append_evidence` without waiting for another writer's lock; WouldBlock when it would wait."""
        raise WouldBlock
    def sealed(self) -> AbstractContextManager[list[Entry]]:
        """An operator change and its evidence entries (appended to the yielded list) in ONE transaction:
        store writes made on this thread inside the block commit together with the sealed records, or
        not at all."""
        ...
    def evidence_origins(self) -> list[str]: ...
    def evidence_size(self, origin: str) -> int: ...
    def evidence_records(self, origin: str, start: int = 0, end: int | None = None) -> list[tuple[int, bytes]]: ...
    def evidence_leaf_hashes(self, origin: str, start: int = 0) -> list[bytes]: ...
    def open_intents(self, replica: str | None = None) -> list[tuple[str, int, str]]:
        """(origin, seq, tenant) of intents without an outcome: those `replica` wrote (None: every one)."""
        ...
    def query_evidence(self, where: EvidenceFilter, limit: int = 100,
                       newest_first: bool = True) -> list[EvidenceRow]: ...
    def get_evidence(self, record_id: int) -> EvidenceRow | None: ...
    def get_evidence_at(self, origin: str, seq: int) -> EvidenceRow | None: ...
    def add_checkpoint(self, origin: str, size: int, root: bytes, note: str, now: str) -> None: ...
    def import_evidence(self, logs: Sequence[ImportedLog], prefix: str, now: str) -> list[LogImported]:
        """Insert records sealed elsewhere, as they are, in ONE transaction under the logs' write locks
        (`EvidenceTx.lock_heads`), where `plan_import` allows; raises ImportConflict (nothing written) where
        it does not. `prefix` is the logs' origin prefix: it becomes this database's when it has none, or none
        that names a record; another prefix with records is `import-other-deployment`."""
        ...
    def list_checkpoints(self, origin: str) -> list[tuple[int, str]]: ...
    def probe_write(self, now: str) -> None: ...

    # policies (versions per tenant; `policies_version` counts every policy or pin change, for polling)
    def add_policy_version(self, tenant_id: str, text: str, filename: str, digest: str, applied_at: str,
                           applied_by: str) -> PolicyVersion: ...
    def get_policy_version(self, tenant_id: str, version: int | None = None) -> PolicyVersion | None: ...
    def list_policy_versions(self, tenant_id: str) -> list[PolicyVersion]: ...
    def latest_policy_versions(self) -> dict[str, int]: ...
    def policies_version(self) -> int: ...

    # tool definitions as last listed by the gateway (for plans, tests and pins)
    def set_tool_definitions(self, tenant_id: str, upstream: str, tools: Sequence[Mapping[str, Any]],
                             hashes: Sequence[str], now: str) -> None: ...
    def get_tool_definitions(self, tenant_id: str) -> dict[str, list[dict[str, Any]]]: ...
    def observe_tools(self, tenant_id: str, upstream: str, tools: Sequence[Mapping[str, Any]],
                      hashes: Sequence[str], first_pins: Mapping[str, str] | None,
                      changes: Sequence[tuple[str, str, str]], by: str, now: str) -> None: ...

    # tool pins and their change records
    def get_pins(self, tenant_id: str) -> dict[str, dict[str, str]]: ...
    def pinned_upstreams(self, tenant_id: str) -> set[str]: ...
    def set_pins(self, tenant_id: str, upstream: str, pins: Mapping[str, str], by: str, now: str) -> None: ...
    def record_pin_changes(self, tenant_id: str, upstream: str, changes: Sequence[tuple[str, str, str]],
                           now: str) -> None: ...
    def list_pin_changes(self, tenant_id: str, limit: int = 200) -> list[PinChange]: ...

    # OAuth mode (issue 13): trusted issuers; `oauth_version` counts every issuer, client or grant change
    def add_trusted_issuer(self, entry: TrustedIssuer) -> None: ...
    def list_trusted_issuers(self, tenant_id: str | None = None) -> list[TrustedIssuer]: ...
    def remove_trusted_issuer(self, tenant_id: str, issuer: str) -> None: ...
    def oauth_version(self) -> int: ...

    # the embedded authorization server: clients, grants, codes, refresh tokens
    def add_oauth_client(self, client: OAuthClient) -> None:
        """Insert a client; a metadata-document client already known keeps its row (and its revocation)."""
        ...
    def get_oauth_client(self, client_id: str) -> OAuthClient | None: ...
    def list_oauth_clients(self) -> list[OAuthClient]: ...
    def revoke_oauth_client(self, client_id: str, now: str) -> OAuthClient:
        """Revoke a client and every grant it holds."""
        ...
    def add_oauth_grant(self, grant: OAuthGrant) -> None: ...
    def get_oauth_grant(self, grant_id: str) -> OAuthGrant | None: ...
    def list_oauth_grants(self, tenant_id: str | None = None, client_id: str | None = None) -> list[OAuthGrant]: ...
    def revoke_oauth_grant(self, grant_id: str, now: str, reason: str) -> bool:
        """Revoke an active grant: True when this call revoked it (its refresh tokens stop working too)."""
        ...
    def active_grant(self, grant_id: str) -> OAuthGrant | None:
        """The grant when it, its client and its actor are all still there and active (else None)."""
        ...
    def add_oauth_code(self, code_hash: str, code: OAuthCode) -> None: ...
    def consume_oauth_code(self, code_hash: str, now: float) -> tuple[str, OAuthCode | None]:
        """Use a code once, atomically across replicas: ("ok", code), ("used", code) for a replay,
        ("expired", code) or ("unknown", None)."""
        ...
    def add_refresh_token(self, token_hash: str, grant_id: str, client_id: str, now: float,
                          expires_at: float) -> None: ...
    def find_refresh_token(self, token_hash: str) -> tuple[str, str] | None:
        """(grant id, client id) of a stored refresh token, spent or not (for revocation, RFC 7009)."""
        ...
    def rotate_refresh_token(self, old_hash: str, new_hash: str, now: float,
                             expires_at: float) -> tuple[str, str | None]:
        """Spend a refresh token and store its successor in ONE transaction: ("ok", grant id); ("reused",
        grant id) when it was spent before, which revokes the grant in the same transaction; ("expired" |
        "revoked", grant id); ("unknown", None)."""
        ...

    # sign-in: actor passwords (scrypt hashes) and one-time login links (keyed hashes)
    def set_actor_password(self, tenant_id: str, actor_id: str, password_hash: str, now: str) -> None: ...
    def get_actor_password(self, tenant_id: str, actor_id: str) -> str | None: ...
    def add_login_link(self, link_hash: str, tenant_id: str, actor_id: str, now: float, expires_at: float) -> None: ...
    def consume_login_link(self, link_hash: str, now: float) -> tuple[str, str] | None:
        """(tenant, actor) of an unexpired, unused link, now used (once, across replicas); else None."""
        ...


    # operator credentials (the console; gateway.operators)
    def add_operator_token(self, info: OperatorToken, token_hash: str) -> None: ...
    def find_operator_token(self, token_hash: str) -> OperatorToken | None: ...
    def get_operator_token(self, token_id: str) -> OperatorToken | None: ...
    def list_operator_tokens(self) -> list[OperatorToken]: ...
    def revoke_operator_token(self, token_id: str, now: str) -> OperatorToken: ...

    # the operator view (gateway.status): counts and summaries, each one statement
    def count_evidence(self, tenant: str | None = None, since: str = "") -> list[tuple[str, str, int]]:
        """(kind, verdict, records) of every record (of one tenant's log; `since`: time >= it)."""
        ...
    def evidence_sizes(self) -> dict[str, int]:
        """Records per log (origin), from the chain heads."""
        ...
    def latest_checkpoints(self) -> list[tuple[str, int, str]]:
        """(origin, size, signed_at) of each log's newest stored checkpoint."""
        ...
    def client_activity(self, tenant: str | None = None) -> list[tuple[str, int, str]]:
        """(client name, calls, last call's start) per MCP client name the calls name."""
        ...
    def upstream_activity(self, since: str, tenant: str | None = None) -> list[tuple[str, str, str, int]]:
        """(tenant, upstream, outcome, calls) of the calls started at or after `since`."""
        ...
    def record_verification(self, summary: str) -> None:
        """Keep the last `audit verify` result (JSON text) for `aegress status` and the console."""
        ...
    def last_verification(self) -> str | None: ...

    # held calls and approvals
    def add_held_call(self, held: HeldCall) -> None: ...
    def get_held_call(self, held_id: str) -> HeldCall | None: ...
    def list_held_calls(self, tenant_id: str | None = None, status: str | None = None,
                        limit: int = 100) -> list[HeldCall]: ...
    def count_held_calls(self, tenant_id: str | None = None, status: str | None = None) -> int:
        """How many held calls match, without reading them (the metrics' review queue depth)."""
        ...
    def find_pending_hold(self, tenant_id: str, actor_id: str, upstream: str, tool: str,
                          args_digest: str) -> HeldCall | None: ...
    def decide_held_call(self, held_id: str, status: str, by: str, at: float, reason: str,
                         expires_at: float | None) -> bool: ...
    def consume_approval(self, tenant_id: str, actor_id: str, upstream: str, tool: str, args_digest: str,
                         now: float) -> HeldCall | None: ...
