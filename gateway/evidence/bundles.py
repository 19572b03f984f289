"""A store's evidence logs as bundles and back: `aegress audit export` and, bit for bit, `aegress audit import`.

`log_bundle_files` builds one log's bundle from a store (records, checkpoints, consistency and inclusion
proofs; `gateway.audit.bundle` holds the format). Moving logs between stores:

    bundle dir(s) ─ read ─> verify (as `audit verify --bundle`) ─> ImportedLog per log: exact record bytes
    at their seqs, origin, signed checkpoints ─> Store.import_evidence: ONE transaction under the logs'
    write locks, `plan_import` decides ─> keys.txt (keys that signed) ─> published checkpoints

Nothing is re-sealed: the origin prefix is part of the hashed bytes, so records, seqs, origin and signed
checkpoints arrive exactly as exported, the target database takes the bundle's origin prefix (it must
have none yet, or the same one), and `aegress audit verify` on the target checks them like its own.

Which keys are trusted. The bundle's checkpoint signatures are checked against `keys` when given (the
operator's choice, e.g. the source's `aegress audit pubkey --all`), else against the keys this data dir
already trusts (`<data dir>/audit/keys.txt`) plus the bundle's own keys.txt. Whichever keys signed an
imported checkpoint are needed to verify the log from now on, so those this data dir does not trust yet
are appended to its keys.txt (public keys, outside the database like every trusted key: whoever can
write the database cannot make it trust a key) and named in the report; `confirm` sees them before
anything is written.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.audit.bundle import (
    build_bundle_files,
    bundle_keys,
    bundle_log,
    find_bundles,
    read_bundle,
    verify_bundle_files,
)
from gateway.audit.checkpoint import TlogProof, Verifier, parse_checkpoint, parse_note
from gateway.audit.errors import BundleRejected, ImportConflict, InvalidRecord, MalformedNote
from gateway.audit.log import origin_prefixes, restore, tenant_of
from gateway.audit.merkle import MerkleTree
from gateway.audit.records import ParsedRecord, parse_record
from gateway.audit.verify import ConsistencyProof, LogStart
from gateway.errors import AegressError, InvalidInput
from gateway.evidence.checkpointer import published_checkpoint, write_published
from gateway.evidence.clock import now_time
from gateway.evidence.keys import remember_verifier, trusted_verifiers
from gateway.evidence.settings import EvidenceSettings
from gateway.evidence.stream import Progress, no_progress
from gateway.store.base import ImportedLog, LogImported, Store


def log_bundle_files(store: Store, origin: str, first: int, end: int, verifier_keys: Sequence[str], *,
                     records: Sequence[tuple[int, bytes]] | None = None) -> dict[str, bytes]:
    """The files of a bundle of `origin`'s records [first, end) (`records`: those already read): the
    checkpoints inside that range, consistency proofs between them, inclusion proofs of the first and last
    record covered, and, for a partial log, where it starts (leaf hash before it and Merkle frontier)."""
    rows = store.evidence_records(origin, first, end) if records is None else records
    tree = MerkleTree(store.evidence_leaf_hashes(origin)[:end])
    checkpoints = [(size, note) for size, note in store.list_checkpoints(origin) if first <= size <= end]
    proofs = [ConsistencyProof(a, b, tuple(tree.consistency_proof(a, b)))
              for (a, _), (b, _) in itertools.pairwise(checkpoints)]
    inclusion: dict[int, str] = {}
    if checkpoints:
        size, note = checkpoints[-1]
        for seq in sorted({first, min(end, size) - 1}):
            if first <= seq < size:
                inclusion[seq] = TlogProof(seq, tuple(tree.inclusion_proof(seq, size)), note).to_string()
    start = LogStart(seq=first, prev=tree.leaf(first - 1), frontier=tuple(tree.frontier(first))) if first else None
    return build_bundle_files(origin=origin, records=[data for _, data in rows],
                              checkpoints=[note for _, note in checkpoints], verifier_keys=list(verifier_keys),
                              consistency_proofs=proofs, inclusion_proofs=inclusion, start=start)


@dataclass(frozen=True)
class CheckedBundle:
    """A bundle that verified: its log as read (records parsed, not yet restored), and who signed it."""

    path: Path
    origin: str
    start: int
    prev: bytes | None
    records: tuple[bytes, ...]
    parsed: tuple[ParsedRecord, ...]
    checkpoints: tuple[tuple[int, bytes, str], ...]
    signers: tuple[Verifier, ...]
    open_intents: tuple[int, ...]

    @property
    def end(self) -> int:
        return self.start + len(self.records)


@dataclass(frozen=True)
class ImportPreview:
    """What an import is about to write, for the caller's confirmation (nothing is written yet)."""

    bundles: tuple[CheckedBundle, ...]
    sizes: Mapping[str, int]
    """Each log's size in the target database now."""
    keys_to_trust: tuple[str, ...]
    keys_from_bundle: bool


@dataclass(frozen=True)
class ImportReport:
    prefix: str
    bundles: tuple[str, ...]
    logs: tuple[LogImported, ...]
    keys_trusted: tuple[str, ...]
    """Verifier keys this data dir did not trust before and now does (they signed imported checkpoints)."""
    keys_from_bundle: bool
    open_intents: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    published: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return any(log.status != "unchanged" or log.checkpoints for log in self.logs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "prefix": self.prefix,
            "bundles": list(self.bundles),
            "logs": [{"origin": r.origin, "status": r.status, "size_before": r.size_before, "first_seq": r.first,
                      "end_seq": r.end, "records": r.records, "checkpoints": r.checkpoints} for r in self.logs],
            "keys_trusted": list(self.keys_trusted),
            "keys_from_bundle": self.keys_from_bundle,
            "open_intents": {origin: list(seqs) for origin, seqs in self.open_intents.items() if seqs},
            "published": list(self.published),
            "warnings": list(self.warnings),
        }


def _rejected(path: Path, message: str) -> BundleRejected:
    return BundleRejected(f"{path}: {message}", hint="Nothing was imported. Export the log again from its source "
                          "(`aegress audit export`), and check it with `aegress audit verify --bundle`.")


def check_bundle(path: Path, trusted: Sequence[Verifier], keys: Sequence[Verifier] | None) -> CheckedBundle:
    """Read and verify one bundle as `audit verify --bundle` does; BundleRejected names the first problem."""
    try:
        files = read_bundle(path)
        verifiers = list(keys) if keys is not None else [*trusted, *bundle_keys(files)]
        report = verify_bundle_files(files, verifiers=verifiers)
        if not report.ok:
            assert report.finding is not None
            f = report.finding
            where = f" at seq {f.seq}" if f.seq is not None else ""
            raise _rejected(path, f"the bundle does not verify: {f.problem}{where}: {f.message}")
        origin, start, records, notes = bundle_log(files)
        parsed = tuple(parse_record(data) for data in records)
    except (InvalidRecord, MalformedNote, KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise _rejected(path, f"not a readable evidence bundle: {getattr(exc, 'message', None) or exc}") from exc
    known = {(v.name, v.key_id): v for v in verifiers}
    first, end = report.log.start, report.log.size
    signers: dict[str, Verifier] = {}
    checkpoints: dict[int, tuple[int, bytes, str]] = {}
    for note in notes:
        signed = parse_note(note)
        cp = parse_checkpoint(signed.text)
        if not first <= cp.size <= end:  # only those checked against the records are imported (and trusted)
            continue
        checkpoints.setdefault(cp.size, (cp.size, cp.root, note))
        for sig in signed.signatures:  # verified above: every known key's signature holds
            signer = known.get((sig.name, sig.key_id))
            if signer is not None:
                signers.setdefault(signer.to_string(), signer)
    return CheckedBundle(path, origin, first, None if start is None else start.prev, tuple(records), parsed,
                         tuple(checkpoints[s] for s in sorted(checkpoints)), tuple(signers.values()),
                         report.log.open_intents)


def _prefix(bundles: Sequence[CheckedBundle], current: str | None) -> str:
    """The one deployment prefix every bundle's origin fits (this database's, when it fits)."""
    fits: set[str] | None = None
    for b in bundles:
        mine = set(origin_prefixes(b.origin))
        if not mine:
            raise InvalidInput(f"{b.path}: {b.origin!r} is not an Aegress tenant or security log.",
                               hint="Only logs written by `aegress serve` can be imported.")
        fits = mine if fits is None else fits & mine
    if not fits:
        raise InvalidInput("The bundles come from more than one deployment (their origin prefixes differ).",
                           hint="Import each deployment's bundles into its own database.")
    if current in fits:
        return current
    preferred = [p for p in origin_prefixes(bundles[0].origin) if p in fits]
    return preferred[0]


def _imported_log(store: Store, b: CheckedBundle, tenant: str) -> ImportedLog:
    """The bundle's records as stored rows: exact bytes, and the columns they imply. An outcome's actor, tool
    and verdict are its intent's: from the bundle, or, before its start, from this database's log."""
    intents = {p.seq: p.body for p in b.parsed if p.kind == "intent"}
    stored_size: int | None = None
    sealed = []
    for data, record in zip(b.records, b.parsed, strict=True):
        intent = None
        if record.kind == "outcome":
            wanted = int(record.body["intent_seq"])
            intent = intents.get(wanted)
            if intent is None and wanted < b.start:
                row = store.get_evidence_at(b.origin, wanted)
                if row is not None:
                    intent = intents[wanted] = parse_record(row.data).body
                else:
                    stored_size = store.evidence_size(b.origin) if stored_size is None else stored_size
                    if stored_size >= b.start:  # not a gap (the import refuses that): the stored log lacks it
                        raise ImportConflict(
                            f"Record {record.seq} of log {b.origin} answers intent {wanted}, which this "
                            "database's log does not hold.", hint="Nothing was imported. Run `aegress audit "
                            "verify` on this database.", code="import-gap")
        sealed.append(restore(data, tenant, intent))
    return ImportedLog(b.origin, b.start, b.prev, tuple(sealed), b.checkpoints)


def _publish_newest(store: Store, settings: EvidenceSettings, origins: Sequence[str]) -> tuple[list[str], list[str]]:
    """Publish each log's newest checkpoint outside the database, unless a checkpoint as large is already
    published there (never replace a newer one: that would hide a truncation from `audit verify`)."""
    directory = settings.publish_dir
    done: list[str] = []
    warnings: list[str] = []
    if directory is None:
        return done, warnings
    for origin in origins:
        stored = store.list_checkpoints(origin)
        if not stored:
            continue
        size, note = stored[-1]
        path = published_checkpoint(directory, origin)
        try:
            if path.is_file() and parse_checkpoint(parse_note(path.read_text()).text).size >= size:
                continue
        except (AegressError, OSError, ValueError):
            warnings.append(f"{path} is not a readable checkpoint; left as it is")
            continue
        try:
            write_published(directory, origin, size, note)
            done.append(origin)
        except OSError as exc:
            warnings.append(f"could not publish the checkpoint of {origin} to {directory}: {exc.strerror}")
    return done, warnings


def import_bundles(store: Store, home: Path, path: str | os.PathLike[str], *,
                   keys: Sequence[Verifier] | None = None,
                   confirm: Callable[[ImportPreview], None] | None = None,
                   progress: Progress | None = None) -> ImportReport:
    """Import the bundle at `path` (or every bundle directly inside it) into `store`, exactly as exported.

    Every bundle is verified first; then all of them go in ONE store transaction (`Store.import_evidence`):
    each log must be empty in `store`, or continue exactly (the bundle starts at its end and links to its
    last record), or overlap it with the same bytes (only the rest is added; the same bundle twice is a
    no-op). A fork, a gap, another deployment's prefix or a bundle that does not verify raises (nothing is
    written). `confirm(preview)` runs before anything is written and may raise to stop.
    """
    report = progress or no_progress
    paths = find_bundles(path)
    trusted = trusted_verifiers(home)
    checked: list[CheckedBundle] = []
    for i, bundle_path in enumerate(paths):
        report(f"Verifying {bundle_path.name}", i, len(paths))
        checked.append(check_bundle(bundle_path, trusted, keys))
    seen: dict[str, Path] = {}
    for b in checked:
        if b.origin in seen:
            raise InvalidInput(f"{seen[b.origin]} and {b.path} both hold log {b.origin}.",
                               hint="Import them one at a time, the older one first.")
        seen[b.origin] = b.path
    current = _current_prefix(store)
    prefix = _prefix(checked, current)
    trusted_now = {v.to_string() for v in trusted}
    new_keys = tuple(dict.fromkeys(k.to_string() for b in checked for k in b.signers
                                   if k.to_string() not in trusted_now))
    sizes = {b.origin: store.evidence_size(b.origin) for b in checked}
    if confirm is not None:
        confirm(ImportPreview(tuple(checked), sizes, new_keys, keys is None))
    logs = []
    for i, b in enumerate(checked):
        report(f"Reading {b.path.name}", i, len(checked))
        logs.append(_imported_log(store, b, tenant_of(prefix, b.origin) or ""))
    report("Writing to the database", 0, 1)
    results = store.import_evidence(logs, prefix, now_time())
    for verifier_key in new_keys:  # after COMMIT: a refused import trusts nothing new
        remember_verifier(home, verifier_key)
    published, warnings = _publish_newest(store, EvidenceSettings.from_env(home), [b.origin for b in checked])
    report("Done", 1, 1)
    return ImportReport(prefix=prefix, bundles=tuple(str(b.path) for b in checked), logs=tuple(results),
                        keys_trusted=new_keys, keys_from_bundle=keys is None,
                        open_intents={b.origin: b.open_intents for b in checked},
                        published=tuple(published), warnings=tuple(warnings))


def _current_prefix(store: Store) -> str | None:
    """This database's origin prefix if one was chosen, without choosing one."""
    origins = store.evidence_origins()
    for origin in origins:
        found = origin_prefixes(origin)
        if found:
            return found[0]
    return None
