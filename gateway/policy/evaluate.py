"""Policy evaluation: `evaluate` decides one request, `visible` decides tools/list.

Both are pure: same policy and request, same answer; no I/O, clock or environment.

Precedence (docs/policy.md has the long form):

    base     = allow                         if an allow rule matches         (a grant)
             = builtins (tools only)         trusted read-only -> allow, destructive -> review
             = block                         for client requests (sampling, elicitation, roots)
             = policy default                otherwise (block unless set)
    verdict  = max(base, every matching review/block rule)   with allow < review < block
    pin      : a changed or new tool definition turns allow into review (block stays block)

Review and block rules only ever tighten and allow rules only ever grant, so adding a review or
block rule can never make any verdict more permissive.

Speed: rules are compiled once per policy and indexed by kind and literal name; the rules that can
match a given (kind, upstream, name) are memoised, so a decision touches only those.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.policy._match import ABSENT, GlobSet, is_number, json_equal, lookup
from gateway.policy.model import (
    ANNOTATION_HINTS,
    BY_RANK,
    RANK,
    RULE_BUILTIN_DESTRUCTIVE,
    RULE_BUILTIN_READ_ONLY,
    RULE_CLIENT_REQUEST_DEFAULT,
    RULE_DEFAULT,
    RULE_PIN,
    SPEC_DEFAULT_ANNOTATIONS,
    ArgCondition,
    Decision,
    Kind,
    PinStatus,
    Policy,
    RateLimit,
    Request,
    ReviewMode,
    Rule,
)

_CACHE_LIMIT = 65536
_ALLOW, _REVIEW, _BLOCK = 0, 1, 2
_ANNOTATION_INDEX = {h: i for i, h in enumerate(ANNOTATION_HINTS)}
_SPEC_DEFAULTS = tuple(SPEC_DEFAULT_ANNOTATIONS[h] for h in ANNOTATION_HINTS)


class _Compiled:
    """A rule prepared for the hot path."""

    __slots__ = (
        "actors",
        "annotations",
        "approve",
        "args",
        "groups",
        "name",
        "pos",
        "rank",
        "rule",
        "upstream",
    )

    def __init__(self, pos: int, rule: Rule, policy_mode: ReviewMode) -> None:
        self.pos = pos
        self.rule = rule
        self.rank = RANK[rule.verdict]
        self.upstream: GlobSet = rule.upstream_globs
        self.name: GlobSet = rule.name_globs
        self.actors: GlobSet | None = rule.actor_globs
        self.groups: frozenset[str] | None = frozenset(rule.groups) if rule.groups else None
        self.annotations = tuple((_ANNOTATION_INDEX[h], v) for h, v in rule.annotations.items())
        self.args = rule.args
        self.approve = (rule.review_mode or policy_mode) is ReviewMode.APPROVE

    def who_matches(self, actor: str, groups: frozenset[str]) -> bool:
        """No actor/group condition matches everyone; otherwise the actor or one of its groups must."""
        if self.actors is None and self.groups is None:
            return True
        if self.actors is not None and self.actors.match(actor):
            return True
        return self.groups is not None and not self.groups.isdisjoint(groups)


def _position(compiled: _Compiled) -> int:
    return compiled.pos


class _KindIndex:
    __slots__ = ("by_name", "cache", "wildcard")

    def __init__(self) -> None:
        self.by_name: dict[str, list[_Compiled]] = {}
        self.wildcard: list[_Compiled] = []
        self.cache: dict[tuple[str, str], tuple[_Compiled, ...]] = {}

    def candidates(self, upstream: str, name: str) -> tuple[_Compiled, ...]:
        key = (upstream, name)
        found = self.cache.get(key)
        if found is not None:
            return found
        hits = [c for c in self.wildcard if c.name.match(name) and c.upstream.match(upstream)]
        named = self.by_name.get(name)
        if named:
            hits.extend(c for c in named if c.upstream.match(upstream))
            hits.sort(key=_position)
        found = tuple(hits)
        if len(self.cache) < _CACHE_LIMIT:
            self.cache[key] = found
        return found


class _Index:
    __slots__ = ("groups_of", "kinds")

    def __init__(self, policy: Policy) -> None:
        self.kinds: dict[Kind, _KindIndex] = {k: _KindIndex() for k in Kind}
        for pos, rule in enumerate(policy.rules):
            compiled = _Compiled(pos, rule, policy.review.mode)
            kind_index = self.kinds[rule.kind]
            if compiled.name.literals is not None:
                for literal in compiled.name.literals:
                    kind_index.by_name.setdefault(literal, []).append(compiled)
            else:
                kind_index.wildcard.append(compiled)
        members: dict[str, set[str]] = {}
        for group, actors in policy.groups.items():
            for actor in actors:
                members.setdefault(actor, set()).add(group)
        self.groups_of = {a: frozenset(g) for a, g in members.items()}


def _index(policy: Policy) -> _Index:
    index = policy._index
    if index is None:
        index = _Index(policy)
        object.__setattr__(policy, "_index", index)
    return index


def effective_annotations(policy: Policy, upstream: str, tool: Mapping[str, Any] | None) -> dict[str, bool]:
    """The annotation values policy acts on: the upstream's own only when the operator trusts it."""
    return dict(zip(ANNOTATION_HINTS, _effective(policy, upstream, tool), strict=True))


def _effective(policy: Policy, upstream: str, tool: Mapping[str, Any] | None) -> tuple[bool, ...]:
    if upstream not in policy.trusted_upstreams or not tool:
        return _SPEC_DEFAULTS
    given = tool.get("annotations")
    if not isinstance(given, Mapping):
        return _SPEC_DEFAULTS
    out = []
    for hint, default in zip(ANNOTATION_HINTS, _SPEC_DEFAULTS, strict=True):
        value = given.get(hint)
        out.append(value if isinstance(value, bool) else default)
    return tuple(out)


def _holds(cond: ArgCondition, arguments: Mapping[str, Any]) -> bool:
    value = lookup(arguments, cond.segments)
    if value is ABSENT:
        return cond.present is False
    if cond.present is False:
        return False
    if cond.has_equals and not json_equal(value, cond.equals):
        return False
    if cond.one_of is not None and not any(json_equal(value, option) for option in cond.one_of):
        return False
    if cond.prefix is not None and not (isinstance(value, str) and value.startswith(cond.prefix)):
        return False
    if cond.compiled_regex is not None and not (
        isinstance(value, str) and cond.compiled_regex.fullmatch(value) is not None
    ):
        return False
    if cond.min is not None and not (is_number(value) and value >= cond.min):
        return False
    if cond.max is not None and not (is_number(value) and value <= cond.max):
        return False
    return cond.max_length is None or (isinstance(value, str | list | tuple) and len(value) <= cond.max_length)


def _base(policy: Policy, request: Request, annotations: tuple[bool, ...] | None) -> tuple[int, str, str | None]:
    """The verdict when no allow rule grants: builtins for tools, block for client requests, else default."""
    if request.kind is Kind.TOOL:
        ann = annotations if annotations is not None else _effective(policy, request.upstream, request.tool)
        builtins = policy.builtins
        if ann[0] and builtins.trusted_read_only is not None:
            return RANK[builtins.trusted_read_only], RULE_BUILTIN_READ_ONLY, "read-only tool of a trusted upstream"
        if not ann[0] and ann[1] and builtins.destructive is not None:
            return RANK[builtins.destructive], RULE_BUILTIN_DESTRUCTIVE, "tool may be destructive"
    elif request.kind is Kind.CLIENT_REQUEST:
        return _BLOCK, RULE_CLIENT_REQUEST_DEFAULT, "requests to the client are denied unless a rule allows them"
    rank = RANK[policy.default]
    return rank, RULE_DEFAULT, ("no rule allows this" if rank == _BLOCK else None)


def evaluate(policy: Policy, request: Request) -> Decision:
    """Decide one request; pure and deterministic (see the module docstring for precedence)."""
    index = _index(policy)
    candidates = index.kinds[request.kind].candidates(request.upstream, request.name)
    actor = request.actor
    groups = request.groups
    extra = index.groups_of.get(actor)
    if extra:
        groups = groups | extra
    annotations: tuple[bool, ...] | None = None
    arguments = request.arguments
    grant: _Compiled | None = None
    worst: _Compiled | None = None
    approve = False
    for c in candidates:
        if not c.who_matches(actor, groups):
            continue
        if c.annotations:
            if annotations is None:
                annotations = _effective(policy, request.upstream, request.tool)
            if any(annotations[i] != v for i, v in c.annotations):
                continue
        if c.args and not all(_holds(cond, arguments) for cond in c.args):
            continue
        if c.rank == _ALLOW:
            if grant is None:
                grant = c
            continue
        if worst is None or c.rank > worst.rank:
            worst = c
            if c.rank == _BLOCK:
                break
        if c.rank == _REVIEW and c.approve:
            approve = True

    if grant is not None:
        base_rank, base_id, base_reason = _ALLOW, grant.rule.id, grant.rule.reason
    else:
        base_rank, base_id, base_reason = _base(policy, request, annotations)
    if base_rank == _REVIEW and policy.review.mode is ReviewMode.APPROVE:
        approve = True

    if worst is not None and worst.rank >= base_rank:
        rank, rule_id, reason = worst.rank, worst.rule.id, worst.rule.reason
    else:
        rank, rule_id, reason = base_rank, base_id, base_reason

    if rank != _BLOCK and request.pin is not None and request.pin is not PinStatus.OK:
        rank, rule_id, approve = _REVIEW, RULE_PIN, True
        reason = (
            "tool definition changed since it was approved"
            if request.pin is PinStatus.CHANGED
            else "new tool, not yet approved"
        )
    mode: ReviewMode | None = None
    if rank == _REVIEW:
        mode = ReviewMode.APPROVE if approve else ReviewMode.CONFIRM
    return Decision(BY_RANK[rank], rule_id, reason, mode, policy.policy_version)


def visible(policy: Policy, request: Request) -> bool:
    """Whether tools/list shows the tool to this actor; `request.arguments` are ignored.

    Arguments are unknown at list time, so this over-approximates: a tool is visible when some
    arguments could make it allowed or reviewable. It is hidden only when every call would be
    blocked (an argument-free block rule matches, or nothing grants and the base is block), so a
    hidden tool is never callable and the full `evaluate` still runs on every call.
    """
    index = _index(policy)
    candidates = index.kinds[request.kind].candidates(request.upstream, request.name)
    groups = request.groups | index.groups_of.get(request.actor, frozenset())
    annotations = _effective(policy, request.upstream, request.tool) if request.kind is Kind.TOOL else None
    may_grant = False
    for c in candidates:
        if not c.who_matches(request.actor, groups):
            continue
        if c.annotations and annotations is not None and any(annotations[i] != v for i, v in c.annotations):
            continue
        if c.rank == _BLOCK and not c.args:
            return False
        if c.rank == _ALLOW:
            may_grant = True
    if may_grant:
        return True
    return _base(policy, request, annotations)[0] != _BLOCK


def rate_limit_for(policy: Policy, actor: str, groups: frozenset[str] = frozenset()) -> RateLimit | None:
    """The actor's own limit, else the most generous of its groups' limits, else the default."""
    limits = policy.rate_limits
    own = limits.actors.get(actor)
    if own is not None:
        return own
    all_groups = groups | policy.groups_of(actor)
    candidates = sorted(
        (limits.groups[g] for g in all_groups if g in limits.groups),
        key=lambda r: (-(r.calls / r.per_seconds), r.per_seconds, r.calls),
    )
    return candidates[0] if candidates else limits.default
