"""Map key paths of a TOML document to line numbers, so errors can point at the offending line.

tomllib gives values but no positions. This scanner walks the structure of text that tomllib has
already accepted (headers, keys, inline tables, arrays) and skips over scalar values. A path is a
tuple of keys and array indices: ("rules", 2, "verdict").
"""

from __future__ import annotations

import bisect
import tomllib

Path = tuple[str | int, ...]
_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def key_lines(text: str) -> dict[Path, int]:
    """Line (1-based) of every key, table header and array element; {} if the scan fails."""
    scanner = _Scanner(text)
    try:
        scanner.document()
    except (IndexError, ValueError, tomllib.TOMLDecodeError):
        return scanner.positions_as_lines()
    return scanner.positions_as_lines()


class _Scanner:
    def __init__(self, text: str) -> None:
        self.t = text
        self.i = 0
        self.positions: dict[Path, int] = {}
        self.aot: dict[Path, int] = {}
        self._newlines = [k for k, ch in enumerate(text) if ch == "\n"]

    def positions_as_lines(self) -> dict[Path, int]:
        return {p: bisect.bisect_left(self._newlines, pos) + 1 for p, pos in self.positions.items()}

    def record(self, path: Path, pos: int) -> None:
        self.positions.setdefault(path, pos)

    def eof(self) -> bool:
        return self.i >= len(self.t)

    def skip_blank(self, newlines: bool) -> None:
        t = self.t
        while self.i < len(t):
            ch = t[self.i]
            if ch in " \t\r" or (newlines and ch == "\n"):
                self.i += 1
            elif ch == "#":
                while self.i < len(t) and t[self.i] != "\n":
                    self.i += 1
            else:
                return

    def document(self) -> None:
        table: Path = ()
        while True:
            self.skip_blank(newlines=True)
            if self.eof():
                return
            start = self.i
            if self.t.startswith("[[", self.i):
                self.i += 2
                key = self.key()
                self.skip_blank(newlines=False)
                self.i += 2
                base = (*self.resolve(key[:-1]), key[-1])
                index = self.aot.get(base, -1) + 1
                self.aot[base] = index
                table = (*base, index)
                self.record(base, start)
                self.record(table, start)
            elif self.t[self.i] == "[":
                self.i += 1
                key = self.key()
                self.skip_blank(newlines=False)
                self.i += 1
                table = self.resolve(key)
                self.record(table, start)
            else:
                self.keyval(table)

    def resolve(self, key: tuple[str, ...]) -> Path:
        path: Path = ()
        for seg in key:
            path = (*path, seg)
            if path in self.aot:
                path = (*path, self.aot[path])
        return path

    def key(self) -> tuple[str, ...]:
        parts: list[str] = []
        while True:
            self.skip_blank(newlines=False)
            ch = self.t[self.i]
            if ch in "\"'":
                start = self.i
                self.string()
                raw = self.t[start:self.i]
                parts.append(tomllib.loads(f"k = {raw}")["k"])
            else:
                start = self.i
                while self.i < len(self.t) and self.t[self.i] in _BARE:
                    self.i += 1
                if start == self.i:
                    raise ValueError("expected a key")
                parts.append(self.t[start:self.i])
            self.skip_blank(newlines=False)
            if self.i < len(self.t) and self.t[self.i] == ".":
                self.i += 1
                continue
            return tuple(parts)

    def keyval(self, prefix: Path) -> None:
        start = self.i
        key = self.key()
        for k in range(1, len(key)):
            self.record(prefix + key[:k], start)
        path = prefix + key
        self.record(path, start)
        self.skip_blank(newlines=False)
        if self.t[self.i] != "=":
            raise ValueError("expected '='")
        self.i += 1
        self.skip_blank(newlines=False)
        self.value(path)

    def value(self, path: Path) -> None:
        t = self.t
        ch = t[self.i]
        if ch == "{":
            self.i += 1
            while True:
                self.skip_blank(newlines=True)
                if t[self.i] == "}":
                    self.i += 1
                    return
                if t[self.i] == ",":
                    self.i += 1
                    continue
                self.keyval(path)
        elif ch == "[":
            self.i += 1
            n = 0
            while True:
                self.skip_blank(newlines=True)
                if t[self.i] == "]":
                    self.i += 1
                    return
                if t[self.i] == ",":
                    self.i += 1
                    continue
                self.record((*path, n), self.i)
                self.value((*path, n))
                n += 1
        elif ch in "\"'":
            self.string()
        else:
            while self.i < len(t) and t[self.i] not in ",]}\n#":
                self.i += 1

    def string(self) -> None:
        t = self.t
        quote = t[self.i]
        if t.startswith(quote * 3, self.i):
            end = t.index(quote * 3, self.i + 3)
            if quote == '"':
                while t[end - 1] == "\\" and _escaped(t, end - 1):
                    end = t.index(quote * 3, end + 1)
            self.i = end + 3
            while self.i < len(t) and t[self.i] == quote:
                self.i += 1
            return
        self.i += 1
        while t[self.i] != quote:
            if quote == '"' and t[self.i] == "\\":
                self.i += 1
            self.i += 1
        self.i += 1


def _escaped(t: str, pos: int) -> bool:
    """Whether the backslash run ending at pos escapes the next character (odd length)."""
    n = 0
    while pos >= 0 and t[pos] == "\\":
        n += 1
        pos -= 1
    return n % 2 == 1
