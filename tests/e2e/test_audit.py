"""Sealed evidence end to end: a real gateway, real clients, then the operator's `aegress audit` commands.

Receipts resolve to inclusion proofs against the final checkpoint; an exported bundle verifies in a
separate process with no database; canary secrets never reach the database files (WAL included), logs
or exports; operator events (token revocation, key rotation, auth-failure floods) are sealed too.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.audit_support import RawClient, add_recording_upstream, allow_all, evidence_rows
from tests.procs import ROOT, aegress, cli_env, mcp_client, run, run_gateway, setup_tenant


def _rand(n: int) -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(n))


def _verify_tlog(proof_text: str, leaf_hex: str, pubkey: str, origin: str) -> int:
    from gateway.audit.checkpoint import parse_verifier_key, verify_tlog_proof

    return verify_tlog_proof(proof_text, bytes.fromhex(leaf_hex), [parse_verifier_key(pubkey)], origin).size


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One gateway session's worth of evidence, gateway stopped afterwards (final checkpoint signed)."""
    work = tmp_path_factory.mktemp("audit")
    home = work / "home"
    token = setup_tenant(home, "acme", "alice")
    add_recording_upstream(home, "acme", work)
    allow_all(home, "acme", work)
    receipts: list[dict] = []
    env = {"AEGRESS_CHECKPOINT_INTERVAL": "0.3", "AEGRESS_AUTH_FAILURE_WINDOW": "0.5"}
    with run_gateway(home, env=env) as gw:
        async def go() -> None:
            async with mcp_client(gw.url, token) as c:
                for i in range(12):
                    r = await c.call_tool("rec__record", {"nonce": f"n{i}"})
                    assert r.content[0].text == f"ok n{i}"
                    receipts.append(r.meta["aegress"])
                blocked = await c.call_tool("rec__echo", {"text": "forbidden"})
                assert blocked.is_error
                failed = await c.call_tool("rec__fail", {"message": "boom"})
                assert failed.is_error
                receipts.append(failed.meta["aegress"])
                read = await c.read_resource("rec+rec://info")
                receipts.append(read.meta["aegress"])

        run(go())
        bad = RawClient(gw.url, "aeg_" + "x" * 40)
        statuses = {bad.post("ping", {}).status_code for _ in range(40)}
        bad.close()
        assert statuses == {401}
        time.sleep(1.5)  # one auth-failure window passes
    return {"home": home, "work": work, "token": token, "receipts": receipts}


def test_every_call_is_sealed_with_intent_then_outcome(sealed) -> None:  # type: ignore[no-untyped-def]
    rows = list(reversed(evidence_rows(sealed["home"], "--tenant", "acme")))
    kinds = [r["kind"] for r in rows]
    changes = [r["record"]["body"]["change"] for r in rows if r["kind"] == "operator_change"]
    assert changes == ["tenant_created", "actor_added", "token_issued", "upstream_added"]  # the fixture's set-up
    assert kinds[4] == "policy_changed"  # then the tenant's policy
    assert kinds[5:7] == ["intent", "outcome"]
    intents = [r for r in rows if r["kind"] == "intent"]
    outcomes = {r["intent_seq"]: r for r in rows if r["kind"] == "outcome"}
    assert len(intents) == 14 and set(outcomes) == {r["seq"] for r in intents}
    for intent in intents:
        assert outcomes[intent["seq"]]["seq"] > intent["seq"]
        body = intent["record"]["body"]
        assert body["client_name"] == "mcp" and body["actor"] == "alice" and body["token_id"].startswith("tok_")
        assert body["args_digest"] is None or body["args_digest"].startswith("hmac-sha256:")
    record_intent = next(r for r in intents if r["tool"] == "rec__record")["record"]["body"]
    assert record_intent["tool_def_hash"].startswith("sha256:")
    assert record_intent["verdict"] == "allow" and record_intent["policy_version"] == "1"
    statuses = [outcomes[i["seq"]]["record"]["body"]["status"] for i in intents]
    assert statuses.count("completed") == 13 and statuses.count("failed") == 1
    decision = next(r for r in rows if r["kind"] == "decision")["record"]["body"]
    assert decision["verdict"] == "deny" and decision["rule_id"] == "no-forbidden"
    # the digest an operator computes finds the call
    digest = aegress(sealed["home"], "audit", "hash", "--tenant", "acme", "--json-value", '{"nonce": "n3"}').stdout
    found = evidence_rows(sealed["home"], "--digest", digest.strip())
    assert [r["kind"] for r in found] == ["intent"]


def test_auth_failures_are_aggregated_in_the_security_log(sealed) -> None:  # type: ignore[no-untyped-def]
    rows = evidence_rows(sealed["home"], "--kind", "auth_failures_aggregate")
    assert 1 <= len(rows) <= 3  # one record per window, not one per request
    assert sum(r["record"]["body"]["count"] for r in rows) == 40
    assert rows[0]["record"]["body"]["reasons"] == ["invalid-token"]
    assert rows[0]["origin"].endswith("/security")


def test_receipts_resolve_to_inclusion_proofs_against_the_final_checkpoint(sealed) -> None:  # type: ignore[no-untyped-def]
    home = sealed["home"]
    pubkey = aegress(home, "audit", "pubkey").stdout.strip()
    size = len(evidence_rows(home, "--tenant", "acme"))
    for rec in sealed["receipts"]:
        text = aegress(home, "audit", "proof", "--receipt", json.dumps(rec)).stdout
        assert text.startswith("c2sp.org/tlog-proof@v1\n")
        assert _verify_tlog(text, rec["leaf_hash"], pubkey, rec["origin"]) == size  # the final checkpoint
    forged = {**sealed["receipts"][0], "leaf_hash": "00" * 32}
    assert aegress(home, "audit", "proof", "--receipt", json.dumps(forged), check=False).returncode == 3


def test_store_verifies_and_tampering_is_named(sealed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    home = sealed["home"]
    ok = aegress(home, "audit", "verify", "--all", "--final", "--json")
    report = json.loads(ok.stdout)
    assert report["ok"] and {r["origin"].rsplit("/", 1)[-1] for r in report["logs"]} >= {"acme", "security"}
    copy = tmp_path / "home"
    shutil.copytree(home, copy)
    db = sqlite3.connect(copy / "aegress.db")
    seq, data = db.execute("SELECT seq, data FROM evidence WHERE tenant = 'acme' AND kind = 'intent'"
                           " ORDER BY seq LIMIT 1 OFFSET 1").fetchone()
    db.execute("UPDATE evidence SET data = ? WHERE tenant = 'acme' AND seq = ?",
               (bytes(data).replace(b'"alice"', b'"mallory"'), seq))
    db.commit()
    db.close()
    bad = aegress(copy, "audit", "verify", "--tenant", "acme", "--json", check=False)
    assert bad.returncode == 3
    finding = json.loads(bad.stdout)["logs"][0]["finding"]
    assert finding["problem"] == "modified" and finding["seq"] == seq
    gone = aegress(copy, "audit", "verify", "--tenant", "nobody", check=False)
    assert gone.returncode == 1 and "Error:" in gone.stderr


def test_exported_bundle_verifies_in_another_process_without_a_database(sealed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    home = sealed["home"]
    pubkey = aegress(home, "audit", "pubkey").stdout.strip()
    bundle = tmp_path / "bundle"
    aegress(home, "audit", "export", "--tenant", "acme", "--format", "bundle", "--out", str(bundle))
    assert {"manifest.json", "records.jsonl", "keys.txt", "README.md"} <= {p.name for p in bundle.iterdir()}
    nowhere = tmp_path / "no-home"
    env = cli_env(nowhere)
    env.pop("DATABASE_URL", None)
    proc = subprocess.run([sys.executable, "-m", "aegress_cli.main", "audit", "verify", "--bundle", str(bundle),
                           "--key", pubkey, "--final", "--json"], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["logs"][0]["inclusion_proofs_checked"] >= 1
    assert not nowhere.exists(), "verifying a bundle must not create a data dir or database"
    lines = (bundle / "records.jsonl").read_bytes().split(b"\n")
    target = next(i for i, line in enumerate(lines) if i > 0 and b'"alice"' in line)
    edited = lines[target].replace(b'"alice"', b'"mallory"')
    assert edited != lines[target]
    lines[target] = edited
    (bundle / "records.jsonl").write_bytes(b"\n".join(lines))
    proc = subprocess.run([sys.executable, "-m", "aegress_cli.main", "audit", "verify", "--bundle", str(bundle),
                           "--key", pubkey], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert proc.returncode == 3 and "modified" in proc.stdout
    # partial exports (--since) carry a start and still verify
    since = evidence_rows(home, "--tenant", "acme")[5]["time"]
    part = tmp_path / "part"
    aegress(home, "audit", "export", "--tenant", "acme", "--since", since, "--out", str(part))
    assert aegress(home, "audit", "verify", "--bundle", str(part), "--key", pubkey).returncode == 0
    for fmt in ("jsonl", "csv"):
        out = tmp_path / f"log.{fmt}"
        aegress(home, "audit", "export", "--tenant", "acme", "--format", fmt, "--out", str(out))
        assert out.stat().st_size > 0


def test_token_revocation_and_key_rotation_are_sealed(sealed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    shutil.copytree(sealed["home"], home)
    token_id = json.loads(aegress(home, "token", "list", "--tenant", "acme", "--json").stdout)[0]["id"]
    aegress(home, "token", "revoke", token_id, "--yes")
    revoked = evidence_rows(home, "--tenant", "acme", "--kind", "token_revoked")
    assert revoked[0]["record"]["body"]["token_id"] == token_id
    old = aegress(home, "audit", "pubkey").stdout.strip()
    new = aegress(home, "audit", "rotate-key", "--yes").stdout.strip()
    assert new != old
    assert set(aegress(home, "audit", "pubkey", "--all").stdout.split()) == {old, new}
    aegress(home, "audit", "checkpoint")
    assert aegress(home, "audit", "verify", "--all").returncode == 0  # old and new checkpoints both verify
    event = evidence_rows(home, "--kind", "key_event")[0]["record"]["body"]
    assert event["event"] == "rotated" and event["previous_key"] == old and event["key"] == new


def test_a_readable_key_file_stops_the_gateway(sealed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    shutil.copytree(sealed["home"], home)
    key = home / "secrets" / "audit-signing.key"
    key.chmod(0o644)
    proc = aegress(home, "serve", "--port", "0", check=False, timeout=60)
    assert proc.returncode == 1
    assert "chmod 600" in proc.stderr and "PRIVATE" not in proc.stderr + proc.stdout


# -- canaries: secrets never land in the clear ------------------------------------------------------------
def test_canary_secrets_appear_nowhere(tmp_path: Path) -> None:
    home = tmp_path / "home"
    token = setup_tenant(home, "acme", "alice")
    add_recording_upstream(home, "acme", tmp_path)
    allow_all(home, "acme", tmp_path)
    in_args = "sk-canaryArg" + _rand(24)
    in_password = "hunter2-canary-" + _rand(12)
    in_header = "canaryHeader" + _rand(16)
    in_error = "ghp_" + _rand(36)
    canaries = [in_args, in_password, in_header, in_error]
    with run_gateway(home, "--log-level", "debug", env={"AEGRESS_CHECKPOINT_INTERVAL": "0.2"}) as gw:
        client = RawClient(gw.url, token, headers={"Cookie": f"session={in_header}", "X-Api-Key": in_header}).start()
        r = RawClient.body(client.call("rec__echo", {"text": f"use {in_args} now", "password": in_password}))
        assert in_args in r["result"]["content"][0]["text"]  # the client still gets its result
        r = RawClient.body(client.call("rec__fail", {"message": f"leaked {in_error}"}))
        assert r["result"]["isError"]
        bad = RawClient(gw.url, in_header)
        assert bad.post("ping", {}).status_code == 401
        bad.close()
        client.close()
        time.sleep(0.5)
        live = {p: p.read_bytes() for p in home.rglob("*") if p.is_file()}
        assert any(p.name.endswith("-wal") for p in live)
    exports = tmp_path / "exports"
    exports.mkdir()
    for fmt in ("jsonl", "csv"):
        aegress(home, "audit", "export", "--tenant", "acme", "--format", fmt, "--out", str(exports / f"x.{fmt}"))
    aegress(home, "audit", "export", "--tenant", "acme", "--out", str(exports / "bundle"))
    query = aegress(home, "audit", "query", "--json").stdout
    files = {**live, **{p: p.read_bytes() for p in list(home.rglob("*")) + list(exports.rglob("*")) if p.is_file()}}
    blobs = {"gateway output": "".join(gw.proc.output).encode(), "audit query": query.encode(), **{
        str(p): data for p, data in files.items()}}
    assert [r["kind"] for r in evidence_rows(home, "--tenant", "acme")].count("intent") == 2
    for canary in canaries:
        for name, data in blobs.items():
            assert canary.encode() not in data, f"canary {canary[:8]}... found in {name}"


# -- crashes: SIGKILL between intent and outcome ----------------------------------------------------------
@pytest.mark.parametrize("point", ["after-intent", "after-forward", "during-outcome"])
def test_crash_leaves_a_verifiable_chain_and_every_received_call_has_an_intent(tmp_path: Path, point: str) -> None:
    home = tmp_path / "home"
    token = setup_tenant(home, "acme", "alice")
    calls = add_recording_upstream(home, "acme", tmp_path)
    allow_all(home, "acme", tmp_path)
    with run_gateway(home) as gw:  # some history first
        c = RawClient(gw.url, token).start()
        for i in range(3):
            assert RawClient.body(c.call("rec__record", {"nonce": f"before{i}"}))["result"]["content"][0]["text"]
        c.close()
    with run_gateway(home, env={"AEGRESS_TEST_CRASH": point, "AEGRESS_AUDIT_AWAIT_OUTCOME": "on"}) as gw:
        c = RawClient(gw.url, token).start()
        with pytest.raises(Exception):  # noqa: B017 - the connection dies with the process
            RawClient.body(c.call("rec__record", {"nonce": "crash"}))
        c.close()
        gw.proc.popen.wait(20)
        assert gw.proc.popen.returncode == -9  # SIGKILL, exactly like a power cut
    received = calls.read_text().split()
    assert ("crash" in received) == (point != "after-intent")
    with run_gateway(home) as gw:  # restart: recovery marks the open intent outcome_unknown
        c = RawClient(gw.url, token).start()
        assert RawClient.body(c.call("rec__record", {"nonce": "after"}))["result"]
        c.close()
    result = aegress(home, "audit", "verify", "--all", "--final", "--json", check=False)
    assert result.returncode == 0, result.stdout
    unknown = evidence_rows(home, "--tenant", "acme", "--kind", "outcome_unknown")
    assert len(unknown) == 1
    for nonce in calls.read_text().split():
        digest = aegress(home, "audit", "hash", "--tenant", "acme", "--json-value", json.dumps({"nonce": nonce}))
        assert [r["kind"] for r in evidence_rows(home, "--digest", digest.stdout.strip())][-1] == "intent", nonce


# -- the store cannot take the intent: fail closed --------------------------------------------------------
def _assert_fails_closed(gw, token: str, calls: Path, nonce: str) -> None:  # type: ignore[no-untyped-def]
    import httpx2

    c = RawClient(gw.url, token).start()
    r = c.call("rec__record", {"nonce": nonce})
    assert r.status_code == 503, r.text
    assert r.headers.get("retry-after")
    assert r.json()["error"]["code"] == -32004 and "evidence" in r.json()["error"]["message"].lower()
    assert nonce not in calls.read_text().split(), "a call was forwarded without a durable intent"
    health = httpx2.get(gw.base + "/health", timeout=30)
    assert health.status_code == 503 and health.json()["ready"] is False
    c.close()


def _recovers(gw, token: str) -> None:  # type: ignore[no-untyped-def]
    import httpx2

    deadline = time.monotonic() + 30
    while httpx2.get(gw.base + "/health", timeout=30).status_code != 200:
        assert time.monotonic() < deadline, "health never recovered"
        time.sleep(0.2)
    c = RawClient(gw.url, token).start()
    assert RawClient.body(c.call("rec__record", {"nonce": "recovered"}))["result"]
    c.close()


def _setup(tmp_path: Path, home: Path) -> tuple[str, Path]:
    token = setup_tenant(home, "acme", "alice")
    calls = add_recording_upstream(home, "acme", tmp_path)
    allow_all(home, "acme", tmp_path)
    return token, calls


def test_locked_store_fails_closed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    token, calls = _setup(tmp_path, home)
    with run_gateway(home) as gw:
        c = RawClient(gw.url, token).start()
        assert RawClient.body(c.call("rec__record", {"nonce": "warm"}))["result"]
        c.close()
        locker = sqlite3.connect(home / "aegress.db", timeout=1, isolation_level=None)  # our private copy
        locker.execute("BEGIN EXCLUSIVE")
        try:
            _assert_fails_closed(gw, token, calls, "while-locked")
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        _recovers(gw, token)
    assert aegress(home, "audit", "verify", "--all", "--final").returncode == 0


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=30)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="needs root to mount a tmpfs")
def test_full_store_fails_closed(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    _mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk))
    try:
        home = disk / "home"
        token, calls = _setup(tmp_path, home)
        with run_gateway(home) as gw:
            c = RawClient(gw.url, token).start()
            assert RawClient.body(c.call("rec__record", {"nonce": "warm"}))["result"]
            c.close()
            filler = disk / "filler"
            # unbuffered: once the disk is full, close() has nothing left to flush (and raise again)
            with filler.open("wb", buffering=0) as handle, pytest.raises(OSError):
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
            _assert_fails_closed(gw, token, calls, "while-full")
            filler.unlink()
            _recovers(gw, token)
        assert aegress(home, "audit", "verify", "--all", "--final").returncode == 0
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="needs root to remount read-only")
def test_read_only_store_fails_closed(tmp_path: Path) -> None:
    """A store on a read-only filesystem: the gateway refuses to serve (it could not take one intent).

    (Remounting read-only under a running gateway is refused by Linux while the database is open for
    writing, so the runtime path is covered by the locked and full tests.)"""
    data = tmp_path / "data"
    data.mkdir()
    home = tmp_path / "home"
    _setup(tmp_path, home)
    with run_gateway(home):  # evidence tables and key exist
        pass
    db_dir = tmp_path / "db"
    db_dir.mkdir()
    for path in home.glob("aegress.db*"):
        shutil.move(path, db_dir / path.name)
    _mount("--bind", str(db_dir), str(data))
    try:
        _mount("-o", "remount,ro,bind", str(data))
        proc = aegress(home, "serve", "--port", "0", check=False, timeout=60,
                       AEGRESS_DATABASE_URL=f"sqlite:///{data / 'aegress.db'}")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "Error:" in proc.stderr and "listening" not in proc.stdout
    finally:
        subprocess.run(["umount", "-l", str(data)], capture_output=True, timeout=30)
