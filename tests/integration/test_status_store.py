"""The operator view on each real store (SQLite, the machine's Postgres): operator tokens, the counts and
summaries `aegress status` reads, and the console's verification of shown records (tampering included)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway import operators
from gateway.audit.log import Entry, expected_columns, tenant_origin
from gateway.audit.verify import verify_log
from gateway.console import data
from gateway.errors import NotFound
from gateway.evidence.checkpointer import Checkpointer
from gateway.evidence.keys import load_signing_key_for, trusted_verifiers
from gateway.evidence.origins import origin_prefix
from gateway.evidence.settings import EvidenceSettings
from gateway.record import CallFacts, call_entry, outcome_entry
from gateway.status import GatewayProcess, collect, evidence_time, remember_verification
from gateway.store.base import EvidenceFilter, OperatorToken, Store
from gateway.types import Decision, Identity, UpstreamSpec
from tests.pg import sql

T0 = "2026-01-01T00:00:00+00:00"
MASTER = b"m" * 32
KEY = b"k" * 32


def test_operator_tokens(store: Store) -> None:
    store.add_operator_token(OperatorToken("op_1", "laptop", T0, "ops"), "h1")
    store.add_operator_token(OperatorToken("op_2", "", T0, "ops"), "h2")
    assert store.find_operator_token("h1") == OperatorToken("op_1", "laptop", T0, "ops", None)
    assert store.find_operator_token("nope") is None and store.find_token("h1") is None  # not an actor token
    assert [t.id for t in store.list_operator_tokens()] == ["op_1", "op_2"]
    revoked = store.revoke_operator_token("op_1", "later")
    assert revoked.revoked_at == "later" and not revoked.active
    assert store.revoke_operator_token("op_1", "even later").revoked_at == "later"  # the first time stays
    with pytest.raises(NotFound):
        store.revoke_operator_token("op_9", "now")


def test_issuing_and_revoking_operator_tokens_is_sealed_in_the_security_log(store: Store) -> None:
    info, token = operators.issue(store, MASTER, T0, label="ci", by="ops")
    assert token.startswith("aegop_") and info.created_by == "ops" and info.label == "ci"
    key = operators.operator_key(MASTER)
    assert operators.authenticate(store, key, token) == info
    assert operators.authenticate(store, operators.operator_key(b"x" * 32), token) is None  # another master key
    assert operators.authenticate(store, key, "aeg_" + token[6:]) is None
    again, changed = operators.revoke(store, info.id, "later", by="ops")
    assert changed and not again.active and operators.authenticate(store, key, token) is None
    assert operators.revoke(store, info.id, "even later") == (again, False)  # twice: nothing changes
    origin = f"{origin_prefix(store)}/security"
    rows = store.query_evidence(EvidenceFilter(origin=origin, kind="operator_change"), newest_first=False)
    assert [(r.verdict, r.actor) for r in rows] == [("operator_change", "ops")] * 2
    assert b'"operator_token_issued"' in rows[0].data and b'"operator_token_revoked"' in rows[1].data
    assert token.encode() not in b"".join(r.data for r in rows)
    assert verify_log(store.evidence_records(origin), origin=origin).ok


def _facts(tool: str, verdict: str, *, actor: str = "alice", client: str = "claude-code", version: str = "2.1",
           when: datetime) -> CallFacts:
    return CallFacts(identity=Identity("acme", actor, "tok_1"), client_name=client, client_version=version,
                     session_id="s", method="tools/call", upstream="files", tool=tool, tool_def=None,
                     decision=Decision(verdict, "r1", "", 1), arguments={"a": 1}, request_id="1",
                     started_at=when.isoformat(timespec="milliseconds"), time=evidence_time(when))


def _calls(store: Store, now: datetime) -> str:
    """Real record-stage entries: 3 allowed (2 completed, 1 failed upstream), blocked, held, hidden, a reviewer's
    denial, and an old allowed call (two hours ago)."""
    store.create_tenant("acme", T0)
    store.create_tenant("beta", T0)
    store.add_upstream(UpstreamSpec("acme", "files", "http", url="http://127.0.0.1:9/mcp", created_at=T0))
    store.set_upstream_tools("acme", "files", ["read", "write"])
    origin = tenant_origin(origin_prefix(store), "acme")
    old = now - timedelta(hours=2)
    intents = [(_facts("files__read", "allow", when=now), "completed"),
               (_facts("files__read", "allow", when=now, version="2.0"), "completed"),
               (_facts("files__write", "allow", when=now, client="cursor", version="1"), "failed"),
               (_facts("files__read", "allow", when=old), "completed")]
    for facts, status in intents:
        sealed = store.append_evidence([call_entry(origin, KEY, facts, kind="intent")])[0]
        store.append_evidence([outcome_entry(origin, KEY, facts, sealed.record.seq, status=status, time=facts.time,
                                             latency_ms=1, upstream_latency_ms=1, result={"ok": True},
                                             error_code=None if status == "completed" else -32603)])
    decisions = [call_entry(origin, KEY, _facts("files__write", "block", when=now), kind="decision"),
                 call_entry(origin, KEY, _facts("files__write", "review", when=now), kind="decision"),
                 call_entry(origin, KEY, _facts("files__x", "block", when=now), kind="decision", verdict="hidden")]
    denied = {"review_id": "rev_1", "reviewer": "bob"}
    decisions.append(Entry(origin, "review_denied", evidence_time(now), denied,
                           expected_columns("review_denied", denied, "acme")))
    store.append_evidence(decisions)
    return origin


def test_counts_and_summaries(store: Store, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    origin = _calls(store, now)
    hour_ago = evidence_time(now - timedelta(hours=1))
    counts = {(k, v): n for k, v, n in store.count_evidence("acme")}
    assert counts[("intent", "allow")] == 4 and counts[("decision", "deny")] == 1
    assert counts[("decision", "review")] == 1 and counts[("decision", "hidden")] == 1
    assert counts[("review_denied", "review_denied")] == 1 and counts[("outcome", "allow")] == 4
    recent = {(k, v): n for k, v, n in store.count_evidence("acme", hour_ago)}
    assert recent[("intent", "allow")] == 3
    assert store.count_evidence("beta") == [] and sum(n for *_, n in store.count_evidence()) >= 12
    assert store.evidence_sizes()[origin] == 12
    clients = {name: (calls, last) for name, calls, last in store.client_activity("acme")}
    assert set(clients) == {"claude-code", "cursor"} and clients["claude-code"][0] == 6  # 3 outcomes, 3 refusals
    assert store.client_activity("beta") == []
    window = (now - timedelta(minutes=15)).isoformat(timespec="milliseconds")
    activity = {(t, u, o): n for t, u, o, n in store.upstream_activity(window)}
    assert activity[("acme", "files", "completed")] == 2 and activity[("acme", "files", "failed")] == 1
    assert activity[("acme", "files", "refused")] == 3
    assert store.last_verification() is None
    assert remember_verification(store, [{"origin": origin, "ok": True, "records": 12}], now, "ops")
    assert '"by": "ops"' in (store.last_verification() or "")

    settings = EvidenceSettings.from_env(tmp_path, {})
    key, _ = load_signing_key_for(tmp_path, origin_prefix(store), settings.key_file, create=True)
    assert key is not None
    Checkpointer(store, key, settings).tick(force=True)
    assert [(o, n) for o, n, _ in store.latest_checkpoints() if o == origin] == [(origin, 12)]

    status = collect(store, tmp_path, GatewayProcess(False, note="none"), now=now, tenant="acme")
    assert status.gate == {"last_hour": {"allowed": 3, "held": 1, "blocked": 1, "hidden": 1, "denied": 1},
                           "total": {"allowed": 4, "held": 1, "blocked": 1, "hidden": 1, "denied": 1}}
    assert status.evidence["records"] == 12 and status.evidence["awaiting_checkpoint"] == 0
    assert status.evidence["last_verification"]["ok"] is True
    by_name = {c["name"]: c for c in status.clients}
    assert by_name["claude-code"]["versions"] == ["2.1", "2.0"]  # newest first
    assert by_name["cursor"]["active"] is True
    assert status.upstreams == [{"tenant": "acme", "name": "files", "transport": "http", "tools": 2,
                                 "health": "degraded", "recent_calls": {"completed": 2, "failed": 1, "refused": 3}}]
    beta = collect(store, tmp_path, GatewayProcess(False), now=now, tenant="beta")
    assert beta.gate["total"] == dict.fromkeys(beta.gate["total"], 0) and beta.upstreams == [] and beta.clients == []


def test_console_verifies_shown_records_and_finds_tampering(store: Store, store_url: str, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    origin = _calls(store, now)
    rows = store.query_evidence(EvidenceFilter(origin=origin), limit=100)
    assert {c.state for c in data.check_records(store, tmp_path, rows).values()} == {"pending"}  # no checkpoint
    settings = EvidenceSettings.from_env(tmp_path, {})
    key, _ = load_signing_key_for(tmp_path, origin_prefix(store), settings.key_file, create=True)
    assert key is not None
    Checkpointer(store, key, settings).tick(force=True)
    checks = data.check_records(store, tmp_path, rows)
    assert {c.state for c in checks.values()} == {"verified"}
    assert "included in checkpoint 12" in checks[rows[0].id].detail
    extra = call_entry(origin, KEY, _facts("files__read", "allow", when=now), kind="intent")
    store.append_evidence([extra])
    newest = store.query_evidence(EvidenceFilter(origin=origin), limit=1)
    assert data.check_records(store, tmp_path, newest)[newest[0].id].state == "pending"

    # a verifier key nobody trusts: the checkpoint no longer verifies
    keys = tmp_path / "audit" / "keys.txt"
    saved = keys.read_text()
    keys.write_text("")
    assert {c.state for c in data.check_records(store, tmp_path, rows).values()} == {"failed"}
    keys.write_text(saved)
    assert trusted_verifiers(tmp_path)

    # a record's bytes changed behind the gateway's back
    victim = rows[3]
    tampered = victim.data.replace(b'"acme"', b'"evil"', 1)
    assert tampered != victim.data
    sql(store_url, "UPDATE evidence SET data = ? WHERE id = ?", (tampered, victim.id))
    again = store.query_evidence(EvidenceFilter(origin=origin), limit=100)
    checks = data.check_records(store, tmp_path, again)
    assert checks[victim.id].state == "failed" and "do not hash" in checks[victim.id].detail
    assert checks[rows[0].id].state == "verified"

    # ... and its leaf hash column too: now the stored log no longer hashes to the signed root
    from gateway.audit.merkle import leaf_hash

    sql(store_url, "UPDATE evidence SET leaf_hash = ? WHERE id = ?", (leaf_hash(tampered), victim.id))
    again = store.query_evidence(EvidenceFilter(origin=origin), limit=100)
    checks = data.check_records(store, tmp_path, again)
    assert checks[victim.id].state == "failed" and "does not hash to the root" in checks[victim.id].detail
    assert {checks[r.id].state for r in again if r.seq < 12} == {"failed"}


def test_recent_calls_follow_actor_tenant_policy_tool_evidence(store: Store, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    _calls(store, now)
    calls = data.recent_calls(store, tmp_path, "acme")
    first = calls[0]
    assert (first.actor, first.tenant, first.tool, first.verdict, first.kind) == (
        "alice", "acme", "files__x", "hidden", "decision")
    assert first.policy_version == "1" and first.rule_id == "r1" and first.client == "claude-code 2.1"
    assert [c.verdict for c in calls].count("allow") == 4
    assert data.recent_calls(store, tmp_path, "beta") == []
