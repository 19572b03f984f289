"""What a policy change would do, before it is applied: `plan` for current tools, `replay` for
recorded calls. Both only call `evaluate` and `visible`, so the preview is exactly what the
gateway would decide."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.policy.evaluate import evaluate, visible
from gateway.policy.model import Kind, Policy, Request, Verdict


@dataclass(frozen=True, slots=True)
class ToolRef:
    """One of the tenant's current tools, as its upstream lists it."""

    upstream: str
    tool: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ActorRef:
    """An actor to plan for; the empty actor stands for "anyone with no actor or group rule"."""

    id: str = ""
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Change:
    """How one tool changes for one actor. Verdicts are for a call with no arguments; `old_*` are
    None when there was no policy before. `argument_dependent`: some matching rule looks at
    arguments, so real calls may get another verdict."""

    upstream: str
    tool: str
    actor: str
    old_verdict: Verdict | None
    new_verdict: Verdict
    old_visible: bool | None
    new_visible: bool
    old_rule_id: str | None
    new_rule_id: str
    argument_dependent: bool


def plan(
    old: Policy | None,
    new: Policy,
    tools: Iterable[ToolRef],
    actors: Sequence[ActorRef] = (ActorRef(),),
) -> list[Change]:
    """Tools whose verdict, rule or visibility differs between old and new, per actor, in input order."""
    changes: list[Change] = []
    for ref in tools:
        name = str(ref.tool.get("name", ""))
        for actor in actors:
            request = Request(Kind.TOOL, ref.upstream, name, actor.id, actor.groups, {}, ref.tool)
            after = evaluate(new, request)
            shown = visible(new, request)
            before = evaluate(old, request) if old is not None else None
            was_shown = visible(old, request) if old is not None else None
            if before is not None and (before.verdict, before.rule_id, was_shown) == (
                after.verdict, after.rule_id, shown
            ):
                continue
            changes.append(Change(
                upstream=ref.upstream, tool=name, actor=actor.id,
                old_verdict=before.verdict if before else None, new_verdict=after.verdict,
                old_visible=was_shown, new_visible=shown,
                old_rule_id=before.rule_id if before else None, new_rule_id=after.rule_id,
                argument_dependent=_argument_dependent(new, request) or (
                    old is not None and _argument_dependent(old, request)
                ),
            ))
    return changes


def _argument_dependent(policy: Policy, request: Request) -> bool:
    return any(
        rule.args and rule.kind is request.kind
        and rule.upstream_globs.match(request.upstream) and rule.name_globs.match(request.name)
        for rule in policy.rules
    )


@dataclass(frozen=True, slots=True)
class RecordedCall:
    """A call from the record: what was asked and what was decided then."""

    id: str
    request: Request
    verdict: Verdict
    rule_id: str | None = None


@dataclass(frozen=True, slots=True)
class ReplayChange:
    call_id: str
    upstream: str
    name: str
    actor: str
    old_verdict: Verdict
    new_verdict: Verdict
    new_rule_id: str


@dataclass(frozen=True)
class ReplayReport:
    """`changed` lists calls whose verdict would differ; `transitions` counts (old, new) pairs."""

    total: int
    unchanged: int
    changed: list[ReplayChange] = field(default_factory=list)
    transitions: dict[tuple[Verdict, Verdict], int] = field(default_factory=dict)

    @property
    def more_permissive(self) -> list[ReplayChange]:
        order = {Verdict.ALLOW: 0, Verdict.REVIEW: 1, Verdict.BLOCK: 2}
        return [c for c in self.changed if order[c.new_verdict] < order[c.old_verdict]]


def replay(policy: Policy, recorded_calls: Iterable[RecordedCall]) -> ReplayReport:
    """Re-decide recorded calls under a candidate policy and report which verdicts would change."""
    total = 0
    changed: list[ReplayChange] = []
    transitions: dict[tuple[Verdict, Verdict], int] = {}
    for call in recorded_calls:
        total += 1
        decision = evaluate(policy, call.request)
        old = Verdict(call.verdict)
        if decision.verdict == old:
            continue
        key = (old, decision.verdict)
        transitions[key] = transitions.get(key, 0) + 1
        req = call.request
        changed.append(ReplayChange(call.id, req.upstream, req.name, req.actor, old, decision.verdict,
                                    decision.rule_id))
    return ReplayReport(total=total, unchanged=total - len(changed), changed=changed, transitions=transitions)
