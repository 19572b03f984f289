"""An independent verifier written only from docs/evidence-format.md (no gateway imports).

It exists to prove the document is enough: tests require it to agree with gateway.audit.verify on the
class and seq of the first problem for every fixture.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

ZERO = "0" * 64
TYPES = {
    "str": lambda v: isinstance(v, str) and v != "",
    "str?": lambda v: v is None or isinstance(v, str),
    "int": lambda v: type(v) is int and 0 <= v < 2**53,
    "digest": lambda v: isinstance(v, str) and re.fullmatch(r"(sha256|hmac-sha256):[0-9a-f]{64}", v) is not None,
    "time": lambda v: isinstance(v, str) and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", v) is not None,
    "preview": lambda v: isinstance(v, str) and len(v) <= 512,
    "status": lambda v: v in ("completed", "failed", "timeout", "cancelled", "client_disconnected"),
    "strs": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
}
TYPES["digest?"] = lambda v: v is None or TYPES["digest"](v)
CALL = (
    "tenant:str actor:str token_id:str? client_name:str? client_version:str? upstream:str tool:str "
    "tool_def_hash:digest? verdict:str policy_version:str rule_id:str? args_digest:digest?",
    "request_id:str args_preview:preview reason:str",
)
REVIEW = ("review_id:str reviewer:str", "decision_seq:int reason:str")
KINDS = {
    "intent": CALL,
    "decision": CALL,
    "outcome": (
        "intent_seq:int status:status result_digest:digest? latency_ms:int",
        "upstream_latency_ms:int error_code:str result_preview:preview",
    ),
    "outcome_unknown": ("intent_seq:int reason:str", ""),
    "review_approved": REVIEW,
    "review_denied": REVIEW,
    "elicitation_answer": ("request_id:str action:str answer_digest:digest?", "answer_preview:preview actor:str"),
    "policy_changed": ("policy_version:str policy_digest:digest actor:str", "previous_version:str"),
    "token_revoked": ("token_id:str actor:str", "reason:str"),
    "operator_change": ("change:str actor:str subject:str", "subject_actor:str config_digest:digest tools:strs"),
    "key_event": ("event:str key:str", "actor:str previous_key:str"),
    "auth_failures_aggregate": ("window_start:time window_end:time count:int reasons:strs", "distinct_sources:int"),
}


def fields(spec: str) -> dict[str, str]:
    return dict(item.split(":") for item in spec.split())


def leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node(a: bytes, b: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + a + b).digest()


def mth(leaves: list[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node(mth(leaves[:k]), mth(leaves[k:]))


def parse(data: bytes, origin: str) -> dict | None:
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=lambda _: 1 / 0)
    except Exception:
        return None
    if not isinstance(value, dict) or set(value) != {"v", "origin", "seq", "prev", "kind", "time", "body"}:
        return None
    if type(value["v"]) is not int or value["v"] != 1 or value["origin"] != origin:
        return None
    if not TYPES["int"](value["seq"]) or not isinstance(value["prev"], str):
        return None
    if not re.fullmatch(r"[0-9a-f]{64}", value["prev"]) or (value["seq"] == 0) != (value["prev"] == ZERO):
        return None
    if not TYPES["time"](value["time"]) or value["kind"] not in KINDS or not isinstance(value["body"], dict):
        return None
    required, optional = (fields(s) for s in KINDS[value["kind"]])
    body = value["body"]
    if not set(required) <= set(body) <= set(required) | set(optional):
        return None
    allowed = {**optional, **required}
    if not all(TYPES[allowed[k]](v) for k, v in body.items()):
        return None
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return value if canonical == data else None


def key_id(name: str, pub: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n\x01" + pub).digest()[:4]


def open_checkpoint(note: str, keys: list[str], origin: str) -> tuple[int, bytes] | None:
    trusted = {}
    for k in keys:
        name, hid, b64 = k.split("+", 2)
        raw = base64.b64decode(b64)
        trusted[(name, bytes.fromhex(hid))] = raw[1:]
    cut = note.rfind("\n\n")
    if cut < 0:
        return None
    text, sigs = note[: cut + 1], note[cut + 2 :]
    if any(ord(c) < 0x20 and c != "\n" for c in text) or not sigs.endswith("\n"):
        return None
    good, seen = 0, set()
    for line in sigs[:-1].split("\n"):
        if not line.startswith("\u2014 "):
            return None
        name, _, b64 = line[2:].partition(" ")
        try:
            raw = base64.b64decode(b64, validate=True)
        except Exception:
            return None
        if len(raw) < 5:
            return None
        pub = trusted.get((name, raw[:4]))
        if pub is None:
            continue
        if (name, raw[:4]) in seen or key_id(name, pub) != raw[:4]:
            return None
        seen.add((name, raw[:4]))
        try:
            Ed25519PublicKey.from_public_bytes(pub).verify(raw[4:], text.encode())
        except InvalidSignature:
            return None
        good += 1
    lines = text[:-1].split("\n")
    if not good or len(lines) < 3 or lines[0] != origin or not re.fullmatch(r"0|[1-9]\d*", lines[1]):
        return None
    try:
        root = base64.b64decode(lines[2], validate=True)
    except Exception:
        return None
    if len(root) != 32 or base64.b64encode(root).decode() != lines[2] or any(not x for x in lines[3:]):
        return None
    return int(lines[1]), root


def verify(
    records: list[bytes], origin: str, notes: list[str], keys: list[str], final: bool = False
) -> tuple[str, int | None] | None:
    """Return (problem class, seq) for the first problem, or None. Logs start at seq 0."""
    cps = []
    for note in notes:
        cp = open_checkpoint(note, keys, origin)
        if cp is None:
            return ("bad_signature", None)
        cps.append(cp)
    for a in cps:
        for b in cps:
            if a[0] == b[0] and a[1] != b[1]:
                return ("inconsistent_checkpoint", None)
    hashes = [leaf(r) for r in records]
    parsed = [parse(r, origin) for r in records]
    n = len(records)
    expected_prev = ZERO
    for p in range(n):
        e = p
        rec = parsed[p]
        nxt = parsed[p + 1] if p + 1 < n else None
        if rec is None:
            if nxt is not None and nxt["seq"] == e and nxt["prev"] == expected_prev:
                return ("fork", e)
            if nxt is not None and nxt["prev"] == hashes[p].hex():
                return ("malformed", e)
            return ("modified", e)
        s, pv = rec["seq"], rec["prev"]
        if s == e and pv == expected_prev:
            expected_prev = hashes[p].hex()
            continue
        if s == e:
            if nxt is not None and nxt["seq"] == e:
                return ("fork", e)
            if nxt is not None and nxt["seq"] == e + 1 and nxt["prev"] == hashes[p].hex():
                return ("modified", e - 1)
            if p + 1 == n:
                sized = [c for c in cps if c[0] == e + 1]
                if sized:
                    alt = hashes[: p + 1]
                    alt[p - 1] = bytes.fromhex(pv)
                    if mth(alt) == sized[0][1]:
                        return ("modified", e - 1)
            return ("modified", e)
        if pv == expected_prev:
            return ("modified", e)
        seqs = [r["seq"] for r in parsed if r is not None]
        if s < e or seqs.count(s) > 1:
            return ("fork", s)
        if any(parsed[q] is not None and parsed[q]["seq"] == e for q in range(p + 1, n)):
            genuine = pv in {h.hex() for h in hashes} or (s == 0 and pv == ZERO)
            return ("reordered" if genuine else "fork", e)
        return ("gap", e)
    covered = sorted({c[0] for c in cps if c[0] <= n})
    matches = {size: all(c[1] == mth(hashes[:size]) for c in cps if c[0] == size) for size in covered}
    for size in covered:
        if matches[size]:
            continue
        if any(ok and other > size for other, ok in matches.items()):
            return ("inconsistent_checkpoint", None)
        if size == n and size > 0:
            return ("modified", n - 1)
        good = max((o for o, ok in matches.items() if ok and o < size), default=0)
        return ("fork", good)
    if any(c[0] > n for c in cps):
        return ("truncated", n)
    open_intents: dict[int, None] = {}
    last_unknown = -1
    for rec in parsed:
        assert rec is not None
        if rec["kind"] == "intent":
            open_intents[rec["seq"]] = None
        elif rec["kind"] in ("outcome", "outcome_unknown"):
            target = rec["body"]["intent_seq"]
            if target not in open_intents:
                return ("malformed", rec["seq"])
            del open_intents[target]
            if rec["kind"] == "outcome_unknown":
                last_unknown = rec["seq"]
    for seq in sorted(open_intents):
        if final or seq < last_unknown:
            return ("orphan_intent", seq)
    return None
