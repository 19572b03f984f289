"""`aegress audit verify` of a store and `aegress audit repair`: which checkpoints each log is checked against.

Each log is verified (`gateway.evidence.stream.verify_stored_log`, one page in memory) against its
checkpoints in the database AND the newest one published outside it (AEGRESS_CHECKPOINT_DIR), plus any
the operator holds (`--against`), so a log cut short in the database, or deleted from it, is found. A
log whose only trace is a published checkpoint is verified too (and found truncated). The reports are
dicts, as `audit verify --json` prints them and `aegress status` keeps the last one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.audit.bundle import BundleReport
from gateway.audit.checkpoint import Verifier, parse_checkpoint, parse_note
from gateway.audit.log import tenant_of
from gateway.audit.verify import VerifyReport, verify_log
from gateway.errors import CheckFailed, NotFound
from gateway.evidence.checkpointer import published_origins, read_published, sign_if_possible
from gateway.evidence.events import record_event
from gateway.evidence.keys import trusted_verifiers
from gateway.evidence.origins import log_origin, origin_prefix
from gateway.evidence.settings import EvidenceSettings
from gateway.evidence.stream import Progress, verify_stored_log
from gateway.store.base import Store


def bundle_summary(report: BundleReport) -> dict[str, Any]:
    """One bundle's verification as `audit verify --json` shows it."""
    body = report.to_dict()
    body["records"] = report.log.size - report.log.start
    return body


def verify_bundle_dir(path: str | Path, verifiers: Sequence[Verifier] | None, against: Sequence[str] = (),
                      final: bool = False) -> dict[str, Any]:
    """`audit verify --bundle`: an exported bundle directory checked offline (`gateway.audit.bundle`), as
    `bundle_summary` shows it; `keys_from_bundle` says whether only the bundle's own keys were trusted."""
    from gateway.audit.bundle import verify_bundle

    return bundle_summary(verify_bundle(path, verifiers=verifiers, against=against, final=final))


def _summary(report: VerifyReport, published: Path | None, sources: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """One stored log's verification as `audit verify --json` shows it; a finding names its checkpoint's source."""
    body = report.to_dict()
    body["records"] = report.size - report.start
    body["published_checkpoint"] = str(published) if published else None
    finding = body["finding"]
    if isinstance(finding, dict) and finding.get("checkpoint") is not None:
        finding["message"] += f" (checkpoint {finding['checkpoint']}: {sources[finding['checkpoint']][1]})"
    return body


def verify_store(store: Store, home: Path, *, tenant: str = "", verifiers: Sequence[Verifier] | None = None,
                 against: Sequence[tuple[str, str]] = (), final: bool = False,
                 progress: Progress | None = None) -> list[dict[str, Any]]:
    """Verify one tenant's log (`security`: the security log) or, with no tenant, every log of the store and
    every log with a published checkpoint. `verifiers`: the trusted keys (default: the data dir's keys.txt);
    `against`: (signed note, where it came from) held elsewhere, each checked against its own log."""
    from gateway.admin import require_log_tenant

    if tenant:
        require_log_tenant(store, tenant)
    prefix = origin_prefix(store)
    directory = EvidenceSettings.from_env(home).publish_dir
    known = store.evidence_origins()
    if tenant:
        origins = [log_origin(store, tenant)]
        if origins[0] not in known:
            raise NotFound(f"No evidence for {tenant!r} yet.", hint="Check the tenant id (`aegress tenant list`).")
    else:
        mine = {o for o in published_origins(directory) if o.startswith(prefix + "/")}
        origins = sorted(set(known) | mine)
    trusted = list(verifiers) if verifiers is not None else trusted_verifiers(home)
    reports = []
    for origin in origins:
        sources = [(note, "database") for _, note in store.list_checkpoints(origin)]
        published = read_published(directory, origin)  # a file for this origin: a bad one is a finding, not skipped
        if published:
            sources.append((published[0], f"published at {published[1]}"))
        sources += [(n, where) for n, where in against if parse_checkpoint(parse_note(n).text).origin == origin]

        def step(done: int, total: int, origin: str = origin) -> None:
            if progress is not None:
                progress(f"Verifying {origin}", done, total)

        step(0, 0)
        report = verify_stored_log(store, origin, checkpoints=[n for n, _ in sources], verifiers=trusted,
                                   final=final, tenant=tenant_of(prefix, origin) or "", on_progress=step)
        reports.append(_summary(report, published[1] if published else None, sources))
    return reports


def remember(store: Store, reports: Iterable[Mapping[str, Any]], by: str) -> bool:
    """Keep the result for `aegress status` and the console (never changes the verification's answer)."""
    from gateway.status import remember_verification

    return remember_verification(store, reports, datetime.now(UTC), by)


# -- repair -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Repair:
    """What `repair_log` did: `seq` of the sealed repair record (None: the log verified, nothing to repair)."""

    tenant: str
    origin: str
    before: VerifyReport
    after: VerifyReport
    seq: int | None = None
    damaged: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        if self.seq is None:
            return {"repaired": False, "origin": self.origin, "verify": self.after.to_dict()}
        return {"repaired": True, "origin": self.origin, "repair_seq": self.seq, "damaged_seqs": list(self.damaged),
                "verify": self.after.to_dict()}

    def check(self) -> None:
        """CheckFailed if the log still fails verification after the repair."""
        if not self.after.ok:
            f = self.after.finding
            assert f is not None
            raise CheckFailed(f"{self.origin} still fails verification: {f.problem} at seq {f.seq}: {f.message}.",
                              hint=f"Run `aegress audit verify --tenant {self.tenant}` and report it.")


def repair_log(store: Store, home: Path, tenant: str, *, reason: str, actor: str,
               confirm: Callable[[str, Mapping[int, str]], None]) -> Repair:
    """Seal a `repair` record for damage to a log's meaning that is not tampering (an intent answered twice, an
    intent a recovery skipped: two gateways served one data dir). Nothing is rewritten. CheckFailed for chain,
    root or signature problems (never repairable). `confirm(origin, {seq: problem})` runs before anything is
    written and may raise to stop. The caller holds the data dir (`gateway.datadir.hold`): no gateway may append
    while the log is looked at."""
    origin = log_origin(store, tenant)
    if origin not in store.evidence_origins():
        raise NotFound(f"No evidence for {tenant!r} yet.", hint="Check the tenant id (`aegress tenant list`).")
    verifiers = trusted_verifiers(home)

    def check() -> VerifyReport:
        notes = [note for _, note in store.list_checkpoints(origin)]
        return verify_log(store.evidence_records(origin), origin=origin, checkpoints=notes, verifiers=verifiers)

    report = check()
    if report.ok:
        return Repair(tenant, origin, report, report)
    if not report.problems:
        f = report.finding
        assert f is not None
        raise CheckFailed(
            f"{origin}: {f.problem} at seq {f.seq}: {f.message}. This is not damage a repair may cover.",
            hint="Chain, root and signature problems mean the stored evidence was altered: keep the database "
                 "as it is for investigation and compare it with a backup or an exported bundle.",
        )
    damaged = {f.seq: f"seq {f.seq}: {f.problem}: {f.message}" for f in report.problems if f.seq is not None}
    confirm(origin, damaged)
    seqs = sorted(damaged)
    sealed = record_event(store, tenant, "repair", {
        "damaged_seqs": seqs, "problems": [damaged[s] for s in seqs], "actor": actor, "reason": reason[:500] or "-"})
    sign_if_possible(store, home)
    return Repair(tenant, origin, report, check(), sealed.record.seq, tuple(seqs))
