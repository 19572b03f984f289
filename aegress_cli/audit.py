"""`aegress audit ...`: read, export, prove and verify the sealed evidence logs.

A thin shell over `gateway.audit` (pure: records, Merkle proofs, checkpoints, bundles, verification) and
`gateway.evidence` (keys, checkpoint signing, proofs, export, import, store verification, repair): here only
options are parsed, progress shown and results rendered. Nothing here imports the MCP SDK or the server
stack. `audit verify --bundle` opens no database at all.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from aegress_cli._common import (
    JsonOpt,
    YesOpt,
    confirm,
    err,
    handle_errors,
    home,
    json_errors,
    master_key,
    print_json,
    printable,
    progress,
    store,
)

app = typer.Typer(help="Query, export, prove and verify the tamper-evident evidence logs.", no_args_is_help=True)

TenantFilter = Annotated[str, typer.Option("--tenant", "-t", help="Only this tenant.", envvar="AEGRESS_TENANT_ID")]
ActorFilter = Annotated[str, typer.Option("--actor", "-a", help="Only this actor.")]
ToolFilter = Annotated[str, typer.Option("--tool", help="Only this tool (the name clients call).")]
Verdict = Literal["allow", "review_approved", "deny", "hidden", "review"]
"""A call record's verdict: forwarded (allow, review_approved) or not (deny, hidden, review: held)."""
Outcome = Literal["completed", "failed", "timeout", "cancelled", "client_disconnected", "not_forwarded",
                  "outcome_unknown"]
"""A call's outcome: gateway.audit.records.OUTCOME_STATUSES, and outcome_unknown (after a crash)."""
Kind = Literal["intent", "decision", "outcome", "outcome_unknown", "review_approved", "review_denied",
               "elicitation_answer", "policy_changed", "token_revoked", "operator_change", "key_event", "repair",
               "auth_failures_aggregate"]
"""Record kinds: gateway.audit.records.KINDS (a unit test keeps them equal)."""
VerdictFilter = Annotated[Verdict | None, typer.Option("--verdict", help="Only calls with this verdict.",
                                                       show_default=False)]
OutcomeFilter = Annotated[Outcome | None, typer.Option("--outcome", help="Only calls with this outcome.",
                                                       show_default=False)]
KindFilter = Annotated[Kind | None, typer.Option("--kind", help="Only records of this kind.", show_default=False)]
SinceOpt = Annotated[str, typer.Option("--since", help="From this time on (RFC 3339, e.g. 2026-01-02 or "
                                       "2026-01-02T03:04:05Z).")]
UntilOpt = Annotated[str, typer.Option("--until", help="Before this time (RFC 3339).")]
DigestFilter = Annotated[str, typer.Option("--digest", help="Only records holding this digest "
                                           "(from `aegress audit hash`).")]

_COLUMNS = ["id", "time", "tenant", "seq", "kind", "actor", "tool", "verdict", "outcome"]


def _time_arg(value: str) -> str:
    """Accept a date or an RFC 3339 time; records compare as `YYYY-MM-DDTHH:MM:SS.ffffffZ` text."""
    if not value:
        return ""
    from datetime import UTC, datetime

    from gateway.errors import UsageError

    text = value.strip().replace("z", "Z")
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise UsageError(f"Not a time: {value!r}.", hint="Use RFC 3339, e.g. 2026-01-02T03:04:05Z.") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _filter(tenant: str = "", actor: str = "", tool: str = "", verdict: str | None = None, outcome: str | None = None,
            kind: str | None = None, since: str = "", until: str = "", digest: str = "", after_id: int = 0) -> Any:
    from gateway.store.base import EvidenceFilter

    return EvidenceFilter(tenant=tenant, actor=actor, tool=tool, verdict=verdict or "", status=outcome or "",
                          kind=kind or "",
                          since=_time_arg(since), until=_time_arg(until), contains=digest, after_id=after_id)


def _row_dict(row: Any) -> dict[str, Any]:
    return {"id": row.id, "origin": row.origin, "seq": row.seq, "kind": row.kind, "time": row.time,
            "tenant": row.tenant, "actor": row.actor, "tool": row.tool, "verdict": row.verdict,
            "outcome": row.status, "intent_seq": row.intent_seq, "leaf_hash": row.leaf_hash.hex(),
            "record": json.loads(row.data)}


def _row_cells(row: Any) -> list[Any]:
    return [row.id, row.time[:23] + "Z", row.tenant or "(security)", row.seq, row.kind, row.actor, row.tool,
            row.verdict, row.status]


@app.command("query")
@handle_errors
def query(tenant: TenantFilter = "", actor: ActorFilter = "", tool: ToolFilter = "", verdict: VerdictFilter = None,
          outcome: OutcomeFilter = None, kind: KindFilter = None, since: SinceOpt = "", until: UntilOpt = "",
          digest: DigestFilter = "",
          limit: Annotated[int, typer.Option(help="At most this many records, newest first.")] = 50,
          json_out: JsonOpt = False) -> None:
    """List evidence records (newest first) matching the filters."""
    from gateway.admin import require_log_filters

    db = store()
    require_log_filters(db, tenant, actor)  # a typo is an error, not an empty result
    rows = db.query_evidence(
        _filter(tenant, actor, tool, verdict, outcome, kind, since, until, digest), limit=limit)
    if json_out:
        print_json([_row_dict(r) for r in rows])
        return
    from aegress_cli._common import print_table

    print_table("Evidence", _COLUMNS, [_row_cells(r) for r in rows], "No matching records.", keep=("id", "tool"))


@app.command("tail")
@handle_errors
def tail(tenant: TenantFilter = "", actor: ActorFilter = "", tool: ToolFilter = "", verdict: VerdictFilter = None,
         outcome: OutcomeFilter = None, kind: KindFilter = None,
         follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new records until "
                                              "Ctrl-C.")] = False,
         lines: Annotated[int, typer.Option("--lines", "-n", help="Records to show first.")] = 20,
         interval: Annotated[float, typer.Option(help="Seconds between polls with --follow.")] = 1.0,
         max_seconds: Annotated[float, typer.Option(help="Stop following after this long (0 = never).",
                                                    hidden=True)] = 0.0,
         json_out: JsonOpt = False) -> None:
    """Show the latest records; with -f, keep following new ones (one JSON object per line with --json)."""
    from gateway.admin import require_log_filters

    db = store()
    require_log_filters(db, tenant, actor)
    where = _filter(tenant, actor, tool, verdict, outcome, kind)
    rows = list(reversed(db.query_evidence(where, limit=lines)))

    def emit(batch: list[Any]) -> None:
        for r in batch:
            if json_out:
                sys.stdout.write(json.dumps(_row_dict(r)) + "\n")
            else:
                print("  ".join(printable(c) for c in _row_cells(r)))
        sys.stdout.flush()

    emit(rows)
    last = rows[-1].id if rows else 0
    if not rows:
        newest = db.query_evidence(_filter(), limit=1)
        last = newest[0].id if newest else 0
    started = time.monotonic()
    while follow and (max_seconds <= 0 or time.monotonic() - started < max_seconds):
        time.sleep(interval)
        from dataclasses import replace

        batch = db.query_evidence(replace(where, after_id=last), limit=1000, newest_first=False)
        if batch:
            emit(batch)
            last = batch[-1].id


@app.command("show")
@handle_errors
def show(record_id: Annotated[str, typer.Argument(help="Record id (from `audit query`) or TENANT:SEQ.")],
         json_out: JsonOpt = False) -> None:
    """Show one record: its exact stored bytes (pretty-printed), leaf hash and receipt."""
    from gateway.evidence.proofs import find_record

    row = find_record(store(), record_id)
    if json_out:
        print_json(_row_dict(row))
        return
    print(f"id {row.id}  origin {row.origin}  seq {row.seq}  kind {row.kind}")
    print(f"leaf hash {row.leaf_hash.hex()}")
    print(json.dumps(json.loads(row.data), indent=2, ensure_ascii=False))


@app.command("pubkey")
@handle_errors
def pubkey(all_keys: Annotated[bool, typer.Option("--all", help="Also print retired keys (all trusted).")] = False,
           json_out: JsonOpt = False) -> None:
    """Print the verifier key that checks this deployment's checkpoints (give it to verifiers out of band)."""
    from gateway.errors import NotFound
    from gateway.evidence.keys import public_keys

    active, keys = public_keys(store(), home())
    if active is None and not keys:
        raise NotFound("No checkpoint signing key yet.", hint="Start the gateway once (`aegress serve`); it "
                       "creates one.")
    shown = keys if all_keys else ([active] if active else keys[-1:])
    if json_out:
        print_json({"active": active, "keys": shown})
        return
    for line in shown:
        print(line)


@app.command("rotate-key")
@handle_errors
def rotate_key(yes: YesOpt = False, json_out: JsonOpt = False) -> None:
    """Replace the checkpoint signing key; old public keys stay trusted (keys.txt), a key_event is logged."""
    from gateway.evidence.events import operator_name
    from gateway.evidence.keys import rotate_key as rotate

    data = home()
    confirm(f"Replace the checkpoint signing key of {data} with a new one? Checkpoints signed from now on use the "
            "new key; the old public key stays trusted.", yes)
    old, new = rotate(store(), data, operator_name())
    if json_out:
        print_json({"previous": old, "active": new})
    else:
        print(new)
        err("Rotated. A running gateway picks up the new key at its next checkpoint.")


@app.command("checkpoint")
@handle_errors
def checkpoint(json_out: JsonOpt = False) -> None:
    """Sign a checkpoint now for every log that grew since its last one (the gateway also does this)."""
    from gateway.evidence.checkpointer import sign_now

    notes = sign_now(store(), home())
    if json_out:
        print_json({"signed": notes})
    else:
        for note in notes:
            print(note)
        err(f"Signed {len(notes)} checkpoint(s).")


@app.command("hash")
@handle_errors
def hash_(value: Annotated[str, typer.Argument(help="The value (a string unless --json-value).")],
          tenant: Annotated[str, typer.Option("--tenant", "-t", help="Tenant whose key to use.",
                                              envvar="AEGRESS_TENANT_ID")],
          json_value: Annotated[bool, typer.Option("--json-value", help="Parse VALUE as JSON (e.g. a whole "
                                                   "arguments object).")] = False,
          json_out: JsonOpt = False) -> None:
    """Reproduce a value's keyed digest, to search the evidence for it (`audit query --digest`)."""
    from gateway.audit.redact import derive_tenant_key, digest_value
    from gateway.errors import UsageError

    parsed: Any = value
    if json_value:
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            raise UsageError("VALUE is not JSON.", hint="Drop --json-value to hash it as a string.") from exc
    from gateway.admin import require_log_tenant

    require_log_tenant(store(), tenant)
    digest = digest_value(derive_tenant_key(master_key(), tenant), parsed)
    if json_out:
        print_json({"tenant": tenant, "digest": digest})
    else:
        print(digest)


# -- proofs ------------------------------------------------------------------------------------------
def _trusted(keys: list[str] | None) -> Any:
    """The verifier keys given with --key (keys or files of them), else None."""
    if not keys:
        return None
    from gateway.evidence.keys import verifiers_from

    return verifiers_from(keys)


@app.command("proof")
@handle_errors
def proof(
    receipt: Annotated[str, typer.Option("--receipt", help="A receipt: the JSON of _meta.aegress, or @FILE.")] = "",
    tenant: Annotated[str, typer.Option("--tenant", "-t", help="With --seq: the tenant (or `security`).")] = "",
    seq: Annotated[int, typer.Option("--seq", help="With --tenant: the record's seq.")] = -1,
    out: Annotated[Path | None, typer.Option("--out", help="Write the proof here instead of stdout.")] = None,
) -> None:
    """Print a C2SP tlog-proof that the record is in the log signed by the latest covering checkpoint."""
    from gateway.errors import UsageError
    from gateway.evidence.proofs import inclusion_proof, parse_receipt, receipt_for

    db = store()
    if receipt:
        named = parse_receipt(Path(receipt[1:]).read_text() if receipt.startswith("@") else receipt)
    elif tenant and seq >= 0:
        named = receipt_for(db, tenant, seq)
    else:
        raise UsageError("Give --receipt, or --tenant and --seq.")
    text = inclusion_proof(db, named)
    if out:
        out.write_text(text)
        err(f"Wrote {out}.")
    else:
        sys.stdout.write(text)


# -- export -----------------------------------------------------------------------------------------
ExportFormat = Literal["jsonl", "csv", "bundle"]
"""gateway.evidence.export.ExportFormat (a unit test keeps them equal; importing it here would load the evidence
stack for every `audit` command)."""


@app.command("export")
@handle_errors
def export(
    out: Annotated[Path, typer.Option("--out", help="File (jsonl, csv) or new directory (bundle; with --all, a new "
                                      "directory of bundles).")],
    tenant: Annotated[str, typer.Option("--tenant", "-t", help="Tenant whose log to export (`security` for the "
                                        "deployment's security log).", envvar="AEGRESS_TENANT_ID")] = "",
    all_logs: Annotated[bool, typer.Option("--all", help="Every log in the database (each tenant's and the "
                                           "security log), one bundle each under --out (`security`, "
                                           "`tenant-<id>`): what `aegress audit import` reads to move them to "
                                           "another database.")] = False,
    fmt: Annotated[ExportFormat, typer.Option("--format", help="jsonl (exact record bytes), csv (queryable "
                                              "columns) or bundle (verifiable offline).")] = "bundle",
    since: SinceOpt = "",
    until: UntilOpt = "",
    sign: Annotated[bool, typer.Option("--sign/--no-sign", help="Sign a fresh checkpoint first (if this host "
                                       "has the key) so the bundle covers every record.")] = True,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file (or bundle directory, or with "
                                        "--all a directory of bundles) at --out. A symlink is never "
                                        "followed.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Export a tenant log (--all: every log): jsonl (exact bytes), csv (columns) or a verifiable bundle.

    Files are created readable by the owner only (0600; a bundle directory 0700), never through a
    symlink, and never over an existing file without --force."""
    from gateway.errors import UsageError

    if all_logs and tenant:
        raise UsageError("Give --tenant or --all, not both.", hint="AEGRESS_TENANT_ID counts as --tenant: unset it "
                         "to export every log.")
    if not all_logs and not tenant:
        raise UsageError("Give --tenant TENANT (`security` for the security log), or --all for every log.")
    if all_logs and fmt != "bundle":
        raise UsageError("--all exports bundles only.", hint="Drop --format, or export one log with --tenant.")
    from gateway.admin import require_log_tenant
    from gateway.evidence.export import export_all, export_log
    from gateway.evidence.origins import log_origin

    db = store()
    if not all_logs:
        require_log_tenant(db, tenant)  # never an empty export for a misspelt tenant
    with progress(json_out) as shown:  # jsonl and csv stream a page at a time; a bundle is built in memory
        task = shown.add_task("Exporting", total=1)
        shown.refresh()

        def on_progress(what: str, done: int, total: int) -> None:
            shown.update(task, description=what, completed=done, total=max(1, total))

        if all_logs:
            logs = export_all(db, home(), out, since=_time_arg(since), until=_time_arg(until), sign=sign,
                              force=force, progress=on_progress)
        else:
            one = export_log(db, home(), log_origin(db, tenant), out, fmt, since=_time_arg(since),
                             until=_time_arg(until), sign=sign, force=force, progress=on_progress)
    if all_logs:
        if json_out:
            print_json({"format": "bundle", "out": str(out), "records": sum(x.records for x in logs),
                        "logs": [x.to_dict() for x in logs]})
        else:
            for x in logs:
                err(f"Exported {x.records} record(s) of {x.origin} to {x.out}.")
            err(f"{len(logs)} log(s) in {out}. Move them to another database with `aegress audit import {out}`.")
    elif json_out:
        print_json({"origin": one.origin, "format": fmt, "out": str(out), "first_seq": one.first_seq,
                    "end_seq": one.end_seq, "records": one.records})
    else:
        err(f"Exported {one.records} record(s) of {one.origin} to {out}.")


# -- import -------------------------------------------------------------------------------------------
@app.command("import")
@handle_errors
def import_(
    path: Annotated[Path, typer.Argument(help="A bundle directory (`audit export`), or a directory of bundles "
                                         "(`audit export --all`).")],
    key: Annotated[list[str] | None, typer.Option("--key", help="Verifier key the bundle's checkpoints must be "
                                                  "signed with, or a file of them; repeatable. Default: the "
                                                  "keys this data dir trusts plus the bundle's own keys.txt.")]
        = None,
    yes: YesOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Import exported evidence logs into this database as they were sealed (SQLite -> Postgres...).

    Each bundle is verified first, as `audit verify --bundle` does; then every record goes in with
    its exact bytes, seq and origin, with its signed checkpoints, in ONE transaction. Nothing is
    re-sealed. A log must be empty here, or the bundle must continue it exactly, or repeat records
    it already holds (only the rest is added: the same bundle twice changes nothing). A fork, a
    gap, another deployment's logs or a bundle that does not verify is refused, nothing is written
    (exit 3).

    The keys that signed the imported checkpoints are added to this data dir's audit/keys.txt, so
    `audit verify` here checks them; the command names them and asks first (--yes: do not ask).
    Pass --key with the source's `aegress audit pubkey --all` to rely on those keys rather than the
    bundle's own. Uses AEGRESS_DATABASE_URL (Postgres) like every command. On a new database, run
    it before the gateway first starts there, so that its logs continue the imported ones.
    """
    from gateway.evidence.bundles import ImportPreview, import_bundles
    from gateway.evidence.keys import keys_txt

    db = store()
    keys = _trusted(key)
    data = home()

    with progress(json_out) as shown:
        task = shown.add_task("Importing", total=1)

        def show(what: str, done: int, total: int) -> None:
            shown.update(task, description=what, completed=done, total=max(1, total))

        def ask(preview: ImportPreview) -> None:
            shown.stop()  # the question, not the bar, on the terminal
            for b in preview.bundles:
                have = preview.sizes.get(b.origin, 0)
                seqs = f", seq {b.start}..{b.end - 1}" if b.records else ""
                err(f"{b.origin}: {len(b.records)} record(s){seqs}, {len(b.checkpoints)} checkpoint(s); this "
                    f"database holds {have} record(s) of it")
            for verifier_key in preview.keys_to_trust:
                err(f"will trust the verifier key {verifier_key} (it signed the bundle's checkpoints)")
            if preview.keys_to_trust and preview.keys_from_bundle:
                err("Note: the bundle's own keys.txt names that key; pass --key with the source's verifier keys "
                    "(`aegress audit pubkey --all` there) to rely on those instead.")
            confirm(f"Import {len(preview.bundles)} log(s) into {_location(db)}?", yes)
            shown.start()

        report = import_bundles(db, data, path, keys=keys, confirm=ask, progress=show)
    if json_out:
        print_json(report.to_dict())
        return
    for r in report.logs:
        cps = f", {r.checkpoints} checkpoint(s)" if r.checkpoints else ""
        if r.status == "unchanged":
            added = f"; added{cps}" if cps else ""
            print(f"unchanged {r.origin}: this database already holds every record of the bundle "
                  f"({r.size_before} in all){added}")
        else:
            print(f"{r.status:<9} {r.origin}: {r.records} record(s), seq {r.first}..{r.end - 1}{cps}")
    for verifier_key in report.keys_trusted:
        print(f"trusted   {verifier_key} (added to {keys_txt(data)})")
    for origin, seqs in report.open_intents.items():
        if seqs:
            err(f"Note: {origin} has {len(seqs)} intent(s) without an outcome (seq {', '.join(map(str, seqs[:5]))}"
                f"{', ...' if len(seqs) > 5 else ''}): the gateway that wrote them was running when it was "
                "exported, or crashed.")
    for warning in report.warnings:
        err(f"Warning: {warning}")
    if report.changed:
        err("Check the result with `aegress audit verify`.")
    else:
        err("Nothing to import: this database already holds every record and checkpoint.")


def _location(db: Any) -> str:
    status = db.schema_status()
    return f"{status.backend} at {status.location}"


# -- verify -------------------------------------------------------------------------------------------
@app.command("verify")
def verify(
    tenant: Annotated[str, typer.Option("--tenant", "-t", help="Verify this tenant's log (`security` for the "
                                        "security log).")] = "",
    all_logs: Annotated[bool, typer.Option("--all", help="Verify every log in the database (the default "
                                           "without --tenant or --bundle).")] = False,
    bundle: Annotated[Path | None, typer.Option("--bundle", help="Verify an exported bundle directory (no "
                                                "database, no network).")] = None,
    against: Annotated[list[Path] | None, typer.Option("--against", help="A signed checkpoint held elsewhere "
                                                       "(a published file, a witness copy); repeatable.")] = None,
    key: Annotated[list[str] | None, typer.Option("--key", help="Trusted verifier key, or a file of them; "
                                                  "repeatable. Default: the data dir's keys.txt (or, for a "
                                                  "bundle, its keys.txt).")] = None,
    final: Annotated[bool, typer.Option("--final", help="No call can be in flight (gateway stopped): every "
                                        "intent must have an outcome.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Recompute every hash, link, Merkle root, signature, checkpoint and stored column; name the first problem.

    Checks each log against its checkpoints in the database AND the newest one published outside it
    (AEGRESS_CHECKPOINT_DIR), so a log cut short in the database is found. Exit 0 verified, 3 tampered
    or incomplete, 1 could not run.
    """
    from aegress_cli._common import fail
    from gateway.errors import AegressError

    json_errors(json_out)
    started = time.perf_counter()
    try:
        if bundle is not None:
            reports = [_verify_bundle(bundle, key, [p.read_text() for p in (against or [])], final)]
        else:
            reports = _verify_store(tenant, all_logs, key, against or [], final, json_out)
    except (AegressError, OSError, ValueError, KeyError) as exc:  # could not run: exit 1, whatever it was
        if isinstance(exc, AegressError):
            raise fail(AegressError(f"could not verify: {exc.message}", hint=exc.hint, code=exc.code)) from None
        raise fail(AegressError(f"could not verify: {type(exc).__name__}: {exc}", code="verify-failed")) from None
    elapsed = time.perf_counter() - started
    total = sum(r["records"] for r in reports)
    ok = all(r["ok"] for r in reports)
    if json_out:
        print_json({"ok": ok, "records": total, "seconds": round(elapsed, 4), "logs": reports})
    else:
        for r in reports:
            if r["ok"]:
                cp = r["latest_checkpoint_size"]
                signed = f"signed up to {cp}" if cp is not None else "NO signed checkpoint yet"
                opened = f", {len(r['open_intents'])} call(s) in flight" if r["open_intents"] else ""
                outside = ", none published outside the database" if r.get("published_checkpoint", "") is None else ""
                print(f"verified  {r['origin']}: {r['size'] - r['start']} record(s), {r['checkpoints']} "
                      f"checkpoint(s), {signed}{opened}{outside}")
                for fix in r.get("repairs") or []:
                    print(f"notice    {r['origin']}: repair record {fix['seq']} acknowledges damage at seq(s) "
                          f"{', '.join(map(str, fix['damaged_seqs']))} (see `aegress audit show`)")
            else:
                f = r["finding"]
                where = f" at seq {f['seq']}" if f.get("seq") is not None else ""
                print(f"PROBLEM   {r['origin']}: {f['problem']}{where}: {f['message']}")
        err(f"{total} record(s) in {elapsed:.2f} s.")
    raise typer.Exit(0 if ok else 3)


def _verify_bundle(path: Path, keys: list[str] | None, against: list[str], final: bool) -> dict[str, Any]:
    from gateway.evidence.verification import verify_bundle_dir

    summary = verify_bundle_dir(path, _trusted(keys), against, final)
    if summary["keys_from_bundle"]:
        err("Note: trusting the bundle's own keys.txt; pass --key with the operator's verifier key to rely on it.")
    return summary


def _verify_store(tenant: str, all_logs: bool, keys: list[str] | None, against: list[Path],
                  final: bool, quiet: bool) -> list[dict[str, Any]]:
    from gateway.errors import UsageError
    from gateway.evidence.events import operator_name
    from gateway.evidence.verification import remember, verify_store

    if tenant and all_logs:
        raise UsageError("Give one of --tenant, --all or --bundle.")
    db = store()
    given = [(p.read_text(), f"--against {p}") for p in against]
    with progress(quiet) as shown:
        tasks: dict[str, Any] = {}

        def on_progress(what: str, done: int, total: int) -> None:
            if what not in tasks:
                for finished in tasks.values():
                    shown.remove_task(finished)
                tasks.clear()
                tasks[what] = shown.add_task(what, total=None)
                shown.refresh()
            if total:
                shown.update(tasks[what], completed=done, total=total)

        reports = verify_store(db, home(), tenant=tenant, verifiers=_trusted(keys), against=given, final=final,
                               progress=on_progress)
    remember(db, reports, operator_name())
    return reports


# -- repair -------------------------------------------------------------------------------------------
@app.command("repair")
@handle_errors
def repair(
    tenant: Annotated[str, typer.Option("--tenant", "-t", help="The tenant whose log to repair.",
                                        envvar="AEGRESS_TENANT_ID")],
    reason: Annotated[str, typer.Option("--reason", help="Why, in the repair record (no secrets).")] =
        "acknowledged by the operator after `aegress audit verify` named the damage",
    yes: YesOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Seal a `repair` record for damage to a log's meaning that is not tampering.

    Such damage (an intent answered twice, an intent a recovery skipped) came from two gateways serving one
    data dir. Nothing is rewritten or deleted: the repair record names the damaged seqs and what was wrong,
    `audit verify` then passes and reports the repair as a notice. Chain, root and signature problems
    (tampering) are never repairable: exit 3. Refused while a gateway holds the data dir.
    """
    from gateway.datadir import hold
    from gateway.evidence.events import operator_name
    from gateway.evidence.verification import repair_log

    def ask(origin: str, damaged: Mapping[int, str]) -> None:
        for line in damaged.values():
            err(line)
        confirm(f"Seal a repair record in {origin} acknowledging {len(damaged)} damaged record(s)?", yes)

    lock = hold(home(), purpose="audit repair")  # no gateway may append (or recover) while we look
    try:
        done = repair_log(store(), home(), tenant, reason=reason, actor=operator_name(), confirm=ask)
    finally:
        lock.release()
    if json_out:
        print_json(done.to_dict())
    elif done.seq is None:
        err(f"{done.origin} verifies: nothing to repair.")
    else:
        print(f"repair record {done.seq} sealed in {done.origin}: damaged seq(s) {', '.join(map(str, done.damaged))}")
    done.check()
