"""`aegress policy ...`: write, check, preview, apply and inspect a tenant's policy, and its tool pins."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from aegress_cli._common import (
    JsonOpt,
    TenantOpt,
    YesOpt,
    confirm,
    err,
    handle_errors,
    now,
    print_json,
    print_table,
    progress,
    store,
)

app = typer.Typer(help="Policy per tenant: allow, review or block each tool call (format: docs/policy.md).",
                  no_args_is_help=True)

FileArg = Annotated[Path, typer.Argument(help="Policy file (TOML).", exists=True, dir_okay=False, readable=True)]
AsOpt = Annotated[str | None, typer.Option("--as", help="Who you are, recorded with the change. Default: your OS "
                                           "user name.", envvar="AEGRESS_OPERATOR", show_default=False)]


def _operator(name: str | None) -> str:
    import getpass

    return name or getpass.getuser()


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _change_json(c: Any) -> dict[str, Any]:
    return {"upstream": c.upstream, "tool": c.tool, "actor": c.actor or None,
            "old_verdict": None if c.old_verdict is None else str(c.old_verdict), "new_verdict": str(c.new_verdict),
            "old_visible": c.old_visible, "new_visible": c.new_visible, "old_rule": c.old_rule_id,
            "new_rule": c.new_rule_id, "argument_dependent": c.argument_dependent}


def _show_plan(changes: list[Any], complete: bool, old_version: int) -> None:
    was = f"version {old_version}" if old_version else "the built-in default"
    if not changes:
        print(f"Plan: no tool changes verdict, rule or visibility (compared with {was}).")
    else:
        rows = [(c.upstream, c.tool, c.actor or "(anyone)",
                 f"{c.old_verdict or '-'}{'' if c.old_visible in (None, True) else ' (hidden)'}",
                 f"{c.new_verdict}{'' if c.new_visible else ' (hidden)'}", c.new_rule_id,
                 "yes" if c.argument_dependent else "") for c in changes]
        print_table(f"Plan: changes compared with {was}",
                    ["upstream", "tool", "actor", "before", "after", "rule", "depends on args"], rows, "",
                    keep=("upstream", "tool"))
    if not complete:
        err("Note: some upstreams are known by tool names only (no client has listed their tools through the "
            "gateway yet), so annotations were not considered for them.")


@app.command("init")
@handle_errors
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the starter file; - for stdout.")] = Path("policy.toml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starter policy."""
    from gateway.errors import AlreadyExists
    from gateway.policy import starter_policy_text

    text = starter_policy_text()
    if str(path) == "-":
        sys.stdout.write(text)
        return
    if path.exists() and not force:
        raise AlreadyExists(f"{path} already exists.", hint="Pass --force to overwrite it, or pick another path.")
    path.write_text(text, encoding="utf-8")
    print(f"Wrote {path}. Edit it, then: aegress policy apply {path} --tenant TENANT")


def _warn(warnings: list[Any]) -> None:
    for w in warnings:
        err(f"Warning: {w.message}")


@app.command("check")
@handle_errors
def check(
    file: FileArg,
    tenant: Annotated[str | None, typer.Option("--tenant", "-t", help="Also warn about upstreams the policy "
                                               "names that this tenant does not have.", show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Validate a policy file without applying it (exit 1 listing every problem; warnings keep exit 0)."""
    from gateway import policy_admin
    from gateway.policy import load_policy

    policy = load_policy(_read(file), str(file))
    warnings = policy_admin.warnings_for(store(), tenant, policy) if tenant is not None else []
    _warn(warnings)
    if json_out:
        print_json({"file": str(file), "valid": True, "rules": len(policy.rules),
                    "warnings": [w.to_dict() for w in warnings]})
    else:
        print(f"{file}: valid ({len(policy.rules)} rules" + (f", {len(warnings)} warning(s)" if warnings else "")
              + ").")


@app.command("apply")
@handle_errors
def apply(file: FileArg, tenant: TenantOpt, yes: YesOpt = False, as_: AsOpt = None, json_out: JsonOpt = False) -> None:
    """Validate a policy, show what changes for the tenant's tools, confirm, store it as a new version.

    A running gateway uses it within a second."""
    from gateway import policy_admin
    from gateway.policy import load_policy

    text = _read(file)
    candidate = load_policy(text, str(file))
    s = store()
    changes, complete, old_version = policy_admin.plan_change(s, tenant, candidate)
    warnings = policy_admin.warnings_for(s, tenant, candidate)
    if not json_out:
        _show_plan(changes, complete, old_version)
    _warn(warnings)
    if not json_out or not yes:
        was = f"policy version {old_version}" if old_version else "the built-in default"
        confirm(f"Apply {file} to tenant {tenant!r}, replacing {was} ({len(changes)} tool change(s) shown "
                "above)?", yes)
    row = policy_admin.apply_policy(s, tenant, text, str(file), now(), _operator(as_))
    if json_out:
        print_json({"tenant": tenant, "version": row.version, "replaces": old_version, "digest": row.digest,
                    "changes": [_change_json(c) for c in changes], "complete": complete,
                    "warnings": [w.to_dict() for w in warnings]})
    else:
        print(f"Applied {file} to tenant {tenant} as policy version {row.version}.")


@app.command("show")
@handle_errors
def show(tenant: TenantOpt, version: Annotated[int | None, typer.Option(help="A stored version (default: "
                                                                      "current).")] = None,
         json_out: JsonOpt = False) -> None:
    """Print the tenant's policy in force (or a stored version)."""
    from gateway import policy_admin
    from gateway.admin import require_tenant
    from gateway.decide import BUILTIN_DEFAULT_NAME, BUILTIN_DEFAULT_TEXT
    from gateway.errors import NotFound

    s = store()
    require_tenant(s, tenant)
    row = s.get_policy_version(tenant, version)
    if row is None and version is not None:
        raise NotFound(f"Tenant {tenant!r} has no policy version {version}.", hint="See `aegress policy list`.")
    if json_out:
        if row is None:
            print_json({"tenant": tenant, "version": 0, "source": BUILTIN_DEFAULT_NAME, "text": BUILTIN_DEFAULT_TEXT})
        else:
            print_json({"tenant": tenant, "version": row.version, "source": row.filename, "digest": row.digest,
                        "applied_at": row.applied_at, "applied_by": row.applied_by, "text": row.text})
        return
    if row is None:
        policy_admin.current(s, tenant)
        err(f"# Tenant {tenant} has no applied policy: the {BUILTIN_DEFAULT_NAME} is in force.")
        sys.stdout.write(BUILTIN_DEFAULT_TEXT)
        return
    err(f"# Tenant {tenant}, policy version {row.version} from {row.filename}, applied {row.applied_at} by "
        f"{row.applied_by}")
    sys.stdout.write(row.text if row.text.endswith("\n") else row.text + "\n")


@app.command("list")
@handle_errors
def list_(tenant: TenantOpt, json_out: JsonOpt = False) -> None:
    """List the tenant's stored policy versions."""
    from gateway.admin import require_tenant

    s = store()
    require_tenant(s, tenant)
    rows = s.list_policy_versions(tenant)
    if json_out:
        print_json([{"version": r.version, "source": r.filename, "digest": r.digest, "applied_at": r.applied_at,
                     "applied_by": r.applied_by} for r in rows])
        return
    print_table(f"Policy versions of {tenant}", ["version", "source", "applied at", "by"],
                [(r.version, r.filename, r.applied_at, r.applied_by) for r in rows],
                "No policy applied: the built-in default is in force.")


@app.command("diff")
@handle_errors
def diff(file: FileArg, tenant: TenantOpt, json_out: JsonOpt = False) -> None:
    """Compare a policy file with the tenant's policy in force: text and verdict changes."""
    import difflib

    from gateway import policy_admin
    from gateway.decide import BUILTIN_DEFAULT_TEXT
    from gateway.policy import load_policy

    text = _read(file)
    candidate = load_policy(text, str(file))
    s = store()
    changes, complete, old_version = policy_admin.plan_change(s, tenant, candidate)
    warnings = policy_admin.warnings_for(s, tenant, candidate)
    _warn(warnings)
    row = s.get_policy_version(tenant)
    old_text = row.text if row else BUILTIN_DEFAULT_TEXT
    label = f"{tenant} v{row.version}" if row else f"{tenant} (built-in default)"
    lines = list(difflib.unified_diff(old_text.splitlines(keepends=True), text.splitlines(keepends=True),
                                      fromfile=label, tofile=str(file)))
    if json_out:
        print_json({"tenant": tenant, "version": old_version, "text_diff": "".join(lines),
                    "changes": [_change_json(c) for c in changes], "complete": complete,
                    "warnings": [w.to_dict() for w in warnings]})
        return
    sys.stdout.write("".join(lines) if lines else "(texts are identical)\n")
    _show_plan(changes, complete, old_version)


@app.command("test")
@handle_errors
def test(
    tenant: TenantOpt,
    tool: Annotated[str, typer.Option("--tool", help="Tool name as clients see it (e.g. files__read_file).")],
    args: Annotated[str, typer.Option("--args", help="The call's arguments as a JSON object.")] = "{}",
    actor: Annotated[str, typer.Option("--actor", "-a", help="Calling actor.", envvar="AEGRESS_ACTOR_ID")] = "",
    file: Annotated[Path | None, typer.Option("--file", help="Decide with this policy file instead of the "
                                              "stored one.", exists=True, dir_okay=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Decide one call as the gateway would: the verdict and the rule. Exit 3 when it is not allow."""
    from gateway import policy_admin
    from gateway.errors import InvalidInput
    from gateway.policy import load_policy

    try:
        arguments = json.loads(args)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"--args is not JSON: {exc.msg}.", hint="Pass a JSON object, e.g. '{\"path\": \"/x\"}'.") \
            from exc
    if not isinstance(arguments, dict):
        raise InvalidInput("--args must be a JSON object.")
    candidate = load_policy(_read(file), str(file)) if file else None
    s = store()
    if actor:
        from gateway.admin import require_actor

        require_actor(s, tenant, actor)
    res = policy_admin.decide_call(s, tenant, tool, arguments, actor, candidate)
    d = res.decision
    if json_out:
        print_json({"tenant": tenant, "tool": tool, "upstream": res.upstream, "upstream_tool": res.tool,
                    "actor": actor or None, "verdict": str(d.verdict), "rule": d.rule_id, "reason": d.reason,
                    "review_mode": None if d.review_mode is None else str(d.review_mode), "visible": res.visible,
                    "policy_version": d.policy_version, "pin": None if res.pin is None else str(res.pin),
                    "definition_known": res.known})
    else:
        mode = f" ({d.review_mode})" if d.review_mode else ""
        print(f"{tool}: {d.verdict}{mode} by rule {d.rule_id}" + (f": {d.reason}" if d.reason else ""))
        if not res.visible:
            print("Hidden from tools/list for this actor; calling it answers like an unknown tool.")
        if not res.known:
            err("Note: the gateway has not listed this tool yet, so its annotations and pin were not considered.")
    if str(d.verdict) != "allow":
        raise typer.Exit(3)


@app.command("replay")
@handle_errors
def replay(
    file: FileArg,
    tenant: TenantOpt,
    since: Annotated[str | None, typer.Option(help="Only calls started at or after this ISO time, e.g. "
                                              "2026-11-01T00:00:00.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many of the latest recorded calls.")] = 10000,
    json_out: JsonOpt = False,
) -> None:
    """Re-decide the tenant's recorded tool calls under a candidate policy; report what would change.

    Call records hold no arguments, so calls replay with empty arguments."""
    from gateway import policy_admin
    from gateway.policy import load_policy

    candidate = load_policy(_read(file), str(file))
    with progress(json_out) as shown:
        task = shown.add_task(f"Replaying the recorded calls of {tenant}", total=None)
        shown.refresh()
        report, skipped = policy_admin.replay_calls(
            store(), tenant, candidate, since, limit,
            on_progress=lambda done, total: shown.update(task, completed=done, total=total))
    more = {id(c) for c in report.more_permissive}
    if json_out:
        print_json({"tenant": tenant, "total": report.total, "unchanged": report.unchanged, "skipped": skipped,
                    "arguments_replayed": False,
                    "transitions": {f"{a}->{b}": n for (a, b), n in sorted(report.transitions.items())},
                    "changed": [{"call": c.call_id, "upstream": c.upstream, "tool": c.name, "actor": c.actor,
                                 "old": str(c.old_verdict), "new": str(c.new_verdict), "rule": c.new_rule_id,
                                 "more_permissive": id(c) in more} for c in report.changed]})
        return
    print(f"Replayed {report.total} recorded tool calls of {tenant}: {report.unchanged} unchanged, "
          f"{len(report.changed)} would change ({len(more)} more permissive); {skipped} skipped (unknown tool or "
          "upstream).")
    print_table("Changes", ["call", "upstream", "tool", "actor", "was", "would be", "rule"],
                [(c.call_id, c.upstream, c.name, c.actor, c.old_verdict, c.new_verdict, c.new_rule_id)
                 for c in report.changed], "No verdict would change.", keep=("call", "tool"))
    err("Note: call records keep no arguments, so argument rules saw every argument as absent.")


@app.command("pins")
@handle_errors
def pins(tenant: TenantOpt, history: Annotated[bool, typer.Option("--history", help="Show the recorded "
                                                                    "definition changes instead.")] = False,
         json_out: JsonOpt = False) -> None:
    """Tool pins: each tool's approved definition hash and whether the upstream still matches it."""
    from gateway import policy_admin
    from gateway.admin import require_tenant

    s = store()
    if history:
        require_tenant(s, tenant)
        changes = s.list_pin_changes(tenant)
        if json_out:
            print_json([{"upstream": c.upstream, "tool": c.tool, "old_hash": c.old_hash or None,
                         "new_hash": c.new_hash, "seen_at": c.seen_at, "approved_at": c.resolved_at,
                         "approved_by": c.resolved_by} for c in changes])
            return
        print_table(f"Tool definition changes of {tenant}", ["upstream", "tool", "old", "new", "seen", "approved by"],
                    [(c.upstream, c.tool, (c.old_hash or "(new)")[:19], c.new_hash[:19], c.seen_at,
                      c.resolved_by or "(pending)") for c in changes], "No changes recorded.",
                    keep=("upstream", "tool"))
        return
    rows = policy_admin.pin_report(s, tenant)
    if json_out:
        print_json([{"upstream": r.upstream, "tool": r.tool, "status": r.status, "pinned_hash": r.pinned_hash,
                     "current_hash": r.current_hash} for r in rows])
        return
    print_table(f"Tool pins of {tenant}", ["upstream", "tool", "status", "pinned", "current"],
                [(r.upstream, r.tool, r.status, (r.pinned_hash or "")[:19], (r.current_hash or "")[:19])
                 for r in rows], "No tool definitions seen yet (a client must list tools through the gateway).",
                keep=("upstream", "tool"))


@app.command("approve-tool")
@handle_errors
def approve_tool(
    tenant: TenantOpt,
    upstream: Annotated[str, typer.Argument(help="Upstream name.")],
    tools: Annotated[list[str] | None, typer.Argument(help="Tool names as the upstream lists them (default: every "
                                                      "changed or new tool).", show_default=False)] = None,
    as_: AsOpt = None,
    yes: YesOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Approve tools' current definitions: pin them so they leave `review` (rule `pin`)."""
    from gateway import policy_admin
    from gateway.admin import require_upstream

    s = store()
    require_upstream(s, tenant, upstream)
    pending = [r for r in policy_admin.pin_report(s, tenant) if r.upstream == upstream
               and ((tools is None and r.status in ("changed", "new", "unpinned")) or (tools and r.tool in tools))]
    if not json_out:
        for r in pending:
            print(f"  {r.upstream}/{r.tool}: {r.status}  {r.pinned_hash or '(none)'} -> {r.current_hash}")
    if pending and (not json_out or not yes):
        confirm(f"Approve the current definition(s) of {len(pending)} tool(s) of upstream {upstream!r} in tenant "
                f"{tenant!r} (listed above), so they leave review?", yes)
    done = policy_admin.approve_tools(s, tenant, upstream, tools, _operator(as_), now())
    if json_out:
        print_json([{"upstream": r.upstream, "tool": r.tool, "was": r.status, "pinned_hash": r.current_hash}
                    for r in done])
    else:
        print(f"Approved {len(done)} tool definition(s) of {upstream}." if done else "Nothing to approve.")
