"""Pure rules for ids and for namespacing upstream names into one tenant-wide namespace.

Tools and prompts of a prefixed upstream appear as `<upstream>__<name>`; resource URIs and URI
templates as `<upstream>+<uri>` (a valid URI scheme prefix). Upstream names cannot contain `__` or
`+`, so splitting at the first separator is unambiguous.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from gateway.errors import InvalidInput

SEP = "__"
URI_SEP = "+"

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
_UPSTREAM_RE = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){0,39}")


def is_valid_id(value: str) -> bool:
    """Tenant and actor ids: strict ASCII, compared exactly (no case folding, no normalisation)."""
    return value.isascii() and _ID_RE.fullmatch(value) is not None


def check_id(kind: str, value: str) -> str:
    if not is_valid_id(value):
        raise InvalidInput(
            f"Invalid {kind} id {value!r}.",
            hint="Use 1-128 ASCII letters, digits, '.', '_', '@' or '-', starting with a letter or digit.",
        )
    return value


def check_upstream_name(value: str) -> str:
    if not (value.isascii() and _UPSTREAM_RE.fullmatch(value)):
        raise InvalidInput(
            f"Invalid upstream name {value!r}.",
            hint="Use 1-40 lowercase letters, digits and single hyphens, e.g. 'github' or 'files-ro'.",
        )
    return value


def prefixed(upstream: str, name: str) -> str:
    return f"{upstream}{SEP}{name}"


def split_prefixed(name: str) -> tuple[str, str] | None:
    upstream, sep, rest = name.partition(SEP)
    if not sep or not rest or not upstream:
        return None
    return upstream, rest


def prefixed_uri(upstream: str, uri: str) -> str:
    return f"{upstream}{URI_SEP}{uri}"


def split_prefixed_uri(uri: str) -> tuple[str, str] | None:
    upstream, sep, rest = uri.partition(URI_SEP)
    if not sep or not rest or not upstream or ":" in upstream or "/" in upstream:
        return None
    return upstream, rest


def find_collisions(names_by_upstream: dict[str, list[str]], prefix_by_upstream: dict[str, bool]) -> list[str]:
    """Exposed names that two upstreams would both claim (sorted). Pure, used when adding upstreams."""
    owner: dict[str, str] = {}
    clashes: set[str] = set()
    for upstream in sorted(names_by_upstream):
        for name in names_by_upstream[upstream]:
            exposed = prefixed(upstream, name) if prefix_by_upstream.get(upstream, True) else name
            if exposed in owner and owner[exposed] != upstream:
                clashes.add(exposed)
            owner.setdefault(exposed, upstream)
    return sorted(clashes)


def same_id_ignoring_case(wanted: str, known: Iterable[str]) -> str | None:
    """The known id that differs from `wanted` only by ASCII case (ids are unique that way), if any."""
    folded = wanted.lower()
    return next((k for k in known if k != wanted and k.lower() == folded), None)


def closest(wanted: str, known: Iterable[str]) -> str | None:
    """The known name an operator most likely meant: one equal ignoring case, else the closest by
    `difflib` (compared lower-cased, so `ACME` finds `acme`), else None. Pure."""
    names = sorted(set(known))
    twin = same_id_ignoring_case(wanted, names)
    if twin is not None:
        return twin
    by_lower = {n.lower(): n for n in reversed(names)}
    found = difflib.get_close_matches(wanted.lower(), list(by_lower), n=1)
    return by_lower[found[0]] if found else None


def did_you_mean(wanted: str, known: Iterable[str]) -> str | None:
    """`did you mean 'acme'?` for a name that is not there, or None when nothing is close."""
    match = closest(wanted, known)
    return None if match is None else f"did you mean {match!r}?"
