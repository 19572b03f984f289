"""One gateway per data dir, and a sealed repair for the damage two gateways used to do.

A second `aegress serve` on a data dir a running gateway holds must refuse before touching a record
(start-up recovery would otherwise mark the first gateway's calls in flight `outcome_unknown`, and
their real outcomes would then answer an intent twice). A SIGKILLed gateway's lock is gone with it.
`aegress audit repair` seals a record that names such damage; nothing old is rewritten.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

from tests.e2e.audit_support import RawClient, add_recording_upstream, allow_all, evidence_rows
from tests.procs import ROOT, aegress, cli_env, run_gateway, setup_tenant


def _setup(tmp_path: Path) -> tuple[Path, str]:
    home = tmp_path / "home"
    token = setup_tenant(home, "acme", "alice")
    add_recording_upstream(home, "acme", tmp_path)
    allow_all(home, "acme", tmp_path)
    return home, token


def test_a_second_gateway_on_a_held_data_dir_refuses_before_touching_a_record(tmp_path: Path) -> None:
    home, token = _setup(tmp_path)
    with run_gateway(home) as gw:
        c = RawClient(gw.url, token).start()
        assert RawClient.body(c.call("rec__record", {"nonce": "one"}))["result"]
        c.close()
        before = evidence_rows(home, "--tenant", "acme")
        second = aegress(home, "serve", "--port", "0", check=False, timeout=60)
        assert second.returncode == 1, second.stdout + second.stderr
        assert "listening" not in second.stdout
        assert "in use by a running gateway" in second.stderr
        assert f"pid {gw.proc.popen.pid}" in second.stderr and gw.url in second.stderr
        repair = aegress(home, "audit", "repair", "--tenant", "acme", "--yes", check=False)
        assert repair.returncode == 1 and "in use by a running gateway" in repair.stderr
        assert evidence_rows(home, "--tenant", "acme") == before  # nothing recovered, nothing appended
        os.kill(gw.proc.popen.pid, signal.SIGKILL)  # the kernel drops the lock with the process
        gw.proc.popen.wait(20)
    with run_gateway(home) as gw:
        c = RawClient(gw.url, token).start()
        assert RawClient.body(c.call("rec__record", {"nonce": "two"}))["result"]
        c.close()
    assert aegress(home, "audit", "verify", "--all", "--final").returncode == 0


def test_database_and_data_dir_are_owner_only(tmp_path: Path) -> None:
    home, token = _setup(tmp_path)
    with run_gateway(home) as gw:
        c = RawClient(gw.url, token).start()
        assert RawClient.body(c.call("rec__record", {"nonce": "perm"}))["result"]
        c.close()
        files = sorted(home.glob("aegress.db*"))
        assert {p.name for p in files} >= {"aegress.db", "aegress.db-wal", "aegress.db-shm"}
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


_DAMAGE = """
import sys
from pathlib import Path
from gateway.audit.log import Entry, expected_columns, tenant_origin
from gateway.evidence.clock import now_time
from gateway.evidence.events import recover_open_intents
from gateway.evidence.origins import origin_prefix
from gateway.store.sqlite import SQLiteStore

store = SQLiteStore(Path(sys.argv[1]) / "aegress.db")
origin = tenant_origin(origin_prefix(store), "acme")
body = {"tenant": "acme", "actor": "alice", "token_id": None, "client_name": None, "client_version": None,
        "upstream": "rec", "tool": "rec__record", "tool_def_hash": None, "verdict": "allow",
        "policy_version": "1", "rule_id": None, "args_digest": None}
[intent] = store.append_evidence([Entry(origin, "intent", now_time(), body,  # gateway A: a call in flight
                                        expected_columns("intent", body, "acme"))])  # gateway A: a call in flight
recover_open_intents(store)  # gateway B starts on the same data dir: marks it outcome_unknown
seq = intent.record.seq
answer = {"intent_seq": seq, "status": "completed", "result_digest": None, "latency_ms": 3}
store.append_evidence([Entry(origin, "outcome", now_time(), answer,  # gateway A: the real outcome arrives
                             expected_columns("outcome", answer, "acme", body))])
print(seq)
"""


def test_repair_seals_the_damage_two_recoveries_did_and_verify_then_passes(tmp_path: Path) -> None:
    home, token = _setup(tmp_path)
    with run_gateway(home) as gw:  # real history first
        c = RawClient(gw.url, token).start()
        assert RawClient.body(c.call("rec__record", {"nonce": "a"}))["result"]
        c.close()
    damage = subprocess.run([sys.executable, "-c", _DAMAGE, str(home)], capture_output=True, text=True,
                            env=cli_env(home), cwd=ROOT, timeout=60, check=True)
    intent_seq = int(damage.stdout.strip())
    broken = aegress(home, "audit", "verify", "--tenant", "acme", "--json", check=False)
    assert broken.returncode == 3
    finding = json.loads(broken.stdout)["logs"][0]["finding"]
    assert finding["problem"] == "malformed" and finding["seq"] == intent_seq + 2
    kept = evidence_rows(home, "--tenant", "acme")

    refused = aegress(home, "audit", "repair", "--tenant", "acme", check=False, input="")
    assert refused.returncode == 2 and "--yes" in refused.stderr  # destructive-looking: confirm first
    fixed = aegress(home, "audit", "repair", "--tenant", "acme", "--yes", "--json")
    out = json.loads(fixed.stdout)
    assert out["repaired"] is True and out["damaged_seqs"] == [intent_seq + 2] and out["verify"]["ok"] is True

    after = evidence_rows(home, "--tenant", "acme")
    assert after[1:] == kept  # newest first: every old record untouched, one new record on top
    repair = after[0]
    assert repair["kind"] == "repair"
    body = repair["record"]["body"]
    assert body["damaged_seqs"] == [intent_seq + 2]
    assert body["problems"] == [f"seq {intent_seq + 2}: malformed: record {intent_seq + 2} answers {intent_seq}, "
                                "which is not an earlier intent awaiting an outcome"]
    ok = aegress(home, "audit", "verify", "--tenant", "acme", "--final")
    assert "notice" in ok.stdout and f"seq(s) {intent_seq + 2}" in ok.stdout
    report = json.loads(aegress(home, "audit", "verify", "--all", "--final", "--json").stdout)
    assert report["ok"] is True
    again = aegress(home, "audit", "repair", "--tenant", "acme", "--yes")
    assert "nothing to repair" in again.stderr
