"""RFC 8785 (JCS) canonical JSON: the exact bytes that are hashed, stored and verified.

Writing uses the `rfc8785` package (a complete JCS implementation). Checking stored bytes uses a fast
path: for JSON without floats and with ASCII-only text, Python's `json.dumps(sort_keys=True,
separators=(",", ":"), ensure_ascii=False)` produces exactly the JCS bytes (same escapes, same key order),
so only other inputs pay for the slower full implementation.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import rfc8785

from gateway.audit.errors import InvalidRecord

JsonValue = Any
"""A JSON value: dict with str keys, list, str, int, bool or None (floats are refused in records)."""

MAX_SAFE_INTEGER = 2**53 - 1


def _plain(value: JsonValue) -> bool:
    """True when orjson's sorted compact output is exactly JCS: no floats, safe ints, ASCII keys.

    (For such values both sort keys the same way and escape strings identically: `"`, `\\`, the short
    control escapes and `\\u00xx` in lowercase hex, everything else raw UTF-8.) A loop over a stack, not
    recursion: this runs for every sealed record and every digest, on the request path."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is dict:
            if depth >= 200:
                return False
            for key, sub in item.items():
                if type(key) is not str or not key.isascii():
                    return False
                sub_kind = type(sub)
                if sub_kind is dict or sub_kind is list:
                    stack.append((sub, depth + 1))
                elif sub_kind is int:
                    if not -MAX_SAFE_INTEGER <= sub <= MAX_SAFE_INTEGER:
                        return False
                elif not (isinstance(sub, str) or sub is None or sub is True or sub is False):
                    return False
        elif kind is list:
            if depth >= 200:
                return False
            stack.extend((sub, depth + 1) for sub in item)
        elif kind is int:
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                return False
        elif not (isinstance(item, str) or item is None or item is True or item is False):
            return False
    return True


def canonicalize(value: JsonValue) -> bytes:
    """Return the RFC 8785 bytes of `value`; refuse what JCS cannot represent exactly.

    Values without floats and with ASCII keys take a fast path (orjson, sorted keys); everything else goes
    through the complete `rfc8785` implementation.
    """
    if _plain(value):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except (orjson.JSONEncodeError, TypeError):
            pass
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise InvalidRecord(
            f"value cannot be canonicalised as RFC 8785 JSON: {type(exc).__name__}",
            hint="use only JSON types; integers must be within ±(2**53-1); no NaN or Infinity",
        ) from exc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-JSON constant {name}")


def _fast_dumps(value: JsonValue) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def parse_canonical(data: bytes) -> JsonValue:
    """Parse `data` and return its value only if `data` is exactly its own canonical form.

    Raises InvalidRecord for invalid UTF-8 or JSON, NaN/Infinity, duplicate keys, or any byte that a
    canonicaliser would have written differently (whitespace, key order, escapes, number form).
    """
    has_float = False

    def _float(text: str) -> float:
        nonlocal has_float
        has_float = True
        return float(text)

    def _int(text: str) -> int:
        number = int(text)
        if -MAX_SAFE_INTEGER <= number <= MAX_SAFE_INTEGER:
            return number
        raise ValueError("integer outside the I-JSON safe range")

    try:
        value = json.loads(data, parse_float=_float, parse_int=_int, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidRecord("record bytes are not valid UTF-8 JSON") from exc
    if not has_float and data.isascii():
        ok = _fast_dumps(value) == data
    else:
        try:
            ok = rfc8785.dumps(value) == data
        except (rfc8785.CanonicalizationError, TypeError, ValueError):
            ok = False
    if not ok:
        raise InvalidRecord("record bytes are not in RFC 8785 canonical form")
    return value


def is_canonical(data: bytes) -> bool:
    """True when `data` is valid JSON written exactly as RFC 8785 would write it."""
    try:
        parse_canonical(data)
    except InvalidRecord:
        return False
    return True
