"""The `--dry-run` preview: a unified diff of a client file, with other secrets masked.

The context lines around our entry belong to the user's other servers and may hold their API keys;
a preview must not print them. Our own lines never hold a secret, only env references. Masking is
a heuristic (secret-named keys, `Bearer xyz`, long token-shaped strings); it errs towards `***`.
"""

from __future__ import annotations

import difflib
import re

_STRING = r'"(?:[^"\\]|\\.)*"|\'[^\'\n]*\''
# `"key": "value"` (JSON) or `key = "value"` (TOML), several per line.
_PAIR_RE = re.compile(rf"(?P<key>{_STRING}|[A-Za-z0-9_.-]+)(?P<sep>\s*[:=]\s*)(?P<value>{_STRING})")
_BARE_STRING_RE = re.compile(_STRING)
_SECRET_KEY_RE = re.compile(r"token|secret|passw|api[-_]?key|auth|bearer|cookie|credential|private", re.I)
_ENV_NAME_KEY_RE = re.compile(r"_env_var$|^env_http_headers$", re.I)
# Values that only point at a secret are safe (and useful) to show.
_REFERENCE_RE = re.compile(r"^(?:Bearer )?\$\{?(?:env:|input:)?[A-Za-z_][A-Za-z0-9_.-]*\}?$")
_CREDENTIAL_RE = re.compile(r"^(?:(?:Bearer|Basic|Token)\s+\S+|[A-Za-z0-9_\-+=]{24,}|[A-Za-z0-9_\-+/=]{40,})$")


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
    lines = list(lines)
    # A user's line that only gained a comma (our entry follows it) shows as removed and re-added:
    # it is theirs, not ours, so it is masked like context.
    removed = {_bare(line[1:]) for line in lines if line.startswith("-") and not line.startswith("---")}
    out = []
    for line in lines:
        if line.startswith("+") and not line.startswith("+++") and _bare(line[1:]) in removed:
            line = "+" + redact_line(" " + line[1:])[1:]
        elif not line.startswith(("---", "+++", "@@")):
            line = redact_line(line)
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


def _bare(text: str) -> str:
    return text.strip().rstrip(",").rstrip()


def redact_line(line: str) -> str:
    """Mask secret-looking string values; on our own added lines, only secret-named keys."""
    ours = line.startswith("+")

    def key_rule(match: re.Match[str]) -> str:
        key = match.group("key").strip("\"'")
        value = match.group("value")
        if _ENV_NAME_KEY_RE.search(key) or not _looks_secret(value, by_shape=not ours, key=key):
            return match.group(0)
        return f"{match.group('key')}{match.group('sep')}{value[0]}***{value[0]}"

    masked = _PAIR_RE.sub(key_rule, line)
    if ours:
        return masked
    # Strings outside `key: value` pairs (array items such as `--api-key`, `sk-...`).
    return _BARE_STRING_RE.sub(
        lambda m: f"{m.group(0)[0]}***{m.group(0)[0]}" if _looks_secret(m.group(0), by_shape=True) else m.group(0),
        masked,
    )


def _looks_secret(quoted: str, *, by_shape: bool, key: str = "") -> bool:
    value = quoted[1:-1]
    if value == "***" or _REFERENCE_RE.match(value):
        return False
    if key and _SECRET_KEY_RE.search(key):
        return True
    return by_shape and _CREDENTIAL_RE.match(value) is not None
