"""Keep secrets out of evidence and logs: keyed digests of values, redacted and bounded previews.

Values are stored only as `hmac-sha256:<hex>` over their RFC 8785 bytes, keyed per tenant (HKDF from a
master secret kept outside the database), so equal values can be searched for without being readable,
and one tenant's digests say nothing about another's. Previews are redacted by key name and by
detectors, then truncated. The credentials the gateway itself injects towards an upstream (header
values, stdio environment values) are known exactly, so they are scrubbed wherever they reappear,
even echoed back inside an answer (`secrets=`).
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Final

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.audit.canonical import JsonValue, canonicalize
from gateway.audit.records import MAX_PREVIEW_CHARS

REDACTED: Final = "[REDACTED]"
DIGEST_PREFIX: Final = "hmac-sha256:"
_HKDF_SALT: Final = b"aegress/audit/value-digest/v1"
MIN_MASTER_SECRET_BYTES: Final = 32

SECRET_KEY_PARTS: Final = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "authorization",
    "x-auth",
    "api_key",
    "apikey",
    "api-key",
    "access_key",
    "private_key",
    "privatekey",
    "credential",
    "cookie",
    "session",
    "signature",
    "bearer",
    "jwt",
)
"""Key-name substrings (case-insensitive) whose values are always redacted."""

_DETECTORS: Final = [
    re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S),
    re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?(?:-----END [A-Z0-9 ]+-----|\Z)", re.S),
    re.compile(r"(?i)\b(?:bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*)?"),  # JWT / JWS
    re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b"),  # AWS access key id
    re.compile(r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{20,}\b|\bgithub_pat_[A-Za-z0-9_]{20,}"),
    re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),  # Slack
    re.compile(r"\baeg_[A-Za-z0-9_-]{8,}"),  # our own tokens
    re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"),  # common LLM provider keys
    re.compile(r"\bAIza[0-9A-Za-z_-]{30,}"),  # Google API keys
    re.compile(r"(?i)\b(?:password|passwd|pwd|secret|token|api[_-]?key)\s*[=:]\s*[^\s&,;\"']+"),
    re.compile(r"(?i)(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"),  # user:password@ in URLs
]
_NEEDLES: Final[tuple[tuple[tuple[str, ...], bool], ...]] = (
    (("-----BEGIN ",), False),
    (("-----BEGIN ",), False),
    (("bearer", "basic", "token"), True),
    (("eyJ",), False),
    (("AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA", "ANVA", "AIPA"), False),
    (("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"), False),
    (("xox",), False),
    (("aeg_",), False),
    (("sk-",), False),
    (("AIza",), False),
    (("=", ":"), False),
    (("://",), False),
)
_GATED: Final = tuple((pattern, needles, folded)
                      for pattern, (needles, folded) in zip(_DETECTORS, _NEEDLES, strict=True))
"""Per detector, substrings one of which every match contains (True: of the lowercased text, and only for
ASCII text: case-insensitive matching also folds a few non-ASCII letters). A detector runs only when one is
there, so short and ordinary text skips the regex calls; what the detectors redact is exactly the same."""
MIN_SECRET_CHARS: Final = 6
"""Injected values shorter than this are not scrubbed: they would blank out ordinary words."""
_CANDIDATE_CHARS: Final = 24
_CANDIDATE: Final = re.compile(rf"[A-Za-z0-9+/=_.~-]{{{_CANDIDATE_CHARS},}}")
_OWN_DIGEST: Final = re.compile(r"(?:sha256|hmac-sha256):[0-9a-f]{64}")


def derive_tenant_key(master_secret: bytes, tenant: str) -> bytes:
    """Per-tenant HMAC key: HKDF-SHA256(master secret, salt fixed, info = tenant id)."""
    if len(master_secret) < MIN_MASTER_SECRET_BYTES:
        raise ValueError(f"master secret must be at least {MIN_MASTER_SECRET_BYTES} bytes")
    if not tenant:
        raise ValueError("tenant id is empty")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=tenant.encode("utf-8"))
    return hkdf.derive(master_secret)


def digest_value(tenant_key: bytes, value: JsonValue) -> str:
    """`hmac-sha256:<hex>` of the value's canonical JSON; what `aegress audit hash` reproduces."""
    return DIGEST_PREFIX + hmac.new(tenant_key, canonicalize(value), hashlib.sha256).hexdigest()


_SECRET_KEY: Final = re.compile("|".join(map(re.escape, SECRET_KEY_PARTS)))


_SECRET_KEY_SEEN: dict[str, bool] = {}
_SECRET_KEY_SEEN_MAX: Final = 4096


def is_secret_key(name: str) -> bool:
    """True when a field name suggests a secret (substring, case-insensitive). Field names repeat from call
    to call, so answers are remembered (a bounded table, emptied when full)."""
    known = _SECRET_KEY_SEEN.get(name)
    if known is None:
        if len(_SECRET_KEY_SEEN) >= _SECRET_KEY_SEEN_MAX:
            _SECRET_KEY_SEEN.clear()
        known = _SECRET_KEY_SEEN[name] = _SECRET_KEY.search(name.lower()) is not None
    return known


def _entropy(text: str) -> float:
    counts = Counter(text)
    total = len(text)
    return -sum(c / total * math.log2(c / total) for c in counts.values())


def _looks_random(token: str) -> bool:
    if _OWN_DIGEST.fullmatch(token):
        return False
    classes = sum(
        (any(c.islower() for c in token), any(c.isupper() for c in token), any(c.isdigit() for c in token))
    )
    return classes >= 2 and _entropy(token) >= 3.5


def secret_values(values: Iterable[str]) -> tuple[str, ...]:
    """Pure: what to scrub for the credentials injected towards one upstream: each value, and for a
    `Scheme credential` value the credential alone; longest first, so a value is replaced whole."""
    found: set[str] = set()
    for value in values:
        value = value.strip()
        for part in (value, value.rpartition(" ")[2]):
            if len(part) >= MIN_SECRET_CHARS:
                found.add(part)
    return tuple(sorted(found, key=lambda v: (-len(v), v)))


def scrub(text: str, secrets: Sequence[str]) -> str:
    """Replace every occurrence of a known secret value (see `secret_values`) with REDACTED."""
    for value in secrets:
        if value in text:
            text = text.replace(value, REDACTED)
    return text


def redact_text(text: str, *, limit: int | None = None, secrets: Sequence[str] = ()) -> str:
    """Replace recognisable secrets in free text (log lines, error messages); optionally truncate."""
    text = scrub(text, secrets)
    for pattern, needles, folded in _GATED:
        haystack = text
        if folded:
            if not text.isascii():
                text = pattern.sub(REDACTED, text)
                continue
            haystack = text.lower()
        for needle in needles:
            if needle in haystack:
                text = pattern.sub(REDACTED, text)
                break
    if len(text) < _CANDIDATE_CHARS:  # neither a random-looking candidate nor a digest to protect fits
        return text if limit is None else truncate(text, limit)
    protected = {m.span() for m in _OWN_DIGEST.finditer(text)}

    def _maybe(match: re.Match[str]) -> str:
        if match.span() in protected or not _looks_random(match.group()):
            return match.group()
        return REDACTED

    text = _CANDIDATE.sub(_maybe, text)
    if limit is not None:
        text = truncate(text, limit)
    return text


def truncate(text: str, limit: int) -> str:
    """Cut to at most `limit` characters, marking the cut with an ellipsis."""
    if limit < 1:
        raise ValueError("limit must be positive")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def redact_value(value: JsonValue, *, secrets: Sequence[str] = (), _depth: int = 0) -> JsonValue:
    """A copy of a JSON value with secret-named fields, known secret values and detected secrets
    replaced by REDACTED."""
    if _depth > 64:
        return REDACTED
    if isinstance(value, dict):
        return {
            scrub(str(k), secrets) if secrets else k:
            REDACTED if is_secret_key(str(k)) else redact_value(v, secrets=secrets, _depth=_depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact_value(v, secrets=secrets, _depth=_depth + 1) for v in value]
    if isinstance(value, str):
        return redact_text(value, secrets=secrets)
    return value


PREVIEW_STRING_CHARS: Final = 4096
"""A string longer than this is cut (at a point no detector's match can cross) before it is redacted."""
PREVIEW_SCAN_CHARS: Final = 65536
"""At most this many characters of one value reach the detectors for its preview; the rest is left out."""
_PREVIEW_OUTPUT_CHARS: Final = 2 * MAX_PREVIEW_CHARS
_UP_TO_SAFE_CUT: Final = re.compile(r".*[\s\"<>{}\[\]|\\`^]", re.S)
"""Up to the last character no detector match spans (whitespace, what a URL's user:password@ cannot hold)."""
_CUT_MARK: Final = "…"
_MAX_PREVIEW_KEYS: Final = _PREVIEW_OUTPUT_CHARS // 5 + 1
"""Each member writes at least `"":0,`: no more of a mapping's members can reach the preview."""


def _cut_string(text: str, secrets: Sequence[str]) -> str:
    """Pure: the first PREVIEW_STRING_CHARS of a long string, backed off to its last safe cut point and
    past any partial known secret, so no secret half cut off by the clip escapes the detectors."""
    head = text[:PREVIEW_STRING_CHARS]
    last = _UP_TO_SAFE_CUT.match(head)
    head = last.group() if last is not None else ""
    for value in secrets:
        if not head or head[-1] not in value:  # the head ends in a cut character: only such a secret can straddle
            continue
        for k in range(min(len(value) - 1, len(head)), 0, -1):
            if head.endswith(value[:k]):
                head = head[:-k]
                break
    return head + _CUT_MARK


class _Budget:
    """How much output the preview has produced and how many characters the detectors have seen."""

    def __init__(self) -> None:
        self.output = 0
        self.scanned = 0

    def spent(self) -> bool:
        return self.output >= _PREVIEW_OUTPUT_CHARS or self.scanned >= PREVIEW_SCAN_CHARS


def _preview_walk(value: JsonValue, secrets: Sequence[str], budget: _Budget, depth: int) -> JsonValue:
    """Redact `value` in the order its JSON text is written (sorted keys), stopping once the budget is
    spent: what follows could never reach the preview's first MAX_PREVIEW_CHARS characters."""
    if depth > 64:
        budget.output += len(REDACTED) + 2
        return REDACTED
    if isinstance(value, dict):
        budget.output += 2
        keyed = {(scrub(str(k), secrets) if secrets else k): (k, v) for k, v in value.items()}
        out: dict[str, JsonValue] = {}
        order = sorted(keyed, key=str) if len(keyed) <= _MAX_PREVIEW_KEYS else heapq.nsmallest(
            _MAX_PREVIEW_KEYS, keyed, key=str)  # json.dumps sorts them too
        for key in order:
            if budget.spent():
                break
            budget.output += len(str(key)) + 4
            original, item = keyed[key]
            if is_secret_key(str(original)):
                budget.output += len(REDACTED) + 2
                out[key] = REDACTED
            else:
                out[key] = _preview_walk(item, secrets, budget, depth + 1)
        return out
    if isinstance(value, list):
        budget.output += 2
        items: list[JsonValue] = []
        for item in value:
            if budget.spent():
                break
            items.append(_preview_walk(item, secrets, budget, depth + 1))
            budget.output += 1
        return items
    if isinstance(value, str):
        text = value if len(value) <= PREVIEW_STRING_CHARS else _cut_string(value, secrets)
        budget.scanned += len(text)
        redacted = redact_text(text, secrets=secrets)
        budget.output += len(redacted) + 2
        return redacted
    if value is None or value is True or value is False or type(value) is int:
        budget.output += len("null" if value is None else "true" if value is True else "false" if value is False
                             else str(value))
    else:
        budget.output += len(json.dumps(value, default=str))
    return value


def redact_preview_value(value: JsonValue, *, secrets: Sequence[str] = ()) -> tuple[JsonValue, int]:
    """Pure: the redacted part of `value` a preview shows, and how many characters the detectors ran
    over (at most about PREVIEW_SCAN_CHARS + PREVIEW_STRING_CHARS, whatever the value's size).

    For a value whose strings are at most PREVIEW_STRING_CHARS long, the preview made from it equals
    that of the whole redacted value; a longer string is cut before redaction and marked with `…`.
    """
    budget = _Budget()
    return _preview_walk(value, secrets, budget, 0), budget.scanned


def _compact(value: JsonValue) -> str:
    """Compact JSON text with sorted keys and raw UTF-8 (orjson; json for what orjson refuses, such as
    integers past 64 bits or non-string keys)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str).decode()
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True, default=str)


def redact_preview(value: JsonValue, *, limit: int = MAX_PREVIEW_CHARS, secrets: Sequence[str] = ()) -> str:
    """Redacted, compact JSON text of a value, at most `limit` characters: the `*_preview` fields.
    Work is bounded by the preview, not the value: see `redact_preview_value`."""
    shown, _ = redact_preview_value(value, secrets=secrets)
    text = _compact(shown)
    if secrets:  # a secret split across escaped JSON text (a quote, a backslash) is caught here as well
        text = scrub(text, [_compact(v)[1:-1] for v in secrets])
    return truncate(text, min(limit, MAX_PREVIEW_CHARS))
