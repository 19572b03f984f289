"""Importing logs sealed elsewhere (`Store.import_evidence` through `gateway.evidence.bundles`), on each real
store (SQLite, Postgres): exact bytes, seqs, columns and checkpoints; continuation; and every refusal
(gap, fork, another deployment, a bundle that does not verify) leaves the target as it was."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.audit.bundle import MANIFEST, write_bundle
from gateway.audit.canonical import canonicalize
from gateway.audit.errors import BundleRejected, ImportConflict
from gateway.audit.keys import generate_signing_key
from gateway.audit.log import Columns, Entry, expected_columns, security_origin, tenant_origin
from gateway.audit.verify import verify_log
from gateway.evidence.bundles import import_bundles, log_bundle_files
from gateway.evidence.checkpointer import sign_checkpoints
from gateway.evidence.keys import trusted_verifiers
from gateway.evidence.settings import EvidenceSettings
from gateway.store import open_store
from gateway.store.base import EvidenceFilter, Store

PREFIX = "aegress.test/d-import"
ACME = tenant_origin(PREFIX, "acme")
SECURITY = security_origin(PREFIX)
T = "2026-01-02T03:04:05.000000Z"
KEY = generate_signing_key("aegress.test-d-import")
SETTINGS = EvidenceSettings(publish_dir=None)


def _entry(origin: str, kind: str, body: dict[str, object]) -> Entry:
    tenant = "acme" if origin == ACME else ""
    return Entry(origin, kind, T, body, expected_columns(kind, body, tenant))


def _intent(store: Store, n: int) -> int:
    (sealed,) = store.append_evidence([_entry(ACME, "intent", {
        "tenant": "acme", "actor": "alice", "token_id": None, "client_name": None, "client_version": None,
        "upstream": "u", "tool": f"u__t{n}", "tool_def_hash": None, "verdict": "allow", "policy_version": "1",
        "rule_id": None, "args_digest": None})])
    return sealed.record.seq


def _outcome(store: Store, intent_seq: int, n: int) -> None:
    """An outcome: its actor, tool and verdict columns are its intent's."""
    body = {"intent_seq": intent_seq, "status": "completed", "result_digest": None, "latency_ms": 3}
    store.append_evidence([Entry(ACME, "outcome", T, body, Columns(
        tenant="acme", actor="alice", tool=f"u__t{n}", verdict="allow", status="completed", intent_seq=intent_seq))])


def _call(store: Store, n: int) -> None:
    _outcome(store, _intent(store, n), n)


def _event(store: Store, origin: str, i: int) -> None:
    store.append_evidence([_entry(origin, "token_revoked", {"token_id": f"tok_{i}", "actor": "op"})])


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Store]:
    """The deployment the logs come from: SQLite, two logs, signed checkpoints."""
    src = open_store(tmp_path / "src", replica_id="r-src")
    src.evidence_prefix(PREFIX)
    for n in range(3):
        _call(src, n)
    _event(src, SECURITY, 0)
    sign_checkpoints(src, KEY, SETTINGS)
    _event(src, ACME, 1)
    sign_checkpoints(src, KEY, SETTINGS)
    yield src
    src.close()


def _export(store: Store, out: Path, *, first: int = 0, origins: tuple[str, ...] = (ACME, SECURITY)) -> Path:
    """Bundles of `origins` under `out`, as `aegress audit export --all` writes them."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for origin in origins:
        size = store.evidence_size(origin)
        write_bundle(out / origin.rsplit("/", 1)[1], log_bundle_files(store, origin, first, size, [KEY.verifier_key]))
    return out


def _rows(store: Store, origin: str) -> list[tuple[object, ...]]:
    """Every stored field of a log but the row id (storage order)."""
    rows = store.query_evidence(EvidenceFilter(origin=origin), limit=10**6, newest_first=False)
    return [(r.seq, r.kind, r.time, r.tenant, r.actor, r.tool, r.verdict, r.status, r.intent_seq, r.leaf_hash,
             r.data) for r in rows]


def _snapshot(store: Store) -> dict[str, object]:
    return {o: (_rows(store, o), store.list_checkpoints(o), store.evidence_size(o)) for o in store.evidence_origins()}


def _verifies(store: Store, home: Path, origin: str) -> bool:
    rows = store.query_evidence(EvidenceFilter(origin=origin), limit=10**6, newest_first=False)
    report = verify_log([(r.seq, r.data) for r in rows], origin=origin, verifiers=trusted_verifiers(home),
                        checkpoints=[n for _, n in store.list_checkpoints(origin)], columns=rows,
                        tenant="acme" if origin == ACME else "")
    return report.ok and report.size == len(rows) and len(report.checkpoints) >= 1


def test_a_log_arrives_bit_for_bit_and_verifies(source: Store, store: Store, tmp_path: Path) -> None:
    home = tmp_path / "target-home"
    store.evidence_prefix("aegress.local/d-chosen")  # a command that only read chose one: no record uses it
    seen: list[object] = []
    report = import_bundles(store, home, _export(source, tmp_path / "moved"), confirm=seen.append)
    assert len(seen) == 1 and report.keys_trusted == (KEY.verifier_key,) and report.prefix == PREFIX
    assert {(r.origin, r.status, r.first, r.end) for r in report.logs} == {(ACME, "created", 0, 7),
                                                                           (SECURITY, "created", 0, 1)}
    for origin in (ACME, SECURITY):
        assert store.evidence_records(origin) == source.evidence_records(origin)  # the exact bytes and seqs
        assert _rows(store, origin) == _rows(source, origin)  # and every queryable column
        assert store.list_checkpoints(origin) == source.list_checkpoints(origin)  # the signed notes as they were
        assert _verifies(store, home, origin)
    assert store.evidence_prefix("another/prefix") == PREFIX  # the logs' prefix is the database's now
    assert KEY.verifier_key in (home / "audit" / "keys.txt").read_text().splitlines()

    before = _snapshot(store)
    again = import_bundles(store, home, tmp_path / "moved")
    assert [r.status for r in again.logs] == ["unchanged", "unchanged"] and not again.changed
    assert again.keys_trusted == () and _snapshot(store) == before


def test_a_log_that_grew_is_continued_from_a_whole_or_a_partial_bundle(source: Store, store: Store,
                                                                      tmp_path: Path) -> None:
    home = tmp_path / "target-home"
    import_bundles(store, home, _export(source, tmp_path / "first"))
    _call(source, 10)
    sign_checkpoints(source, KEY, SETTINGS)
    report = import_bundles(store, home, _export(source, tmp_path / "whole"))  # overlaps what the target holds
    assert [(r.origin, r.status, r.first, r.end) for r in report.logs] == [(ACME, "extended", 7, 9),
                                                                           (SECURITY, "unchanged", 1, 1)]
    pending = _intent(source, 11)  # seq 9: the target gets it with the whole log ...
    import_bundles(store, home, _export(source, tmp_path / "whole2"))
    _outcome(source, pending, 11)  # ... and its outcome (seq 10) in a partial bundle starting at the target's end
    _event(source, ACME, 2)
    sign_checkpoints(source, KEY, SETTINGS)
    part = _export(source, tmp_path / "part", first=10, origins=(ACME,))
    (result,) = import_bundles(store, home, part).logs
    assert (result.status, result.first, result.end, result.checkpoints) == ("extended", 10, 12, 1)
    assert _rows(store, ACME) == _rows(source, ACME)  # the outcome's columns came from an intent stored earlier
    assert store.list_checkpoints(ACME) == source.list_checkpoints(ACME)
    assert _verifies(store, home, ACME)


def test_a_gap_a_fork_or_another_deployment_is_refused_and_nothing_is_written(source: Store, store: Store,
                                                                             tmp_path: Path) -> None:
    home = tmp_path / "target-home"
    part = _export(source, tmp_path / "part", first=2, origins=(ACME,))
    with pytest.raises(ImportConflict) as gap:
        import_bundles(store, home, part)
    assert gap.value.code == "import-gap" and gap.value.exit_code == 3
    assert store.evidence_origins() == [] and not (home / "audit" / "keys.txt").exists()

    import_bundles(store, home, _export(source, tmp_path / "first"))
    _event(store, ACME, 100)  # the target's log goes on one way ...
    _event(source, ACME, 200)  # ... and the source's another
    _event(source, SECURITY, 201)  # the other log would continue cleanly: it is not written either
    sign_checkpoints(source, KEY, SETTINGS)
    before = _snapshot(store)
    with pytest.raises(ImportConflict) as fork:
        import_bundles(store, home, _export(source, tmp_path / "forked"))
    assert fork.value.code == "import-fork" and "seq 7" in fork.value.message
    assert _snapshot(store) == before  # ONE transaction: the security log's good continuation is not in either

    theirs = tenant_origin("aegress.test/d-other", "acme")
    elsewhere = _deployment_with(tmp_path, theirs)
    bundle = _export(elsewhere, tmp_path / "theirs", origins=(theirs,))
    elsewhere.close()
    with pytest.raises(ImportConflict) as foreign:
        import_bundles(store, home, bundle)
    assert foreign.value.code == "import-other-deployment"
    assert _snapshot(store) == before


def _deployment_with(tmp_path: Path, origin: str) -> Store:
    """Another deployment's SQLite store holding one signed log."""
    other = open_store(tmp_path / "elsewhere", replica_id="r-other")
    other.evidence_prefix(origin.rsplit("/tenant/", 1)[0])
    other.append_evidence([Entry(origin, "token_revoked", T, {"token_id": "tok_x", "actor": "op"},
                                 Columns(tenant="acme", actor="op", verdict="token_revoked"))])
    sign_checkpoints(other, KEY, SETTINGS)
    return other


def _rewrite(bundle: Path, name: str, data: bytes) -> None:
    """Replace one file of a bundle and fix up the manifest, as a careful forger would."""
    (bundle / name).write_bytes(data)
    manifest = json.loads((bundle / MANIFEST).read_bytes())
    for entry in manifest["files"]:
        if entry["path"] == name:
            entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (bundle / MANIFEST).write_bytes(canonicalize(manifest))


def test_a_bundle_that_does_not_verify_is_refused(source: Store, store: Store, tmp_path: Path) -> None:
    home = tmp_path / "target-home"
    moved = _export(source, tmp_path / "moved")
    lines = (moved / "acme" / "records.jsonl").read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b'"latency_ms":3', b'"latency_ms":4')
    _rewrite(moved / "acme", "records.jsonl", b"\n".join(lines))
    with pytest.raises(BundleRejected) as tampered:
        import_bundles(store, home, moved)
    assert tampered.value.code == "bundle-rejected" and "modified at seq 3" in tampered.value.message
    assert store.evidence_origins() == [] and not (home / "audit" / "keys.txt").exists()

    clean = _export(source, tmp_path / "clean")
    stranger = generate_signing_key("someone-else")
    with pytest.raises(BundleRejected) as untrusted:  # the operator's key did not sign these checkpoints
        import_bundles(store, home, clean, keys=[stranger.verifier])
    assert "bad_signature" in untrusted.value.message
    assert store.evidence_origins() == []
    report = import_bundles(store, home, clean, keys=[KEY.verifier])
    assert report.keys_trusted == (KEY.verifier_key,) and not report.keys_from_bundle
