"""Build realistic tenant logs for tests: records, checkpoints and keys, deterministically."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit.checkpoint import Checkpoint, sign_checkpoint
from gateway.audit.keys import SigningKey
from gateway.audit.merkle import MerkleTree
from gateway.audit.records import BuiltRecord, ChainHead

ORIGIN = "aegress.test/tenant/acme"
T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
DIGEST = "hmac-sha256:" + "ab" * 32


def fixed_key(name: str = "aegress.test/log", seed: int = 7) -> SigningKey:
    return SigningKey(name=name, private_key=Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32))


def intent_body(i: int) -> dict[str, object]:
    return {
        "tenant": "acme",
        "actor": f"user-{i % 5}",
        "token_id": f"tok_{i % 3}",
        "client_name": "claude-code",
        "client_version": "1.0.0",
        "upstream": "github",
        "tool": "create_issue",
        "tool_def_hash": "sha256:" + "cd" * 32,
        "verdict": "allow",
        "policy_version": "v3",
        "rule_id": "allow-github",
        "args_digest": DIGEST,
    }


def outcome_body(intent_seq: int) -> dict[str, object]:
    return {"intent_seq": intent_seq, "status": "completed", "result_digest": DIGEST, "latency_ms": 12}


@dataclass
class Log:
    origin: str = ORIGIN
    records: list[BuiltRecord] = field(default_factory=list)
    head: ChainHead = field(default_factory=lambda: ChainHead.genesis(ORIGIN))

    def add(self, kind: str, body: dict[str, object]) -> BuiltRecord:
        record, self.head = self.head.append(kind=kind, time=T0 + timedelta(seconds=self.head.size), body=body)
        self.records.append(record)
        return record

    def add_call(self) -> None:
        intent = self.add("intent", intent_body(self.head.size))
        self.add("outcome", outcome_body(intent.seq))

    @property
    def data(self) -> list[bytes]:
        return [r.canonical for r in self.records]

    def stored(self) -> list[tuple[int, bytes]]:
        return [(r.seq, r.canonical) for r in self.records]

    def tree(self, size: int | None = None) -> MerkleTree:
        return MerkleTree(r.leaf_hash for r in self.records[:size])

    def checkpoint(self, key: SigningKey, size: int | None = None) -> str:
        tree = self.tree()
        n = tree.size if size is None else size
        cp = Checkpoint(origin=self.origin, size=n, root=tree.root(n))
        return sign_checkpoint(cp, key.name, key.private_key, previous=None)


def make_log(calls: int, *, extra_decisions: bool = True) -> Log:
    log = Log()
    for i in range(calls):
        log.add_call()
        if extra_decisions and i % 4 == 3:
            body = intent_body(i) | {"verdict": "deny", "rule_id": "deny-delete"}
            log.add("decision", body)
    return log
