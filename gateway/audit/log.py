"""Appending to a log, independent of the store: entries in, sealed records out.

An `Entry` is what a writer wants recorded (origin, kind, time, body) plus the queryable copies a store
indexes (tenant, actor, tool, verdict, status, intent_seq). `seal` turns a batch of entries into records
given each log's current head, so every store (SQLite with one writer, Postgres with several) runs the
same chaining code inside its own transaction: read the heads, seal, insert, commit. A store enforces
`(origin, seq)` uniqueness, so two writers that raced can never both commit the same position (no fork).

Origins: the deployment has one origin prefix (stored once, e.g. `aegress.local/d-1a2b3c4d`); tenant logs
are `<prefix>/tenant/<tenant id>` and the deployment's security log is `<prefix>/security`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.audit.merkle import leaf_hash
from gateway.audit.records import BuiltRecord, ChainHead, parse_record
from gateway.types import CallRecord

SECURITY_LOG = "security"


def tenant_origin(prefix: str, tenant: str) -> str:
    return f"{prefix}/tenant/{tenant}"


def security_origin(prefix: str) -> str:
    return f"{prefix}/{SECURITY_LOG}"


def tenant_of(prefix: str, origin: str) -> str | None:
    """The tenant id of a tenant log's origin; None for the security log or another deployment."""
    head = f"{prefix}/tenant/"
    return origin[len(head):] if origin.startswith(head) else None


def origin_prefixes(origin: str) -> list[str]:
    """The deployment prefixes `origin` can belong to, a tenant log's reading first; at most two, since a
    tenant named `security` under `P` and the security log of a prefix `P/tenant` share one origin."""
    head, _, last = origin.rpartition("/")
    base, _, middle = head.rpartition("/")
    found = [base] if middle == "tenant" and base and last else []
    if last == SECURITY_LOG and head:
        found.append(head)
    return found


@dataclass(frozen=True)
class Columns:
    """Queryable copies of a record's fields (never the source of truth: the bytes are)."""

    tenant: str = ""
    actor: str = ""
    tool: str = ""
    verdict: str = ""
    status: str = ""
    intent_seq: int | None = None


_CALL_KINDS = frozenset({"intent", "decision"})
_ANSWER_KINDS = frozenset({"outcome", "outcome_unknown"})


def expected_columns(kind: str, body: Mapping[str, Any], tenant: str,
                     intent: Mapping[str, Any] | None = None) -> Columns:
    """The queryable copies a record's bytes imply, so writers and verifiers derive them alike.

    `tenant` is the tenant of the record's log ("" for the security log). An outcome's actor, tool and
    verdict are its intent's (`intent`: that intent record's body; None when it is not at hand, e.g. in
    a partial export, and then those three are left empty). Every writer builds its columns with this
    function, and `audit verify` compares each stored column with it: a column edited in the database
    is found even though the hashed bytes are intact.
    """
    if kind in _CALL_KINDS:
        return Columns(tenant=tenant, actor=str(body["actor"]), tool=str(body["tool"]), verdict=str(body["verdict"]),
                       status="" if kind == "intent" else "not_forwarded")
    if kind in _ANSWER_KINDS:
        status = str(body["status"]) if kind == "outcome" else kind
        if kind == "outcome" and intent is not None:
            return Columns(tenant=tenant, actor=str(intent["actor"]), tool=str(intent["tool"]),
                           verdict=str(intent["verdict"]), status=status, intent_seq=int(body["intent_seq"]))
        return Columns(tenant=tenant, status=status, intent_seq=int(body["intent_seq"]))
    actor = body.get("actor") or body.get("reviewer") or ""
    status = str(body["action"]) if kind == "elicitation_answer" else ""
    return Columns(tenant=tenant, actor=str(actor), verdict=kind, status=status)


@dataclass(frozen=True)
class Entry:
    origin: str
    kind: str
    time: str
    body: Mapping[str, Any]
    columns: Columns = field(default_factory=Columns)
    call: CallRecord | None = None
    """An optional plain CallRecord copy the store keeps for `list_calls` (written in the same transaction)."""


@dataclass(frozen=True)
class Sealed:
    entry: Entry
    record: BuiltRecord


def seal(entries: Sequence[Entry], heads: Mapping[str, ChainHead]) -> tuple[list[Sealed], dict[str, ChainHead]]:
    """Chain `entries` onto `heads` (origin -> head; missing origins start at genesis), in order.

    Pure: raises InvalidRecord for a bad body, and then nothing of the batch should be stored.
    """
    current = dict(heads)
    out: list[Sealed] = []
    for entry in entries:
        head = current.get(entry.origin) or ChainHead.genesis(entry.origin)
        record, current[entry.origin] = head.append(kind=entry.kind, time=entry.time, body=entry.body)
        out.append(Sealed(entry, record))
    return out, current


def restore(data: bytes, tenant: str, intent: Mapping[str, Any] | None = None) -> Sealed:
    """A stored record's exact bytes as the `Sealed` a store inserts, for an import: never re-sealed, the
    bytes stay as they are; the queryable copies are the ones the bytes imply (`expected_columns`, with an
    outcome's `intent` body). Pure: raises InvalidRecord for bytes that are not a record."""
    record = parse_record(data)
    columns = expected_columns(record.kind, record.body, tenant, intent)
    return Sealed(Entry(record.origin, record.kind, record.time, record.body, columns),
                  BuiltRecord(record.origin, record.seq, record.kind, data, leaf_hash(data)))
