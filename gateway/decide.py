"""The decide seam: which tools a caller sees, and allow / review / block for each request.

`PolicyDecider` applies each tenant's policy (gateway.policy, pure) to live requests. Policies are
stored as versions (`aegress policy apply`); the decider polls the store's policy counter at most
every `POLL_INTERVAL_S` (and at once on a `policy.changed` signal, gateway.signals), so an applied
policy or an approved tool definition is in force within a second, without a restart. Nothing fails open:

* a tenant with no applied policy gets the built-in default (`BUILTIN_DEFAULT_TEXT`, the starter
  file without rules: default block, destructive tools -> review, read-only tools of trusted
  upstreams -> allow, no upstream trusted; so every tool is held for an operator's approval);
* at start-up (`check_stored`) an invalid stored policy stops the gateway with a clear message;
* later, an invalid stored version is logged and the last good version stays in force;
* a tenant whose only stored policy is invalid gets `BLOCK_ALL` (everything hidden and blocked).

Tool pinning: the first time the gateway lists an upstream's tools (trust on first use), their
definition hashes are pinned and recorded; from then on a changed or new definition makes the
tool `review` (rule `pin`) until the operator approves it (`aegress policy approve-tool`). Each
change is recorded once with its old and new hash. Pins from a policy file's `[pins.<upstream>]`
put that upstream under pinning from the start (no first-use pinning); approvals in the store take
precedence over the file's hash for the same tool.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from gateway.errors import ConfigError
from gateway.policy import (
    Builtins,
    Kind,
    PinStatus,
    Policy,
    PolicyInvalid,
    RateLimit,
    Request,
    ReviewSettings,
    check_pins,
    evaluate,
    load_policy,
    rate_limit_for,
    starter_policy_text,
    tool_definition_hash,
)
from gateway.policy import visible as policy_visible
from gateway.store.base import Store
from gateway.types import Decision, Identity

log = logging.getLogger("aegress.decide")

POLL_INTERVAL_S = 0.5
BUILTIN_DEFAULT_TEXT = starter_policy_text()
BUILTIN_DEFAULT_NAME = "built-in default (the starter policy without rules)"
BLOCK_ALL = Policy(builtins=Builtins(destructive=None, trusted_read_only=None))
FIRST_USE = "first-use"
# Requests an upstream sends to the client, by JSON-RPC method -> the policy's client_request name.
CLIENT_REQUESTS = {"sampling/createMessage": "sampling", "elicitation/create": "elicitation", "roots/list": "roots"}


@dataclass(frozen=True, slots=True)
class GateDecision(Decision):
    """A Decision plus what the gate needs to carry it out: the review mode (approve / confirm) and
    the audit id the caller is shown (a block's `aud_...` or a hold's `rev_...`)."""

    review_mode: str = ""
    audit_id: str = ""


def builtin_default() -> Policy:
    return load_policy(BUILTIN_DEFAULT_TEXT, "<built-in default>")


def _gate(d: Any) -> GateDecision:
    return GateDecision(
        verdict=str(d.verdict),  # type: ignore[arg-type]
        rule_id=d.rule_id,
        reason=d.reason or "",
        policy_version=d.policy_version,
        review_mode=str(d.review_mode) if d.review_mode is not None else "",
    )


def load_stored(store: Store, tenant_id: str) -> tuple[Policy, int]:
    """The tenant's current policy and its version (0 = the built-in default). Raises PolicyInvalid."""
    row = store.get_policy_version(tenant_id)
    if row is None:
        return builtin_default(), 0
    policy = load_policy(row.text, f"{tenant_id} policy v{row.version} ({row.filename})")
    return replace(policy, policy_version=row.version), row.version


@dataclass(slots=True)
class TenantPolicy:
    """What the decider holds per tenant: the policy in force, its pins, and what it has seen."""

    policy: Policy
    version: int
    pins: dict[str, dict[str, str]] = field(default_factory=dict)
    pinned: set[str] = field(default_factory=set)
    bad_version: int | None = None
    hashes: dict[tuple[str, str], tuple[Any, str]] = field(default_factory=dict)
    observed: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def pins_for(self, upstream: str) -> dict[str, str] | None:
        """Effective pins of an upstream, or None when pinning is not in force for it yet."""
        file_pins = self.policy.pins.get(upstream)
        store_pins = self.pins.get(upstream)
        if file_pins is None and upstream not in self.pinned:
            return None
        return {**(file_pins or {}), **(store_pins or {})}

    def definition_hash(self, upstream: str, tool: Mapping[str, Any]) -> str:
        key = (upstream, str(tool.get("name")))
        memo = self.hashes.get(key)
        if memo is not None and memo[0] is tool:
            return memo[1]
        digest = tool_definition_hash(tool)
        self.hashes[key] = (tool, digest)
        return digest

    def pin_status(self, upstream: str, tool: Mapping[str, Any]) -> PinStatus | None:
        pins = self.pins_for(upstream)
        if pins is None:
            return None
        pinned = pins.get(str(tool.get("name")))
        if pinned is None:
            return PinStatus.NEW
        return PinStatus.OK if pinned == self.definition_hash(upstream, tool) else PinStatus.CHANGED


class Decider(Protocol):
    def refresh(self, now: float, force: bool = False) -> None: ...
    def visible(self, identity: Identity, upstream: str, tool: dict[str, Any]) -> bool: ...
    def decide(
        self, identity: Identity, upstream: str, tool: dict[str, Any], arguments: dict[str, Any]
    ) -> GateDecision: ...
    def decide_other(self, identity: Identity, kind: str, upstream: str, name: str,
                     arguments: Mapping[str, Any] | None = None) -> GateDecision: ...
    def visible_other(self, identity: Identity, kind: str, upstream: str, name: str) -> bool: ...
    def review_settings(self, tenant_id: str) -> ReviewSettings: ...
    def rate_limit(self, identity: Identity) -> RateLimit | None: ...
    def origins(self, tenant_id: str) -> tuple[str, ...]: ...
    def observe_tools(self, tenant_id: str, upstream: str, tools: Mapping[str, dict[str, Any]], now: str) -> None: ...


class AllowAll:
    """Every request visible and allowed: for tests of other stages only; the server never uses it."""

    _ALLOW = GateDecision("allow", rule_id="no-policy")

    def refresh(self, now: float, force: bool = False) -> None:
        return None

    def visible(self, identity: Identity, upstream: str, tool: dict[str, Any]) -> bool:
        return True

    def decide(
        self, identity: Identity, upstream: str, tool: dict[str, Any], arguments: dict[str, Any]
    ) -> GateDecision:
        return self._ALLOW

    def decide_other(self, identity: Identity, kind: str, upstream: str, name: str,
                     arguments: Mapping[str, Any] | None = None) -> GateDecision:
        return self._ALLOW

    def visible_other(self, identity: Identity, kind: str, upstream: str, name: str) -> bool:
        return True

    def review_settings(self, tenant_id: str) -> ReviewSettings:
        return ReviewSettings()

    def rate_limit(self, identity: Identity) -> RateLimit | None:
        return None

    def origins(self, tenant_id: str) -> tuple[str, ...]:
        return ()

    def observe_tools(self, tenant_id: str, upstream: str, tools: Mapping[str, dict[str, Any]], now: str) -> None:
        return None


class PolicyDecider:
    """Each tenant's stored policy and pins, kept current by polling; decisions call the pure library."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._tenants: dict[str, TenantPolicy] = {}
        self._seen = -1
        self._checked = float("-inf")

    # -- loading -----------------------------------------------------------------------------------
    def check_stored(self) -> None:
        """Start-up: every tenant's current stored policy must load, else the gateway does not start."""
        self._seen = self.store.policies_version()
        for tenant_id in sorted(self.store.latest_policy_versions()):
            try:
                self._tenants[tenant_id] = self._load(tenant_id)
            except PolicyInvalid as exc:
                raise ConfigError(
                    f"The stored policy of tenant {tenant_id!r} is invalid, so the gateway will not start:\n"
                    + "\n".join(f"  {p}" for p in exc.problems),
                    hint=f"Apply a corrected policy: `aegress policy apply FILE --tenant {tenant_id}`.",
                    code="policy-invalid",
                ) from exc

    def _load(self, tenant_id: str) -> TenantPolicy:
        policy, version = load_stored(self.store, tenant_id)
        return TenantPolicy(policy, version, self.store.get_pins(tenant_id), self.store.pinned_upstreams(tenant_id))

    def tenant(self, tenant_id: str) -> TenantPolicy:
        state = self._tenants.get(tenant_id)
        if state is None:
            try:
                state = self._load(tenant_id)
            except PolicyInvalid as exc:
                log.error("tenant %s: stored policy invalid, blocking everything: %s", tenant_id, exc.message)
                latest = self.store.get_policy_version(tenant_id)
                state = TenantPolicy(BLOCK_ALL, 0, bad_version=latest.version if latest else None)
            self._tenants[tenant_id] = state
        return state

    def refresh(self, now: float, force: bool = False) -> None:
        """Called by the pipeline with a monotonic time; reloads what changed since the last poll. `force`
        (a `policy.changed` signal) looks at the store even if it was polled less than POLL_INTERVAL_S ago."""
        if now - self._checked < POLL_INTERVAL_S and not force:
            return
        self._checked = now
        version = self.store.policies_version()
        if version == self._seen:
            return
        self._seen = version
        latest = self.store.latest_policy_versions()
        for tenant_id, state in list(self._tenants.items()):
            state.pins = self.store.get_pins(tenant_id)
            state.pinned = self.store.pinned_upstreams(tenant_id)
            want = latest.get(tenant_id, 0)
            if want in (state.version, state.bad_version):
                continue
            try:
                policy, loaded = load_stored(self.store, tenant_id)
            except PolicyInvalid as exc:
                state.bad_version = want
                log.error("tenant %s: policy version %s is invalid; version %s stays in force: %s",
                          tenant_id, want, state.version, exc.message)
                continue
            log.info("tenant %s: policy version %s in force", tenant_id, loaded)
            state.policy, state.version, state.bad_version = policy, loaded, None

    # -- decisions ---------------------------------------------------------------------------------
    def visible(self, identity: Identity, upstream: str, tool: dict[str, Any]) -> bool:
        state = self.tenant(identity.tenant_id)
        name = str(tool.get("name", ""))
        return policy_visible(state.policy, Request(Kind.TOOL, upstream, name, identity.actor_id, tool=tool))

    def decide(
        self, identity: Identity, upstream: str, tool: dict[str, Any], arguments: dict[str, Any]
    ) -> GateDecision:
        state = self.tenant(identity.tenant_id)
        request = Request(Kind.TOOL, upstream, str(tool.get("name", "")), identity.actor_id,
                          arguments=arguments, tool=tool, pin=state.pin_status(upstream, tool))
        return _gate(evaluate(state.policy, request))

    def decide_other(self, identity: Identity, kind: str, upstream: str, name: str,
                     arguments: Mapping[str, Any] | None = None) -> GateDecision:
        """Resources (by URI), prompts, completions and client requests (sampling, elicitation, roots)."""
        state = self.tenant(identity.tenant_id)
        request = Request(Kind(kind), upstream, name, identity.actor_id, arguments=arguments or {})
        return _gate(evaluate(state.policy, request))

    def visible_other(self, identity: Identity, kind: str, upstream: str, name: str) -> bool:
        state = self.tenant(identity.tenant_id)
        return policy_visible(state.policy, Request(Kind(kind), upstream, name, identity.actor_id))

    def review_settings(self, tenant_id: str) -> ReviewSettings:
        return self.tenant(tenant_id).policy.review

    def rate_limit(self, identity: Identity) -> RateLimit | None:
        return rate_limit_for(self.tenant(identity.tenant_id).policy, identity.actor_id)

    def origins(self, tenant_id: str) -> tuple[str, ...]:
        return tuple(self.tenant(tenant_id).policy.origins)

    # -- pins --------------------------------------------------------------------------------------
    def observe_tools(self, tenant_id: str, upstream: str, tools: Mapping[str, dict[str, Any]], now: str) -> None:
        """An upstream listed its tools: cache the definitions, pin on first use, record changes.

        Writes (one transaction) only when the listing differs from the last one this process saw. Blocks
        on the store: the pipeline calls it in a worker thread."""
        state = self.tenant(tenant_id)
        listed = list(tools.values())
        hashes = tuple(state.definition_hash(upstream, t) for t in listed)
        fingerprint = tuple(sorted(zip((str(t.get("name")) for t in listed), hashes, strict=True)))
        flat = tuple(x for pair in fingerprint for x in pair)
        if state.observed.get(upstream) == flat:
            return
        pins = state.pins_for(upstream)
        first: dict[str, str] | None = None
        if pins is None:
            first = {str(t.get("name")): h for t, h in zip(listed, hashes, strict=True)}
            changes = [(n, "", h) for n, h in first.items()]
        else:
            changes = [(c.name, c.pinned_hash or "", c.current_hash) for c in check_pins(pins, listed)
                       if c.status is not PinStatus.OK]
        self.store.observe_tools(tenant_id, upstream, listed, hashes, first, changes, FIRST_USE, now)
        if first is not None:
            state.pins[upstream] = first
            state.pinned.add(upstream)
        state.observed[upstream] = flat
