"""`aegress review ...`: decide calls the policy held for review, from any process or machine that
shares the gateway's database. The approver must not be the actor whose call is held."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from aegress_cli._common import JsonOpt, handle_errors, print_json, print_table, printable, store

app = typer.Typer(help="Held calls: list, show, approve or deny them (policy verdict `review`).",
                  no_args_is_help=True)

IdArg = Annotated[str, typer.Argument(help="Review id (rev_...), as the caller and `review list` show it.")]
AsOpt = Annotated[str | None, typer.Option("--as", help="Who decides (an actor id or operator name); must differ "
                                           "from the calling actor. Default: your OS user name.",
                                           envvar="AEGRESS_OPERATOR", show_default=False)]


def _when(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _state(h: Any, now: float) -> str:
    if h.status == "approved":
        if h.used_at is not None:
            return "approved, used"
        return "approved, expired" if h.expires_at is not None and h.expires_at <= now else "approved"
    return str(h.status)


def _json(h: Any, now: float) -> dict[str, Any]:
    try:
        arguments = json.loads(h.arguments)
    except ValueError:
        arguments = h.arguments
    return {"id": h.id, "tenant": h.tenant_id, "actor": h.actor_id, "tool": h.exposed, "upstream": h.upstream,
            "upstream_tool": h.tool, "arguments": arguments, "args_digest": h.args_digest, "rule": h.rule_id,
            "reason": h.reason, "policy_version": h.policy_version, "mode": h.mode, "status": h.status,
            "state": _state(h, now), "created_at": _when(h.created_at), "decided_by": h.decided_by,
            "decided_at": _when(h.decided_at), "decision_reason": h.decision_reason,
            "expires_at": _when(h.expires_at), "used_at": _when(h.used_at)}


def _operator(name: str | None) -> str:
    import getpass

    return name or getpass.getuser()


@app.command("list")
@handle_errors
def list_(
    tenant: Annotated[str | None, typer.Option("--tenant", "-t", help="Only this tenant.",
                                               envvar="AEGRESS_TENANT_ID")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Include decided calls, not only pending ones.")] = False,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 100,
    json_out: JsonOpt = False,
) -> None:
    """List held calls (pending ones unless --all)."""
    import time

    s = store()
    if tenant is not None:
        from gateway.admin import require_tenant

        require_tenant(s, tenant)
    rows = s.list_held_calls(tenant, None if all_ else "pending", limit)
    now = time.time()
    if json_out:
        print_json([_json(h, now) for h in rows])
        return
    print_table("Held calls" if all_ else "Pending reviews",
                ["id", "tenant", "actor", "tool", "rule", "state", "held at"],
                [(h.id, h.tenant_id, h.actor_id, h.exposed, h.rule_id, _state(h, now), _when(h.created_at))
                 for h in rows], "Nothing is waiting for review.", keep=("id", "tool"))


@app.command("show")
@handle_errors
def show(review_id: IdArg, json_out: JsonOpt = False) -> None:
    """Show one held call: who, which tool, the arguments, the rule, and its decision."""
    import time

    from gateway import review

    data = _json(review.get_held(store(), review_id), time.time())
    if json_out:
        print_json(data)
        return
    for key, value in data.items():
        if value not in (None, ""):
            shown = json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else value
            print(f"{key:>16}: {printable(shown)}")  # the agent chose the arguments, the upstream the tool name


@app.command("approve")
@handle_errors
def approve(review_id: IdArg, as_: AsOpt = None, json_out: JsonOpt = False) -> None:
    """Approve a held call: that actor's identical call proceeds once, within the approval lifetime."""
    import time

    from gateway import policy_admin, review

    s = store()
    held = review.get_held(s, review_id)
    policy, _ = policy_admin.current(s, held.tenant_id)
    now = time.time()
    done = review.approve(s, review_id, _operator(as_), now, policy.review.approval_lifetime_seconds)
    if json_out:
        print_json(_json(done, now))
    else:
        print(f"Approved {review_id} ({done.exposed} for {done.actor_id} in {done.tenant_id}); valid until "
              f"{_when(done.expires_at)}, once.")


@app.command("deny")
@handle_errors
def deny(
    review_id: IdArg,
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why; the caller is shown it.")] = "",
    as_: AsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Deny a held call; a waiting caller gets a tool error with the reason."""
    import time

    from gateway import review

    now = time.time()
    done = review.deny(store(), review_id, _operator(as_), now, reason)
    if json_out:
        print_json(_json(done, now))
    else:
        print(f"Denied {review_id} ({done.exposed} for {done.actor_id} in {done.tenant_id}).")
