"""Codex: `$CODEX_HOME/config.toml` (default `~/.codex/config.toml`), table `[mcp_servers.NAME]`.

Tenant and actor ride in the URL as `tenantId`/`actorId` query parameters (Codex keeps the query
on every request); the token comes from `bearer_token_env_var`. Codex silently ignores unknown
keys, so we write only known ones. Edits go through tomlkit so the user's comments, key order and
other tables survive; a new entry is appended as its own table at the end of the file.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import PurePath
from typing import Any
from urllib.parse import quote, unquote_plus

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import InlineTable, Table

from gateway.clients.headers import oauth_headers
from gateway.clients.model import (
    ACTOR_HEADER,
    TENANT_HEADER,
    TOKEN_ENV,
    Entry,
    EntryRequest,
    Host,
    MalformedConfig,
    Scope,
    check_scope,
    validate_name,
)
from gateway.errors import ConfigError

KNOWN_KEYS = (
    "url",
    "bearer_token_env_var",
    "http_headers",
    "env_http_headers",
    "enabled",
    "startup_timeout_sec",
    "tool_timeout_sec",
)
# stdio transport keys: a stale one beside our `url` would make the entry ambiguous.
_STALE_KEYS = ("command", "args", "env", "env_vars", "cwd")
_HEADER_TABLES = ("http_headers", "env_http_headers")
_OWNED_HEADERS = frozenset({"authorization", TENANT_HEADER.lower(), ACTOR_HEADER.lower()})
_ID_PARAMS = ("tenantId", "actorId")
_AT_RE = re.compile(r"at line (\d+), column (\d+)")


def codex_url(url: str, tenant: str, actor: str) -> str:
    """`url` with our tenantId/actorId query params (replacing old ones, keeping any others)."""
    base, _, query = url.partition("?")
    parts = [p for p in query.split("&") if p and p.split("=", 1)[0] not in _ID_PARAMS]
    parts += [f"tenantId={quote(tenant, safe='')}", f"actorId={quote(actor, safe='')}"]
    return f"{base}?{'&'.join(parts)}"


def split_codex_url(url: str) -> tuple[str, str | None, str | None]:
    """(url without our params, tenant, actor), decoding as the gateway will."""
    base, sep, query = url.partition("?")
    found: dict[str, str] = {}
    rest = []
    for part in query.split("&") if sep else []:
        key, _, value = part.partition("=")
        if key in _ID_PARAMS:
            found[key] = unquote_plus(value)
        elif part:
            rest.append(part)
    plain = f"{base}?{'&'.join(rest)}" if rest else base
    return plain, found.get("tenantId"), found.get("actorId")


class Codex:
    name = "codex"
    title = "Codex"
    scopes: tuple[Scope, ...] = ("user",)

    def config_path(self, host: Host, scope: Scope) -> PurePath:
        check_scope(self, scope)
        codex_home = host.env.get("CODEX_HOME")
        return (PurePath(codex_home) if codex_home else host.home / ".codex") / "config.toml"

    def new_file_mode(self, scope: Scope) -> int:
        return 0o600

    def render_entry(self, request: EntryRequest, scope: Scope) -> dict[str, Any]:
        if request.oauth:  # `codex mcp login NAME` signs in; the claims ride as static headers
            return {"url": request.url, "http_headers": oauth_headers(request.tenant, request.actor)}
        return {
            "url": codex_url(request.url, request.tenant, request.actor),
            "bearer_token_env_var": TOKEN_ENV,
        }

    def snippet(self, request: EntryRequest, scope: Scope) -> str:
        table = tomlkit.table()
        for key, value in self.render_entry(request, scope).items():
            table[key] = value
        servers = tomlkit.table(is_super_table=True)
        servers[request.name] = table
        doc = tomlkit.document()
        doc["mcp_servers"] = servers
        return tomlkit.dumps(doc)

    def merge(self, existing: str | None, request: EntryRequest, scope: Scope, *, source: str = "config file") -> str:
        check_scope(self, scope)
        entry = self.render_entry(request, scope)
        doc = _parse(existing, source)
        if existing is None or doc is None:
            return self.snippet(request, scope)
        servers = _servers(doc, source)
        current = None if servers is None else servers.get(request.name)
        if current is None:
            if isinstance(servers, InlineTable):
                servers[request.name] = tomlkit.inline_table()
                servers[request.name].update(entry)
                out = tomlkit.dumps(doc)
            else:
                out = _append_table(existing, self.snippet(request, scope))
        elif isinstance(current, (Table, InlineTable)):
            _update(current, entry)
            out = tomlkit.dumps(doc)
        else:
            raise MalformedConfig(source, f"mcp_servers.{request.name} is not a table")
        _verify(out, request.name, entry, source)
        return out

    def remove(self, existing: str | None, name: str, *, source: str = "config file") -> str | None:
        validate_name(name)
        doc = _parse(existing, source)
        if existing is None or doc is None:
            return existing
        servers = _servers(doc, source)
        if servers is None or name not in servers:
            return existing
        del servers[name]
        out = tomlkit.dumps(doc)
        if out.endswith("\n\n") and not existing.endswith("\n\n"):
            out = out.rstrip("\n") + "\n"  # drop the blank line that set our table apart
        return out

    def read_entries(self, existing: str | None, *, source: str = "config file") -> list[Entry]:
        if _parse(existing, source) is None or existing is None:
            return []
        servers = tomllib.loads(existing).get("mcp_servers")
        if not isinstance(servers, dict):
            return []
        found = []
        for name, data in servers.items():
            if not isinstance(data, dict) or not isinstance(data.get("url"), str):
                continue
            url, tenant, actor = split_codex_url(data["url"])
            headers = data.get("http_headers")
            tenant = tenant if tenant is not None else _header(headers, TENANT_HEADER)
            actor = actor if actor is not None else _header(headers, ACTOR_HEADER)
            token_env = data.get("bearer_token_env_var")
            if tenant is None and actor is None and token_env != TOKEN_ENV:
                continue
            token_env = token_env if isinstance(token_env, str) else None
            found.append(Entry(name, url, tenant, actor, token_env=token_env))
        return found


def _parse(existing: str | None, source: str) -> tomlkit.TOMLDocument | None:
    """tomllib (strict, spec-exact) decides validity; tomlkit (round-trip) does the editing."""
    if existing is None or existing.strip() == "":
        return None
    try:
        tomllib.loads(existing)
        return tomlkit.parse(existing)
    except tomllib.TOMLDecodeError as exc:
        at = _AT_RE.search(str(exc))
        problem = str(exc).split(" (at ", 1)[0]
        line, col = (int(at.group(1)), int(at.group(2))) if at else (None, None)
        raise MalformedConfig(source, f"not valid TOML ({problem})", line=line, column=col) from None
    except TOMLKitError as exc:
        line = getattr(exc, "line", None)
        raise MalformedConfig(source, "not valid TOML", line=line, column=getattr(exc, "col", None)) from None


def _servers(doc: tomlkit.TOMLDocument, source: str) -> Any:
    servers = doc.get("mcp_servers")
    if servers is not None and not hasattr(servers, "keys"):
        raise MalformedConfig(source, "mcp_servers is not a table")
    return servers


def _header(headers: Any, name: str) -> str | None:
    if not isinstance(headers, dict):
        return None
    return next((v for k, v in headers.items() if str(k).lower() == name.lower() and isinstance(v, str)), None)


def _update(table: Any, entry: dict[str, Any]) -> None:
    """Set our keys in place (untouched when already equal), drop stale transport keys and any
    Authorization / X-Aegress-* header we did not set (it would contradict `bearer_token_env_var`, or
    in OAuth mode the sign-in). Our `http_headers` are merged into the user's."""
    ours = {str(k).lower() for k in entry.get("http_headers", {})}
    for key, value in entry.items():
        current = table.get(key)
        if key == "http_headers" and current is not None and hasattr(current, "keys"):
            for name, header_value in value.items():
                if current.get(name) != header_value:
                    current[name] = header_value
        elif current != value:
            table[key] = value
    stale = _STALE_KEYS if "bearer_token_env_var" in entry else (*_STALE_KEYS, "bearer_token_env_var")
    for key in stale:
        if key in table:
            del table[key]
    for key in _HEADER_TABLES:
        headers = table.get(key)
        if headers is None or not hasattr(headers, "keys"):
            continue
        for name in [n for n in list(headers) if str(n).lower() in _OWNED_HEADERS - ours]:
            del headers[name]
        if not headers:
            del table[key]


def _append_table(existing: str, table_text: str) -> str:
    """A new `[mcp_servers.NAME]` table at the end, after one blank line."""
    body = existing if existing.endswith("\n") else existing + "\n"
    if not body.endswith("\n\n"):
        body += "\n"
    return body + table_text


def _verify(out: str, name: str, entry: dict[str, Any], source: str) -> None:
    """Never hand back TOML a strict parser rejects or that lost our values."""
    try:
        got = tomllib.loads(out)["mcp_servers"][name]
    except (tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"could not add the entry to {source} without breaking it",
            hint="Add the [mcp_servers] table by hand, or move the file aside and retry.",
        ) from exc
    for key, value in entry.items():
        have = got.get(key)
        fits = {**have, **value} == have if isinstance(value, dict) and isinstance(have, dict) else have == value
        if not fits:
            raise ConfigError(f"could not update the entry in {source} reliably")


CLIENT = Codex()
