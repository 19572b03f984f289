"""`aegress status`: one screen with what an operator asks first (gateway.status computes it; this renders).

Fast and local: it reads the data dir and the store, asks the gateway's own /health with a short timeout,
and imports neither the MCP SDK nor the server stack.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from aegress_cli._common import JsonOpt, handle_errors, home, print_json, printable, store
from gateway.status import ago

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.text import Text

    from gateway.status import Status


def _markup(value: object) -> str:
    """A value inside rich markup: shown as written (`printable`), never read as markup."""
    from rich.markup import escape as markup_escape

    return markup_escape(printable(value))


def _text(value: object) -> Text:
    """A table cell someone else may have chosen (a client's name, a tool's): plain text, shown as written."""
    from rich.text import Text

    return Text(printable(value))


MIN_INTERVAL_S = 1.0
MAX_INTERVAL_S = 60.0


def _gateway_line(g: dict[str, Any]) -> str:
    if not g["running"]:
        return f"[bold red]not running[/]  [dim]{_markup(g['note'])}[/]"
    parts = [f"pid {g['pid']}", _markup(g["url"] or "(not listening yet)")]
    if g.get("public_url"):
        parts.append(f"public {_markup(g['public_url'])}")
    parts += [f"v{_markup(g['version'])}" if g.get("version") else "version unknown", f"up {ago(g['uptime_s'])}"]
    if not g["answering"]:
        state = "[bold red]not answering[/]"
    elif g["ready"]:
        state = "[green]ready[/]"
    else:
        state = f"[bold yellow]unready[/] ({_markup((g['health'] or {}).get('reason', ''))})"
    return "[green]running[/]  " + "  ".join(parts) + "  " + state


def _evidence_line(e: dict[str, Any]) -> str:
    text = f"{e['records']:,} sealed record(s) in {e['logs']} log(s)"
    cp = e["last_checkpoint"]
    if cp:
        where = _markup(cp["tenant"] or "security log")
        text += f"; last checkpoint {ago(cp['age_s'])} ago ({where}, size {cp['size']:,})"
    else:
        text += "; [yellow]no checkpoint yet[/]"
    if e["awaiting_checkpoint"]:
        text += f"; {e['awaiting_checkpoint']:,} awaiting the next"
    v = e["last_verification"]
    if v is None:
        text += "\n[yellow]never verified[/] (run `aegress audit verify`)"
    else:
        result = "[green]verified[/]" if v.get("ok") else "[bold red]PROBLEM[/]"
        text += (f"\nlast verification {ago(v.get('age_s'))} ago by {_markup(v.get('by'))}: {result}, "
                 f"{v.get('records', 0):,} record(s)")
        for log in v.get("logs") or []:
            if not log.get("ok"):
                text += f"\n  [red]{_markup(log.get('origin'))}: {_markup(log.get('problem'))}[/]"
    if e.get("recording") == "off":
        text += "\n[bold red]recording is OFF[/] (--no-evidence: calls are not recorded)"
    return text


def render(status: Status) -> RenderableType:
    """The whole screen as rich renderables: summary lines, then tables."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    s = status
    scope = f"tenant {_markup(s.tenant)}" if s.tenant else "all tenants"
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold", no_wrap=True)
    head.add_column(overflow="fold")
    head.add_row("Gateway", _gateway_line(s.gateway))
    binding = s.binding["text"] + (f" ({s.binding['ingress']} ingress)" if s.binding.get("ingress") else "")
    head.add_row("Binding", _text(binding))
    d = s.deploy
    deploy = _markup(f"{d['path']}: {d['title']}" if d["path"] else d["title"])
    if d.get("store"):
        deploy += f"  [dim]store {_markup(d['store'])}, bus {_markup(d['bus'])}[/]"
    head.add_row("Deploy", deploy)
    head.add_row("Evidence", _evidence_line(s.evidence))
    active = s.clients_active
    head.add_row("Clients", f"{len(s.clients)} seen, {active} active in the last 15 min")
    head.add_row("Reviews", f"{s.reviews['pending']}{'+' if s.reviews['more'] else ''} pending")

    gate = Table(title="Policy gate", title_justify="left", header_style="bold")
    gate.add_column("")
    for key in ("allowed", "held", "blocked", "hidden", "denied"):
        gate.add_column(key, justify="right")
    for label, counts in (("last hour", s.gate["last_hour"]), ("total", s.gate["total"])):
        gate.add_row(label, *(f"{counts[k]:,}" for k in ("allowed", "held", "blocked", "hidden", "denied")))

    where = _markup(f"data dir {s.data_dir} · {s.store['backend']} {s.store['location']}")
    parts: list[Any] = [Text.from_markup(f"[bold]Aegress status[/]  [dim]{scope} · {where} · {s.generated_at}[/]"),
                        head, gate]
    if s.clients:
        table = Table(title="Clients", title_justify="left", header_style="bold")
        for col in ("client", "versions", "calls", "last seen", "active"):
            table.add_column(col, overflow="fold")
        for c in s.clients:
            table.add_row(_text(c["name"]), _text(", ".join(c["versions"]) or "-"), f"{c['calls']:,}",
                          _text(c["last_seen"] or "-"), "[green]yes[/]" if c["active"] else "no")
        parts.append(table)
    if s.upstreams:
        table = Table(title="Upstreams (health: calls of the last 15 min)", title_justify="left", header_style="bold")
        for col in ("tenant", "upstream", "transport", "tools", "health"):
            table.add_column(col, overflow="fold")
        colour = {"ok": "green", "degraded": "yellow", "failing": "bold red", "idle": "dim"}
        for u in s.upstreams:
            table.add_row(_text(u["tenant"]), _text(u["name"]), _text(u["transport"]), str(u["tools"]),
                          f"[{colour[u['health']]}]{u['health']}[/]")
        parts.append(table)
    if s.reviews["items"]:
        table = Table(title="Pending reviews (approve with `aegress review approve ID`)", title_justify="left",
                      header_style="bold")
        table.add_column("id", no_wrap=True)  # the id the next command needs: never cut
        for col in ("tenant", "actor", "tool", "waiting"):
            table.add_column(col, overflow="fold")
        for r in s.reviews["items"]:
            table.add_row(_text(r["id"]), _text(r["tenant"]), _text(r["actor"]), _text(r["tool"]), ago(r["age_s"]))
        parts.append(table)
    return Group(*parts)


@handle_errors
def status(
    tenant: Annotated[str | None, typer.Option("--tenant", "-t", help="Only this tenant's counters, clients, "
                                               "upstreams and reviews.")] = None,
    json_out: JsonOpt = False,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until Ctrl-C (with --json: one JSON "
                                        "object per line).")] = False,
    interval: Annotated[float, typer.Option("--interval", help=f"Seconds between refreshes with --watch "
                                            f"({MIN_INTERVAL_S:g} to {MAX_INTERVAL_S:g}).")] = 2.0,
    count: Annotated[int, typer.Option("--count", help="With --watch: stop after this many refreshes (0: until "
                                       "Ctrl-C).")] = 0,
) -> None:
    """Is a gateway serving this data dir, and what is it doing? Everything on one screen.

    The policy gate, evidence, clients, upstreams, pending reviews and the deploy path.
    Reads the data dir and the store only (and the gateway's /health, with a short timeout)."""
    from gateway.errors import UsageError
    from gateway.status import collect, find_process

    if not MIN_INTERVAL_S <= interval <= MAX_INTERVAL_S:
        raise UsageError(f"--interval must be from {MIN_INTERVAL_S:g} to {MAX_INTERVAL_S:g} seconds.")
    if count < 0:
        raise UsageError("--count must be 0 or more.")
    data, db = home(), store()
    if tenant is not None:
        from gateway.admin import require_log_tenant

        require_log_tenant(db, tenant)

    def snapshot() -> Status:
        return collect(db, data, find_process(data), now=datetime.now(UTC), tenant=tenant)

    if not watch:
        if json_out:
            print_json(snapshot().to_dict())
        else:
            from rich.console import Console

            Console(emoji=False).print(render(snapshot()))
        return
    try:
        if json_out:
            _watch_json(snapshot, interval, count)
        else:
            _watch_screen(snapshot, interval, count)
    except KeyboardInterrupt:
        return


def _watch_json(snapshot: Any, interval: float, count: int) -> None:
    import json

    done = 0
    while count == 0 or done < count:
        if done:
            time.sleep(interval)
        sys.stdout.write(json.dumps(snapshot().to_dict(), default=str) + "\n")
        sys.stdout.flush()
        done += 1


def _watch_screen(snapshot: Any, interval: float, count: int) -> None:
    from rich.console import Console
    from rich.live import Live

    console = Console(emoji=False)  # values are data: `:name:` in them stays as written (and no emoji table)
    with Live(render(snapshot()), console=console, auto_refresh=False, screen=False) as live:
        done = 1
        while count == 0 or done < count:
            time.sleep(interval)
            live.update(render(snapshot()), refresh=True)
            done += 1
