"""Operator actions on tenants, actors, tokens and upstreams: the library the CLI is a shell over.

Each function takes the store (and what else it needs) explicitly and returns plain records; time
comes in as `now` so callers and tests control it.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway import naming, netguard, signals
from gateway.errors import InvalidInput, NotFound, UpstreamError
from gateway.secrets import derive_key, mint_id, mint_token, token_hash
from gateway.store.base import Store
from gateway.types import Actor, Tenant, TokenInfo, UpstreamLimits, UpstreamSpec

if TYPE_CHECKING:
    from gateway.sealed_change import SealedChange


def now_iso(timespec: str = "seconds") -> str:
    """The current UTC time in ISO 8601: seconds for stored objects, `milliseconds` for a call's start."""
    return datetime.now(UTC).isoformat(timespec=timespec)


# Sealing a change needs the evidence stack (records, canonical JSON, signing keys: cryptography).
# Only the functions that change something import it, so read-only commands (`actor list`,
# `tenant show`) start without it.
def sealed_change(store: Store) -> AbstractContextManager[SealedChange]:
    from gateway.sealed_change import sealed_change

    return sealed_change(store)


def operator_name() -> str:
    from gateway.evidence.events import operator_name

    return operator_name()


# -- tenants ---------------------------------------------------------------------------------------
def create_tenant(store: Store, tenant_id: str, now: str, by: str | None = None) -> Tenant:
    """Create a tenant; the creation is sealed in the tenant's log in the same transaction."""
    naming.check_id("tenant", tenant_id)
    with sealed_change(store) as change:
        tenant = store.create_tenant(tenant_id, now)
        change.operator_change(tenant_id, "tenant_created", tenant_id, by or operator_name())
    return tenant


def delete_tenant(store: Store, tenant_id: str, by: str | None = None) -> None:
    """Delete a tenant with its actors, tokens, upstreams and policy state; its evidence log stays, and
    records the deletion (same transaction)."""
    with sealed_change(store) as change:
        store.delete_tenant(tenant_id)
        change.operator_change(tenant_id, "tenant_deleted", tenant_id, by or operator_name())
    # committed: the gateways end what the tenant's tokens hold open and drop its upstreams now
    signals.announce(store, signals.TOKEN_REVOKED, signals.token_revoked(tenant_id))
    signals.announce(store, signals.UPSTREAMS_CHANGED, signals.tenant_changed(tenant_id))


def _hint(wanted: str, known: list[str], otherwise: str) -> str:
    """`did you mean 'x'? <otherwise>` when a known name is close, else just `otherwise`.

    Operator-side only: the suggestion may be any tenant's id, which the operator may see (`tenant
    list`) but a gateway client must not, so the require_* helpers are never used on the wire."""
    near = naming.did_you_mean(wanted, known)
    return f"{near} {otherwise}" if near else otherwise


def require_tenant(store: Store, tenant_id: str) -> Tenant:
    """The tenant, or NotFound naming it (with the closest existing id as a hint)."""
    tenant = store.get_tenant(tenant_id)
    if tenant is None:
        raise NotFound(f"No tenant {tenant_id!r}.", hint=_hint(tenant_id, [t.id for t in store.list_tenants()],
                                                                 "List tenants with `aegress tenant list`."))
    return tenant


def require_log_tenant(store: Store, tenant_id: str) -> None:
    """For evidence commands: a tenant that exists, `security`, or a deleted tenant whose records are kept."""
    from gateway.store.base import EvidenceFilter

    if tenant_id == "security" or store.get_tenant(tenant_id) is not None:
        return
    if store.query_evidence(EvidenceFilter(tenant=tenant_id), limit=1):
        return
    raise NotFound(f"No tenant {tenant_id!r}, and no evidence of one.",
                   hint=_hint(tenant_id, [t.id for t in store.list_tenants()] + ["security"],
                              "List tenants with `aegress tenant list`."))


def require_log_actor(store: Store, tenant_id: str, actor_id: str) -> None:
    """For evidence filters: an actor that exists (in `tenant_id`, or in any tenant when it is empty) or
    that evidence records name (removed actors' records are kept)."""
    from gateway.store.base import EvidenceFilter

    tenants = [tenant_id] if tenant_id else [t.id for t in store.list_tenants()]
    if any(store.get_actor(t, actor_id) is not None for t in tenants):
        return
    if store.query_evidence(EvidenceFilter(tenant=tenant_id, actor=actor_id), limit=1):
        return
    known = sorted({a.id for t in tenants for a in store.list_actors(t)})
    where = f" in tenant {tenant_id!r}" if tenant_id else ""
    raise NotFound(f"No actor {actor_id!r}{where}, and no evidence of one.",
                   hint=_hint(actor_id, known, "List actors with `aegress actor list --tenant TENANT`."))


def describe_tenant(store: Store, tenant_id: str) -> dict[str, Any]:
    tenant = require_tenant(store, tenant_id)
    tokens = store.list_tokens(tenant_id)
    return {
        "id": tenant.id,
        "created_at": tenant.created_at,
        "actors": [a.id for a in store.list_actors(tenant_id)],
        "upstreams": [u.name for u in store.list_upstreams(tenant_id)],
        "tokens_active": sum(1 for t in tokens if t.active),
        "tokens_revoked": sum(1 for t in tokens if not t.active),
    }


def require_log_filters(store: Store, tenant_id: str = "", actor_id: str = "") -> None:
    """`audit query|tail` filters: each one given must name something that exists or left evidence, so a
    typo is an error instead of an empty result (an existing tenant with no records still lists none)."""
    if tenant_id:
        require_log_tenant(store, tenant_id)
    if actor_id:
        require_log_actor(store, tenant_id, actor_id)


# -- actors ----------------------------------------------------------------------------------------
def add_actor(store: Store, tenant_id: str, actor_id: str, now: str, by: str | None = None) -> Actor:
    require_tenant(store, tenant_id)
    naming.check_id("actor", actor_id)
    with sealed_change(store) as change:
        actor = store.add_actor(tenant_id, actor_id, now)
        change.operator_change(tenant_id, "actor_added", actor_id, by or operator_name())
    return actor


def remove_actor(store: Store, tenant_id: str, actor_id: str, by: str | None = None) -> None:
    """Remove an actor and its tokens (sealed in the same transaction)."""
    require_tenant(store, tenant_id)
    with sealed_change(store) as change:
        store.remove_actor(tenant_id, actor_id)
        change.operator_change(tenant_id, "actor_removed", actor_id, by or operator_name())
    signals.announce(store, signals.TOKEN_REVOKED, signals.token_revoked(tenant_id, actor=actor_id))


def require_actor(store: Store, tenant_id: str, actor_id: str) -> Actor:
    require_tenant(store, tenant_id)
    actor = store.get_actor(tenant_id, actor_id)
    if actor is None:
        raise NotFound(
            f"No actor {actor_id!r} in tenant {tenant_id!r}.",
            hint=_hint(actor_id, [a.id for a in store.list_actors(tenant_id)],
                       f"Add it with `aegress actor add --tenant {tenant_id} {actor_id}`."),
        )
    return actor


def require_any_actor(store: Store, actor_id: str) -> None:
    """For filters without a tenant (`token list --actor`): the actor exists in some tenant."""
    tenants = [t.id for t in store.list_tenants()]
    if any(store.get_actor(t, actor_id) is not None for t in tenants):
        return
    known = sorted({a.id for t in tenants for a in store.list_actors(t)})
    raise NotFound(f"No actor {actor_id!r} in any tenant.",
                   hint=_hint(actor_id, known, "List actors with `aegress actor list --tenant TENANT`."))


# -- tokens ----------------------------------------------------------------------------------------
def issue_token(store: Store, master_key: bytes, tenant_id: str, actor_id: str, now: str,
                label: str = "", by: str | None = None) -> tuple[TokenInfo, str]:
    """Mint a token; the store keeps only its keyed hash. The caller shows the token once. The issue is
    sealed (token id and actor, never the token) in the same transaction."""
    require_actor(store, tenant_id, actor_id)
    token = mint_token()
    info = TokenInfo(id=mint_id("tok_"), tenant_id=tenant_id, actor_id=actor_id, created_at=now, label=label)
    with sealed_change(store) as change:
        store.add_token(info, token_hash(derive_key(master_key, "token-hash"), token))
        change.operator_change(tenant_id, "token_issued", info.id, by or operator_name(), subject_actor=actor_id)
    return info, token


def require_token(store: Store, token_id: str) -> TokenInfo:
    """The token's record (never the token itself), or NotFound with the closest token id as a hint."""
    info = store.get_token(token_id)
    if info is None:
        raise NotFound(f"No token {token_id!r}.", hint=_hint(token_id, [t.id for t in store.list_tokens()],
                                                               "List tokens with `aegress token list`."))
    return info


def revoke_token(store: Store, token_id: str, now: str, by: str | None = None) -> TokenInfo:
    """Revoke a token; the revocation and its `token_revoked` record commit together (revoking a revoked
    token changes nothing and records nothing)."""
    with sealed_change(store) as change:
        before = store.get_token(token_id)
        info = store.revoke_token(token_id, now)
        if before is not None and before.active:
            change.seal(info.tenant_id, "token_revoked", {"token_id": info.id, "actor": by or operator_name()})
    if before is not None and before.active:  # committed: the gateways end what the token holds open now
        signals.announce(store, signals.TOKEN_REVOKED, signals.token_revoked(info.tenant_id, token_id=info.id))
    return info


# -- upstreams -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ProbeResult:
    server_name: str
    protocol_version: str
    tools: list[dict[str, Any]]


def parse_headers(pairs: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not name or any(c in name for c in " \t\r\n:"):
            raise InvalidInput(f"Bad header {name or pair!r}.", hint="Use --header NAME=VALUE (or NAME=keyring:KEY).")
        if name.lower() in ("host", "content-length", "transfer-encoding", "connection"):
            raise InvalidInput(f"Header {name!r} is set by the gateway itself.")
        if "\n" in value or "\r" in value:
            raise InvalidInput(f"Header {name!r} has a line break in its value.")
        headers[name] = value
    return headers


def parse_env(pairs: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name or not name.replace("_", "a").isalnum():
            raise InvalidInput(f"Bad environment entry {pair!r}.", hint="Use --env NAME=VALUE.")
        env[name] = value
    return env


def make_upstream_spec(
    tenant_id: str,
    name: str,
    *,
    command: list[str] | None,
    url: str | None,
    headers: dict[str, str],
    env: dict[str, str],
    cwd: str | None,
    prefix: bool,
    allow_private: bool,
    now: str,
    limits: UpstreamLimits | None = None,
) -> UpstreamSpec:
    naming.check_upstream_name(name)
    limits = check_limits(limits or UpstreamLimits())
    if bool(command) == bool(url):
        raise InvalidInput("Give exactly one of --command or --url.", hint="See `aegress upstream add --help`.")
    if command:
        if len(command) == 1 and " " in command[0]:
            command = shlex.split(command[0])  # a quoted command line, split like a shell would (no shell runs)
        if headers:
            raise InvalidInput("--header applies to --url upstreams only.", hint="Use --env for stdio upstreams.")
        return UpstreamSpec(tenant_id, name, "stdio", command=tuple(command), env=env, cwd=cwd, prefix=prefix,
                            allow_private=allow_private, created_at=now, limits=limits)
    assert url is not None
    if env:
        raise InvalidInput("--env applies to --command upstreams only.")
    netguard.check_url(url, netguard.resolve(url), allow_private=allow_private)
    return UpstreamSpec(tenant_id, name, "http", url=url, headers=headers, prefix=prefix,
                        allow_private=allow_private, created_at=now, limits=limits)


MIN_MESSAGE_BYTES = 1024


def check_limits(limits: UpstreamLimits) -> UpstreamLimits:
    """Pure: refuse limits that cannot work (a timeout that is not a positive number, a tiny size)."""
    for name in ("connect_timeout_s", "init_timeout_s", "call_timeout_s", "idle_timeout_s"):
        value = getattr(limits, name)
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            flag = "--" + name.removesuffix("_s").replace("_", "-")
            raise InvalidInput(f"{flag} must be a positive number of seconds, not {value!r}.")
    if limits.max_message_bytes < MIN_MESSAGE_BYTES:
        raise InvalidInput(f"--max-message-bytes must be at least {MIN_MESSAGE_BYTES}.")
    return limits


def limits_view(limits: UpstreamLimits) -> dict[str, int | float | bool]:
    """Every limit's effective value, for `upstream show` / `list --json`."""
    return {f.name: getattr(limits, f.name) for f in dataclasses.fields(limits)}


def set_upstream_limits(store: Store, tenant_id: str, name: str, changes: dict[str, Any]) -> UpstreamSpec:
    """Change some of an upstream's limits; a running gateway picks them up within a second."""
    spec = require_upstream(store, tenant_id, name)
    if not changes:
        raise InvalidInput("Nothing to change.", hint="See `aegress upstream set --help` for the settings.")
    updated = dataclasses.replace(spec, limits=check_limits(dataclasses.replace(spec.limits, **changes)))
    change_upstream(store, updated, lambda: store.update_upstream(updated))  # sealed with the change
    return updated


async def probe(spec: UpstreamSpec, timeout: float = 30.0, *, registered: bool = False,
                on_stderr: Callable[[str], None] | None = None) -> ProbeResult:
    """Connect as the gateway would, initialize, list every tool, disconnect.

    When it fails, the error carries the last lines the upstream wrote to stderr (a stdio server says
    there why it did not start) and a hint for the operator's state: `registered` says whether the
    upstream is saved already (`upstream test`) or not (`upstream add`, which saved nothing). `on_stderr`
    sees each stderr line as it comes, so a slow start (an `npx` download) can be shown."""
    import asyncio

    from gateway.jsonrpc import LATEST_LEGACY
    from gateway.proxy import Upstream, list_all
    from gateway.upstreams import connect

    conn = connect(spec, protocol_version=LATEST_LEGACY, capabilities={},
                   timeout=min(timeout, spec.limits.call_timeout_s))
    if on_stderr is not None and hasattr(conn, "on_stderr"):
        conn.on_stderr = on_stderr
    failure: UpstreamError
    try:
        await asyncio.wait_for(conn.start(), timeout)
        tools: list[dict[str, Any]] = []
        if "tools" in conn.capabilities:
            tools = await list_all(Upstream(spec, conn), "tools/list", "tools")
        info = conn.init_result.get("serverInfo") or {}
        return ProbeResult(str(info.get("name", "")), str(conn.init_result.get("protocolVersion", "")), tools)
    except TimeoutError as exc:
        failure, cause = UpstreamError(f"Upstream {spec.name!r} did not initialize within {timeout:g} s.",
                                       code="upstream-timeout"), exc
    except UpstreamError as exc:
        failure, cause = exc, exc
    finally:
        await conn.close()
    if hasattr(conn, "wait_exited"):
        await conn.wait_exited()  # a stdio child's exit status and last stderr lines
    raise _probe_failure(spec, failure, conn, timeout, registered) from cause


def _probe_failure(spec: UpstreamSpec, exc: UpstreamError, conn: Any, timeout: float,
                   registered: bool) -> UpstreamError:
    """The probe's error with the upstream's own stderr and a hint naming commands that work from here."""
    lines = [exc.message]
    status = getattr(conn, "exit_status", None)
    if status is not None and not (isinstance(status, int) and status < 0):  # < 0: we stopped it
        lines[0] += f" Its process exited with status {status}."
    tail = list(getattr(conn, "stderr_tail", ()))
    if tail:
        lines.append(f"Its stderr (last {len(tail)} line(s)):")
        lines += [f"  | {line}" for line in tail]
    elif status is not None:
        lines.append("It wrote nothing to stderr.")
    timed_out = exc.code == "upstream-timeout"
    where = f"--tenant {spec.tenant_id} {spec.name}"
    if registered:
        what = "command" if spec.command else "URL or headers"
        fix = (f"When it works, `aegress upstream test {where}` checks it again; to change its {what}, "
               f"`aegress upstream remove {where} --yes` and add it again.")
    else:
        fix = (f"Nothing was saved. Fix it and run the same `aegress upstream add` again; or save it unchecked with "
               f"--no-probe and check it later with `aegress upstream test {where}`.")
    if timed_out:
        slow = (f"A first `npx`/`uvx` run downloads the server: wait for it with --timeout {max(120, 4 * timeout):g}, "
                "or run the command once by hand. " if spec.command else "")
        hint = f"{slow}{fix}"
    elif spec.url and ("HTTP 401" in exc.message or "HTTP 403" in exc.message):
        hint = (f"It wants credentials: keep them with `aegress upstream secret set {spec.name}-token` and pass "
                f"--header 'Authorization=keyring:{spec.name}-token'. {fix}")
    elif spec.transport == "stdio" and exc.message.startswith("Cannot start"):
        hint = (f"Check that {spec.command[0] if spec.command else 'the program'!r} is installed and on the PATH "
                f"(or give its absolute path). {fix}")
    else:
        hint = f"{exc.hint + ' ' if exc.hint else ''}{fix}"
    return UpstreamError("\n".join(lines), hint=hint, code=exc.code)


def require_upstream(store: Store, tenant_id: str, name: str) -> UpstreamSpec:
    """The tenant's upstream, or NotFound naming the tenant or the upstream that is missing."""
    require_tenant(store, tenant_id)
    spec = store.get_upstream(tenant_id, name)
    if spec is None:
        raise NotFound(f"No upstream {name!r} in tenant {tenant_id!r}.",
                       hint=_hint(name, [u.name for u in store.list_upstreams(tenant_id)],
                                  f"See `aegress upstream list --tenant {tenant_id}`."))
    return spec


def add_upstream(store: Store, spec: UpstreamSpec, probed: ProbeResult | None) -> list[str]:
    """Register an upstream, refusing any exposed name that would collide with another upstream's."""
    require_tenant(store, spec.tenant_id)
    if store.get_upstream(spec.tenant_id, spec.name) is not None:
        from gateway.errors import AlreadyExists

        raise AlreadyExists(
            f"Upstream {spec.name!r} already exists in tenant {spec.tenant_id!r}.",
            hint="Remove it first with `aegress upstream remove`, or pick another name.",
        )
    existing = store.list_upstreams(spec.tenant_id)
    names = store.get_upstream_tools(spec.tenant_id)
    tool_names = [str(t.get("name")) for t in probed.tools] if probed else []
    names[spec.name] = tool_names
    prefixes = {u.name: u.prefix for u in existing} | {spec.name: spec.prefix}
    clashes = naming.find_collisions(names, prefixes)
    if clashes:
        raise InvalidInput(
            f"Tool names would collide: {', '.join(clashes[:10])}.",
            hint="Keep the upstream prefixed (drop --no-prefix) or rename the other upstream.",
            code="tool-collision",
        )
    with sealed_change(store) as change:
        store.add_upstream(spec)
        store.set_upstream_tools(spec.tenant_id, spec.name, tool_names)
        change.upstream(spec, "upstream_added", operator_name())
    signals.announce(store, signals.UPSTREAMS_CHANGED, signals.tenant_changed(spec.tenant_id))
    return tool_names


def remove_upstream(store: Store, tenant_id: str, name: str, by: str | None = None) -> None:
    """Remove an upstream (sealed in the same transaction)."""
    require_tenant(store, tenant_id)
    with sealed_change(store) as change:
        store.remove_upstream(tenant_id, name)
        change.operator_change(tenant_id, "upstream_removed", name, by or operator_name())
    signals.announce(store, signals.UPSTREAMS_CHANGED, signals.tenant_changed(tenant_id))


def change_upstream(store: Store, spec: UpstreamSpec, update: Callable[[], object], by: str | None = None) -> None:
    """Run `update` (a store write that changes the registration to `spec`, e.g. `store.update_upstream`)
    and seal `upstream_changed` in the same transaction. The store method must write through `transaction()`
    (or single statements), never its own BEGIN."""
    with sealed_change(store) as change:
        update()
        change.upstream(spec, "upstream_changed", by or operator_name())
    signals.announce(store, signals.UPSTREAMS_CHANGED, signals.tenant_changed(spec.tenant_id))
