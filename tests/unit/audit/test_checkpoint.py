"""Checkpoints, signed notes and tlog-proofs, checked against the Go note package's published vectors."""

from __future__ import annotations

import pytest
from audit_logs import ORIGIN, fixed_key, make_log

from gateway.audit.checkpoint import (
    Checkpoint,
    TlogProof,
    add_signature,
    open_checkpoint,
    open_note,
    parse_checkpoint,
    parse_note,
    parse_verifier_key,
    sign_checkpoint,
    sign_note,
    verify_tlog_proof,
)
from gateway.audit.errors import BadSignature, InconsistentCheckpoint, MalformedNote, ProofInvalid
from gateway.audit.keys import parse_private_key

# golang.org/x/mod/sumdb/note documentation example.
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_NOTE = (
    GO_TEXT + "\n\u2014 PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
SUMDB_VKEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"


def test_go_vectors() -> None:
    key = parse_private_key(GO_SKEY)
    assert key.verifier_key == GO_VKEY
    assert sign_note(GO_TEXT, key.name, key.private_key) == GO_NOTE  # Ed25519 is deterministic
    opened = open_note(GO_NOTE, [parse_verifier_key(GO_VKEY)])
    assert opened.text == GO_TEXT and opened.verified_by == ("PeterNeumann",)
    assert parse_verifier_key(SUMDB_VKEY).key_id.hex() == "033de0ae"


@pytest.mark.parametrize(
    "vkey",
    [
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3",
        "PeterNeumann+c74f20a3+!!!!",
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ],
)
def test_bad_verifier_keys(vkey: str) -> None:
    with pytest.raises(MalformedNote):
        parse_verifier_key(vkey)


def test_note_signature_failures() -> None:
    verifier = parse_verifier_key(GO_VKEY)
    tampered = GO_NOTE.replace("answer", "Answer")
    with pytest.raises(BadSignature):
        open_note(tampered, [verifier])
    with pytest.raises(BadSignature):
        open_note(GO_NOTE, [fixed_key().verifier])  # no trusted signer
    for bad in [GO_TEXT, GO_NOTE.replace("\u2014", "-"), GO_NOTE[:-1], GO_NOTE + GO_NOTE.split("\n\n")[1]]:
        with pytest.raises((MalformedNote, BadSignature)):
            open_note(bad, [verifier])


def test_multiple_signatures_and_rotation() -> None:
    old, new = fixed_key("log", 1), fixed_key("log", 2)
    note = add_signature(sign_note(GO_TEXT, old.name, old.private_key), new.name, new.private_key)
    assert len(parse_note(note).signatures) == 2
    assert open_note(note, [old.verifier, new.verifier]).verified_by == ("log", "log")
    assert open_note(note, [new.verifier]).verified_by == ("log",)
    assert len(open_note(note, [new.verifier]).unverified) == 1


def test_checkpoint_text_round_trip() -> None:
    cp = Checkpoint(origin=ORIGIN, size=42, root=bytes(range(32)), extensions=("ext one",))
    assert cp.body() == f"{ORIGIN}\n42\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\next one\n"
    assert parse_checkpoint(cp.body()) == cp
    for bad in [f"{ORIGIN}\n042\n{cp.body().split(chr(10))[2]}\n", f"{ORIGIN}\n42\nAAAA\n", f"{ORIGIN}\n42\n"]:
        with pytest.raises(MalformedNote):
            parse_checkpoint(bad)


def test_refuses_to_sign_inconsistent_checkpoints() -> None:
    key = fixed_key()
    log = make_log(6)
    tree = log.tree()
    first = Checkpoint(ORIGIN, 5, tree.root(5))
    later = Checkpoint(ORIGIN, tree.size, tree.root())
    note = sign_checkpoint(later, key.name, key.private_key, previous=first, tree=tree)
    assert open_checkpoint(note, [key.verifier], ORIGIN) == later
    proof = tree.consistency_proof(5)
    sign_checkpoint(later, key.name, key.private_key, previous=first, proof=proof)
    forked = Checkpoint(ORIGIN, tree.size, tree.root(tree.size - 1))
    with pytest.raises(InconsistentCheckpoint):
        sign_checkpoint(forked, key.name, key.private_key, previous=first, proof=proof)
    with pytest.raises(InconsistentCheckpoint):
        sign_checkpoint(forked, key.name, key.private_key, previous=first, tree=tree)
    with pytest.raises(InconsistentCheckpoint):
        sign_checkpoint(first, key.name, key.private_key, previous=later, tree=tree)
    with pytest.raises(InconsistentCheckpoint):
        sign_checkpoint(later, key.name, key.private_key, previous=Checkpoint("other", 5, tree.root(5)), tree=tree)


def test_tlog_proof_round_trip_and_mutations() -> None:
    key = fixed_key()
    log = make_log(5)
    tree = log.tree()
    note = log.checkpoint(key)
    for seq in (0, 3, tree.size - 1):
        proof = TlogProof(index=seq, hashes=tuple(tree.inclusion_proof(seq)), checkpoint_note=note, extra=b"x")
        text = proof.to_string()
        assert text.startswith("c2sp.org/tlog-proof@v1\nextra eA==\nindex ")
        cp = verify_tlog_proof(text, log.records[seq].leaf_hash, [key.verifier], ORIGIN)
        assert cp.size == tree.size
        with pytest.raises(ProofInvalid):
            verify_tlog_proof(text, log.records[seq - 1].leaf_hash, [key.verifier], ORIGIN)
        with pytest.raises(ProofInvalid):
            verify_tlog_proof(text.replace(f"index {seq}\n", f"index {seq + 1}\n"), log.records[seq].leaf_hash,
                              [key.verifier], ORIGIN)
        # a different size changes the signed checkpoint, so the signature no longer holds
        with pytest.raises(BadSignature):
            verify_tlog_proof(text.replace(f"\n{tree.size}\n", f"\n{tree.size + 1}\n"), log.records[seq].leaf_hash,
                              [key.verifier], ORIGIN)
