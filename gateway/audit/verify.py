"""Verify a tenant log offline: record bytes, sequence, links, Merkle roots, signatures, consistency.

The verifier names the FIRST problem and its class, so an operator learns where the evidence stops
being trustworthy and what happened to it. Order of checks (docs/evidence-format.md, "Verification"):

1. every checkpoint is a well-formed signed note for this log with a valid signature by a trusted key
   (bad_signature), and checkpoints agree with each other (inconsistent_checkpoint);
2. records in storage order: each must be canonical, numbered `start + position` and carry the previous
   record's leaf hash (modified, gap, fork, reordered, malformed);
3. the Merkle root of the records at each checkpoint size equals the signed root (modified, fork,
   inconsistent_checkpoint) and no checkpoint is larger than the log (truncated);
4. with a database's rows: every queryable column equals what the record's bytes imply (modified), so
   an edit of a column `audit query` or an export shows is found although the hashed bytes are intact;
5. every intent has an outcome, unless the call may still be in flight (orphan_intent).

Damage to a log's meaning that is not tampering (a second answer to one intent, an intent a recovery
skipped: what two gateways on one data dir used to cause) can be acknowledged by a later sealed `repair`
record naming the damaged seqs (`aegress audit repair`). Those findings are then not reported as problems
but as notices (`VerifyReport.repairs`); the damaged records stay where they are. A repair never covers a
chain, root or signature finding.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.audit.checkpoint import Checkpoint, Verifier, open_checkpoint
from gateway.audit.errors import BadSignature, InvalidRecord, MalformedNote, ProofInvalid
from gateway.audit.log import expected_columns
from gateway.audit.merkle import CompactRange, leaf_hash, root_from_leaf_hashes, verify_consistency
from gateway.audit.records import GENESIS_PREV, ParsedRecord, parse_record


class Problem(enum.StrEnum):
    """Classes of problem, stable strings used in CLI output and JSON."""

    MODIFIED = "modified"  # a record's bytes differ from what the chain or a checkpoint commits to
    GAP = "gap"  # sequence numbers skip: records are missing
    FORK = "fork"  # a record that does not belong: a reused seq, an extra record, a rewritten history
    REORDERED = "reordered"  # genuine records in the wrong order
    TRUNCATED = "truncated"  # records that a checkpoint covers are missing at the end
    BAD_SIGNATURE = "bad_signature"  # a checkpoint that is malformed, for another log, or not signed by a trusted key
    INCONSISTENT_CHECKPOINT = "inconsistent_checkpoint"  # two signed checkpoints that cannot both be true
    ORPHAN_INTENT = "orphan_intent"  # an intent with no outcome and no outcome_unknown after a recovery
    MALFORMED = "malformed"  # a correctly chained record that breaks the format (a writer bug, not tampering)


@dataclass(frozen=True)
class Finding:
    problem: Problem
    message: str
    seq: int | None = None
    position: int | None = None
    checkpoint: int | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "problem": str(self.problem),
            "message": self.message,
            "seq": self.seq,
            "position": self.position,
            "checkpoint": self.checkpoint,
        }


class StoredColumns(Protocol):
    """The queryable copies a database keeps next to each record's bytes (store.base.EvidenceRow)."""

    kind: str
    time: str
    tenant: str
    actor: str
    tool: str
    verdict: str
    status: str
    intent_seq: int | None
    leaf_hash: bytes


@dataclass(frozen=True)
class LogStart:
    """Where a partial log (an export with --since) begins: the first seq, the leaf hash of the record
    before it and the compact range of the tree before it (merkle.MerkleTree.frontier)."""

    seq: int
    prev: bytes
    frontier: tuple[bytes, ...]


@dataclass(frozen=True)
class ConsistencyProof:
    old_size: int
    new_size: int
    hashes: tuple[bytes, ...]


@dataclass(frozen=True)
class VerifyReport:
    origin: str
    start: int
    size: int  # seq after the last record = tree size
    root: bytes
    checkpoints: tuple[Checkpoint, ...]
    finding: Finding | None
    open_intents: tuple[int, ...] = field(default=())
    repairs: tuple[tuple[int, tuple[int, ...]], ...] = field(default=())
    """Notices: (seq of a `repair` record, the damaged seqs it names)."""
    problems: tuple[Finding, ...] = field(default=())
    """Every unrepaired finding about meaning (what `aegress audit repair` may acknowledge), in log order."""

    @property
    def ok(self) -> bool:
        return self.finding is None

    @property
    def latest_checkpoint(self) -> Checkpoint | None:
        return max(self.checkpoints, key=lambda c: c.size, default=None)

    def to_dict(self) -> dict[str, object]:
        latest = self.latest_checkpoint
        return {
            "ok": self.ok,
            "origin": self.origin,
            "start": self.start,
            "size": self.size,
            "root": self.root.hex(),
            "checkpoints": len(self.checkpoints),
            "latest_checkpoint_size": None if latest is None else latest.size,
            "finding": None if self.finding is None else self.finding.to_dict(),
            "open_intents": list(self.open_intents),
            "repairs": [{"seq": seq, "damaged_seqs": list(damaged)} for seq, damaged in self.repairs],
        }


class _Records:
    """Stored records with lazily parsed fields, so the happy path parses each record exactly once."""

    def __init__(self, origin: str, items: Sequence[tuple[int, bytes]], start: int) -> None:
        self.origin = origin
        self.items = items
        self.start = start
        self.hashes = [leaf_hash(data) for _, data in items]
        self._parsed: dict[int, ParsedRecord | None] = {}
        self._by_seq: dict[int, list[int]] | None = None
        self._by_hash: dict[str, int] | None = None

    def parsed(self, position: int) -> ParsedRecord | None:
        if position in self._parsed:
            return self._parsed[position]
        try:
            record: ParsedRecord | None = parse_record(self.items[position][1])
        except InvalidRecord:
            record = None
        if record is not None and record.origin != self.origin:
            record = None
        self._parsed[position] = record
        return record

    def positions_of(self, seq: int) -> list[int]:
        if self._by_seq is None:
            self._by_seq = {}
            for p in range(len(self.items)):
                record = self.parsed(p)
                if record is not None:
                    self._by_seq.setdefault(record.seq, []).append(p)
        return self._by_seq.get(seq, [])

    def has_hash(self, hex_hash: str) -> bool:
        if self._by_hash is None:
            self._by_hash = {h.hex(): p for p, h in enumerate(self.hashes)}
        return hex_hash in self._by_hash


def _open_checkpoints(
    notes: Sequence[str], verifiers: Sequence[Verifier], origin: str
) -> tuple[list[Checkpoint], Finding | None]:
    checkpoints: list[Checkpoint] = []
    for index, note in enumerate(notes):
        try:
            checkpoints.append(open_checkpoint(note, verifiers, origin))
        except (BadSignature, MalformedNote) as exc:
            return checkpoints, Finding(
                Problem.BAD_SIGNATURE, f"checkpoint {index}: {exc.message}", checkpoint=index
            )
    return checkpoints, None


def _check_checkpoints_agree(
    checkpoints: Sequence[Checkpoint], proofs: Sequence[ConsistencyProof]
) -> Finding | None:
    by_size: dict[int, tuple[int, Checkpoint]] = {}
    for index, cp in enumerate(checkpoints):
        seen = by_size.get(cp.size)
        if seen is not None and seen[1].root != cp.root:
            return Finding(
                Problem.INCONSISTENT_CHECKPOINT,
                f"checkpoints {seen[0]} and {index} both have size {cp.size} but different roots",
                checkpoint=index,
            )
        by_size.setdefault(cp.size, (index, cp))
    for proof in proofs:
        old, new = by_size.get(proof.old_size), by_size.get(proof.new_size)
        if old is None or new is None:
            continue
        try:
            verify_consistency(proof.old_size, proof.new_size, old[1].root, new[1].root, proof.hashes)
        except ProofInvalid as exc:
            return Finding(
                Problem.INCONSISTENT_CHECKPOINT,
                f"checkpoint of size {proof.new_size} does not extend the one of size {proof.old_size}: "
                f"{exc.message}",
                checkpoint=new[0],
            )
    return None


def _root_with(records: _Records, start: LogStart | None, end: int, replace: dict[int, bytes]) -> bytes:
    hashes = [replace.get(p, h) for p, h in enumerate(records.hashes[:end])]
    if start is None:
        return root_from_leaf_hashes(hashes)
    return root_from_leaf_hashes(hashes, size=start.seq, frontier=start.frontier)


def _invalid_record(records: _Records, p: int, expected_prev: str) -> Finding:
    """Record p cannot be parsed (or is for another log): an extra record, a writer bug, or an edit."""
    e = records.start + p
    nxt = records.parsed(p + 1) if p + 1 < len(records.items) else None
    if nxt is not None and nxt.seq == e and nxt.prev == expected_prev:
        return Finding(Problem.FORK, f"an extra, invalid record sits before seq {e}", seq=e, position=p)
    if nxt is not None and nxt.prev == records.hashes[p].hex():
        return Finding(
            Problem.MALFORMED, f"record {e} is chained correctly but breaks the record format", seq=e, position=p
        )
    return Finding(Problem.MODIFIED, f"record {e} was altered: it is not a valid record", seq=e, position=p)


def _link_break(
    records: _Records,
    p: int,
    record: ParsedRecord,
    start: LogStart | None,
    checkpoints: Sequence[Checkpoint],
) -> Finding:
    """Record p has the right seq but does not carry the hash of record p-1: which one is bad?"""
    e = records.start + p
    if p == 0:
        return Finding(
            Problem.MODIFIED, f"record {e} does not link to the record before the export", seq=e, position=p
        )
    if p + 1 < len(records.items):
        nxt = records.parsed(p + 1)
        if nxt is not None and nxt.seq == e:
            return Finding(Problem.FORK, f"two different records claim seq {e}", seq=e, position=p)
        if nxt is not None and nxt.seq == e + 1 and nxt.prev == records.hashes[p].hex():
            return Finding(
                Problem.MODIFIED,
                f"record {e - 1} was altered: its hash is not the one record {e} recorded",
                seq=e - 1,
                position=p - 1,
            )
        return Finding(
            Problem.MODIFIED,
            f"record {e} was altered: it does not link to record {e - 1}",
            seq=e,
            position=p,
        )
    # Last record: ask the first checkpoint that covers it whether record p-1 is the altered one.
    covering = sorted((c for c in checkpoints if c.size == e + 1), key=lambda c: c.size)
    if covering:
        root = _root_with(records, start, p + 1, {p - 1: bytes.fromhex(record.prev)})
        if root == covering[0].root:
            return Finding(
                Problem.MODIFIED,
                f"record {e - 1} was altered: its hash is not the one record {e} recorded",
                seq=e - 1,
                position=p - 1,
            )
    return Finding(
        Problem.MODIFIED, f"record {e} was altered: it does not link to record {e - 1}", seq=e, position=p
    )


@dataclass(frozen=True)
class _Scan:
    chain: Finding | None = None
    semantic: tuple[Finding, ...] = ()
    open_intents: tuple[int, ...] = ()
    repairs: tuple[tuple[int, tuple[int, ...]], ...] = ()


def _scan(records: _Records, start: LogStart | None, checkpoints: Sequence[Checkpoint], final: bool) -> _Scan:
    """Walk records in storage order.

    Returns the first chain finding (bytes, seq, links), the findings about meaning that no later `repair`
    record acknowledges (outcomes that answer nothing, orphan intents: reported only if the chain and roots
    hold, since an edit can fake one), the intents still open, and the repairs seen.
    """
    first = start.seq if start is not None else 0
    expected_prev = start.prev.hex() if start is not None else GENESIS_PREV
    open_intents: dict[int, int] = {}  # intent seq -> position
    candidates: list[Finding] = []
    repaired: set[int] = set()
    repairs: list[tuple[int, tuple[int, ...]]] = []
    last_unknown = -1
    items = records.items
    hashes = records.hashes
    for p in range(len(items)):
        e = first + p
        record = records.parsed(p)
        if record is None:
            return _Scan(_invalid_record(records, p, expected_prev))
        s, pv = record.seq, record.prev
        if s == e:
            if pv != expected_prev:
                return _Scan(_link_break(records, p, record, start, checkpoints))
            if items[p][0] != e:
                message = f"stored sequence column says {items[p][0]} for record {e}"
                return _Scan(Finding(Problem.MODIFIED, message, seq=e, position=p))
        elif pv == expected_prev:
            message = f"record {e} was altered: its seq reads {s}"
            return _Scan(Finding(Problem.MODIFIED, message, seq=e, position=p))
        elif s < e or len(records.positions_of(s)) > 1:
            return _Scan(Finding(Problem.FORK, f"a second record claims seq {s}", seq=s, position=p))
        elif any(q > p for q in records.positions_of(e)):
            if records.has_hash(pv) or (s == 0 and pv == GENESIS_PREV):
                message = f"record {s} is stored where record {e} belongs"
                return _Scan(Finding(Problem.REORDERED, message, seq=e, position=p))
            message = f"an extra record claiming seq {s} sits before seq {e}"
            return _Scan(Finding(Problem.FORK, message, seq=e, position=p))
        else:
            missing = f"{e}" if s == e + 1 else f"{e}..{s - 1}"
            return _Scan(Finding(Problem.GAP, f"record(s) {missing} are missing", seq=e, position=p))
        expected_prev = hashes[p].hex()
        kind = record.kind
        if kind == "intent":
            open_intents[s] = p
        elif kind in ("outcome", "outcome_unknown"):
            target = record.body["intent_seq"]
            if target >= first and open_intents.pop(target, None) is None:
                candidates.append(Finding(
                    Problem.MALFORMED,
                    f"record {s} answers {target}, which is not an earlier intent awaiting an outcome",
                    seq=s,
                    position=p,
                ))
            if kind == "outcome_unknown":
                last_unknown = s
        elif kind == "repair":
            named = tuple(x for x in record.body["damaged_seqs"] if x < s)
            repaired.update(named)
            repairs.append((s, named))
    semantic = [f for f in candidates if f.seq not in repaired]
    for seq, p in sorted(open_intents.items()):
        if seq not in repaired and (final or seq < last_unknown):
            semantic.append(Finding(
                Problem.ORPHAN_INTENT,
                f"intent {seq} has no outcome and recovery did not mark it outcome_unknown",
                seq=seq,
                position=p,
            ))
    still_open = tuple(sorted(seq for seq in open_intents if seq not in repaired))
    return _Scan(None, tuple(semantic), still_open, tuple(repairs))


def _check_roots(
    records: _Records, start: LogStart | None, checkpoints: Sequence[Checkpoint]
) -> tuple[Finding | None, bytes]:
    first, end = records.start, records.start + len(records.items)
    edge = CompactRange(start.seq, start.frontier) if start is not None else CompactRange()
    wanted: dict[int, list[int]] = {}
    for index, cp in enumerate(checkpoints):
        if first <= cp.size <= end:
            wanted.setdefault(cp.size, []).append(index)
    roots: dict[int, bytes] = {}
    if first in wanted:
        roots[first] = edge.root()
    for h in records.hashes:
        edge.append(h)
        if edge.size in wanted:
            roots[edge.size] = edge.root()
    full_root = edge.root()
    matches = {size: all(checkpoints[i].root == roots[size] for i in wanted[size]) for size in wanted}
    for size in sorted(wanted):
        if matches[size]:
            continue
        index = next(i for i in wanted[size] if checkpoints[i].root != roots[size])
        if any(ok and other > size for other, ok in matches.items()):
            return Finding(
                Problem.INCONSISTENT_CHECKPOINT,
                f"checkpoint {index} (size {size}) disagrees with the records, which a later checkpoint signs",
                checkpoint=index,
            ), full_root
        if size == end and size > first:
            return Finding(
                Problem.MODIFIED,
                f"record {size - 1} was altered: the records do not match the checkpoint of size {size}",
                seq=size - 1,
                position=size - 1 - first,
                checkpoint=index,
            ), full_root
        good = max((other for other, ok in matches.items() if ok and other < size), default=first)
        return Finding(
            Problem.FORK,
            f"records {good}..{size - 1} differ from the history signed at size {size}",
            seq=good,
            position=good - first,
            checkpoint=index,
        ), full_root
    beyond = [i for i, cp in enumerate(checkpoints) if cp.size > end]
    if beyond:
        index = max(beyond, key=lambda i: checkpoints[i].size)
        return Finding(
            Problem.TRUNCATED,
            f"the log is shorter than a signed checkpoint: it ends at seq {end} but checkpoint {index} covers "
            f"{checkpoints[index].size} records",
            seq=end,
            position=end - first,
            checkpoint=index,
        ), full_root
    return None, full_root


_COLUMNS = ("kind", "time", "tenant", "actor", "tool", "verdict", "status", "intent_seq", "leaf_hash")
_FROM_INTENT = ("actor", "tool", "verdict")


def _check_columns(records: _Records, columns: Sequence[StoredColumns], tenant: str) -> Finding | None:
    """Each stored column against the columns the record's bytes imply (`log.expected_columns`)."""
    intents: dict[int, Mapping[str, Any]] = {}
    for p, stored in enumerate(columns):
        record = records.parsed(p)
        if record is None:  # the chain scan reports unparseable records first
            continue
        e = records.start + p
        if record.kind == "intent":
            intents[record.seq] = record.body
        intent = intents.get(record.body["intent_seq"]) if record.kind == "outcome" else None
        want = expected_columns(record.kind, record.body, tenant, intent)
        expected = (record.kind, record.time, want.tenant, want.actor, want.tool, want.verdict, want.status,
                    want.intent_seq, records.hashes[p])
        if tuple(getattr(stored, name) for name in _COLUMNS) == expected:  # the common case, one comparison
            continue
        for name, value in zip(_COLUMNS, expected, strict=True):
            if record.kind == "outcome" and intent is None and name in _FROM_INTENT:
                continue  # the intent precedes a partial log: nothing to compare with
            if getattr(stored, name) != value:
                return Finding(
                    Problem.MODIFIED,
                    f"record {e}: the stored {name!r} column does not match the sealed record (edited in the "
                    "database; `audit query` and exports show the column)",
                    seq=e,
                    position=p,
                )
    return None


def verify_log(
    records: Sequence[tuple[int, bytes]],
    *,
    origin: str,
    checkpoints: Sequence[str] = (),
    verifiers: Sequence[Verifier] = (),
    consistency_proofs: Sequence[ConsistencyProof] = (),
    start: LogStart | None = None,
    final: bool = False,
    columns: Sequence[StoredColumns] | None = None,
    tenant: str = "",
) -> VerifyReport:
    """Verify stored records `(seq column, exact bytes)` in storage order against signed checkpoints.

    `final=True` says no call can still be in flight (the gateway is stopped), so every intent must have
    an outcome; otherwise only intents left open across a recovery (an outcome_unknown written after
    them) are orphans and the others are reported as `open_intents`. `columns` (one per record, in the
    same order) are a database's queryable copies, compared with the records; `tenant` is the log's
    tenant ("" for the security log).
    """
    first = start.seq if start is not None else 0
    if start is not None and len(start.frontier) != first.bit_count():
        raise ValueError("start frontier does not match start seq")
    opened, finding = _open_checkpoints(checkpoints, verifiers, origin)
    recs = _Records(origin, records, first)
    if finding is None:
        finding = _check_checkpoints_agree(opened, consistency_proofs)
    scan = _Scan()
    root = b""
    if finding is None:
        scan = _scan(recs, start, opened, final)
        finding = scan.chain
        if finding is None:
            finding, root = _check_roots(recs, start, opened)
            finding = finding or (scan.semantic[0] if scan.semantic else None)
            if finding is None and columns is not None:
                finding = _check_columns(recs, columns, tenant)
    return VerifyReport(
        origin=origin,
        start=first,
        size=first + len(records),
        root=root,
        checkpoints=tuple(opened),
        finding=finding,
        open_intents=scan.open_intents,
        repairs=scan.repairs,
        problems=scan.semantic if finding is not None and finding in scan.semantic else (),
    )


class _NotClean(Exception):
    """The streaming pass met something the full verifier must diagnose."""


def verify_log_stream(
    rows: Iterable[tuple[int, bytes, StoredColumns | None]],
    *,
    origin: str,
    checkpoints: Sequence[str] = (),
    verifiers: Sequence[Verifier] = (),
    final: bool = False,
    tenant: str = "",
    diagnose: Callable[[], VerifyReport],
) -> VerifyReport:
    """Verify a whole log (from seq 0) in one pass over `(seq column, exact bytes, stored columns or None)`,
    holding only the Merkle frontier and the intents still open, never the log.

    This is the clean path: when anything is off (a chain, root, column, signature or meaning finding,
    even one a `repair` record covers) it stops and returns `diagnose()`, which must run `verify_log` on
    the whole log, so every finding is named exactly as `verify_log` names it. For a clean log the report
    equals `verify_log`'s.
    """
    opened, finding = _open_checkpoints(checkpoints, verifiers, origin)
    if finding is not None or _check_checkpoints_agree(opened, ()) is not None:
        return diagnose()
    sizes = {cp.size for cp in opened}
    edge = CompactRange()
    roots: dict[int, bytes] = {0: edge.root()} if 0 in sizes else {}
    expected_prev = GENESIS_PREV
    open_intents: dict[int, Mapping[str, Any]] = {}
    repaired: set[int] = set()
    repairs: list[tuple[int, tuple[int, ...]]] = []
    last_unknown = -1
    end = 0
    try:
        for e, (stored_seq, data, stored) in enumerate(rows):
            h = leaf_hash(data)
            try:
                record = parse_record(data)
            except InvalidRecord:
                raise _NotClean from None
            if record.origin != origin or record.seq != e or record.prev != expected_prev or stored_seq != e:
                raise _NotClean
            expected_prev = h.hex()
            edge.append(h)
            if edge.size in sizes:
                roots[edge.size] = edge.root()
            kind = record.kind
            intent: Mapping[str, Any] | None = None
            if kind == "intent":
                open_intents[e] = record.body
            elif kind in ("outcome", "outcome_unknown"):
                target = record.body["intent_seq"]
                if target not in open_intents:  # answers nothing open: a finding (maybe repaired) to diagnose
                    raise _NotClean
                intent = open_intents.pop(target)
                if kind == "outcome_unknown":
                    last_unknown = e
            elif kind == "repair":
                named = tuple(x for x in record.body["damaged_seqs"] if x < e)
                repaired.update(named)
                repairs.append((e, named))
            if stored is not None:
                want = expected_columns(kind, record.body, tenant, intent if kind == "outcome" else None)
                expected = (kind, record.time, want.tenant, want.actor, want.tool, want.verdict, want.status,
                            want.intent_seq, h)
                if tuple(getattr(stored, name) for name in _COLUMNS) != expected:
                    raise _NotClean
            end = e + 1
    except _NotClean:
        return diagnose()
    if any(cp.size > end or roots.get(cp.size) != cp.root for cp in opened):
        return diagnose()
    if any(seq not in repaired and (final or seq < last_unknown) for seq in open_intents):
        return diagnose()
    return VerifyReport(
        origin=origin,
        start=0,
        size=end,
        root=edge.root(),
        checkpoints=tuple(opened),
        finding=None,
        open_intents=tuple(sorted(seq for seq in open_intents if seq not in repaired)),
        repairs=tuple(repairs),
    )
