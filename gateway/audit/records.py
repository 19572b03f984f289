"""The evidence record: one canonical JSON object per event, chained by hash and numbered without gaps.

A record is the RFC 8785 form of

    {"v": 1, "origin": <log origin>, "seq": <int>, "prev": <hex>, "kind": <kind>, "time": <RFC 3339>,
     "body": {<kind-specific fields>}}

`seq` starts at 0 and equals the record's leaf index in the log's Merkle tree. `prev` is the lowercase
hex RFC 6962 leaf hash of the previous record's bytes (64 zeros for seq 0), so the chain and the tree
use one hash per record. Bodies are validated against `KINDS` so no raw argument or result value can
slip into evidence: values appear only as keyed digests and redacted, bounded previews.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

import orjson

from gateway.audit.canonical import MAX_SAFE_INTEGER, JsonValue, canonicalize
from gateway.audit.errors import InvalidRecord
from gateway.audit.merkle import leaf_hash

FORMAT_VERSION: Final = 1
GENESIS_PREV: Final = "0" * 64
"""`prev` of the record with seq 0."""

OUTCOME_STATUSES: Final = frozenset(
    {"completed", "failed", "timeout", "cancelled", "client_disconnected", "not_forwarded"}
)
"""`not_forwarded`: the intent was committed but the call never left the gateway (the client left or the
call was cancelled first, or the gateway had already refused it)."""
MAX_PREVIEW_CHARS: Final = 512
"""Upper bound on any `*_preview` field; `redact.redact_preview` truncates to fit."""

OPERATOR_CHANGES: Final = frozenset({
    "tenant_created", "tenant_deleted", "actor_added", "actor_removed", "token_issued", "upstream_added",
    "upstream_changed", "upstream_removed", "tools_approved", "operator_token_issued", "operator_token_revoked",
    # OAuth mode (issue 13): `oauth_grant_created` is the signed-in actor's consent (actor: that actor)
    "oauth_issuer_added", "oauth_issuer_removed", "oauth_client_revoked", "oauth_grant_created",
    "oauth_grant_revoked", "actor_password_set", "login_link_issued",
})
"""`operator_change.change` values (other operator changes have kinds of their own: `token_revoked`,
`policy_changed`, `review_approved`, `review_denied`, `key_event`)."""

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_DIGEST = re.compile(r"(?:sha256|hmac-sha256):[0-9a-f]{64}\Z")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z\Z")
_TOP_KEYS: Final = frozenset({"v", "origin", "seq", "prev", "kind", "time", "body"})

# Field types: "str" non-empty string, "str?" string or null, "int" non-negative int,
# "digest" "sha256:<hex>" / "hmac-sha256:<hex>", "digest?" digest or null, "time" RFC 3339 UTC,
# "preview" string of at most MAX_PREVIEW_CHARS, "status" an OUTCOME_STATUSES member, "strs" list of str,
# "ints" non-empty list of non-negative ints.
_CALL: Final = {
    "tenant": "str",
    "actor": "str",
    "token_id": "str?",
    "client_name": "str?",
    "client_version": "str?",
    "upstream": "str",
    "tool": "str",
    "tool_def_hash": "digest?",
    "verdict": "str",
    "policy_version": "str",
    "rule_id": "str?",
    "args_digest": "digest?",
}
_CALL_OPTIONAL: Final = {"request_id": "str", "args_preview": "preview", "reason": "str"}


@dataclass(frozen=True)
class KindSpec:
    """Required and optional body fields (name -> type) of one record kind."""

    required: Mapping[str, str]
    optional: Mapping[str, str]

    @property
    def required_names(self) -> frozenset[str]:
        return frozenset(self.required)

    @property
    def allowed_names(self) -> frozenset[str]:
        return frozenset(self.required) | frozenset(self.optional)


KINDS: Final[Mapping[str, KindSpec]] = {
    # A call that will be forwarded: committed before forwarding. verdict: "allow" or "review_approved".
    "intent": KindSpec(_CALL, _CALL_OPTIONAL),
    # A call that was not forwarded. verdict: "deny", "hidden" (tool not visible), "review" (held).
    "decision": KindSpec(_CALL, _CALL_OPTIONAL),
    "outcome": KindSpec(
        {"intent_seq": "int", "status": "status", "result_digest": "digest?", "latency_ms": "int"},
        {"upstream_latency_ms": "int", "error_code": "str", "result_preview": "preview"},
    ),
    # Appended at start-up for every intent left without an outcome by a crash.
    "outcome_unknown": KindSpec({"intent_seq": "int", "reason": "str"}, {}),
    "review_approved": KindSpec({"review_id": "str", "reviewer": "str"}, {"decision_seq": "int", "reason": "str"}),
    "review_denied": KindSpec({"review_id": "str", "reviewer": "str"}, {"decision_seq": "int", "reason": "str"}),
    "elicitation_answer": KindSpec(
        {"request_id": "str", "action": "str", "answer_digest": "digest?"},
        {"answer_preview": "preview", "actor": "str"},
    ),
    "policy_changed": KindSpec(
        {"policy_version": "str", "policy_digest": "digest", "actor": "str"}, {"previous_version": "str"}
    ),
    "token_revoked": KindSpec({"token_id": "str", "actor": "str"}, {"reason": "str"}),
    # Every other operator change, sealed in the transaction that makes it. change: one of
    # OPERATOR_CHANGES; actor: the operator; subject: the tenant, actor, token or upstream changed.
    "operator_change": KindSpec(
        {"change": "str", "actor": "str", "subject": "str"},
        {"subject_actor": "str", "config_digest": "digest", "tools": "strs"},
    ),
    # event: "generated", "rotated", "retired"; key: the verifier key string (name+keyid+base64).
    "key_event": KindSpec({"event": "str", "key": "str"}, {"actor": "str", "previous_key": "str"}),
    # An operator's repair of damage that is not tampering (`aegress audit repair`): names the earlier records
    # that broke the log's meaning (a second answer to one intent, an intent a recovery skipped) and what was
    # wrong with each (`problems`, one line per seq). Nothing is rewritten or deleted; verifiers accept the
    # named damage after this record and report the repair as a notice.
    "repair": KindSpec({"damaged_seqs": "ints", "problems": "strs", "actor": "str", "reason": "str"}, {}),
    # Deployment log only: failures counted over a window so a flood costs one record per window.
    "auth_failures_aggregate": KindSpec(
        {"window_start": "time", "window_end": "time", "count": "int", "reasons": "strs"},
        {"distinct_sources": "int"},
    ),
}


_NAMES: Final = {kind: (spec.required_names, spec.allowed_names) for kind, spec in KINDS.items()}
_TYPES: Final = {kind: {**spec.optional, **spec.required} for kind, spec in KINDS.items()}


def _is_digest(value: Any) -> bool:
    return isinstance(value, str) and _DIGEST.match(value) is not None


_CHECKS: Final[Mapping[str, Any]] = {
    "str": lambda v: isinstance(v, str) and v != "",
    "str?": lambda v: v is None or isinstance(v, str),
    "int": lambda v: type(v) is int and 0 <= v <= MAX_SAFE_INTEGER,
    "digest": _is_digest,
    "digest?": lambda v: v is None or _is_digest(v),
    "time": lambda v: isinstance(v, str) and _TIME.match(v) is not None,
    "preview": lambda v: isinstance(v, str) and len(v) <= MAX_PREVIEW_CHARS,
    "status": lambda v: isinstance(v, str) and v in OUTCOME_STATUSES,
    "strs": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "ints": lambda v: isinstance(v, list) and bool(v)
    and all(type(x) is int and 0 <= x <= MAX_SAFE_INTEGER for x in v),
}


def validate_body(kind: str, body: Mapping[str, Any]) -> None:
    """Raise InvalidRecord unless `body` has exactly the fields `kind` allows, with the right types."""
    spec = KINDS.get(kind) if isinstance(kind, str) else None
    if spec is None:
        raise InvalidRecord(f"unknown record kind {kind!r}", hint=f"one of: {', '.join(sorted(KINDS))}")
    if not isinstance(body, Mapping):
        raise InvalidRecord(f"{kind} record: body must be an object")
    required, allowed = _NAMES[kind]
    if not (required <= body.keys() <= allowed):
        _explain_fields(kind, spec, body)
    types = _TYPES[kind]
    for name, value in body.items():
        kind_of = types[name]
        if not _CHECKS[kind_of](value):
            raise InvalidRecord(f"{kind} record: field {name!r} must be {kind_of}")


def _explain_fields(kind: str, spec: KindSpec, body: Mapping[str, Any]) -> None:
    missing = [name for name in spec.required if name not in body]
    if missing:
        raise InvalidRecord(f"{kind} record: missing field(s) {', '.join(missing)}")
    unknown = [name for name in body if name not in spec.required and name not in spec.optional]
    if unknown:
        raise InvalidRecord(
            f"{kind} record: unknown field(s) {', '.join(sorted(map(str, unknown)))}",
            hint="evidence holds only documented fields; raw values go in as digests or redacted previews",
        )



def format_time(when: datetime) -> str:
    """RFC 3339 UTC with microseconds, the only time form records use (fixed width, sorts as text)."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise InvalidRecord("record time must be timezone-aware")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _check_origin(origin: str) -> None:
    if not origin or not origin.isprintable() or origin != origin.strip():
        raise InvalidRecord("log origin must be a non-empty printable string without surrounding spaces")


@dataclass(frozen=True)
class BuiltRecord:
    """A record ready to store: the exact bytes, its leaf hash, and the fields a store indexes."""

    origin: str
    seq: int
    kind: str
    canonical: bytes
    leaf_hash: bytes

    @property
    def leaf_hash_hex(self) -> str:
        return self.leaf_hash.hex()


def build_record(
    *, origin: str, seq: int, prev: str, kind: str, time: datetime | str, body: Mapping[str, JsonValue]
) -> BuiltRecord:
    """Validate and canonicalise one record; the caller supplies seq, prev and time (no clock here)."""
    _check_origin(origin)
    if type(seq) is not int or not 0 <= seq <= MAX_SAFE_INTEGER:
        raise InvalidRecord("seq must be a non-negative integer")
    if not isinstance(prev, str) or _HEX64.match(prev) is None:
        raise InvalidRecord("prev must be 64 lowercase hex characters")
    if (seq == 0) != (prev == GENESIS_PREV):
        raise InvalidRecord("prev is all zeros exactly for the record with seq 0")
    time_text = format_time(time) if isinstance(time, datetime) else time
    if not isinstance(time_text, str) or _TIME.match(time_text) is None:
        raise InvalidRecord("time must be RFC 3339 UTC with microseconds, e.g. 2025-01-02T03:04:05.000000Z")
    validate_body(kind, body)
    record = {
        "v": FORMAT_VERSION,
        "origin": origin,
        "seq": seq,
        "prev": prev,
        "kind": kind,
        "time": time_text,
        "body": dict(body),
    }
    try:  # validated above: ASCII field names, strings, safe integers, lists of them: orjson's sorted output is JCS
        data = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    except (orjson.JSONEncodeError, TypeError):  # a lone surrogate: the full implementation refuses it
        data = canonicalize(record)
    return BuiltRecord(origin=origin, seq=seq, kind=kind, canonical=data, leaf_hash=leaf_hash(data))


@dataclass(frozen=True)
class ChainHead:
    """The end of a log: what the next record must carry. Stores keep it (or derive it) per tenant."""

    origin: str
    size: int
    last_hash: bytes | None

    @classmethod
    def genesis(cls, origin: str) -> ChainHead:
        _check_origin(origin)
        return cls(origin=origin, size=0, last_hash=None)

    @property
    def next_seq(self) -> int:
        return self.size

    @property
    def next_prev(self) -> str:
        return GENESIS_PREV if self.last_hash is None else self.last_hash.hex()

    def append(
        self, *, kind: str, time: datetime | str, body: Mapping[str, JsonValue]
    ) -> tuple[BuiltRecord, ChainHead]:
        """Build the next record and return it with the new head; the old head is unchanged."""
        record = build_record(
            origin=self.origin, seq=self.next_seq, prev=self.next_prev, kind=kind, time=time, body=body
        )
        return record, ChainHead(origin=self.origin, size=self.size + 1, last_hash=record.leaf_hash)

    @classmethod
    def after(cls, data: bytes) -> ChainHead:
        """The head that follows the stored record `data` (used when a store reopens a log)."""
        record = parse_record(data)
        return cls(origin=record.origin, size=record.seq + 1, last_hash=leaf_hash(data))


class ParsedRecord(NamedTuple):
    """A stored record read back: its fields, for queries and verification (a tuple: cheap to build)."""

    origin: str
    seq: int
    prev: str
    kind: str
    time: str
    body: Mapping[str, Any]


def parse_record(data: bytes) -> ParsedRecord:
    """Parse stored bytes, insisting on canonical form, version 1, the top-level fields and a valid body.

    This is the verifier's hot path. orjson parses; once the fields are validated the value holds only
    ASCII keys, safe integers, strings, lists, booleans and nulls, for which orjson's sorted compact output
    is exactly the RFC 8785 form, so comparing it with the stored bytes proves canonical form.
    """
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidRecord("record bytes are not valid UTF-8 JSON") from exc
    if not isinstance(value, dict) or value.keys() != _TOP_KEYS:
        raise InvalidRecord("record must be an object with exactly v, origin, seq, prev, kind, time, body")
    version, origin, seq, prev, time = value["v"], value["origin"], value["seq"], value["prev"], value["time"]
    if type(version) is not int or version != FORMAT_VERSION:
        raise InvalidRecord(f"unsupported record version {version!r}")
    if not isinstance(origin, str):
        raise InvalidRecord("origin must be a string")
    _check_origin(origin)
    if type(seq) is not int or not 0 <= seq <= MAX_SAFE_INTEGER:
        raise InvalidRecord("seq must be a non-negative integer")
    if not isinstance(prev, str) or _HEX64.match(prev) is None:
        raise InvalidRecord("prev must be 64 lowercase hex characters")
    if (seq == 0) != (prev == GENESIS_PREV):
        raise InvalidRecord("prev is all zeros exactly for the record with seq 0")
    if not isinstance(time, str) or _TIME.match(time) is None:
        raise InvalidRecord("time must be RFC 3339 UTC with microseconds")
    validate_body(value["kind"], value["body"])
    if orjson.dumps(value, option=orjson.OPT_SORT_KEYS) != data and canonicalize(value) != data:
        raise InvalidRecord("record bytes are not in RFC 8785 canonical form")
    return ParsedRecord(origin=origin, seq=seq, prev=prev, kind=value["kind"], time=time, body=value["body"])


def receipt(record: BuiltRecord) -> dict[str, JsonValue]:
    """The receipt a response carries in `_meta["aegress"]`: enough to ask for an inclusion proof."""
    return {"origin": record.origin, "seq": record.seq, "leaf_hash": record.leaf_hash_hex}
