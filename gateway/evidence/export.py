"""`aegress audit export`: one log as jsonl (exact bytes), csv (columns) or a verifiable bundle; every log as bundles.

Files are created readable by the owner only, never through a symlink and never over an existing file
without `force` (`gateway.audit.bundle.open_private`, `write_bundle`, `create_bundle_dir`). jsonl and csv
stream a page at a time (`gateway.evidence.stream`); a bundle is built in memory (`gateway.evidence.bundles`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gateway.audit.bundle import create_bundle_dir, open_private, write_bundle
from gateway.audit.log import security_origin, tenant_of
from gateway.evidence.bundles import log_bundle_files
from gateway.evidence.checkpointer import sign_if_possible
from gateway.evidence.keys import trusted_verifiers
from gateway.evidence.origins import origin_prefix
from gateway.evidence.stream import Progress, no_progress, write_csv, write_jsonl
from gateway.store.base import EvidenceFilter, Store

ExportFormat = Literal["jsonl", "csv", "bundle"]


@dataclass(frozen=True)
class Exported:
    """One log written: records [first_seq, end_seq) of `origin` to `out`."""

    origin: str
    out: Path
    first_seq: int
    end_seq: int
    records: int

    def to_dict(self) -> dict[str, Any]:
        return {"origin": self.origin, "out": str(self.out), "first_seq": self.first_seq, "end_seq": self.end_seq,
                "records": self.records}


def seq_range(store: Store, origin: str, since: str = "", until: str = "") -> tuple[int, int]:
    """[first, end) seqs of the records with since <= time < until (RFC 3339 record-time text; the whole log
    without bounds)."""
    size = store.evidence_size(origin)
    if not since and not until:
        return 0, size
    where = EvidenceFilter(origin=origin, since=since, until=until)
    first = store.query_evidence(where, limit=1, newest_first=False)
    last = store.query_evidence(where, limit=1, newest_first=True)
    if not first:
        return 0, 0
    return first[0].seq, last[0].seq + 1


def bundle_name(prefix: str, origin: str) -> str:
    """The directory of a log's bundle under `export --all`: `security`, `tenant-<id>` (ids are file-safe)."""
    if origin == security_origin(prefix):
        return "security"
    tenant = tenant_of(prefix, origin)
    return f"tenant-{tenant}" if tenant else re.sub(r"[^A-Za-z0-9._-]", "_", origin)


def _bundle(store: Store, home: Path, origin: str, first: int, end: int, out: Path, force: bool,
            progress: Progress) -> int:
    records = store.evidence_records(origin, first, end)
    progress(f"Exporting {origin}", len(records) // 2, max(1, len(records)))
    files = log_bundle_files(store, origin, first, end, [v.to_string() for v in trusted_verifiers(home)],
                             records=records)
    write_bundle(out, files, force=force)
    progress(f"Exporting {origin}", max(1, len(records)), max(1, len(records)))
    return len(records)


def export_log(store: Store, home: Path, origin: str, out: Path, fmt: ExportFormat = "bundle", *,
               since: str = "", until: str = "", sign: bool = True, force: bool = False,
               progress: Progress | None = None) -> Exported:
    """Export one log's records in [since, until). `sign` (bundles): sign a fresh checkpoint first, if this host
    has the key, so the bundle covers every record."""
    report = progress or no_progress
    if sign and fmt == "bundle":
        sign_if_possible(store, home)
    first, end = seq_range(store, origin, since, until)
    report(f"Exporting {origin}", 0, max(1, end - first))

    def step(done: int, total: int) -> None:
        report(f"Exporting {origin}", done, max(1, total))

    if fmt == "jsonl":
        with open_private(out, force=force) as handle:
            count = write_jsonl(store, origin, first, end, handle, on_progress=step)
    elif fmt == "csv":
        count = write_csv(store, origin, first, end, open_private(out, force=force), on_progress=step)
    else:
        count = _bundle(store, home, origin, first, end, out, force, report)
    return Exported(origin, out, first, end, count)


def export_all(store: Store, home: Path, out: Path, *, since: str = "", until: str = "", sign: bool = True,
               force: bool = False, progress: Progress | None = None) -> list[Exported]:
    """Every log of the store as a bundle under the new directory `out` (`bundle_name` each): what
    `aegress audit import` reads to move them to another database."""
    report = progress or no_progress
    if sign:
        sign_if_possible(store, home)
    prefix = origin_prefix(store)
    root = create_bundle_dir(out, force=force)
    done = []
    for origin in store.evidence_origins():
        first, end = seq_range(store, origin, since, until)
        target = root / bundle_name(prefix, origin)
        count = _bundle(store, home, origin, first, end, target, False, report)
        done.append(Exported(origin, target, first, end, count))
    return done
