"""Inclusion proofs from a stored log: `aegress audit proof`, and the console's per-record checks.

A receipt (`_meta.aegress` of an answer) names a record by origin, seq and leaf hash. The proof is a C2SP
tlog-proof against the newest stored checkpoint that covers the record, so anyone holding the verifier
key checks it offline (`gateway.audit.checkpoint.TlogProof`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gateway.audit.checkpoint import TlogProof
from gateway.audit.merkle import MerkleTree
from gateway.errors import CheckFailed, NotFound, UsageError
from gateway.store.base import Store


@dataclass(frozen=True)
class Receipt:
    """Which record an answer's receipt names; `leaf_hash` (hex) is empty when only origin and seq are known."""

    origin: str
    seq: int
    leaf_hash: str = ""


def parse_receipt(text: str) -> Receipt:
    """A receipt as JSON: `_meta.aegress` itself, or an object holding it under `aegress`."""
    try:
        data = json.loads(text)
        data = data.get("aegress", data) if isinstance(data, dict) else data
        return Receipt(str(data["origin"]), int(data["seq"]), str(data["leaf_hash"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError("The receipt is not {\"origin\", \"seq\", \"leaf_hash\"} JSON.") from exc


def receipt_for(store: Store, tenant: str, seq: int) -> Receipt:
    """The receipt naming record `seq` of a tenant's log (`security`: the security log), without its leaf hash.
    NotFound when there is no such tenant."""
    from gateway.admin import require_log_tenant
    from gateway.evidence.origins import log_origin

    require_log_tenant(store, tenant)
    return Receipt(log_origin(store, tenant), seq)


def find_record(store: Store, record_id: str) -> Any:
    """A stored record by its id (`aegress audit query`) or as TENANT:SEQ (`security:SEQ`: the security log).
    NotFound when there is none."""
    row = None
    if record_id.isdigit():
        row = store.get_evidence(int(record_id))
    elif ":" in record_id:
        tenant, _, seq = record_id.rpartition(":")
        receipt = receipt_for(store, tenant, 0)
        if seq.isdigit():
            row = store.get_evidence_at(receipt.origin, int(seq))
    if row is None:
        raise NotFound(f"No evidence record {record_id!r}.",
                       hint="Use an id from `aegress audit query`, or TENANT:SEQ (`security:SEQ` for the "
                            "security log).")
    return row


def latest_covering(store: Store, origin: str, seq: int) -> tuple[int, str] | None:
    """(size, note) of the newest stored checkpoint of `origin` that includes record `seq`."""
    for size, note in reversed(store.list_checkpoints(origin)):
        if size > seq:
            return size, note
    return None


def stored_tree(store: Store, origin: str, size: int) -> MerkleTree:
    """The Merkle tree of the first `size` stored leaves of `origin` (fewer if the log is shorter)."""
    return MerkleTree(store.evidence_leaf_hashes(origin)[:size])


def inclusion_proof(store: Store, receipt: Receipt) -> str:
    """The tlog-proof text that the receipt's record is in the log signed by the newest covering checkpoint.

    NotFound: no such record, or no checkpoint covers it yet. CheckFailed (`receipt-mismatch`): the stored
    record does not have the receipt's leaf hash."""
    row = store.get_evidence_at(receipt.origin, receipt.seq)
    if row is None:
        raise NotFound(f"No record {receipt.seq} in log {receipt.origin}.")
    if receipt.leaf_hash and row.leaf_hash.hex() != receipt.leaf_hash:
        raise CheckFailed(f"The stored record {receipt.seq} does not have the receipt's leaf hash.",
                          hint="The log was altered or the receipt is from another deployment: "
                               "run `aegress audit verify`.", code="receipt-mismatch")
    covering = latest_covering(store, receipt.origin, receipt.seq)
    if covering is None:
        raise NotFound(f"No checkpoint covers record {receipt.seq} yet.",
                       hint="Wait for the next checkpoint or run `aegress audit checkpoint`.")
    size, note = covering
    tree = stored_tree(store, receipt.origin, size)
    return TlogProof(index=receipt.seq, hashes=tuple(tree.inclusion_proof(receipt.seq, size)),
                     checkpoint_note=note).to_string()
