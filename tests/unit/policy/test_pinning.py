"""Tool pinning: stable hashes over the pinned fields, and pin status per listed tool."""

from __future__ import annotations

import hashlib

import pytest
import rfc8785

from gateway.errors import InvalidInput
from gateway.policy import PinStatus, approve_pins, check_pins, removed_tools, tool_definition_hash

ECHO = {
    "name": "echo",
    "description": "Return the text unchanged.",
    "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    "annotations": {"readOnlyHint": True},
}


def test_hash_is_sha256_of_rfc8785_json_of_the_pinned_fields() -> None:
    expected = hashlib.sha256(rfc8785.dumps(ECHO)).hexdigest()
    assert tool_definition_hash(ECHO) == "sha256:" + expected


def test_hash_ignores_key_order_and_unpinned_fields() -> None:
    reordered = dict(reversed(list(ECHO.items())))
    reordered["inputSchema"] = dict(reversed(list(ECHO["inputSchema"].items())))  # type: ignore[call-overload]
    assert tool_definition_hash(reordered) == tool_definition_hash(ECHO)
    assert tool_definition_hash({**ECHO, "title": "Echo", "outputSchema": {}}) == tool_definition_hash(ECHO)


@pytest.mark.parametrize("field", ["name", "description", "inputSchema", "annotations"])
def test_hash_changes_with_each_pinned_field(field: str) -> None:
    changed = {**ECHO, field: "x" if field in ("name", "description") else {"changed": True}}
    assert tool_definition_hash(changed) != tool_definition_hash(ECHO)


def test_missing_field_hashes_like_null_and_name_is_required() -> None:
    assert tool_definition_hash({"name": "t"}) == tool_definition_hash({"name": "t", "description": None})
    with pytest.raises(InvalidInput):
        tool_definition_hash({"description": "no name"})


def test_check_pins_statuses_and_approval() -> None:
    add = {"name": "add", "description": "Add.", "inputSchema": {}}
    pins = {"echo": tool_definition_hash(ECHO), "add": "sha256:" + "0" * 64, "gone": "sha256:" + "1" * 64}
    new_tool = {"name": "fresh"}
    checks = check_pins(pins, [ECHO, add, new_tool])
    assert [(c.name, c.status) for c in checks] == [
        ("echo", PinStatus.OK), ("add", PinStatus.CHANGED), ("fresh", PinStatus.NEW)]
    assert checks[1].pinned_hash == "sha256:" + "0" * 64 and checks[1].current_hash == tool_definition_hash(add)
    assert checks[2].pinned_hash is None
    assert removed_tools(pins, [ECHO, add]) == ["gone"]
    approved = approve_pins(pins, checks, ["add"])
    assert approved["add"] == tool_definition_hash(add) and "fresh" not in approved
    everything = approve_pins(pins, checks)
    assert [c.status for c in check_pins(everything, [ECHO, add, new_tool])] == [PinStatus.OK] * 3
