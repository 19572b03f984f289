"""The vocabulary every client module shares: what to point a client at, where its files live,
what we read back, and the one error for a file we refuse to touch.

No token appears here on purpose: `EntryRequest` has no field that could carry one, so no render
or merge function can write a secret into a file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Literal, Protocol

from gateway.errors import ConfigError, InvalidInput, UsageError

Scope = Literal["user", "project"]

TOKEN_ENV = "AEGRESS_MCP_GATEWAY_TOKEN"
TENANT_ENV = "AEGRESS_TENANT_ID"
ACTOR_ENV = "AEGRESS_ACTOR_ID"
TENANT_HEADER = "X-Aegress-Tenant-Id"
ACTOR_HEADER = "X-Aegress-Actor-Id"
DEFAULT_NAME = "aegress"

# VS Code's schema is the strictest of the clients (`^[a-zA-Z][a-zA-Z0-9_-]*$`); one rule for all
# keeps a name valid everywhere and free of TOML/JSON quoting questions.
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_MAX_ID = 256


class MalformedConfig(ConfigError):
    """An existing client file does not parse (or has the wrong shape): we refuse and touch nothing.

    Messages never quote the file's content, which may hold other servers' secrets.
    """

    code = "config-malformed"

    def __init__(
        self,
        source: str,
        problem: str,
        *,
        line: int | None = None,
        column: int | None = None,
        hint: str | None = None,
    ) -> None:
        where = ""
        if line is not None:
            where = f"line {line}, column {column}: " if column is not None else f"line {line}: "
        super().__init__(
            f"{source} cannot be edited safely: {where}{problem}",
            hint=hint
            or "Fix the file by hand (or move it aside) and run the command again; "
            "Aegress never rewrites a file it cannot parse.",
        )
        self.source = source
        self.line = line
        self.column = column


@dataclass(frozen=True)
class Host:
    """Where a client's files live on this machine, passed in so path logic stays pure."""

    home: PurePath
    project: PurePath
    env: Mapping[str, str] = field(default_factory=dict)
    platform: str = "linux"  # a `sys.platform` value


def _check_text(what: str, value: str, *, allow_dollar: bool = False) -> None:
    """Reject what a client would mangle: control chars (header injection), `$` (env expansion)."""
    if not value:
        raise InvalidInput(f"{what} must not be empty")
    if len(value) > _MAX_ID * 8:
        raise InvalidInput(f"{what} is too long")
    if _CONTROL_RE.search(value):
        raise InvalidInput(f"{what} must not contain control characters such as newlines")
    if value != value.strip():
        raise InvalidInput(f"{what} must not start or end with whitespace")
    if not allow_dollar and "$" in value:
        raise InvalidInput(
            f"{what} must not contain '$'",
            hint="Clients expand $VAR and ${VAR} in these values; percent-encode it in a URL.",
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{what} is not valid Unicode text") from exc


@dataclass(frozen=True)
class EntryRequest:
    """What one client entry should point at. Deliberately holds no token.

    `oauth`: the gateway runs in OAuth mode (MCP_AUTH_MODE=oauth). The entry then carries no credential
    at all, not even a reference: the client signs in itself (MCP authorization). The tenant (and the
    actor, when given; "" leaves it out) still go as binding claims, which the gateway checks against
    whoever signed in, and by which `client list` recognises the entry."""

    url: str
    tenant: str
    actor: str
    name: str = DEFAULT_NAME
    # argv prefix that runs the aegress CLI (`headersHelper`, `aegress bridge`); the CLI may pass
    # an absolute path because GUI clients start with a minimal PATH.
    aegress_command: tuple[str, ...] = ("aegress",)
    oauth: bool = False

    def __post_init__(self) -> None:
        validate_name(self.name)
        _check_text("URL", self.url)
        if not re.match(r"https?://[^/?#\s]+", self.url):
            raise InvalidInput(
                "URL must start with http:// or https:// and name a host",
                hint="For example http://127.0.0.1:8765/mcp",
            )
        if "#" in self.url or " " in self.url:
            raise InvalidInput("URL must not contain spaces or a #fragment")
        for what, value in (("tenant", self.tenant), ("actor", self.actor)):
            if what == "actor" and self.oauth and value == "":
                continue  # OAuth mode: whoever signs in is the actor
            _check_text(what, value)
            if len(value) > _MAX_ID:
                raise InvalidInput(f"{what} is longer than {_MAX_ID} characters")
        if not self.aegress_command:
            raise InvalidInput("aegress command must not be empty")
        for part in self.aegress_command:
            _check_text("aegress command", part, allow_dollar=True)


def validate_name(name: str) -> None:
    """Entry names become JSON keys and TOML table names in every client: keep them plain."""
    if not _NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"entry name {name!r} is not allowed",
            hint="Use a letter followed by letters, digits, '-' or '_' (at most 64).",
        )


@dataclass(frozen=True)
class Entry:
    """An aegress entry found in a client file, for `client list` and `client doctor`."""

    name: str
    url: str | None
    tenant: str | None
    actor: str | None
    token_env: str | None = None  # env var the client reads the token from, if any
    helper: str | None = None  # command that supplies credentials (headersHelper, bridge)


class ClientSpec(Protocol):
    """One coding agent's config family. Everything but `config_path` works on text only."""

    name: str
    title: str
    scopes: tuple[Scope, ...]

    def config_path(self, host: Host, scope: Scope) -> PurePath:
        """The file this client reads for `scope`."""
        ...

    def new_file_mode(self, scope: Scope) -> int:
        """Mode for a file we create: 0600 where it could hold secrets."""
        ...

    def render_entry(self, request: EntryRequest, scope: Scope) -> dict[str, Any]:
        """Our entry as plain data (what merge writes under the entry name)."""
        ...

    def snippet(self, request: EntryRequest, scope: Scope) -> str:
        """A self-contained config text holding only our entry, for printing."""
        ...

    def merge(self, existing: str | None, request: EntryRequest, scope: Scope, *, source: str = ...) -> str:
        """Existing file text (None if absent) with our entry added or updated in place."""
        ...

    def remove(self, existing: str | None, name: str, *, source: str = ...) -> str | None:
        """Existing text without entry `name` (unchanged if absent; None if no file)."""
        ...

    def read_entries(self, existing: str | None, *, source: str = ...) -> list[Entry]:
        """The entries in the text that point at an aegress gateway."""
        ...


def check_scope(spec: ClientSpec, scope: Scope) -> None:
    """Refuse a scope the client has no file for, naming the ones it has."""
    if scope not in spec.scopes:
        allowed = ", ".join(spec.scopes) or "none (it prints a snippet)"
        raise UsageError(
            f"{spec.name} has no {scope}-scope config",
            hint=f"Scopes for {spec.name}: {allowed}.",
        )
