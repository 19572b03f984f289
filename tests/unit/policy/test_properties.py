"""Property tests: evaluation is deterministic, monotone under added review/block rules, falls back
to the default, agrees with a naive reference evaluator, and never hides a callable tool."""

from __future__ import annotations

import dataclasses
from fnmatch import fnmatchcase
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy import (
    ArgCondition,
    Builtins,
    Kind,
    PinStatus,
    Policy,
    Request,
    ReviewMode,
    ReviewSettings,
    Rule,
    Verdict,
    effective_annotations,
    evaluate,
    visible,
)
from gateway.policy.evaluate import _holds
from gateway.policy.model import RANK

UPSTREAMS = ["u1", "u2", "gh"]
NAMES = ["a", "b", "ab", "ba", "sampling", "file:///x"]
GLOBS = ["*", "a*", "?b", "a", "b", "[ab]a", "*b", "sampling", "file:///*"]
ACTORS = ["x", "y", "bot-1"]
GROUPS = ["g1", "g2"]
HINTS = ["readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint"]

verdicts = st.sampled_from(list(Verdict))
kinds = st.sampled_from(list(Kind))
modes = st.none() | st.sampled_from(list(ReviewMode))
scalars = st.none() | st.booleans() | st.integers(-3, 12) | st.sampled_from(["", "a", "/w/a", "/etc", "a..b"])

conditions = st.one_of(
    st.builds(lambda p, v: ArgCondition(p, equals=v), st.sampled_from(["p", "q"]), scalars),
    st.builds(lambda p, v: ArgCondition(p, one_of=tuple(v)), st.sampled_from(["p", "o.d"]),
              st.lists(scalars, min_size=1, max_size=3)),
    st.builds(lambda p: ArgCondition(p, prefix="/w/"), st.sampled_from(["p", "q"])),
    st.builds(lambda p: ArgCondition(p, regex=".*\\.\\..*"), st.sampled_from(["p", "q"])),
    st.builds(lambda p, lo, hi: ArgCondition(p, min=lo, max=hi), st.sampled_from(["n", "o.d"]),
              st.integers(0, 5), st.none() | st.integers(5, 10)),
    st.builds(lambda p, n: ArgCondition(p, max_length=n), st.sampled_from(["p", "q"]), st.integers(0, 4)),
    st.builds(lambda p, b: ArgCondition(p, present=b), st.sampled_from(["p", "q", "n"]), st.booleans()),
)


@st.composite
def rules(draw: st.DrawFn, rule_id: str, verdict: st.SearchStrategy[Verdict] = verdicts) -> Rule:
    kind = draw(kinds)
    v = draw(verdict)
    return Rule(
        id=rule_id,
        verdict=v,
        kind=kind,
        upstream=tuple(draw(st.lists(st.sampled_from(["*", "u*", "gh", "u2"]), min_size=1, max_size=2))),
        name=tuple(draw(st.lists(st.sampled_from(GLOBS), min_size=1, max_size=2))),
        actors=tuple(draw(st.lists(st.sampled_from(["x", "bot-*", "y"]), max_size=2))),
        groups=tuple(draw(st.lists(st.sampled_from(GROUPS), max_size=1))),
        annotations=draw(st.dictionaries(st.sampled_from(HINTS), st.booleans(), max_size=2))
        if kind is Kind.TOOL else {},
        args=tuple(draw(st.lists(conditions, max_size=2))),
        review_mode=draw(modes) if v is Verdict.REVIEW else None,
    )


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    n = draw(st.integers(0, 8))
    return Policy(
        rules=tuple(draw(rules(f"r{i}")) for i in range(n)),
        default=draw(verdicts),
        review=ReviewSettings(mode=draw(st.sampled_from(list(ReviewMode)))),
        builtins=Builtins(destructive=draw(st.none() | verdicts), trusted_read_only=draw(st.none() | verdicts)),
        trusted_upstreams=frozenset(draw(st.lists(st.sampled_from(UPSTREAMS), max_size=2))),
        groups={"g1": tuple(draw(st.lists(st.sampled_from(ACTORS), max_size=2)))},
        policy_version=draw(st.integers(0, 5)),
    )


arguments = st.dictionaries(
    st.sampled_from(["p", "q", "n", "o"]),
    st.one_of(scalars, st.fixed_dictionaries({"d": scalars})),
    max_size=4,
)


@st.composite
def requests(draw: st.DrawFn, kind: Kind | None = None) -> Request:
    ann = draw(st.none() | st.dictionaries(st.sampled_from(HINTS), st.booleans()))
    name = draw(st.sampled_from(NAMES))
    return Request(
        kind=kind or draw(kinds),
        upstream=draw(st.sampled_from(UPSTREAMS)),
        name=name,
        actor=draw(st.sampled_from(ACTORS)),
        groups=frozenset(draw(st.lists(st.sampled_from(GROUPS), max_size=1))),
        arguments=draw(arguments),
        tool={"name": name, "annotations": ann} if ann is not None else {"name": name},
        pin=draw(st.none() | st.sampled_from(list(PinStatus))),
    )


def rank(policy: Policy, request: Request) -> int:
    return RANK[evaluate(policy, request).verdict]


def fresh(policy: Policy) -> Policy:
    """An equal policy with no cached index."""
    return dataclasses.replace(policy)


# -- the properties -------------------------------------------------------------------------------

@given(policies(), st.lists(requests(), min_size=1, max_size=6))
def test_evaluation_is_deterministic(policy: Policy, reqs: list[Request]) -> None:
    first = [evaluate(policy, r) for r in reqs]
    again = [evaluate(policy, r) for r in reversed(reqs)][::-1]
    other = [evaluate(fresh(policy), r) for r in reqs]
    assert first == again == other


@settings(max_examples=300)
@given(policies(), st.data(), requests())
def test_adding_a_review_or_block_rule_never_loosens(policy: Policy, data: st.DataObject, request: Request) -> None:
    extra = data.draw(rules("added", verdict=st.sampled_from([Verdict.REVIEW, Verdict.BLOCK])))
    at = data.draw(st.integers(0, len(policy.rules)))
    tighter = dataclasses.replace(policy, rules=(*policy.rules[:at], extra, *policy.rules[at:]))
    assert rank(tighter, request) >= rank(policy, request)
    if not visible(policy, request):
        assert not visible(tighter, request)


@given(policies(), requests())
def test_adding_an_allow_rule_never_tightens(policy: Policy, request: Request) -> None:
    looser = dataclasses.replace(policy, rules=(*policy.rules, Rule(id="added", verdict=Verdict.ALLOW,
                                                                     kind=request.kind)))
    assert rank(looser, request) <= rank(policy, request)


@given(requests(kind=Kind.TOOL), st.none() | verdicts)
def test_unmatched_tool_gets_the_default(request: Request, default: Verdict | None) -> None:
    # Rules exist but match another name; no built-ins, no pin: the default decides (block when unset).
    request = dataclasses.replace(request, pin=None)
    others = tuple(Rule(id=f"r{v}", verdict=v, name="zzz") for v in Verdict)
    kwargs: dict[str, Any] = {} if default is None else {"default": default}
    policy = Policy(rules=others, builtins=Builtins(destructive=None, trusted_read_only=None), **kwargs)
    d = evaluate(policy, request)
    assert d.verdict is (default or Verdict.BLOCK)
    assert d.rule_id == "default"


@given(policies(), requests(), st.lists(arguments, max_size=5))
def test_hidden_tools_are_always_blocked(policy: Policy, request: Request, more: list[dict[str, Any]]) -> None:
    if visible(policy, request):
        return
    for args in [request.arguments, {}, *more]:
        assert evaluate(policy, dataclasses.replace(request, arguments=args)).verdict is Verdict.BLOCK


@settings(max_examples=300)
@given(policies(), requests())
def test_index_agrees_with_a_naive_reference(policy: Policy, request: Request) -> None:
    got = evaluate(policy, request)
    assert (got.verdict, got.rule_id, got.review_mode) == reference(policy, request)
    assert got.policy_version == policy.policy_version


def reference(policy: Policy, req: Request) -> tuple[Verdict, str, ReviewMode | None]:
    """docs/policy.md, written as plainly as possible: no index, no memo, no early exit."""
    ann = effective_annotations(policy, req.upstream, req.tool)
    groups = req.groups | policy.groups_of(req.actor)

    def matches(rule: Rule) -> bool:
        who = (not rule.actors and not rule.groups) or any(fnmatchcase(req.actor, a) for a in rule.actors) or bool(
            set(rule.groups) & groups)
        return (
            rule.kind == req.kind
            and any(fnmatchcase(req.upstream, u) for u in rule.upstream)
            and any(fnmatchcase(req.name, n) for n in rule.name)
            and who
            and all(ann[h] == v for h, v in rule.annotations.items())
            and all(_holds(c, req.arguments) for c in rule.args)
        )

    matched = [r for r in policy.rules if matches(r)]
    allows = [r for r in matched if r.verdict is Verdict.ALLOW]
    mode = policy.review.mode
    if allows:
        base, base_id = Verdict.ALLOW, allows[0].id
    elif req.kind is Kind.TOOL and ann["readOnlyHint"] and policy.builtins.trusted_read_only:
        base, base_id = policy.builtins.trusted_read_only, "builtin:trusted-read-only"
    elif req.kind is Kind.TOOL and not ann["readOnlyHint"] and ann["destructiveHint"] and policy.builtins.destructive:
        base, base_id = policy.builtins.destructive, "builtin:destructive"
    elif req.kind is Kind.CLIENT_REQUEST:
        base, base_id = Verdict.BLOCK, "default:client-request"
    else:
        base, base_id = policy.default, "default"
    tighter = [r for r in matched if r.verdict is not Verdict.ALLOW]
    verdict, rule_id = base, base_id
    if tighter:
        worst = max(RANK[r.verdict] for r in tighter)
        if worst >= RANK[base]:
            first = next(r for r in tighter if RANK[r.verdict] == worst)
            verdict, rule_id = first.verdict, first.id
    review_modes = [r.review_mode or mode for r in tighter if r.verdict is Verdict.REVIEW]
    if base is Verdict.REVIEW:
        review_modes.append(mode)
    if verdict is not Verdict.BLOCK and req.pin in (PinStatus.CHANGED, PinStatus.NEW):
        return Verdict.REVIEW, "pin", ReviewMode.APPROVE
    if verdict is not Verdict.REVIEW:
        return verdict, rule_id, None
    return verdict, rule_id, ReviewMode.APPROVE if ReviewMode.APPROVE in review_modes else ReviewMode.CONFIRM
