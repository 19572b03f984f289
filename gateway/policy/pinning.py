"""Tool pinning: hash each approved tool definition so a changed or new tool is noticed.

An upstream can change a tool's description or schema after it was approved (a "rug pull"). The
gateway compares each listed tool with its pin and passes the status to `evaluate` as
`Request.pin`; a changed or new tool is then held for review (mode approve, rule id `pin`) until the
operator approves the new definition, unless a rule blocks it anyway. Pins live in the policy's
`[pins.<upstream>]` tables (or the store), one `sha256:<hex>` per tool name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import InvalidInput
from gateway.policy._canonical import sha256_digest
from gateway.policy.model import PinStatus

PINNED_FIELDS = ("name", "description", "inputSchema", "annotations")


def tool_definition_hash(tool: Mapping[str, Any]) -> str:
    """`sha256:<hex>` over RFC 8785 JSON of the tool's name, description, inputSchema and annotations
    (a missing field counts as null); other fields such as title or outputSchema are not pinned."""
    if not isinstance(tool, Mapping) or not isinstance(tool.get("name"), str):
        raise InvalidInput("a tool definition needs a string 'name'")
    return sha256_digest({key: tool.get(key) for key in PINNED_FIELDS})


@dataclass(frozen=True, slots=True)
class PinCheck:
    """One tool's pin status; `pinned_hash` is None for a new tool."""

    name: str
    status: PinStatus
    pinned_hash: str | None
    current_hash: str


def check_pins(pins: Mapping[str, str], tools: Iterable[Mapping[str, Any]]) -> list[PinCheck]:
    """Compare one upstream's listed tools with its pins (tool name -> hash), in listing order."""
    out: list[PinCheck] = []
    for tool in tools:
        current = tool_definition_hash(tool)
        name = tool["name"]
        pinned = pins.get(name)
        if pinned is None:
            status = PinStatus.NEW
        elif pinned == current:
            status = PinStatus.OK
        else:
            status = PinStatus.CHANGED
        out.append(PinCheck(name, status, pinned, current))
    return out


def removed_tools(pins: Mapping[str, str], tools: Iterable[Mapping[str, Any]]) -> list[str]:
    """Pinned tool names the upstream no longer lists (sorted), for the plan and the record."""
    listed = {tool.get("name") for tool in tools}
    return sorted(name for name in pins if name not in listed)


def approve_pins(
    pins: Mapping[str, str], checks: Iterable[PinCheck], names: Iterable[str] | None = None
) -> dict[str, str]:
    """New pins after the operator approves the current definitions of `names` (all when None)."""
    wanted = None if names is None else set(names)
    out = dict(pins)
    for check in checks:
        if wanted is None or check.name in wanted:
            out[check.name] = check.current_hash
    return out
