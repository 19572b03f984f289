"""Compiled matchers (globs, regexes, argument paths), built once when a policy is constructed.

Compiling up front is what keeps a decision under the latency budget, and compiling in one place
lets the parser and the model reject the same bad patterns with the same messages.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from typing import Any

_GLOB_META = frozenset("*?[")


class Glob:
    """A case-sensitive shell glob (`*`, `?`, `[...]`); literal patterns compare as plain strings."""

    __slots__ = ("_regex", "literal", "pattern", "prefix")

    def __init__(self, pattern: str) -> None:
        if not isinstance(pattern, str) or not pattern:
            raise ValueError("a glob must be a non-empty string")
        self.pattern = pattern
        # The literal text before the first wildcard: a cheap test that rules out most names.
        self.prefix = pattern[: min((pattern.find(c) for c in "*?[" if c in pattern), default=len(pattern))]
        if not _GLOB_META.intersection(pattern):
            self.literal: str | None = pattern
            self._regex: re.Pattern[str] | None = None
            return
        if _unclosed_bracket(pattern):
            raise ValueError(f"bad glob {pattern!r}: '[' without a closing ']'")
        try:
            self._regex = re.compile(fnmatch.translate(pattern))
        except re.error as exc:
            raise ValueError(f"bad glob {pattern!r}: {exc}") from exc
        self.literal = None

    def match(self, value: str) -> bool:
        if self._regex is None:
            return value == self.literal
        return value.startswith(self.prefix) and self._regex.match(value) is not None


def _unclosed_bracket(pattern: str) -> bool:
    i = 0
    n = len(pattern)
    while i < n:
        if pattern[i] == "[":
            j = i + 1
            if j < n and pattern[j] in "!^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                return True
            i = j
        i += 1
    return False


class GlobSet:
    """Any-of a few globs; knows its literal names so rules can be indexed by them."""

    __slots__ = ("globs", "literals", "matches_all")

    def __init__(self, patterns: Sequence[str]) -> None:
        self.globs = tuple(Glob(p) for p in patterns)
        literals = [g.literal for g in self.globs]
        self.literals: frozenset[str] | None = (
            frozenset(x for x in literals if x is not None) if all(x is not None for x in literals) else None
        )
        self.matches_all = any(g.pattern == "*" for g in self.globs)

    def match(self, value: str) -> bool:
        if self.matches_all:
            return True
        if self.literals is not None:
            return value in self.literals
        return any(g.match(value) for g in self.globs)


def compile_regex(pattern: str) -> re.Pattern[str]:
    """Compile an argument regex: whole-value match, `.` also matches newlines (see docs/policy.md)."""
    if not isinstance(pattern, str):
        raise ValueError("a regex must be a string")
    try:
        return re.compile(pattern, re.DOTALL)
    except re.error as exc:
        raise ValueError(f"bad regex {pattern!r}: {exc}") from exc


def split_path(path: str) -> tuple[str, ...]:
    """Split an argument path `a.b.0` into segments; empty segments are a mistake, not a wildcard."""
    if not isinstance(path, str) or not path:
        raise ValueError("an argument path must be a non-empty string")
    parts = tuple(path.split("."))
    if any(not p for p in parts):
        raise ValueError(f"bad argument path {path!r}: empty segment")
    return parts


class Absent:
    """Marks an argument that is not there (distinct from JSON null)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = Absent()


def lookup(arguments: Mapping[str, Any], segments: tuple[str, ...]) -> Any:
    """Follow a path through objects (by key) and arrays (by decimal index); ABSENT when missing."""
    current: Any = arguments
    for seg in segments:
        if isinstance(current, Mapping):
            if seg not in current:
                return ABSENT
            current = current[seg]
        elif isinstance(current, list | tuple):
            if not seg.isdigit():
                return ABSENT
            i = int(seg)
            if i >= len(current):
                return ABSENT
            current = current[i]
        else:
            return ABSENT
    return current


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: `true` is not `1`, `1` equals `1.0`, containers compare deeply."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return a is None and b is None


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
