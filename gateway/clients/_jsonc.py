"""A JSON / JSONC reader that remembers where every value sits, and text edits built on it.

Why not `json.loads` + `json.dumps`: re-serialising would drop the comments VS Code and Gemini
allow, and reformat every other server in the user's file. Here we parse to a tree of spans and
splice only the bytes of our own entry, so everything else stays byte-for-byte as it was.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_NUMBER_RE = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_WS = " \t\n\r"
# The stdlib's own JSON string decoder (exact escapes, rejects raw control chars); untyped upstream.
_scanstring: Callable[[str, int, bool], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
_MAX_DEPTH = 256


class JsonSyntaxError(ValueError):
    """Where and why the text is not (our dialect of) JSON; mapped to MalformedConfig by callers."""

    def __init__(self, problem: str, text: str, pos: int) -> None:
        self.problem = problem
        self.line = text.count("\n", 0, pos) + 1
        self.column = pos - (text.rfind("\n", 0, pos) + 1) + 1
        super().__init__(f"line {self.line}, column {self.column}: {problem}")


@dataclass
class Node:
    start: int
    end: int


@dataclass
class Scalar(Node):
    value: Any


@dataclass
class Array(Node):
    items: list[Node]


@dataclass
class Member:
    key: str
    key_start: int
    value: Node
    comma: int | None  # index of the ',' after the value, if any


@dataclass
class Object(Node):
    members: list[Member]

    def find(self, key: str) -> list[Member]:
        return [m for m in self.members if m.key == key]


@dataclass(frozen=True)
class Dialect:
    comments: bool = False
    trailing_commas: bool = False


STRICT = Dialect()


class _Parser:
    def __init__(self, text: str, dialect: Dialect) -> None:
        self.text = text
        self.dialect = dialect
        self.pos = 0

    def fail(self, problem: str, pos: int | None = None) -> JsonSyntaxError:
        return JsonSyntaxError(problem, self.text, self.pos if pos is None else pos)

    def skip(self) -> None:
        text, n = self.text, len(self.text)
        while self.pos < n:
            ch = text[self.pos]
            if ch in _WS:
                self.pos += 1
            elif ch == "/" and text.startswith(("//", "/*"), self.pos):
                if not self.dialect.comments:
                    raise self.fail("comments are not allowed in this file")
                if text.startswith("//", self.pos):
                    end = text.find("\n", self.pos)
                    self.pos = n if end < 0 else end
                else:
                    end = text.find("*/", self.pos + 2)
                    if end < 0:
                        raise self.fail("unterminated /* comment")
                    self.pos = end + 2
            else:
                return

    def value(self, depth: int) -> Node:
        if depth > _MAX_DEPTH:
            raise self.fail("nested too deeply")
        self.skip()
        if self.pos >= len(self.text):
            raise self.fail("unexpected end of file")
        ch = self.text[self.pos]
        if ch == "{":
            return self.object(depth)
        if ch == "[":
            return self.array(depth)
        if ch == '"':
            return self._string_node(self.pos)
        for word, val in (("true", True), ("false", False), ("null", None)):
            if self.text.startswith(word, self.pos):
                start = self.pos
                self.pos += len(word)
                return Scalar(start, self.pos, val)
        match = _NUMBER_RE.match(self.text, self.pos)
        if match:
            self.pos = match.end()
            return Scalar(match.start(), match.end(), json.loads(match.group()))
        raise self.fail("expected a value")

    def _string_node(self, start: int) -> Scalar:
        value = self.string()
        return Scalar(start, self.pos, value)

    def string(self) -> str:
        try:
            value, end = _scanstring(self.text, self.pos + 1, True)
        except json.JSONDecodeError as exc:
            raise self.fail(f"bad string ({exc.msg})", exc.pos) from None
        self.pos = end
        return value

    def object(self, depth: int) -> Object:
        start = self.pos
        self.pos += 1
        members: list[Member] = []
        while True:
            self.skip()
            if self.text.startswith("}", self.pos):
                if members and members[-1].comma is not None and not self.dialect.trailing_commas:
                    raise self.fail("trailing comma is not allowed", members[-1].comma)
                self.pos += 1
                return Object(start, self.pos, members)
            if members and members[-1].comma is None:
                raise self.fail("expected ',' or '}'")
            if not self.text.startswith('"', self.pos):
                raise self.fail("expected a double-quoted key or '}'")
            key_start = self.pos
            key = self.string()
            self.skip()
            if not self.text.startswith(":", self.pos):
                raise self.fail("expected ':' after key")
            self.pos += 1
            value = self.value(depth + 1)
            self.skip()
            comma = None
            if self.text.startswith(",", self.pos):
                comma = self.pos
                self.pos += 1
            members.append(Member(key, key_start, value, comma))

    def array(self, depth: int) -> Array:
        start = self.pos
        self.pos += 1
        items: list[Node] = []
        comma_after_last: int | None = None
        while True:
            self.skip()
            if self.text.startswith("]", self.pos):
                if comma_after_last is not None and not self.dialect.trailing_commas:
                    raise self.fail("trailing comma is not allowed", comma_after_last)
                self.pos += 1
                return Array(start, self.pos, items)
            if items and comma_after_last is None:
                raise self.fail("expected ',' or ']'")
            items.append(self.value(depth + 1))
            self.skip()
            comma_after_last = None
            if self.text.startswith(",", self.pos):
                comma_after_last = self.pos
                self.pos += 1


def parse(text: str, dialect: Dialect = STRICT) -> Object:
    """Parse a document whose top level must be an object; raises JsonSyntaxError."""
    parser = _Parser(text, dialect)
    if text.startswith("\ufeff"):
        parser.pos = 1
    parser.skip()
    if not text.startswith("{", parser.pos):
        raise parser.fail("the top level must be a JSON object")
    root = parser.object(0)
    parser.skip()
    if parser.pos != len(text):
        raise parser.fail("unexpected text after the top-level object")
    return root


def to_python(node: Node) -> Any:
    """Plain Python data; a repeated key keeps its last value, as JavaScript's JSON.parse does."""
    if isinstance(node, Object):
        return {m.key: to_python(m.value) for m in node.members}
    if isinstance(node, Array):
        return [to_python(item) for item in node.items]
    assert isinstance(node, Scalar)
    return node.value


# ---- text edits -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Edit:
    start: int
    end: int
    text: str


def apply(text: str, edits: list[Edit]) -> str:
    """Apply non-overlapping edits; insertions at one position land in list order."""
    ordered = sorted(enumerate(edits), key=lambda ie: (ie[1].start, ie[1].end, ie[0]), reverse=True)
    for _, edit in ordered:
        text = text[: edit.start] + edit.text + text[edit.end :]
    return text


def dumps(value: Any, unit: str, base: str) -> str:
    """JSON for `value` laid out like the file: indent `unit`, continuation lines at `base`."""
    return json.dumps(value, indent=unit, ensure_ascii=False).replace("\n", "\n" + base)


def inline_dumps(value: Any, sample: str) -> str:
    """One-line JSON, spaced like `sample` (the surrounding text): minified stays minified."""
    separators = (", ", ": ") if _spaced(sample) else (",", ":")
    return json.dumps(value, ensure_ascii=False, separators=separators)


def _spaced(sample: str) -> bool:
    """Whether the text puts a space after ',' / ':' (or has none to judge by)."""
    return re.search(r"[,:] ", sample) is not None or re.search(r"[,:]", sample) is None


def _line_start(text: str, pos: int) -> int:
    return text.rfind("\n", 0, pos) + 1


def line_indent(text: str, pos: int) -> str:
    start = _line_start(text, pos)
    end = start
    while end < len(text) and text[end] in " \t":
        end += 1
    return text[start:end]


def _own_line(text: str, pos: int) -> bool:
    """True when only indentation precedes `pos` on its line."""
    return text[_line_start(text, pos) : pos].strip(" \t") == ""


def indent_unit(text: str, root: Object) -> str:
    """The file's indent step, from the first member of the top-level object; two spaces if none."""
    if root.members and _own_line(text, root.members[0].key_start):
        own = line_indent(text, root.members[0].key_start)
        outer = line_indent(text, root.start)
        if own.startswith(outer) and len(own) > len(outer):
            return own[len(outer) :]
    return "  "


def _end_of_line_after(text: str, pos: int) -> int:
    """Skip spaces and a trailing // comment so an insertion lands after them, before the newline."""
    n = len(text)
    while pos < n and text[pos] in " \t":
        pos += 1
    if text.startswith("//", pos):
        end = text.find("\n", pos)
        return n if end < 0 else end
    return pos


def insert_member(text: str, obj: Object, key: str, value: Any, unit: str) -> list[Edit]:
    """Edits that add `"key": value` as the last member of `obj`, in the object's own layout."""
    key_json = json.dumps(key, ensure_ascii=False)
    close_indent = line_indent(text, obj.start)
    if not obj.members:
        indent = close_indent + unit
        member = f"{key_json}: {dumps(value, unit, indent)}"
        inner = text[obj.start + 1 : obj.end - 1]
        if inner.strip(_WS) == "":
            return [Edit(obj.start, obj.end, "{\n" + indent + member + "\n" + close_indent + "}")]
        return [Edit(obj.start + 1, obj.start + 1, "\n" + indent + member)]  # keep the comments
    first, last = obj.members[0], obj.members[-1]
    multiline = "\n" in text[obj.start : first.key_start] and _own_line(text, first.key_start)
    if not multiline:
        sample = text[obj.start : obj.end]
        space = " " if _spaced(sample) else ""
        member = f"{key_json}:{space}{inline_dumps(value, sample)}"
        if last.comma is not None:
            return [Edit(last.comma + 1, last.comma + 1, f"{space}{member},")]
        return [Edit(last.value.end, last.value.end, f",{space}{member}")]
    indent = line_indent(text, first.key_start)
    member = f"{key_json}: {dumps(value, unit, indent)}"
    if last.comma is not None:
        at = _end_of_line_after(text, last.comma + 1)
        return [Edit(at, at, f"\n{indent}{member},")]
    at = _end_of_line_after(text, last.value.end)
    return [Edit(last.value.end, last.value.end, ","), Edit(at, at, f"\n{indent}{member}")]


def replace_value(text: str, member: Member, value: Any, unit: str) -> list[Edit]:
    """Edits that swap `member`'s value for `value`, indented to the member's own line."""
    if not _own_line(text, member.key_start):  # a one-line (e.g. minified) file stays one line
        sample = text[member.value.start : member.value.end]
        return [Edit(member.value.start, member.value.end, inline_dumps(value, sample))]
    base = line_indent(text, member.key_start)
    return [Edit(member.value.start, member.value.end, dumps(value, unit, base))]


def remove_member(text: str, obj: Object, member: Member) -> list[Edit]:
    """Edits that delete `member` from `obj`, its line, and the comma that would dangle."""
    index = next(i for i, m in enumerate(obj.members) if m is member)
    start = member.key_start
    end = member.comma + 1 if member.comma is not None else member.value.end
    around = text[obj.start + 1 : start] + text[end : obj.end - 1]
    if len(obj.members) == 1 and around.strip(_WS) == "":  # no comments to keep: plain `{}`
        return [Edit(obj.start, obj.end, "{}")]
    after = end
    while after < len(text) and text[after] in " \t":
        after += 1
    prev_comma = obj.members[index - 1].comma if index > 0 else None
    dangling = index == len(obj.members) - 1 and member.comma is None and prev_comma is not None
    if _own_line(text, start) and (after == len(text) or text[after] in "\r\n"):
        # The member has its own line(s): delete them whole, and a comma it leaves dangling.
        edits = [Edit(_line_start(text, start), text.find("\n", after) + 1 or len(text), "")]
        if dangling and prev_comma is not None:
            edits.append(Edit(prev_comma, prev_comma + 1, ""))
        return edits
    if dangling and prev_comma is not None:
        return [Edit(prev_comma, end, "")]  # `, "name": {...}` at the end of a one-line object
    return [Edit(start, after, "")]  # `"name": {...}, ` before the next member
