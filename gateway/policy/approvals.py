"""Approval logic for `review` (mode approve): who may approve, and which call an approval releases.

An approval is bound to tenant, actor, upstream, tool and an argument digest; it is single use and
expires, so approving one call never licenses a different call, another actor, or a replay. The
store makes "single use" atomic (mark used only where not yet used); this module only decides.
Times are seconds since the epoch, passed in by the caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from gateway.errors import Forbidden
from gateway.policy._canonical import sha256_digest
from gateway.policy.model import Policy


class SelfApproval(Forbidden):
    """Separation of duties: the actor whose call is held cannot approve it."""

    code = "self-approval"


def argument_digest(arguments: Mapping[str, Any]) -> str:
    """`sha256:<hex>` of the RFC 8785 canonical JSON of the call's arguments."""
    return sha256_digest(dict(arguments))


@dataclass(frozen=True, slots=True)
class Call:
    """The call an approval is checked against."""

    tenant: str
    actor: str
    upstream: str
    tool: str
    arguments: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Approval:
    """An operator's approval of one held call."""

    id: str
    tenant: str
    actor: str
    upstream: str
    tool: str
    args_digest: str
    approved_by: str
    approved_at: float
    expires_at: float
    used_at: float | None = None


class Mismatch(StrEnum):
    """Why an approval does not release a call (for the record and the caller's message)."""

    NONE = "none"
    USED = "used"
    EXPIRED = "expired"
    TENANT = "tenant"
    ACTOR = "actor"
    TOOL = "tool"
    ARGUMENTS = "arguments"


def approval_mismatch(approval: Approval, call: Call, now: float) -> Mismatch:
    """The first reason the approval does not apply to this call at `now`, or Mismatch.NONE."""
    if approval.used_at is not None:
        return Mismatch.USED
    if now >= approval.expires_at or now < approval.approved_at:
        return Mismatch.EXPIRED
    if approval.tenant != call.tenant:
        return Mismatch.TENANT
    if approval.actor != call.actor:
        return Mismatch.ACTOR
    if approval.upstream != call.upstream or approval.tool != call.tool:
        return Mismatch.TOOL
    if approval.args_digest != argument_digest(call.arguments):
        return Mismatch.ARGUMENTS
    return Mismatch.NONE


def approval_matches(approval: Approval, call: Call, now: float) -> bool:
    """Whether the approval releases this call now: unused, unexpired, same tenant/actor/tool/arguments."""
    return approval_mismatch(approval, call, now) is Mismatch.NONE


def check_approver(approver: str, caller: str) -> None:
    """Raise SelfApproval when the approver is the actor whose call is held (exact comparison)."""
    if approver == caller:
        raise SelfApproval(
            "an actor cannot approve its own held call",
            hint="ask another operator to run `aegress review approve`",
        )


def make_approval(
    *, approval_id: str, call: Call, approved_by: str, now: float, policy: Policy
) -> Approval:
    """Build the approval for a held call, lifetime from the policy; refuses self-approval."""
    check_approver(approved_by, call.actor)
    return Approval(
        id=approval_id, tenant=call.tenant, actor=call.actor, upstream=call.upstream, tool=call.tool,
        args_digest=argument_digest(call.arguments), approved_by=approved_by, approved_at=now,
        expires_at=now + policy.review.approval_lifetime_seconds,
    )


def consume(approval: Approval, now: float) -> Approval:
    """The approval marked used (single use); the store persists it atomically."""
    return replace(approval, used_at=now)


def hold_deadline(held_at: float, policy: Policy) -> float:
    """When a held call stops waiting and answers "held for review"."""
    return held_at + policy.review.hold_timeout_seconds
