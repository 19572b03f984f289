"""Merge, remove and read for the clients whose config is a JSON object of named servers.

Each JSON client module subclasses `JsonClient` and supplies only what differs: where the file
lives, which container key holds the servers, its JSON dialect, the entry it renders, and how to
recognise an aegress entry when reading back.
"""

from __future__ import annotations

import json
from pathlib import PurePath
from typing import Any

from gateway.clients import _jsonc
from gateway.clients.model import (
    ACTOR_HEADER,
    TENANT_HEADER,
    Entry,
    EntryRequest,
    Host,
    MalformedConfig,
    Scope,
    check_scope,
    validate_name,
)

# Keys that decide how a client reaches a server: ours to set, stale ones dropped on update (an old
# stdio `command` next to our `url` would confuse the client). Anything else the user put in the
# entry (timeouts, trust flags, disabled, alwaysAllow...) is kept.
TRANSPORT_KEYS = frozenset({"type", "url", "serverUrl", "httpUrl", "headers", "headersHelper", "command", "args"})
# Header names we own, compared case-insensitively; the user's other headers survive an update.
OWNED_HEADERS = frozenset({"authorization", TENANT_HEADER.lower(), ACTOR_HEADER.lower()})


def merge_entry(old: dict[str, Any], new: dict[str, Any], owned: frozenset[str]) -> dict[str, Any]:
    """Our keys take their new values in their old positions; stale owned keys go; others stay."""
    result: dict[str, Any] = {}
    for key, value in old.items():
        if key == "headers" and isinstance(value, dict):
            headers = _merge_headers(value, new.get("headers", {}))
            if headers:
                result[key] = headers
        elif key in new:
            result[key] = new[key]
        elif key not in owned:
            result[key] = value
    for key, value in new.items():
        result.setdefault(key, value)
    return result


def _merge_headers(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in old.items():
        if key in new:
            result[key] = new[key]
        elif key.lower() not in OWNED_HEADERS:
            result[key] = value
    for key, value in new.items():
        result.setdefault(key, value)
    return result


def header(headers: Any, name: str) -> str | None:
    """Case-insensitive lookup in a headers object read from a file (which may be anything)."""
    if not isinstance(headers, dict):
        return None
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name.lower() and isinstance(value, str):
            return value
    return None


def env_reference(value: str | None, prefix: str, suffix: str) -> str | None:
    """The env var named in `Bearer ${VAR}`-style values, or None."""
    if value is None:
        return None
    body = value.removeprefix("Bearer ").strip()
    if body.startswith(prefix) and body.endswith(suffix):
        return body[len(prefix) : len(body) - len(suffix)] or None
    return None


class JsonClient:
    """Shared behaviour; subclasses set the class attributes and the three hooks below."""

    name: str = ""
    title: str = ""
    scopes: tuple[Scope, ...] = ("user", "project")
    container: str = "mcpServers"
    dialect: _jsonc.Dialect = _jsonc.STRICT
    owned: frozenset[str] = TRANSPORT_KEYS

    # ---- hooks ----------------------------------------------------------------------------------

    def paths(self, host: Host) -> dict[Scope, PurePath]:
        raise NotImplementedError

    def render_entry(self, request: EntryRequest, scope: Scope) -> dict[str, Any]:
        raise NotImplementedError

    def entry_from(self, name: str, data: dict[str, Any]) -> Entry | None:
        """An `Entry` if this server entry points at aegress, else None."""
        raise NotImplementedError

    # ---- shared ---------------------------------------------------------------------------------

    def config_path(self, host: Host, scope: Scope) -> PurePath:
        check_scope(self, scope)
        return self.paths(host)[scope]

    def new_file_mode(self, scope: Scope) -> int:
        return 0o600 if scope == "user" else 0o644

    def snippet(self, request: EntryRequest, scope: Scope) -> str:
        entry = self.render_entry(request, scope)
        return json.dumps({self.container: {request.name: entry}}, indent=2, ensure_ascii=False) + "\n"

    def merge(self, existing: str | None, request: EntryRequest, scope: Scope, *, source: str = "config file") -> str:
        check_scope(self, scope)
        entry = self.render_entry(request, scope)
        root = self._parse(existing, source)
        if existing is None or root is None:
            return self.snippet(request, scope)
        unit = _jsonc.indent_unit(existing, root)
        servers = self._container(existing, root, source)
        if servers is None:
            edits = _jsonc.insert_member(existing, root, self.container, {request.name: entry}, unit)
            return _jsonc.apply(existing, edits)
        member = self._one(existing, servers, request.name, source)
        if member is None:
            return _jsonc.apply(existing, _jsonc.insert_member(existing, servers, request.name, entry, unit))
        old = _jsonc.to_python(member.value)
        if not isinstance(old, dict):
            raise self._shape(existing, member.value, f'the "{request.name}" entry is not an object', source)
        new = merge_entry(old, entry, self.owned)
        if json.dumps(new, ensure_ascii=False) == json.dumps(old, ensure_ascii=False):
            return existing  # already right: leave even its formatting alone
        return _jsonc.apply(existing, _jsonc.replace_value(existing, member, new, unit))

    def remove(self, existing: str | None, name: str, *, source: str = "config file") -> str | None:
        validate_name(name)
        root = self._parse(existing, source)
        if existing is None or root is None:
            return existing
        servers = self._container(existing, root, source)
        member = None if servers is None else self._one(existing, servers, name, source)
        if servers is None or member is None:
            return existing
        return _jsonc.apply(existing, _jsonc.remove_member(existing, servers, member))

    def read_entries(self, existing: str | None, *, source: str = "config file") -> list[Entry]:
        root = self._parse(existing, source)
        if existing is None or root is None:
            return []
        servers = self._container(existing, root, source)
        if servers is None:
            return []
        found = []
        for name, data in _jsonc.to_python(servers).items():
            entry = self.entry_from(name, data) if isinstance(data, dict) else None
            if entry is not None:
                found.append(entry)
        return found

    # ---- internals ------------------------------------------------------------------------------

    def _parse(self, existing: str | None, source: str) -> _jsonc.Object | None:
        """The parsed top level; None for a missing or blank file (an empty file holds nothing)."""
        if existing is None or existing.strip(" \t\r\n\ufeff") == "":
            return None
        try:
            return _jsonc.parse(existing, self.dialect)
        except _jsonc.JsonSyntaxError as exc:
            raise MalformedConfig(source, f"not valid JSON ({exc.problem})", line=exc.line, column=exc.column) from None

    def _container(self, text: str, root: _jsonc.Object, source: str) -> _jsonc.Object | None:
        member = self._one(text, root, self.container, source)
        if member is None:
            return None
        if not isinstance(member.value, _jsonc.Object):
            raise self._shape(text, member.value, f'"{self.container}" is not an object', source)
        return member.value

    def _one(self, text: str, obj: _jsonc.Object, key: str, source: str) -> _jsonc.Member | None:
        found = obj.find(key)
        if len(found) > 1:
            raise self._shape(text, found[1].value, f'the key "{key}" appears more than once', source)
        return found[0] if found else None

    @staticmethod
    def _shape(text: str, node: _jsonc.Node, problem: str, source: str) -> MalformedConfig:
        err = _jsonc.JsonSyntaxError(problem, text, node.start)
        return MalformedConfig(source, problem, line=err.line, column=err.column)
