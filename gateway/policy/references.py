"""Names a policy refers to that a tenant does not have: warnings, not errors (pure).

A policy is valid on its own (`check_policy`), but a rule for `upstream = "filesytem"` on a tenant
whose upstream is `filesystem` silently never matches. `policy check --tenant` and `policy apply`
report such names, so a typo is seen before it matters; the policy still applies (an upstream may be
registered after its policy).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.policy._match import Glob
from gateway.policy.model import Policy


@dataclass(frozen=True, slots=True)
class PolicyWarning:
    """One name the policy uses that matches none of the tenant's upstreams."""

    code: str  # unknown-upstream
    where: str  # "rule 'x'", "trusted_upstreams" or "pins"
    name: str
    suggestion: str | None = None

    @property
    def message(self) -> str:
        what = "names upstream" if Glob(self.name).literal is not None else "has upstream pattern"
        near = f" (did you mean {self.suggestion!r}?)" if self.suggestion else ""
        return f"{self.where} {what} {self.name!r}, which matches none of the tenant's upstreams{near}."

    def to_dict(self) -> dict[str, str | None]:
        return {"code": self.code, "where": self.where, "name": self.name, "suggestion": self.suggestion,
                "message": self.message}


def upstream_warnings(policy: Policy, upstreams: Iterable[str]) -> list[PolicyWarning]:
    """Every upstream name or glob in the policy (rules, trusted_upstreams, pins) that matches none of
    `upstreams`. The catch-all `*` is never reported."""
    names = sorted(set(upstreams))
    found: list[PolicyWarning] = []
    seen: set[tuple[str, str]] = set()

    def check(where: str, pattern: str) -> None:
        if pattern == "*" or (where, pattern) in seen:
            return
        seen.add((where, pattern))
        glob = Glob(pattern)
        if any(glob.match(n) for n in names):
            return
        close = difflib.get_close_matches(pattern, names, n=1) if glob.literal is not None else []
        found.append(PolicyWarning("unknown-upstream", where, pattern, close[0] if close else None))

    for rule in policy.rules:
        for pattern in rule.upstream:
            check(f"rule {rule.id!r}", pattern)
    for name in sorted(policy.trusted_upstreams):
        check("trusted_upstreams", name)
    for name in sorted(policy.pins):
        check("pins", name)
    return found
