"""The `--dry-run` preview: a unified diff of a client file, with other secrets masked.

The context lines around our entry belong to the user's other servers and may hold their API keys;
a preview must not print them. Our own lines never hold a secret, only env references.
"""

from __future__ import annotations

import difflib
import re

# A key that names a secret, then `:` (JSON) or `=` (TOML), then the value to mask.
_SECRET_RE = re.compile(
    r"""^(?P<head>[+\- ]\s*"?[^"=:]*"""
    r"""(?:token|secret|password|passwd|api[-_]?key|auth|bearer|cookie|credential)"""
    r"""[^"=:]*"?\s*[:=]\s*)(?P<value>.+?)(?P<tail>,?\s*)$""",
    re.IGNORECASE,
)
# Values that only point at a secret are safe (and useful) to show.
_REFERENCE_RE = re.compile(r"^\"?(?:Bearer )?\$\{?(?:env:)?[A-Za-z_][A-Za-z0-9_]*\}?\"?$")
_ENV_NAME_KEY_RE = re.compile(r"_env_var\"?\s*[:=]|env_http_headers", re.IGNORECASE)


def unified_diff(old: str | None, new: str | None, path: str, *, context: int = 3) -> str:
    """Diff from `old` to `new` (None = no file); empty string when nothing would change."""
    if old == new:
        return ""
    lines = difflib.unified_diff(
        (old or "").splitlines(keepends=True),
        (new or "").splitlines(keepends=True),
        fromfile="/dev/null" if old is None else f"a/{path}",
        tofile="/dev/null" if new is None else f"b/{path}",
        n=context,
    )
    out = []
    for line in lines:
        if not line.endswith("\n"):
            line += "\n\\ No newline at end of file\n"
        out.append(line if line.startswith(("---", "+++", "@@")) else redact_line(line))
    return "".join(out)


def redact_line(line: str) -> str:
    """Mask the value of a secret-looking key unless it is only an env reference."""
    body, newline = (line[:-1], "\n") if line.endswith("\n") else (line, "")
    first, sep, rest = body.partition("\n")  # keep a "\ No newline" marker intact
    match = _SECRET_RE.match(first)
    if not match or _ENV_NAME_KEY_RE.search(first):
        return line
    value = match.group("value").strip()
    if value in ("{", "[", "{}", "[]") or _REFERENCE_RE.match(value):
        return line
    quote = '"' if match.group("value").startswith('"') else ""
    masked = f"{match.group('head')}{quote}***{quote}{match.group('tail')}"
    return masked + sep + rest + newline
