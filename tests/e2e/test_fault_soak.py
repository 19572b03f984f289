"""The fault soak's short version (bench/fault_soak.py --short) against the gateway in this tree.

One run applies a few cheap faults, one at a time, under load from 3 concurrent clients on 3
tenants: an HTTP upstream killed and restarted, a stdio upstream killed mid-call, the SQLite write
lock held by another process for 3 s, SIGTERM with calls in flight. For each fault: no call is lost
(executed upstream without an intent, or an intent without exactly one final record), the evidence
verifies, and no gateway restart is needed to serve every upstream again afterwards.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from typing import Any

import pytest

from tests.procs import ROOT

pytestmark = pytest.mark.timeout(300)  # the soak runs in the module fixture, up to 240 s

FAULTS = ("upstream-restart", "stdio-kill", "sqlite-lock", "sigterm")


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("soak") / "soak.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fault_soak.py"), "--short", "--faults", ",".join(FAULTS),
         "--json", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=240,
    )
    assert proc.returncode in (0, 3), f"the soak failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
    results = json.loads(out.read_text())
    results["table"] = proc.stdout
    return dict(results)


def _row(soak: dict[str, Any], fault: str) -> dict[str, Any]:
    rows = [r for r in soak["faults"] if r["fault"] == fault]
    assert len(rows) == 1, soak["table"]
    return dict(rows[0])


@pytest.mark.parametrize("fault", FAULTS)
def test_fault_loses_no_call(soak: dict[str, Any], fault: str) -> None:
    row = _row(soak, fault)
    assert row["tried"] > 0 and row["after"]["tried"] > 0, soak["table"]
    assert row["executed"] > 0, soak["table"]
    assert row["lost"] == 0, f"{fault}: {row['executed_without_intent']} executed without intent, " \
        f"{row['intent_without_final']} intents never finished, {row['intent_with_several_finals']} finished twice " \
        f"(e.g. {row['examples']})\n{soak['table']}"
    assert row["wrong"] == 0, soak["table"]


@pytest.mark.parametrize("fault", FAULTS)
def test_fault_leaves_verifiable_evidence(soak: dict[str, Any], fault: str) -> None:
    row = _row(soak, fault)
    assert row["verify"]["ok"], f"{fault}: audit verify --all: {row['verify']}\n{soak['table']}"


@pytest.mark.parametrize("fault", FAULTS)
def test_fault_needs_no_restart(soak: dict[str, Any], fault: str) -> None:
    row = _row(soak, fault)
    assert not row["restart_needed"], f"{fault}: after the clean interval, an upstream still failed\n{soak['table']}"
    assert row["after"]["ok"] == row["after"]["tried"], f"{fault}: calls still fail after the fault cleared: " \
        f"{row['after']}\n{soak['table']}"


def test_soak_json_is_what_was_printed(soak: dict[str, Any]) -> None:
    assert [r["fault"] for r in soak["faults"]] == list(FAULTS)
    for fault in FAULTS:
        assert any(line.startswith(fault + " |") for line in soak["table"].splitlines()), soak["table"]


def test_marks_survive_redaction() -> None:
    """The soak matches calls to evidence by the `mark` argument's preview: it must not look like a secret."""
    from gateway.audit.redact import redact_preview

    spec = importlib.util.spec_from_file_location("fault_soak", ROOT / "bench" / "fault_soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fault_soak"] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["fault_soak"]
    mark = f"upstream-restart+after.a.side{module.letters(12345)}.{module.letters(10**9)}"
    preview = redact_preview({"mark": mark, "seconds": 0.5})
    found = module.MARK_RE.search(preview)
    assert found is not None and found.group() == mark, preview
