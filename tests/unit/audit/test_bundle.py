"""Bundles verify with no database and no network; any damage or tampering is named."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from audit_logs import ORIGIN, fixed_key, make_log

from gateway.audit.bundle import MANIFEST, build_bundle_files, format_readme, verify_bundle, write_bundle
from gateway.audit.checkpoint import TlogProof
from gateway.audit.verify import ConsistencyProof, LogStart, Problem

KEY = fixed_key()
DOCS = Path(__file__).parents[3] / "docs" / "evidence-format.md"


def _bundle(tmp_path: Path, *, start_at: int = 0) -> Path:
    log = make_log(8)
    tree = log.tree()
    n = len(log.records)
    sizes = [4, 11, n]
    notes = [log.checkpoint(KEY, s) for s in sizes]
    proofs = [ConsistencyProof(a, b, tuple(tree.consistency_proof(a, b))) for a, b in itertools.pairwise(sizes)]
    inclusion = {
        seq: TlogProof(seq, tuple(tree.inclusion_proof(seq)), notes[-1]).to_string() for seq in (start_at, n - 1)
    }
    start = None
    if start_at:
        start = LogStart(start_at, log.records[start_at - 1].leaf_hash, tuple(tree.frontier(start_at)))
    files = build_bundle_files(
        origin=ORIGIN,
        records=log.data[start_at:],
        checkpoints=notes,
        verifier_keys=[KEY.verifier_key],
        consistency_proofs=proofs,
        inclusion_proofs=inclusion,
        start=start,
    )
    write_bundle(tmp_path / "bundle", files)
    return tmp_path / "bundle"


def test_readme_is_the_format_document() -> None:
    assert format_readme() == DOCS.read_text(encoding="utf-8")


@pytest.mark.parametrize("start_at", [0, 5])
def test_bundle_verifies_offline(tmp_path: Path, start_at: int) -> None:
    path = _bundle(tmp_path, start_at=start_at)
    report = verify_bundle(path, verifiers=[KEY.verifier], final=True)
    assert report.ok, report.finding
    assert report.inclusion_proofs_checked == 2 and not report.keys_from_bundle
    assert verify_bundle(path).keys_from_bundle


def test_tampered_record_is_named(tmp_path: Path) -> None:
    path = _bundle(tmp_path)
    records = (path / "records.jsonl").read_bytes().split(b"\n")
    records[6] = records[6].replace(b"user-", b"user_", 1)
    (path / "records.jsonl").write_bytes(b"\n".join(records))
    report = verify_bundle(path, verifiers=[KEY.verifier])
    assert report.finding is not None and report.finding.problem is Problem.MODIFIED and report.finding.seq == 6


def test_damaged_or_extra_files_are_reported(tmp_path: Path) -> None:
    path = _bundle(tmp_path)
    (path / "README.md").write_text("changed")
    report = verify_bundle(path, verifiers=[KEY.verifier])
    assert report.finding is not None and "README.md" in report.finding.message
    path2 = _bundle(tmp_path / "two")
    (path2 / "notes.txt").write_text("extra")
    assert not verify_bundle(path2, verifiers=[KEY.verifier]).ok
    path3 = _bundle(tmp_path / "three")
    (path3 / "proofs" / "0.tlog-proof").write_text("c2sp.org/tlog-proof@v1\nindex 0\n\nbroken")
    report = verify_bundle(path3, verifiers=[KEY.verifier])
    assert report.finding is not None and "tlog-proof" in report.finding.message


def test_untrusted_keys_and_against(tmp_path: Path) -> None:
    path = _bundle(tmp_path)
    stranger = fixed_key("aegress.test/log", 42)
    report = verify_bundle(path, verifiers=[stranger.verifier])
    assert report.finding is not None and report.finding.problem is Problem.BAD_SIGNATURE
    later = make_log(9)
    report = verify_bundle(path, verifiers=[KEY.verifier], against=[later.checkpoint(KEY)])
    assert report.finding is not None and report.finding.problem is Problem.TRUNCATED
    assert (path / MANIFEST).is_file()
