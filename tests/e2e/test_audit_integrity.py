"""The evidence never lies: edits of stored columns, a truncated log, unsealed operator changes and unsafe
exports are all caught or refused.

One real gateway session (stopped afterwards, so its final checkpoint is signed and published outside the
database) provides the log; each test that changes anything works on a copy of the data dir.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.audit_support import add_recording_upstream, evidence_rows
from tests.procs import aegress, mcp_client, run, run_gateway, setup_tenant

POLICY = """
version = 1
default = "allow"

[builtin]
destructive = "off"
trusted_read_only = "allow"

[review]
hold_timeout_seconds = 1

[[rules]]
id = "no-forbidden"
name = "echo"
verdict = "block"
reason = "not this text"
[rules.args]
text = { equals = "forbidden" }

[[rules]]
id = "hold-one"
name = "echo"
verdict = "review"
[rules.args]
text = { equals = "hold-one" }

[[rules]]
id = "hold-two"
name = "echo"
verdict = "review"
[rules.args]
text = { equals = "hold-two" }

[[rules]]
id = "client-requests"
kind = "client_request"
verdict = "allow"
"""


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """acme/alice: three forwarded calls, one blocked, two held for review; the gateway stopped."""
    work = tmp_path_factory.mktemp("integrity")
    home = work / "home"
    token = setup_tenant(home, "acme", "alice")
    add_recording_upstream(home, "acme", work)
    (work / "policy.toml").write_text(POLICY)
    aegress(home, "policy", "apply", str(work / "policy.toml"), "--tenant", "acme", "--yes")
    with run_gateway(home, env={"AEGRESS_CHECKPOINT_INTERVAL": "0.3"}) as gw:
        async def go() -> None:
            async with mcp_client(gw.url, token) as c:
                for i in range(3):
                    assert (await c.call_tool("rec__record", {"nonce": f"n{i}"})).content[0].text == f"ok n{i}"
                assert (await c.call_tool("rec__echo", {"text": "forbidden"})).is_error
                for text in ("hold-one", "hold-two"):
                    held = await c.call_tool("rec__echo", {"text": text})
                    assert held.is_error and "Held for review as rev_" in held.content[0].text

        run(go())
    return home


def _copy(home: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "home"
    shutil.copytree(home, copy)
    return copy


def _sql(home: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(home / "aegress.db")
    try:
        rows = db.execute(sql, params).fetchall()
        db.commit()
        return rows
    finally:
        db.close()


# -- 1. every column `audit query` and exports show is checked against the sealed bytes ----------------------
EDITS = {  # column -> (kind of the record edited, new value)
    "actor": ("intent", "mallory"),
    "tool": ("intent", "rec__other"),
    "verdict": ("intent", "deny"),
    "kind": ("intent", "decision"),
    "time": ("intent", "2020-01-01T00:00:00.000000Z"),
    "tenant": ("intent", "globex"),
    "status": ("outcome", "failed"),
    "intent_seq": ("outcome", 0),
    "leaf_hash": ("outcome", b"\0" * 32),
}


@pytest.mark.parametrize("column", sorted(EDITS))
def test_an_edited_column_is_found(session: Path, tmp_path: Path, column: str) -> None:
    home = _copy(session, tmp_path)
    kind, value = EDITS[column]
    [(row_id, seq)] = _sql(home, "SELECT id, seq FROM evidence WHERE tenant = 'acme' AND kind = ? ORDER BY seq"
                                 " LIMIT 1 OFFSET 1", (kind,))
    _sql(home, f"UPDATE evidence SET {column} = ? WHERE id = ?", (value, row_id))
    proc = aegress(home, "audit", "verify", "--tenant", "acme", "--json", check=False)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    finding = json.loads(proc.stdout)["logs"][0]["finding"]
    assert finding["problem"] == "modified" and finding["seq"] == seq
    assert f"record {seq}: the stored '{column}' column does not match the sealed record" in finding["message"]


def test_the_untouched_log_verifies_with_its_columns(session: Path) -> None:
    report = json.loads(aegress(session, "audit", "verify", "--final", "--json").stdout)  # no flags: every log
    assert report["ok"] and len(report["logs"]) == 2
    acme = next(r for r in report["logs"] if r["origin"].endswith("/tenant/acme"))
    assert acme["published_checkpoint"] and acme["latest_checkpoint_size"] == acme["size"]


# -- 2. plain `audit verify` checks the newest checkpoint published outside the database ---------------------
@pytest.mark.parametrize("cut", [3, "all"])
def test_a_truncated_log_is_found_by_plain_verify(session: Path, tmp_path: Path, cut: int | str) -> None:
    from gateway.audit.merkle import leaf_hash

    home = _copy(session, tmp_path)
    [(origin, size)] = _sql(home, "SELECT origin, size FROM evidence_heads WHERE origin LIKE '%/tenant/acme'")
    keep = 0 if cut == "all" else size - int(cut)
    _sql(home, "DELETE FROM evidence WHERE origin = ? AND seq >= ?", (origin, keep))
    _sql(home, "DELETE FROM checkpoints WHERE origin = ? AND size > ?", (origin, keep))
    if keep:
        [(last,)] = _sql(home, "SELECT data FROM evidence WHERE origin = ? AND seq = ?", (origin, keep - 1))
        _sql(home, "UPDATE evidence_heads SET size = ?, last_hash = ? WHERE origin = ?",
             (keep, leaf_hash(last), origin))
    else:  # the whole log gone from the database
        _sql(home, "DELETE FROM evidence_heads WHERE origin = ?", (origin,))
    proc = aegress(home, "audit", "verify", check=False)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    line = next(x for x in proc.stdout.splitlines() if "/tenant/acme" in x)
    assert "truncated" in line and "shorter than a signed checkpoint" in line and "published at" in line
    assert f"ends at seq {keep} but checkpoint" in line and f"covers {size} records" in line


# -- 4. refused and held calls carry their argument digest --------------------------------------------------
@pytest.mark.parametrize(("text", "verdict"), [("forbidden", "deny"), ("hold-one", "review")])
def test_a_refused_or_held_call_is_found_by_its_argument_digest(session: Path, text: str, verdict: str) -> None:
    digest = aegress(session, "audit", "hash", "--tenant", "acme", "--json-value",
                     json.dumps({"text": text})).stdout.strip()
    found = evidence_rows(session, "--digest", digest)
    assert [(r["kind"], r["verdict"]) for r in found] == [("decision", verdict)]
    assert found[0]["record"]["body"]["args_digest"] == digest


# -- 3. every operator change is sealed in the transaction that makes it ------------------------------------
def _new_records(home: Path, change: Callable[[], object]) -> list[dict[str, Any]]:
    [(before,)] = _sql(home, "SELECT COALESCE(MAX(id), 0) FROM evidence")
    change()
    rows = _sql(home, "SELECT kind, data FROM evidence WHERE id > ? ORDER BY id", (before,))
    return [{"kind": kind, **json.loads(data)["body"]} for kind, data in rows]


def _one(records: list[dict[str, Any]], kind: str, change: str | None = None) -> dict[str, Any]:
    assert len(records) == 1, records
    assert records[0]["kind"] == kind and records[0].get("change") == change, records
    return records[0]


def test_each_operator_change_leaves_exactly_one_sealed_record(session: Path, tmp_path: Path) -> None:
    home = _copy(session, tmp_path)
    policy = tmp_path / "p.toml"
    policy.write_text(POLICY)

    def cli(*args: str) -> Callable[[], object]:
        return lambda: aegress(home, *args)

    _one(_new_records(home, cli("tenant", "create", "globex")), "operator_change", "tenant_created")
    _one(_new_records(home, cli("actor", "add", "--tenant", "globex", "bob")), "operator_change", "actor_added")
    issued: dict[str, Any] = {}
    rec = _one(_new_records(home, lambda: issued.update(json.loads(aegress(
        home, "token", "issue", "--tenant", "globex", "--actor", "bob", "--json").stdout))),
        "operator_change", "token_issued")
    assert rec["subject"] == issued["id"] and rec["subject_actor"] == "bob"
    assert issued["token"] not in json.dumps(rec)
    _one(_new_records(home, cli("token", "revoke", issued["id"], "--yes")), "token_revoked")
    assert _new_records(home, cli("token", "revoke", issued["id"])) == []  # nothing changed, nothing sealed
    rec = _one(_new_records(home, cli("upstream", "add", "--tenant", "globex", "up2", "--command", "true",
                                      "--env", "SECRET=hunter2-value", "--no-probe")),
               "operator_change", "upstream_added")
    assert rec["config_digest"].startswith("sha256:") and "hunter2" not in json.dumps(rec)
    _one(_new_records(home, cli("policy", "apply", str(policy), "--tenant", "globex", "--yes")), "policy_changed")
    _one(_new_records(home, cli("upstream", "remove", "up2", "--tenant", "globex", "--yes")),
         "operator_change", "upstream_removed")
    _one(_new_records(home, cli("actor", "remove", "bob", "--tenant", "globex", "--yes")),
         "operator_change", "actor_removed")
    _one(_new_records(home, cli("tenant", "delete", "globex", "--yes")), "operator_change", "tenant_deleted")
    rec = _one(_new_records(home, cli("policy", "approve-tool", "--tenant", "acme", "rec", "record", "echo",
                                      "--as", "carol", "--yes")), "operator_change", "tools_approved")
    assert rec["tools"] == ["echo", "record"] and rec["actor"] == "carol"
    [(first,), (second,)] = _sql(home, "SELECT id FROM held_calls WHERE tenant_id = 'acme' ORDER BY id")
    _one(_new_records(home, cli("review", "approve", first, "--as", "carol")), "review_approved")
    _one(_new_records(home, cli("review", "deny", second, "--as", "carol", "--reason", "no")), "review_denied")
    assert aegress(home, "audit", "verify").returncode == 0


def test_a_change_whose_seal_fails_is_not_made(tmp_path: Path) -> None:
    home = tmp_path / "home"
    setup_tenant(home, "acme", "alice")
    token_id = json.loads(aegress(home, "token", "list", "--tenant", "acme", "--json").stdout)[0]["id"]
    policy = tmp_path / "p.toml"
    policy.write_text(POLICY)
    _sql(home, "CREATE TRIGGER refuse_evidence BEFORE INSERT ON evidence BEGIN"
               " SELECT RAISE(ABORT, 'evidence refused'); END")
    attempts = {
        "token revoke": ("token", "revoke", token_id, "--yes"),
        "policy apply": ("policy", "apply", str(policy), "--tenant", "acme", "--yes"),
        "tenant create": ("tenant", "create", "globex"),
        "actor add": ("actor", "add", "--tenant", "acme", "bob"),
    }
    for name, args in attempts.items():
        proc = aegress(home, *args, check=False)
        assert proc.returncode != 0 and "Could not seal the change" in proc.stderr, (name, proc.stderr)
    assert _sql(home, "SELECT revoked_at FROM tokens WHERE id = ?", (token_id,)) == [(None,)]
    assert _sql(home, "SELECT COUNT(*) FROM policies") == [(0,)]
    assert _sql(home, "SELECT id FROM tenants") == [("acme",)]
    assert _sql(home, "SELECT id FROM actors") == [("alice",)]
    _sql(home, "DROP TRIGGER refuse_evidence")
    assert aegress(home, "audit", "verify").returncode == 0


# -- 5. exports: never through a symlink, never over a file without --force, owner-only ----------------------
def _export(home: Path, fmt: str, out: Path, *flags: str) -> Any:
    return aegress(home, "audit", "export", "--tenant", "acme", "--format", fmt, "--no-sign", "--out", str(out),
                   *flags, check=False)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "bundle"])
def test_export_never_follows_a_symlink(session: Path, tmp_path: Path, fmt: str) -> None:
    target = tmp_path / "target"
    if fmt == "bundle":
        target.mkdir()
    else:
        target.write_text("keep")
    link, dangling = tmp_path / "link", tmp_path / "dangling"
    link.symlink_to(target)
    dangling.symlink_to(tmp_path / "nowhere")
    for out in (link, dangling):
        for flags in ((), ("--force",)):
            proc = _export(session, fmt, out, *flags)
            assert proc.returncode != 0 and "symbolic link" in proc.stderr, proc.stderr
    assert (list(target.iterdir()) == []) if fmt == "bundle" else target.read_text() == "keep"
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "bundle"])
def test_export_replaces_an_existing_target_only_with_force(session: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "out"
    assert _export(session, fmt, out).returncode == 0
    first = sorted(p.name for p in out.iterdir()) if fmt == "bundle" else out.read_bytes()
    proc = _export(session, fmt, out)
    assert proc.returncode != 0 and "already exists" in proc.stderr and "--force" in proc.stderr
    assert _export(session, fmt, out, "--force").returncode == 0
    assert (sorted(p.name for p in out.iterdir()) if fmt == "bundle" else out.read_bytes()) == first
    other = tmp_path / "not-a-bundle"
    other.mkdir()
    (other / "precious.txt").write_text("mine")
    if fmt == "bundle":  # --force replaces a bundle, never another directory
        assert _export(session, fmt, other, "--force").returncode != 0
        assert (other / "precious.txt").read_text() == "mine"


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "bundle"])
def test_exports_are_readable_by_the_owner_only(session: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "out"
    assert _export(session, fmt, out).returncode == 0
    if fmt == "bundle":
        assert stat.S_IMODE(out.stat().st_mode) == 0o700
        files = [p for p in out.rglob("*") if p.is_file()]
        assert files and {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o600}
        assert {stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_dir()} <= {0o700}
    else:
        assert stat.S_IMODE(out.stat().st_mode) == 0o600 and out.stat().st_size > 0
