"""Records written outside the request path: operator events, recovered intents, not-forwarded outcomes."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from gateway.audit.log import Columns, Entry, Sealed, expected_columns, security_origin, tenant_origin
from gateway.audit.records import validate_body
from gateway.evidence.clock import now_time
from gateway.evidence.origins import origin_prefix
from gateway.store.base import Store

log = logging.getLogger("aegress.evidence")


def not_forwarded_entry(intent: Sealed, time_text: str) -> Entry:
    """The final record of a committed intent whose call never left the gateway."""
    seq = intent.record.seq
    body = {"intent_seq": seq, "status": "not_forwarded", "result_digest": None, "latency_ms": 0}
    columns = Columns(tenant=intent.entry.columns.tenant, actor=intent.entry.columns.actor,
                      tool=intent.entry.columns.tool, verdict=intent.entry.columns.verdict,
                      status="not_forwarded", intent_seq=seq)
    return Entry(intent.record.origin, "outcome", time_text, body, columns)


def append_events(store: Store, entries: Sequence[Entry]) -> list[Sealed]:
    """Synchronous append of events that change no stored state (key rotation); operator changes to the
    store are sealed in their own transaction (`gateway.sealed_change`)."""
    for entry in entries:
        validate_body(entry.kind, entry.body)
    return store.append_evidence(list(entries))


def event_entry(store: Store, tenant: str | None, kind: str, body: dict[str, Any], *,
                prefix: str | None = None) -> Entry:
    """An entry for a tenant log (tenant given) or the deployment's security log (tenant None); its
    columns are derived from the body (`expected_columns`), so `audit verify` can check them."""
    prefix = prefix or origin_prefix(store)
    origin = tenant_origin(prefix, tenant) if tenant else security_origin(prefix)
    return Entry(origin, kind, now_time(), body, expected_columns(kind, body, tenant or ""))


def record_event(store: Store, tenant: str | None, kind: str, body: dict[str, Any]) -> Sealed:
    """Append one event durably on its own (key rotation). An operator change to stored state is sealed
    in its own transaction instead: `gateway.sealed_change.sealed_change`."""
    return append_events(store, [event_entry(store, tenant, kind, body)])[0]


def operator_name() -> str:
    return os.environ.get("AEGRESS_OPERATOR") or os.environ.get("USER") or "operator"


def recover_open_intents(store: Store) -> int:
    """Start-up: append `outcome_unknown` for every intent a crash left without an outcome.

    Only intents this replica wrote (`store.replica_id`: set AEGRESS_REPLICA_ID to the same name on every
    restart of one replica), since other replicas sharing the database may have those calls in flight;
    every open intent when the store is `exclusive` (SQLite: one gateway per data dir)."""
    opened = store.open_intents(None if store.exclusive else store.replica_id)
    entries = [
        Entry(origin, "outcome_unknown", now_time(),
              {"intent_seq": seq, "reason": "the gateway stopped before the call's outcome was recorded"},
              Columns(tenant=tenant, status="outcome_unknown", intent_seq=seq))
        for origin, seq, tenant in opened
    ]
    if entries:
        store.append_evidence(entries)
        log.warning("recovered %d call(s) without an outcome: marked outcome_unknown", len(entries))
    return len(entries)


def decision_seq_for(store: Store, tenant: str, audit_id: str) -> int | None:
    """The seq of the `decision` record a refusal or hold (`aud_...` / `rev_...`) was sealed as, for a
    later `review_approved` / `review_denied` record's `decision_seq`."""
    from gateway.store.base import EvidenceFilter

    rows = store.query_evidence(EvidenceFilter(tenant=tenant, kind="decision",
                                               contains=f'"request_id":"{audit_id}"'), limit=1)
    return rows[0].seq if rows else None
