"""The decide seam. The policy gate (its own module) plugs in here; until then every visible tool
is allowed. Deciders are pure: they see the identity, the upstream, the tool and its arguments."""

from __future__ import annotations

from typing import Any, Protocol

from gateway.types import Decision, Identity


class Decider(Protocol):
    def visible(self, identity: Identity, upstream: str, tool: dict[str, Any]) -> bool: ...

    def decide(
        self, identity: Identity, upstream: str, tool: dict[str, Any], arguments: dict[str, Any]
    ) -> Decision: ...


class AllowAll:
    """Every tool visible and allowed; the seam's default before a policy is applied."""

    _ALLOW = Decision("allow", rule_id="no-policy")

    def visible(self, identity: Identity, upstream: str, tool: dict[str, Any]) -> bool:
        return True

    def decide(
        self, identity: Identity, upstream: str, tool: dict[str, Any], arguments: dict[str, Any]
    ) -> Decision:
        return self._ALLOW
