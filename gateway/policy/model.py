"""The policy vocabulary: what a policy file says, what a decision asks and what it answers.

Everything here is an immutable value. Constructing a `Policy` or `Rule` in code validates it the
same way the parser does (bad globs, regexes, duplicate ids raise `InvalidInput`), so a policy that
exists is a policy that can be evaluated. See docs/policy.md for the file format.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gateway.errors import InvalidInput
from gateway.policy._match import GlobSet, compile_regex, split_path

FORMAT_VERSION = 1
DEFAULT_HOLD_TIMEOUT_SECONDS = 25.0
DEFAULT_APPROVAL_LIFETIME_SECONDS = 600.0


class Verdict(StrEnum):
    """What happens to a request. Ordered: allow < review < block (see `RANK`)."""

    ALLOW = "allow"
    REVIEW = "review"
    BLOCK = "block"


RANK: Mapping[Verdict, int] = {Verdict.ALLOW: 0, Verdict.REVIEW: 1, Verdict.BLOCK: 2}
BY_RANK: tuple[Verdict, Verdict, Verdict] = (Verdict.ALLOW, Verdict.REVIEW, Verdict.BLOCK)


class Kind(StrEnum):
    """What a request touches; a rule applies to exactly one kind."""

    TOOL = "tool"
    RESOURCE = "resource"
    PROMPT = "prompt"
    COMPLETION = "completion"
    CLIENT_REQUEST = "client_request"


class ReviewMode(StrEnum):
    """`approve`: an operator other than the caller decides. `confirm`: the caller confirms by elicitation."""

    APPROVE = "approve"
    CONFIRM = "confirm"


class PinStatus(StrEnum):
    """How a tool's current definition compares with the pinned (approved) one."""

    OK = "pinned-ok"
    CHANGED = "changed"
    NEW = "new"


ANNOTATION_HINTS = ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint")
# MCP spec defaults, which are also what an untrusted upstream's tools get whatever they claim.
SPEC_DEFAULT_ANNOTATIONS: Mapping[str, bool] = {
    "readOnlyHint": False,
    "destructiveHint": True,
    "idempotentHint": False,
    "openWorldHint": True,
}
CLIENT_REQUESTS = ("sampling", "elicitation", "roots")
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$")

_UNSET: Any = type("_Unset", (), {"__repr__": lambda self: "UNSET"})()


@dataclass(frozen=True)
class ArgCondition:
    """Conditions on one argument (by dotted path); all set conditions must hold."""

    path: str
    equals: Any = _UNSET
    one_of: tuple[Any, ...] | None = None
    prefix: str | None = None
    regex: str | None = None
    min: float | None = None
    max: float | None = None
    max_length: int | None = None
    present: bool | None = None
    segments: tuple[str, ...] = field(init=False, repr=False, compare=False)
    compiled_regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "segments", split_path(self.path))
            object.__setattr__(
                self, "compiled_regex", compile_regex(self.regex) if self.regex is not None else None
            )
        except ValueError as exc:
            raise InvalidInput(str(exc)) from exc
        if self.one_of is not None:
            object.__setattr__(self, "one_of", tuple(self.one_of))
        others = [self.has_equals, self.one_of is not None, self.prefix is not None, self.regex is not None,
                  self.min is not None, self.max is not None, self.max_length is not None]
        if self.present is False and any(others):
            raise InvalidInput(f"argument {self.path!r}: present = false cannot be combined with other conditions")
        if self.present is None and not any(others):
            raise InvalidInput(f"argument {self.path!r}: no condition given")

    @property
    def has_equals(self) -> bool:
        return self.equals is not _UNSET


@dataclass(frozen=True)
class Rule:
    """One rule: what it matches and the verdict it contributes (see docs/policy.md for precedence)."""

    id: str
    verdict: Verdict
    kind: Kind = Kind.TOOL
    upstream: tuple[str, ...] = ("*",)
    name: tuple[str, ...] = ("*",)
    actors: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    annotations: Mapping[str, bool] = field(default_factory=dict)
    args: tuple[ArgCondition, ...] = ()
    reason: str | None = None
    review_mode: ReviewMode | None = None
    upstream_globs: GlobSet = field(init=False, repr=False, compare=False)
    name_globs: GlobSet = field(init=False, repr=False, compare=False)
    actor_globs: GlobSet | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise InvalidInput("a rule needs a non-empty id")
        object.__setattr__(self, "verdict", Verdict(self.verdict))
        object.__setattr__(self, "kind", Kind(self.kind))
        if self.review_mode is not None:
            object.__setattr__(self, "review_mode", ReviewMode(self.review_mode))
        for attr in ("upstream", "name", "actors", "groups"):
            value = getattr(self, attr)
            object.__setattr__(self, attr, (value,) if isinstance(value, str) else tuple(value))
        object.__setattr__(self, "args", tuple(self.args))
        try:
            object.__setattr__(self, "upstream_globs", GlobSet(self.upstream or ("*",)))
            object.__setattr__(self, "name_globs", GlobSet(self.name or ("*",)))
            object.__setattr__(self, "actor_globs", GlobSet(self.actors) if self.actors else None)
        except ValueError as exc:
            raise InvalidInput(f"rule {self.id!r}: {exc}") from exc
        for hint, value in self.annotations.items():
            if hint not in ANNOTATION_HINTS or not isinstance(value, bool):
                raise InvalidInput(f"rule {self.id!r}: bad annotation condition {hint!r}")
        if self.annotations and self.kind is not Kind.TOOL:
            raise InvalidInput(f"rule {self.id!r}: annotations only apply to tool rules")


@dataclass(frozen=True)
class ReviewSettings:
    """How `review` verdicts are carried out; the hold stays well under Codex's 60 s tool timeout."""

    mode: ReviewMode = ReviewMode.APPROVE
    hold_timeout_seconds: float = DEFAULT_HOLD_TIMEOUT_SECONDS
    approval_lifetime_seconds: float = DEFAULT_APPROVAL_LIFETIME_SECONDS


@dataclass(frozen=True)
class Builtins:
    """Baseline verdicts for tools that no allow rule grants; None turns one off."""

    destructive: Verdict | None = Verdict.REVIEW
    trusted_read_only: Verdict | None = Verdict.ALLOW


@dataclass(frozen=True)
class RateLimit:
    """At most `calls` calls per `per_seconds` window."""

    calls: int
    per_seconds: float


@dataclass(frozen=True)
class RateLimits:
    """Per-actor limits: an actor's own entry, else its most generous group, else the default."""

    default: RateLimit | None = None
    actors: Mapping[str, RateLimit] = field(default_factory=dict)
    groups: Mapping[str, RateLimit] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    """A tenant's policy. `policy_version` is assigned by the store on apply, not read from the file."""

    rules: tuple[Rule, ...] = ()
    default: Verdict = Verdict.BLOCK
    review: ReviewSettings = field(default_factory=ReviewSettings)
    builtins: Builtins = field(default_factory=Builtins)
    trusted_upstreams: frozenset[str] = frozenset()
    origins: tuple[str, ...] = ()
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    rate_limits: RateLimits = field(default_factory=RateLimits)
    pins: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    policy_version: int = 0
    source: str | None = field(default=None, compare=False)
    # Filled lazily by evaluate.py: the rule index. Not part of the value.
    _index: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.format_version != FORMAT_VERSION:
            raise InvalidInput(f"unsupported policy format version {self.format_version!r} (expected 1)")
        object.__setattr__(self, "default", Verdict(self.default))
        object.__setattr__(self, "rules", tuple(self.rules))
        object.__setattr__(self, "trusted_upstreams", frozenset(self.trusted_upstreams))
        seen: set[str] = set()
        for rule in self.rules:
            if rule.id in seen or rule.id in RESERVED_RULE_IDS:
                raise InvalidInput(f"duplicate or reserved rule id {rule.id!r}")
            seen.add(rule.id)
        for origin in self.origins:
            if not _ORIGIN.match(origin):
                raise InvalidInput(f"bad origin {origin!r}: expected scheme://host[:port]")

    def groups_of(self, actor: str) -> frozenset[str]:
        """Groups the policy itself puts an actor in (callers may add groups from elsewhere)."""
        return frozenset(g for g, members in self.groups.items() if actor in members)


RULE_DEFAULT = "default"
RULE_PIN = "pin"
RULE_BUILTIN_DESTRUCTIVE = "builtin:destructive"
RULE_BUILTIN_READ_ONLY = "builtin:trusted-read-only"
RULE_CLIENT_REQUEST_DEFAULT = "default:client-request"
RESERVED_RULE_IDS = frozenset(
    {RULE_DEFAULT, RULE_PIN, RULE_BUILTIN_DESTRUCTIVE, RULE_BUILTIN_READ_ONLY, RULE_CLIENT_REQUEST_DEFAULT}
)


@dataclass(frozen=True, slots=True)
class Request:
    """What is being decided. `name` is the tool or prompt name, resource URI, completion ref or
    client request (`sampling`, `elicitation`, `roots`), as the upstream knows it (not namespaced).
    `tool` is the upstream's tool definition (for annotations); `pin` comes from `check_pins`,
    None when pinning is not in force for that upstream."""

    kind: Kind
    upstream: str
    name: str
    actor: str = ""
    groups: frozenset[str] = frozenset()
    arguments: Mapping[str, Any] = field(default_factory=dict)
    tool: Mapping[str, Any] | None = None
    pin: PinStatus | None = None

    def __post_init__(self) -> None:
        if type(self.kind) is not Kind:
            object.__setattr__(self, "kind", Kind(self.kind))
        if self.pin is not None and type(self.pin) is not PinStatus:
            object.__setattr__(self, "pin", PinStatus(self.pin))
        if not isinstance(self.groups, frozenset):
            object.__setattr__(self, "groups", frozenset(self.groups))


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer, carried into the record stage so evidence shows why.

    `rule_id` is a rule's id, or `default`, `default:client-request`, `pin`, `builtin:destructive`,
    `builtin:trusted-read-only`. `review_mode` is set only when the verdict is review."""

    verdict: Verdict
    rule_id: str
    reason: str | None
    review_mode: ReviewMode | None
    policy_version: int
