"""Read a stored evidence log a page at a time: verification and exports hold one page, never the log.

`audit verify` on a database and `audit export --format jsonl|csv` run through here, so a log of
millions of records costs one page of memory (plus, for verification, the Merkle frontier and the
intents still open). Only when verification finds a problem is the whole log read, by `verify_log`,
to name that problem exactly (gateway/audit/verify.py `verify_log_stream`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from typing import IO

from gateway.audit.checkpoint import Verifier
from gateway.audit.verify import VerifyReport, verify_log, verify_log_stream
from gateway.store.base import EvidenceFilter, EvidenceRow, Store

PAGE = 2000
"""Records read per query."""

PageProgress = Callable[[int, int], None]
"""Called with (records done, records in all) after each page."""
Progress = Callable[[str, int, int], None]
"""An operation's progress (verify, export, import): (what is being done, records done, records in all)."""


def no_progress(what: str, done: int, total: int) -> None:
    """The `Progress` when nobody watches."""

CSV_HEADER = ("id", "origin", "seq", "kind", "time", "tenant", "actor", "tool", "verdict", "outcome", "intent_seq",
              "leaf_hash")


def iter_rows(store: Store, origin: str, *, page: int = PAGE) -> Iterator[EvidenceRow]:
    """Every stored row of one log in storage order (as written), one page in memory at a time."""
    after = 0
    while True:
        rows = store.query_evidence(EvidenceFilter(origin=origin, after_id=after), limit=page, newest_first=False)
        if not rows:
            return
        yield from rows
        after = rows[-1].id


def verify_stored_log(store: Store, origin: str, *, checkpoints: list[str], verifiers: list[Verifier],
                      final: bool = False, tenant: str = "", on_progress: PageProgress | None = None,
                      page: int = PAGE) -> VerifyReport:
    """Verify one log of the store against `checkpoints` (signed notes) in one streaming pass; its records,
    links, roots and every stored column. A problem is named by `verify_log` over the whole log."""
    total = store.evidence_size(origin)

    def rows() -> Iterator[tuple[int, bytes, EvidenceRow]]:
        done = 0
        for row in iter_rows(store, origin, page=page):
            yield row.seq, row.data, row
            done += 1
            if on_progress is not None and done % page == 0:
                on_progress(done, max(total, done))
        if on_progress is not None:
            on_progress(done, max(total, done))

    def diagnose() -> VerifyReport:
        everything = list(iter_rows(store, origin, page=page))
        return verify_log([(r.seq, r.data) for r in everything], origin=origin, checkpoints=checkpoints,
                          verifiers=verifiers, final=final, columns=everything, tenant=tenant)

    return verify_log_stream(rows(), origin=origin, checkpoints=checkpoints, verifiers=verifiers, final=final,
                             tenant=tenant, diagnose=diagnose)


def write_jsonl(store: Store, origin: str, first: int, end: int, out: IO[bytes], *,
                on_progress: PageProgress | None = None, page: int = PAGE) -> int:
    """Write records [first, end) of a log as their exact bytes, one per line; returns how many."""
    done = 0
    for start in range(first, end, page):
        for _, data in store.evidence_records(origin, start, min(end, start + page)):
            out.write(data + b"\n")
            done += 1
        if on_progress is not None:
            on_progress(done, end - first)
    return done


def write_csv(store: Store, origin: str, first: int, end: int, out: IO[bytes], *,
              on_progress: PageProgress | None = None, page: int = PAGE) -> int:
    """Write the queryable columns of records [first, end) of a log as CSV; returns how many."""
    done = 0
    with io.TextIOWrapper(out, encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_HEADER)
        for r in iter_rows(store, origin, page=page):
            if first <= r.seq < end:
                writer.writerow([r.id, r.origin, r.seq, r.kind, r.time, r.tenant, r.actor, r.tool, r.verdict,
                                 r.status, "" if r.intent_seq is None else r.intent_seq, r.leaf_hash.hex()])
                done += 1
                if on_progress is not None and done % page == 0:
                    on_progress(done, end - first)
    if on_progress is not None:
        on_progress(done, end - first)
    return done
