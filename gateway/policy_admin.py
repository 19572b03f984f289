"""Operator actions on policies and pins: the library `aegress policy ...` is a shell over.

Each function takes the store explicitly and returns plain values; time comes in as arguments.
The decisions themselves are gateway.policy's pure functions, so what these functions preview is
exactly what the gateway decides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from gateway import naming, signals
from gateway.admin import require_tenant
from gateway.decide import FIRST_USE, TenantPolicy, load_stored
from gateway.errors import InvalidInput, NotFound
from gateway.policy import (
    ActorRef,
    Change,
    Decision,
    Kind,
    PinStatus,
    Policy,
    PolicyWarning,
    RecordedCall,
    ReplayReport,
    Request,
    ToolRef,
    Verdict,
    check_pins,
    evaluate,
    load_policy,
    plan,
    removed_tools,
    replay,
    upstream_warnings,
    visible,
)
from gateway.sealed_change import pins_digest, sealed_change
from gateway.store.base import PolicyVersion, Store


def digest_text(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def current(store: Store, tenant_id: str) -> tuple[Policy, int]:
    """The tenant's policy in force (version 0 = the built-in default)."""
    require_tenant(store, tenant_id)
    return load_stored(store, tenant_id)


def tenant_state(store: Store, tenant_id: str) -> TenantPolicy:
    policy, version = current(store, tenant_id)
    return TenantPolicy(policy, version, store.get_pins(tenant_id), store.pinned_upstreams(tenant_id))


def tenant_tools(store: Store, tenant_id: str) -> tuple[list[ToolRef], bool]:
    """The tenant's current tools: definitions the gateway last listed, else names from `upstream add`.

    The flag is False when some upstream is known by tool names only (no annotations: plans then use
    the spec defaults for them, as for an untrusted upstream)."""
    definitions = store.get_tool_definitions(tenant_id)
    names = store.get_upstream_tools(tenant_id)
    refs: list[ToolRef] = []
    complete = True
    for spec in store.list_upstreams(tenant_id):
        defined = definitions.get(spec.name)
        if defined:
            refs.extend(ToolRef(spec.name, t) for t in defined)
        else:
            listed = names.get(spec.name, [])
            complete = complete and not listed
            refs.extend(ToolRef(spec.name, {"name": n}) for n in listed)
    return refs, complete


def actors_of(store: Store, tenant_id: str) -> list[ActorRef]:
    return [ActorRef(a.id) for a in store.list_actors(tenant_id)] or [ActorRef()]


def plan_change(store: Store, tenant_id: str, new: Policy) -> tuple[list[Change], bool, int]:
    """What applying `new` changes for the tenant's current tools, per actor; plus completeness and the
    version it replaces."""
    old, version = current(store, tenant_id)
    tools, complete = tenant_tools(store, tenant_id)
    return plan(old, new, tools, actors_of(store, tenant_id)), complete, version


def apply_policy(store: Store, tenant_id: str, text: str, filename: str, now: str, by: str) -> PolicyVersion:
    """Validate (PolicyInvalid lists every problem, nothing stored) and store a new version, sealed as
    `policy_changed` in the same transaction."""
    require_tenant(store, tenant_id)
    load_policy(text, filename)
    with sealed_change(store) as change:
        previous = store.get_policy_version(tenant_id)
        version = store.add_policy_version(tenant_id, text, filename, digest_text(text), now, by)
        body = {"policy_version": str(version.version), "policy_digest": version.digest, "actor": by}
        if previous is not None:
            body["previous_version"] = str(previous.version)
        change.seal(tenant_id, "policy_changed", body)
    signals.announce(store, signals.POLICY_CHANGED, signals.tenant_changed(tenant_id))  # committed: in force now
    return version


def warnings_for(store: Store, tenant_id: str, policy: Policy) -> list[PolicyWarning]:
    """What in `policy` refers to upstreams the tenant does not have (shown by check and apply; never
    blocks: an upstream may be registered after its policy)."""
    require_tenant(store, tenant_id)
    return upstream_warnings(policy, [u.name for u in store.list_upstreams(tenant_id)])


# -- policy test (decide one call) -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CallCheck:
    upstream: str
    tool: str
    actor: str
    visible: bool
    known: bool
    pin: PinStatus | None
    decision: Decision


def resolve_exposed(store: Store, tenant_id: str, exposed: str) -> tuple[str, str]:
    """A tool name as clients see it (`upstream__tool`, or unprefixed) -> (upstream, upstream's name)."""
    specs = {s.name: s for s in store.list_upstreams(tenant_id)}
    split = naming.split_prefixed(exposed)
    if split and split[0] in specs and specs[split[0]].prefix:
        return split
    unprefixed = [n for n in sorted(specs) if not specs[n].prefix]
    known = store.get_upstream_tools(tenant_id)
    definitions = store.get_tool_definitions(tenant_id)
    for name in unprefixed:
        if exposed in known.get(name, []) or any(t.get("name") == exposed for t in definitions.get(name, [])):
            return name, exposed
    if len(unprefixed) == 1:
        return unprefixed[0], exposed
    raise NotFound(f"No upstream of tenant {tenant_id!r} offers a tool {exposed!r}.",
                   hint="Use the name clients see, e.g. UPSTREAM__TOOL (see `aegress upstream list`).")


def decide_call(store: Store, tenant_id: str, exposed: str, arguments: Mapping[str, Any], actor: str,
              policy: Policy | None = None) -> CallCheck:
    """Decide one call as the gateway would (with the stored policy, or a candidate `policy`)."""
    state = tenant_state(store, tenant_id)
    if policy is not None:
        state.policy = policy
    upstream, name = resolve_exposed(store, tenant_id, exposed)
    definition = next((t for t in store.get_tool_definitions(tenant_id).get(upstream, []) if t.get("name") == name),
                      None)
    tool = definition or {"name": name}
    pin = state.pin_status(upstream, tool) if definition is not None else None
    request = Request(Kind.TOOL, upstream, name, actor, arguments=dict(arguments), tool=tool, pin=pin)
    return CallCheck(upstream, name, actor, visible(state.policy, request), definition is not None, pin,
                      evaluate(state.policy, request))


# -- replay --------------------------------------------------------------------------------------------
def recorded_calls(store: Store, tenant_id: str, since: str | None, limit: int) -> tuple[list[RecordedCall], int]:
    """The tenant's recorded tools/call decisions as RecordedCalls, oldest first, and how many were skipped.

    Call records keep no arguments (the evidence log keeps only their digest), so calls replay with
    empty arguments: argument rules are evaluated as if every argument were absent."""
    require_tenant(store, tenant_id)
    definitions = store.get_tool_definitions(tenant_id)
    specs = {s.name for s in store.list_upstreams(tenant_id)}
    out: list[RecordedCall] = []
    skipped = 0
    for i, rec in enumerate(reversed(store.list_calls(tenant_id, limit))):
        if rec.method != "tools/call":
            continue
        if since is not None and rec.started_at < since:
            continue
        if rec.verdict not in ("allow", "review", "block") or not rec.upstream or rec.upstream not in specs:
            skipped += 1
            continue
        split = naming.split_prefixed(rec.target)
        name = split[1] if split and split[0] == rec.upstream else rec.target
        tool = next((t for t in definitions.get(rec.upstream, []) if t.get("name") == name), {"name": name})
        request = Request(Kind.TOOL, rec.upstream, name, rec.actor_id, tool=tool)
        out.append(RecordedCall(f"{i}:{rec.started_at}", request, Verdict(rec.verdict), rec.rule_id))
    return out, skipped


def replay_calls(store: Store, tenant_id: str, candidate: Policy, since: str | None = None,
                 limit: int = 10000, on_progress: Callable[[int, int], None] | None = None,
                 ) -> tuple[ReplayReport, int]:
    """Re-decide the tenant's recorded calls; `on_progress(done, total)` is told every few hundred calls."""
    calls, skipped = recorded_calls(store, tenant_id, since, limit)
    if on_progress is None:
        return replay(candidate, calls), skipped

    def counted() -> Iterator[RecordedCall]:
        for done, call in enumerate(calls, 1):
            yield call
            if done % 250 == 0 or done == len(calls):
                on_progress(done, len(calls))

    return replay(candidate, counted()), skipped


# -- pins ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PinRow:
    upstream: str
    tool: str
    status: str  # pinned-ok | changed | new | removed | unpinned
    pinned_hash: str | None
    current_hash: str | None


def pin_report(store: Store, tenant_id: str) -> list[PinRow]:
    state = tenant_state(store, tenant_id)
    rows: list[PinRow] = []
    definitions = store.get_tool_definitions(tenant_id)
    for spec in store.list_upstreams(tenant_id):
        tools = definitions.get(spec.name, [])
        pins = state.pins_for(spec.name)
        if pins is None:
            rows.extend(PinRow(spec.name, str(t.get("name")), "unpinned", None, state.definition_hash(spec.name, t))
                        for t in tools)
            continue
        rows.extend(PinRow(spec.name, c.name, str(c.status), c.pinned_hash, c.current_hash)
                    for c in check_pins(pins, tools))
        rows.extend(PinRow(spec.name, n, "removed", pins[n], None) for n in removed_tools(pins, tools))
    return rows


def approve_tools(store: Store, tenant_id: str, upstream: str, names: Iterable[str] | None, by: str,
                  now: str) -> list[PinRow]:
    """Pin the current (last listed) definitions of `names` (None: every changed or new tool)."""
    if by == FIRST_USE:
        raise InvalidInput(f"{FIRST_USE!r} is reserved.", hint="Name yourself with --as.")
    require_tenant(store, tenant_id)
    if store.get_upstream(tenant_id, upstream) is None:
        raise NotFound(f"No upstream {upstream!r} in tenant {tenant_id!r}.", hint="See `aegress upstream list`.")
    rows = [r for r in pin_report(store, tenant_id) if r.upstream == upstream and r.current_hash is not None]
    if names is None:
        chosen = [r for r in rows if r.status in (str(PinStatus.CHANGED), str(PinStatus.NEW), "unpinned")]
    else:
        wanted = list(names)
        by_name = {r.tool: r for r in rows}
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise NotFound(f"Upstream {upstream!r} has not listed {', '.join(map(repr, missing))}.",
                           hint="The gateway caches definitions when a client lists tools; see `aegress policy pins`.")
        chosen = [by_name[n] for n in wanted]
    if chosen:
        pins = {r.tool: str(r.current_hash) for r in chosen}
        with sealed_change(store) as change:
            store.set_pins(tenant_id, upstream, pins, by, now)
            change.operator_change(tenant_id, "tools_approved", upstream, by, tools=sorted(pins),
                                   config_digest=pins_digest(pins))
        signals.announce(store, signals.POLICY_CHANGED, signals.tenant_changed(tenant_id))
    return chosen
