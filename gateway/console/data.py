"""What each console page shows, read from the store (synchronous: the app runs these in a worker thread).

The counters are `gateway.status`'s, the verdicts `gateway.policy`'s (exactly what the gateway decides),
the client snippets `gateway.clients`' renderers (which cannot hold a token), the deploy paths
`gateway.deploy`'s table. `check_records` verifies shown evidence records for real: each record's bytes
against its leaf hash, the log's newest signed checkpoint against the trusted verifier keys, the stored
leaves against that checkpoint's root, and the record's inclusion proof against it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.errors import AegressError
from gateway.status import GatewayProcess, Status, collect
from gateway.store.base import EvidenceFilter, EvidenceRow, HeldCall, Store

MAX_CHECKED_LEAVES = 200_000
"""A log longer than this is not re-hashed per page view (a few tenths of a second and ~50 MB at this size):
its records show `unchecked`, and `aegress audit verify` checks it."""
RECENT_EVIDENCE = 50
RECENT_CALLS = 12


# -- evidence and its verification ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """A shown record's verification state: verified | pending | failed | unchecked, and why."""

    state: str
    detail: str


def check_records(store: Store, home: Path, rows: Sequence[EvidenceRow]) -> dict[int, Check]:
    """Verify each row against its log's newest signed checkpoint (see the module docstring)."""
    from gateway.audit.checkpoint import open_checkpoint
    from gateway.audit.merkle import leaf_hash, verify_inclusion
    from gateway.audit.records import parse_record
    from gateway.evidence.keys import trusted_verifiers
    from gateway.evidence.proofs import stored_tree

    verifiers = trusted_verifiers(home)
    signed_at = {o: t for o, _, t in store.latest_checkpoints()}
    out: dict[int, Check] = {}
    by_origin: dict[str, list[EvidenceRow]] = {}
    for row in rows:
        by_origin.setdefault(row.origin, []).append(row)
    for origin, mine in by_origin.items():
        notes = store.list_checkpoints(origin)
        if not notes:
            for row in mine:
                out[row.id] = Check("pending", "sealed; no checkpoint signed for this log yet")
            continue
        try:
            checkpoint = open_checkpoint(notes[-1][1], verifiers, origin)
        except AegressError as exc:
            for row in mine:
                out[row.id] = Check("failed", f"the newest checkpoint does not verify: {exc.message}")
            continue
        size, total = checkpoint.size, store.evidence_size(origin)
        if total > MAX_CHECKED_LEAVES:
            for row in mine:
                out[row.id] = Check("unchecked", f"the log has {total:,} records, more than the console re-hashes "
                                    "per view; run `aegress audit verify`")
            continue
        tree = stored_tree(store, origin, size)
        matches = tree.size == size and tree.root() == checkpoint.root
        where = f"checkpoint {size:,} (signed {signed_at.get(origin, '?')})"
        for row in mine:
            out[row.id] = _check_one(row, tree, checkpoint.root, size, matches, where, parse_record, leaf_hash,
                                     verify_inclusion)
    return out


def _check_one(row: EvidenceRow, tree: Any, root: bytes, size: int, matches: bool, where: str,
               parse_record: Any, leaf_hash: Any, verify_inclusion: Any) -> Check:
    try:
        parse_record(row.data)
    except AegressError as exc:
        return Check("failed", f"not a valid record: {exc.message}")
    leaf = leaf_hash(row.data)
    if leaf != row.leaf_hash:
        return Check("failed", "the record's bytes do not hash to its stored leaf hash")
    if row.seq >= size:
        return Check("pending", f"sealed; after the newest {where}, awaiting the next")
    if not matches:
        return Check("failed", f"the stored log does not hash to the root of {where}")
    try:
        verify_inclusion(leaf, row.seq, size, tree.inclusion_proof(row.seq, size), root)
    except AegressError as exc:
        return Check("failed", f"inclusion proof fails: {exc.message}")
    return Check("verified", f"included in {where}")


def _body(row: EvidenceRow) -> dict[str, Any]:
    try:
        value = json.loads(row.data)["body"]
    except (ValueError, KeyError, TypeError):
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class EvidenceItem:
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
    leaf_hash: str
    body: dict[str, Any]
    check: Check


def recent_evidence(store: Store, home: Path, tenant: str | None, limit: int = RECENT_EVIDENCE) -> list[EvidenceItem]:
    rows = store.query_evidence(EvidenceFilter(tenant=tenant or ""), limit=limit)
    checks = check_records(store, home, rows)
    return [EvidenceItem(r.id, r.origin, r.seq, r.kind, r.time, r.tenant, r.actor, r.tool, r.verdict, r.status,
                         r.leaf_hash.hex(), _body(r), checks.get(r.id, Check("unchecked", "")))
            for r in rows]


@dataclass(frozen=True)
class CallPath:
    """One call as it went through the gateway: actor -> tenant -> policy -> tool -> evidence."""

    time: str
    actor: str
    client: str
    tenant: str
    policy_version: str
    rule_id: str
    verdict: str
    upstream: str
    tool: str
    origin: str
    seq: int
    kind: str
    leaf_hash: str
    check: Check


def recent_calls(store: Store, home: Path, tenant: str | None, limit: int = RECENT_CALLS) -> list[CallPath]:
    rows: list[EvidenceRow] = []
    for kind in ("intent", "decision"):
        rows += store.query_evidence(EvidenceFilter(tenant=tenant or "", kind=kind), limit=limit)
    rows = sorted(rows, key=lambda r: r.id, reverse=True)[:limit]
    checks = check_records(store, home, rows)
    out = []
    for r in rows:
        b = _body(r)
        client = " ".join(str(b.get(k) or "") for k in ("client_name", "client_version")).strip()
        out.append(CallPath(r.time, r.actor, client or "-", r.tenant, str(b.get("policy_version", "")),
                            str(b.get("rule_id") or "-"), r.verdict, str(b.get("upstream", "")), r.tool, r.origin,
                            r.seq, r.kind, r.leaf_hash.hex(), checks.get(r.id, Check("unchecked", ""))))
    return out


# -- tools and their verdicts ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ToolVerdict:
    exposed: str
    upstream: str
    name: str
    known: bool  # a definition the gateway listed (else only its name, from `upstream add`)
    pin: str | None
    verdicts: list[tuple[str, str, bool, str]]  # (actor, verdict, visible, rule id), one per actor

    @property
    def summary(self) -> tuple[str, bool, str, bool]:
        """(verdict, visible, rule id, the same for every actor)."""
        first = self.verdicts[0]
        same = all(v[1:] == first[1:] for v in self.verdicts)
        return first[1], first[2], first[3], same


@dataclass(frozen=True)
class TenantTools:
    tenant: str
    policy: str  # "v3 (policy.toml, applied ... by ...)" or the built-in default
    error: str | None
    complete: bool
    actors: list[str]
    tools: list[ToolVerdict] = field(default_factory=list)


def tenant_tools(store: Store, tenant: str) -> TenantTools:
    """Every tool of the tenant with the verdict the gateway would give each actor (gateway.policy)."""
    from gateway import naming, policy_admin
    from gateway.decide import BUILTIN_DEFAULT_NAME
    from gateway.policy import Kind, Request, evaluate, visible

    row = store.get_policy_version(tenant)
    described = (f"v{row.version} ({row.filename}, applied {row.applied_at} by {row.applied_by})" if row
                 else BUILTIN_DEFAULT_NAME)
    actors = [a.id for a in store.list_actors(tenant)]
    try:
        state = policy_admin.tenant_state(store, tenant)
    except AegressError as exc:
        return TenantTools(tenant, described, exc.message, False, actors)
    refs, complete = policy_admin.tenant_tools(store, tenant)
    known = {u: {str(t.get("name")) for t in ts} for u, ts in store.get_tool_definitions(tenant).items()}
    prefixed = {s.name: s.prefix for s in store.list_upstreams(tenant)}
    tools = []
    for ref in refs:
        name = str(ref.tool.get("name", ""))
        is_known = name in known.get(ref.upstream, set())
        pin = state.pin_status(ref.upstream, ref.tool) if is_known else None
        verdicts = []
        for actor in actors or [""]:
            request = Request(Kind.TOOL, ref.upstream, name, actor, tool=ref.tool, pin=pin)
            decision = evaluate(state.policy, request)
            verdicts.append((actor or "(any)", str(decision.verdict), visible(state.policy, request), decision.rule_id))
        exposed = naming.prefixed(ref.upstream, name) if prefixed.get(ref.upstream, True) else name
        tools.append(ToolVerdict(exposed, ref.upstream, name, is_known, str(pin) if pin else None, verdicts))
    return TenantTools(tenant, described, None, complete, actors, tools)


# -- reviews, clients, deploy ------------------------------------------------------------------------------------
def reviews(store: Store, tenant: str | None) -> tuple[list[HeldCall], list[HeldCall]]:
    """(pending, recently decided)."""
    pending = store.list_held_calls(tenant, "pending", limit=100)
    decided = [h for h in store.list_held_calls(tenant, None, limit=60) if h.status != "pending"][:30]
    return pending, decided


@dataclass(frozen=True)
class Snippet:
    client: str
    title: str
    scope: str
    text: str


def client_snippets(url: str, tenant: str, actor: str) -> list[Snippet]:
    """Each supported client's config entry for `tenant`/`actor` at `url` (no token: it comes from the
    client's environment, AEGRESS_MCP_GATEWAY_TOKEN)."""
    from gateway.clients import CLIENTS, EntryRequest

    request = EntryRequest(url=url, tenant=tenant, actor=actor)
    out = []
    for spec in CLIENTS.values():
        scope = spec.scopes[0] if spec.scopes else "user"
        try:
            text = spec.snippet(request, scope)
        except AegressError as exc:
            text = f"(cannot render: {exc.message})"
        out.append(Snippet(spec.name, spec.title, scope if spec.scopes else "-", text))
    return out


def gateway_status(store: Store, home: Path, process: GatewayProcess, now: datetime, tenant: str | None) -> Status:
    return collect(store, home, process, now=now, tenant=tenant)


def tenant_ids(store: Store) -> list[str]:
    return [t.id for t in store.list_tenants()]


def summarise(items: Iterable[EvidenceItem]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item.check.state] = counts.get(item.check.state, 0) + 1
    return counts
