"""The record stage's vocabulary: what an intent, a decision and an outcome say about one call.

Pure builders: facts in (identity, client, tool, verdict, arguments, result, latencies, time), an
`Entry` out for `gateway.evidence` to seal and commit. Values never enter a record in the clear:
arguments and results become per-tenant keyed digests plus redacted, bounded previews. A plain
`CallRecord` copy rides along with the final record of each call so `store.list_calls` (policy replay)
keeps working; it holds names and outcomes only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.audit.log import Entry, Sealed, expected_columns
from gateway.audit.records import receipt
from gateway.audit.redact import digest_value, redact_preview, redact_text
from gateway.policy.pinning import tool_definition_hash
from gateway.types import CallRecord, Decision, Identity

VERDICTS = {"allow": "allow", "block": "deny", "review": "review", "hidden": "hidden",
            "review_approved": "review_approved", "deny": "deny"}


class Recorder(Protocol):
    """What the pipeline needs from the evidence service (gateway.evidence.facade.Evidence / NoEvidence)."""

    enabled: bool
    await_outcome: bool

    def origin(self, tenant: str) -> str: ...
    def tenant_key(self, tenant: str) -> bytes: ...
    def append(self, entry: Entry, *, alone: bool = False) -> Awaitable[Sealed | None]: ...
    def submit(self, entry: Entry) -> Any: ...
    def defer(self, build: Callable[[], Entry]) -> None: ...
    def auth_failure(self, reason: str) -> None: ...
    def settle(self, timeout: float = 10.0) -> bool: ...
    def crash(self, point: str) -> None: ...
    def check(self) -> bool: ...
    def unready_reason(self) -> str | None: ...
    def close(self) -> None: ...
    @property
    def healthy(self) -> bool: ...


_DEF_HASHES: dict[int, tuple[dict[str, Any], str | None]] = {}


def tool_def_hash(tool: dict[str, Any] | None) -> str | None:
    """The pinned definition hash (the policy's `tool_definition_hash`: name, description, input schema,
    annotations), so evidence and pins name a definition alike; cached per definition object (they
    are replaced, not mutated, when an upstream's tool list is refreshed)."""
    if not tool:
        return None
    cached = _DEF_HASHES.get(id(tool))
    if cached is not None and cached[0] is tool:
        return cached[1]
    try:
        digest: str | None = tool_definition_hash(tool)
    except Exception:
        digest = None
    if len(_DEF_HASHES) > 4096:
        _DEF_HASHES.clear()
    _DEF_HASHES[id(tool)] = (tool, digest)
    return digest


def _digest(key: bytes, value: Any) -> str | None:
    if value is None:
        return None
    try:
        return digest_value(key, value)
    except Exception:  # floats out of range and the like: fall back to the JSON text
        import json

        return digest_value(key, json.dumps(value, sort_keys=True, default=str))


@dataclass(frozen=True)
class CallFacts:
    """Everything known about a call when it is decided (before forwarding)."""

    identity: Identity
    client_name: str | None
    client_version: str | None
    session_id: str
    method: str
    upstream: str
    tool: str
    tool_def: dict[str, Any] | None
    decision: Decision
    arguments: Any
    request_id: str
    started_at: str  # RFC 3339, microseconds
    time: str
    secrets: tuple[str, ...] = ()  # credentials the gateway injects towards this upstream: never previewed


def call_entry(origin: str, key: bytes, facts: CallFacts, *, kind: str, verdict: str | None = None) -> Entry:
    """An `intent` (about to be forwarded) or a `decision` (not forwarded) record for one call."""
    d = facts.decision
    verdict = verdict or VERDICTS.get(d.verdict, d.verdict)
    body: dict[str, Any] = {
        "tenant": facts.identity.tenant_id,
        "actor": facts.identity.actor_id,
        "token_id": facts.identity.token_id or None,
        "client_name": (facts.client_name or None) and facts.client_name[:100],
        "client_version": (facts.client_version or None) and facts.client_version[:100],
        "upstream": facts.upstream or "(none)",
        "tool": facts.tool or "(none)",
        "tool_def_hash": tool_def_hash(facts.tool_def),
        "verdict": verdict,
        "policy_version": str(d.policy_version),
        "rule_id": d.rule_id or None,
        "args_digest": _digest(key, facts.arguments),
        "request_id": facts.request_id[:200] or "-",
    }
    if facts.arguments is not None:
        body["args_preview"] = redact_preview(facts.arguments, secrets=facts.secrets)
    if d.reason:
        body["reason"] = redact_text(d.reason, limit=500, secrets=facts.secrets) or "-"
    columns = expected_columns(kind, body, facts.identity.tenant_id)
    call = None
    if kind == "decision":
        call = plain_call(facts, "refused", 0.0, None)
    return Entry(origin, kind, facts.time, body, columns, call)


def plain_call(facts: CallFacts, outcome: str, duration_ms: float, error_code: int | None) -> CallRecord:
    d = facts.decision
    return CallRecord(
        tenant_id=facts.identity.tenant_id, actor_id=facts.identity.actor_id, token_id=facts.identity.token_id,
        method=facts.method, target=facts.tool, upstream=facts.upstream, verdict=d.verdict, rule_id=d.rule_id,
        outcome=outcome, started_at=facts.started_at, duration_ms=round(duration_ms, 3), error_code=error_code,
        session_id=facts.session_id, client_name=(facts.client_name or "")[:100],
    )


def outcome_entry(origin: str, key: bytes, facts: CallFacts, intent_seq: int, *, status: str, time: str,
                  latency_ms: float, upstream_latency_ms: float | None, result: Any = None,
                  error_code: int | str | None = None) -> Entry:
    body: dict[str, Any] = {
        "intent_seq": intent_seq,
        "status": status,
        "result_digest": _digest(key, result),
        "latency_ms": max(0, round(latency_ms)),
    }
    if upstream_latency_ms is not None:
        body["upstream_latency_ms"] = max(0, round(upstream_latency_ms))
    if error_code is not None:
        body["error_code"] = str(error_code)[:64]
    if result is not None:
        body["result_preview"] = redact_preview(result, secrets=facts.secrets)
    verdict = "review_approved" if facts.decision.verdict == "review" else VERDICTS.get(facts.decision.verdict,
                                                                                        facts.decision.verdict)
    columns = expected_columns("outcome", body, facts.identity.tenant_id,
                               {"actor": facts.identity.actor_id, "tool": facts.tool or "(none)", "verdict": verdict})
    legacy = {"completed": "completed", "failed": "failed"}.get(status, status)
    if status == "failed" and error_code == "tool_error":
        legacy = "tool_error"
    code = error_code if isinstance(error_code, int) else None
    return Entry(origin, "outcome", time, body, columns, plain_call(facts, legacy, latency_ms, code))


def elicitation_entry(origin: str, key: bytes, tenant: str, actor: str, request_id: str, answer: dict[str, Any],
                      time: str) -> Entry:
    action = answer.get("action")
    content = answer.get("content")
    body: dict[str, Any] = {
        "request_id": request_id[:200] or "-",
        "action": action if isinstance(action, str) and action else "unknown",
        "answer_digest": _digest(key, content),
    }
    if actor:
        body["actor"] = actor
    if content is not None:
        body["answer_preview"] = redact_preview(content)
    return Entry(origin, "elicitation_answer", time, body, expected_columns("elicitation_answer", body, tenant))


def with_receipt(result: Any, sealed: Sealed | None) -> Any:
    """Merge `_meta.aegress = {origin, seq, leaf_hash}` into a result object (other `_meta` keys kept)."""
    if sealed is None or not isinstance(result, dict):
        return result
    meta = result.get("_meta")
    merged = {**meta} if isinstance(meta, dict) else {}
    merged["aegress"] = receipt(sealed.record)
    return {**result, "_meta": merged}
