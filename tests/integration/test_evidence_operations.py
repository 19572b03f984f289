"""The operator's evidence operations as library calls (`gateway.evidence.*`, what `aegress audit` renders), on
each real store: proofs, export, store verification with progress, repair, key rotation, checkpoint signing,
and the writer's reports to metrics (Observer.evidence_commit)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.audit.bundle import verify_bundle
from gateway.audit.checkpoint import verify_tlog_proof
from gateway.audit.log import Entry, expected_columns
from gateway.errors import CheckFailed, NotFound, UsageError
from gateway.evidence.checkpointer import sign_now
from gateway.evidence.export import bundle_name, export_all, export_log, seq_range
from gateway.evidence.keys import load_signing_key_for, public_keys, rotate_key, trusted_verifiers
from gateway.evidence.origins import log_origin, origin_prefix
from gateway.evidence.proofs import Receipt, inclusion_proof, parse_receipt
from gateway.evidence.settings import EvidenceSettings
from gateway.evidence.verification import remember, repair_log, verify_store
from gateway.evidence.writer import EvidenceWriter
from gateway.observe import Observer
from gateway.store.base import EvidenceFilter, Store

DIGEST = "hmac-sha256:" + "ab" * 32


def _call(origin: str, i: int, intent_seq: int) -> list[Entry]:
    intent = Entry(origin, "intent", f"2026-01-02T03:04:{i % 60:02d}.{i:06d}Z", {
        "tenant": "acme", "actor": "alice", "token_id": "tok_1", "client_name": "claude-code", "client_version": "2",
        "upstream": "files", "tool": "files__read", "tool_def_hash": "sha256:" + "cd" * 32, "verdict": "allow",
        "policy_version": "1", "rule_id": "r", "args_digest": DIGEST, "request_id": str(i)})
    outcome = Entry(origin, "outcome", f"2026-01-02T03:04:{i % 60:02d}.{i + 1:06d}Z", {
        "intent_seq": intent_seq, "status": "completed", "result_digest": DIGEST, "latency_ms": 3})
    return [replace(intent, columns=expected_columns("intent", intent.body, "acme")),
            replace(outcome, columns=expected_columns("outcome", outcome.body, "acme", intent.body))]


def _fill(store: Store, calls: int) -> str:
    origin = log_origin(store, "acme")
    for i in range(calls):
        store.append_evidence(_call(origin, i, 2 * i))
    return origin


def _key(store: Store, home: Path) -> None:
    load_signing_key_for(home, origin_prefix(store), EvidenceSettings.from_env(home).key_file, create=True)


def test_a_receipt_proves_inclusion_offline_and_a_wrong_one_is_refused(store: Store, aegress_home: Path) -> None:
    origin = _fill(store, 5)
    row = store.get_evidence_at(origin, 3)
    assert row is not None
    receipt = parse_receipt(json.dumps({"aegress": {"origin": origin, "seq": 3, "leaf_hash": row.leaf_hash.hex()}}))
    with pytest.raises(NotFound, match="No checkpoint covers record 3"):
        inclusion_proof(store, receipt)
    with pytest.raises(NotFound, match="No checkpoint signing key"):
        sign_now(store, aegress_home)  # no key on this host yet
    _key(store, aegress_home)
    assert len(sign_now(store, aegress_home)) == 1
    text = inclusion_proof(store, receipt)
    checkpoint = verify_tlog_proof(text, row.leaf_hash, trusted_verifiers(aegress_home), origin)
    assert checkpoint.size == 10
    with pytest.raises(CheckFailed) as wrong:
        inclusion_proof(store, replace(receipt, leaf_hash="00" * 32))
    assert wrong.value.code == "receipt-mismatch"
    with pytest.raises(NotFound):
        inclusion_proof(store, Receipt(origin, 99))
    assert inclusion_proof(store, Receipt(origin, 3)) == text  # origin and seq only (`--tenant --seq`)
    with pytest.raises(UsageError):
        parse_receipt('{"origin": "x"}')


def test_verify_store_reports_progress_and_checks_given_checkpoints(store: Store, aegress_home: Path) -> None:
    origin = _fill(store, 1500)
    _key(store, aegress_home)
    note = sign_now(store, aegress_home)[0]
    seen: list[tuple[str, int, int]] = []
    reports = verify_store(store, aegress_home, progress=lambda what, done, total: seen.append((what, done, total)))
    assert [(r["origin"], r["ok"], r["records"]) for r in reports] == [(origin, True, 3000)]
    published = aegress_home / "audit" / "checkpoints"
    assert reports[0]["checkpoints"] == 2 and reports[0]["published_checkpoint"].startswith(str(published))
    assert seen[0] == (f"Verifying {origin}", 0, 0) and seen[-1] == (f"Verifying {origin}", 3000, 3000)
    assert len(seen) >= 3  # a page at a time
    given = verify_store(store, aegress_home, tenant="acme", against=[(note, "--against witness")])
    assert given[0]["ok"] and given[0]["checkpoints"] == 3
    forged = verify_store(store, aegress_home, tenant="acme", verifiers=[])  # no trusted key: signatures fail
    assert not forged[0]["ok"] and forged[0]["finding"]["problem"] == "bad_signature"
    assert "(checkpoint 0: database)" in forged[0]["finding"]["message"]
    with pytest.raises(NotFound):
        verify_store(store, aegress_home, tenant="nobody")
    assert remember(store, reports, "ops")


def test_export_one_log_and_every_log(store: Store, aegress_home: Path, tmp_path: Path) -> None:
    origin = _fill(store, 30)
    _key(store, aegress_home)
    assert seq_range(store, origin) == (0, 60)
    assert seq_range(store, origin, since="2026-01-02T03:04:10.000000Z", until="2026-01-02T03:04:20.000000Z") == (
        20, 40)
    seen: list[tuple[str, int, int]] = []
    one = export_log(store, aegress_home, origin, tmp_path / "acme.jsonl", "jsonl",
                     progress=lambda *args: seen.append(args))
    assert one.records == 60 and seen[-1] == (f"Exporting {origin}", 60, 60)
    assert (tmp_path / "acme.jsonl").read_bytes() == b"".join(d + b"\n" for _, d in store.evidence_records(origin))
    assert (tmp_path / "acme.jsonl").stat().st_mode & 0o777 == 0o600
    csv = export_log(store, aegress_home, origin, tmp_path / "acme.csv", "csv", since="2026-01-02T03:04:10.000000Z")
    assert (csv.first_seq, csv.records) == (20, 40)
    assert len((tmp_path / "acme.csv").read_text().splitlines()) == 41
    bundle = export_log(store, aegress_home, origin, tmp_path / "acme-bundle")
    report = verify_bundle(tmp_path / "acme-bundle", verifiers=trusted_verifiers(aegress_home))
    assert bundle.records == 60 and report.ok and report.log.size == 60
    everything = export_all(store, aegress_home, tmp_path / "all")
    prefix = origin_prefix(store)
    assert [(x.origin, x.out.name) for x in everything] == [(origin, bundle_name(prefix, origin))] == [
        (origin, "tenant-acme")]
    assert verify_bundle(everything[0].out, verifiers=trusted_verifiers(aegress_home)).ok


def test_repair_seals_a_record_for_semantic_damage_only(store: Store, aegress_home: Path) -> None:
    origin = _fill(store, 2)
    _key(store, aegress_home)
    asked: list[tuple[str, dict[int, str]]] = []
    clean = repair_log(store, aegress_home, "acme", reason="r", actor="ops",
                       confirm=lambda o, d: asked.append((o, dict(d))))
    assert clean.seq is None and clean.to_dict()["repaired"] is False and asked == []
    store.append_evidence([_call(origin, 9, 0)[1]])  # intent 0 answered a second time
    done = repair_log(store, aegress_home, "acme", reason="two gateways", actor="ops",
                      confirm=lambda o, d: asked.append((o, dict(d))))
    assert asked and asked[0][0] == origin and list(asked[0][1]) == [4]
    assert done.seq == 5 and done.damaged == (4,) and done.after.ok
    done.check()
    sealed = store.get_evidence_at(origin, 5)
    assert sealed is not None and sealed.kind == "repair" and b'"two gateways"' in sealed.data

    def refuse(origin: str, damaged: object) -> None:
        raise UsageError("no")

    store.append_evidence([_call(origin, 10, 2)[1]])  # intent 2 answered twice too; the operator says no
    with pytest.raises(UsageError):
        repair_log(store, aegress_home, "acme", reason="r", actor="ops", confirm=refuse)
    assert store.evidence_size(origin) == 7  # nothing written
    with pytest.raises(NotFound):
        repair_log(store, aegress_home, "nobody", reason="r", actor="ops", confirm=refuse)


def test_rotating_the_key_keeps_the_old_one_trusted_and_logs_it(store: Store, aegress_home: Path) -> None:
    assert public_keys(store, aegress_home) == (None, [])
    _key(store, aegress_home)
    first, keys = public_keys(store, aegress_home)
    assert first is not None and keys == [first]
    old, new = rotate_key(store, aegress_home, "ops")
    assert old == first and new != first
    assert public_keys(store, aegress_home) == (new, [first, new])
    security = log_origin(store, "security")
    rows = store.query_evidence(EvidenceFilter(origin=security, kind="key_event"))
    assert len(rows) == 1 and f'"previous_key":"{first}"'.encode() in rows[0].data


class _Commits(Observer):
    def __init__(self) -> None:
        self.seen: list[tuple[float, int]] = []

    def evidence_commit(self, seconds: float, batch: int) -> None:
        self.seen.append((seconds, batch))


def test_the_writer_reports_each_commit_to_its_observer(store: Store) -> None:
    origin = log_origin(store, "acme")
    observer = _Commits()
    writer = EvidenceWriter(store, commit_wait_s=0.0, observer=observer)
    try:
        sealed = writer.append_sync([e for i in range(10) for e in _call(origin, i, 2 * i)])
    finally:
        writer.close()
    assert len(sealed) == 20 and sum(batch for _, batch in observer.seen) == 20
    assert all(0 <= seconds < 30 for seconds, _ in observer.seen)
