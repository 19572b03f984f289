"""Start-up time of `aegress --help` and of every non-serving command (issue 10's benchmark).

CLI start-up. From the repository root, with nothing else running if possible (2 cores are noisy):

    .venv/bin/python bench/cli_start.py [--runs 7] [--top 10] [--json bench/results/cli_start.json]

Each command runs as its own process, `python -m aegress_cli.main ...` with PYTHONPATH set to this
checkout, against a fresh AEGRESS_HOME seeded with a tenant, an actor, a token, a policy, an upstream
and a few sealed audit records (HOME points at a temp dir too, so no real client config is read).
Rounds interleave the commands so machine noise hits them alike; a row is the median wall time of
--runs runs, next to `python -c pass` measured in the same rounds. Targets: 0.25 s for every row,
0.15 s for `tenant list`.

Every command also runs once (first, which warms the bytecode caches) under `python -X importtime`.
The script exits 1 when a row misses its target or a command imports the MCP SDK or the server stack
(mcp, starlette, uvicorn, httpx2). The `pydantic` column says whether Typer's conversion of option
values loaded it (see aegress_cli/main.py). `--top K` lists the K costliest top-level imports of
`--help` and `tenant list`; a command group's own module is loaded with importlib, which
`-X importtime` does not list, so what it imports shows up at the top level.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BASELINE = "python -c pass"
TARGET_S = 0.25
TARGETS_S = {"tenant list": 0.15}
FORBIDDEN = ("mcp", "starlette", "uvicorn", "httpx2")
"""Top-level packages a non-serving command must never import."""

POLICY = """version = 1
default = "allow"

[[rules]]
id = "no-delete"
verdict = "block"
upstream = "files"
name = "delete_*"
"""


def commands(policy_file: Path) -> list[tuple[str, list[str], int]]:
    """(label, arguments, expected exit code) of every command timed."""
    helps = [("--help", ["--help"], 0)]
    for group in ("tenant", "actor", "token", "upstream", "upstream secret", "policy", "review", "audit", "client",
                  "tunnel", "oauth", "oauth issuer", "oauth clients", "oauth grants", "serve", "bridge", "db",
                  "deploy", "status", "operator", "operator token"):
        helps.append((f"{group} --help", [*group.split(), "--help"], 0))
    helps.append(("completion --help", ["completion", "--help"], 0))
    runs = [
        ("--version", ["--version"], 0),
        ("completion show", ["completion", "show", "bash"], 0),
        ("tenant list", ["tenant", "list"], 0),
        ("tenant show", ["tenant", "show", "acme"], 0),
        ("actor list", ["actor", "list", "-t", "acme"], 0),
        ("token list", ["token", "list"], 0),
        ("upstream list", ["upstream", "list", "-t", "acme"], 0),
        ("upstream show", ["upstream", "show", "files", "-t", "acme"], 0),
        ("policy list", ["policy", "list", "-t", "acme"], 0),
        ("policy show", ["policy", "show", "-t", "acme"], 0),
        ("policy check", ["policy", "check", str(policy_file)], 0),
        ("policy diff", ["policy", "diff", str(policy_file), "-t", "acme"], 0),
        ("policy test", ["policy", "test", "-t", "acme", "--tool", "files__read_file"], 3),
        ("policy pins", ["policy", "pins", "-t", "acme"], 0),
        ("review list", ["review", "list"], 0),
        ("audit query", ["audit", "query", "-t", "acme"], 0),
        ("audit tail", ["audit", "tail", "-t", "acme"], 0),
        ("audit show", ["audit", "show", "acme:1"], 0),
        ("audit hash", ["audit", "hash", "-t", "acme", "hello"], 0),
        ("audit verify", ["audit", "verify", "-t", "acme"], 0),
        ("audit pubkey", ["audit", "pubkey"], 0),
        ("client list", ["client", "list"], 0),
        ("client headers", ["client", "headers", "-t", "acme", "-a", "alice"], 0),
        ("client env", ["client", "env", "-t", "acme", "-a", "alice"], 0),
        ("client setup --dry-run", ["client", "setup", "claude-code", "-t", "acme", "-a", "alice", "--dry-run"], 0),
        ("db status", ["db", "status"], 0),
        ("tunnel status", ["tunnel", "status"], 3),  # no MCP_TUNNEL_* in the bench's environment
        ("deploy list", ["deploy", "list"], 0),
        ("status", ["status"], 0),  # no gateway runs in the bench: the lock file alone says so
        ("status --json", ["status", "--json"], 0),
        ("operator token list", ["operator", "token", "list"], 0),
        ("deploy render", ["deploy", "render", "aws-lambda", "--out", str(policy_file.parent / "rendered"),
                           "--image", "example.com/aegress:1", "--force"], 0),
        ("oauth issuer list", ["oauth", "issuer", "list"], 0),
        ("oauth clients list", ["oauth", "clients", "list"], 0),
        ("oauth grants list", ["oauth", "grants", "list"], 0),
    ]
    return helps + runs


def cli_env(home: Path, user_home: Path) -> dict[str, str]:
    dropped = ("PYTHONDONTWRITEBYTECODE", "DATABASE_URL", "AEGRESS_DATABASE_URL")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update({"AEGRESS_HOME": str(home), "HOME": str(user_home), "PYTHONPATH": str(ROOT), "COLUMNS": "100",
                "NO_COLOR": "1", "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"})
    for name in ("AEGRESS_TENANT_ID", "AEGRESS_ACTOR_ID", "AEGRESS_MCP_GATEWAY_TOKEN", "MCP_TUNNEL_PROVIDER",
                 "MCP_TUNNEL_ID", "MCP_TUNNEL_WORKSPACE", "MCP_TUNNEL_OWNER"):  # `tunnel status` expects none
        env.pop(name, None)
    return env


def run_cli(env: dict[str, str], args: list[str], *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *flags, "-m", "aegress_cli.main", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


def seed(env: dict[str, str], home: Path, policy_file: Path) -> None:
    """A tenant with an actor, a token, a policy, an upstream and a few sealed, checkpointed records."""
    steps = [
        ["tenant", "create", "acme"],
        ["actor", "add", "alice", "-t", "acme"],
        ["token", "issue", "-t", "acme", "-a", "alice", "--json"],  # kept in the data dir's 0600 file
        ["policy", "apply", str(policy_file), "-t", "acme", "--yes", "--json"],
        ["upstream", "add", "files", "-t", "acme", "--url", "http://127.0.0.1:9/mcp", "--allow-private",
         "--no-probe"],
    ]
    for args in steps:
        proc = run_cli(env, args)
        if proc.returncode != 0:
            sys.exit(f"seeding failed: aegress {' '.join(args)}: {proc.stderr.strip()}")
    seed_records(home)


def seed_records(home: Path, calls: int = 5) -> None:
    from dataclasses import replace

    from gateway.audit.log import Entry, expected_columns, tenant_origin
    from gateway.evidence.checkpointer import sign_checkpoints
    from gateway.evidence.keys import load_signing_key_for
    from gateway.evidence.origins import origin_prefix
    from gateway.evidence.settings import EvidenceSettings
    from gateway.store.sqlite import SQLiteStore

    store = SQLiteStore(home / "aegress.db")
    origin = tenant_origin(origin_prefix(store), "acme")
    digest = "hmac-sha256:" + "ab" * 32
    first = len(store.evidence_records(origin))  # applying the policy already sealed a record
    batch: list[Entry] = []
    for i in range(calls):
        intent = Entry(origin, "intent", f"2026-01-02T03:04:0{i}.000000Z", {
            "tenant": "acme", "actor": "alice", "token_id": "tok_x", "client_name": "bench", "client_version": "1",
            "upstream": "files", "tool": "files__read_file", "tool_def_hash": "sha256:" + "cd" * 32,
            "verdict": "allow", "policy_version": "1", "rule_id": "default", "args_digest": digest,
            "request_id": str(i), "args_preview": '{"path":"/tmp/x"}'})
        outcome = Entry(origin, "outcome", f"2026-01-02T03:04:0{i}.100000Z", {
            "intent_seq": first + 2 * i, "status": "completed", "result_digest": digest, "latency_ms": 12,
            "upstream_latency_ms": 10})
        batch += [replace(intent, columns=expected_columns("intent", intent.body, "acme")),
                  replace(outcome, columns=expected_columns("outcome", outcome.body, "acme", intent.body))]
    store.append_evidence(batch)
    settings = EvidenceSettings.from_env(home)
    key, _ = load_signing_key_for(home, origin_prefix(store), settings.key_file, create=True)
    assert key is not None
    sign_checkpoints(store, key, settings)
    store.close()


def wall(argv: list[str], env: dict[str, str], timeout: float = 120) -> float:
    """Seconds from spawn to exit. A blocking wait, not `subprocess.run(timeout=...)`, whose polling rounds
    the time up to the next 50 ms; a timer kills a process that hangs, so the wait stays bounded."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        proc.wait()
    finally:
        watchdog.cancel()
    return time.perf_counter() - start


def parse_importtime(stderr: str) -> list[tuple[str, int, int, int]]:
    """(module, self us, cumulative us, nesting depth) for each `-X importtime` line."""
    out = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative, name = line.removeprefix("import time:").split("|", 2)
        depth = (len(name) - len(name.lstrip()) - 1) // 2
        out.append((name.strip(), int(self_us), int(cumulative), depth))
    return out


def measure(env: dict[str, str], cmds: list[tuple[str, list[str], int]], runs: int,
            ) -> tuple[dict[str, list[float]], dict[str, set[str]], dict[str, list[tuple[str, int, int, int]]]]:
    """Wall times per label (the baseline first), and what each command imports."""
    imports: dict[str, list[tuple[str, int, int, int]]] = {}
    for label, cli_args, code in cmds:
        proc = run_cli(env, cli_args, "-X", "importtime")
        if proc.returncode != code:
            sys.exit(f"aegress {' '.join(cli_args)} exited {proc.returncode} (expected {code}):\n"
                     f"{proc.stdout}{proc.stderr[-2000:]}")
        imports[label] = parse_importtime(proc.stderr)
    times: dict[str, list[float]] = {BASELINE: [], **{label: [] for label, _, _ in cmds}}
    for _ in range(max(1, runs)):
        times[BASELINE].append(wall([sys.executable, "-c", "pass"], env))
        for label, cli_args, _ in cmds:
            times[label].append(wall([sys.executable, "-m", "aegress_cli.main", *cli_args], env))
    modules = {label: {m for m, *_ in entries} for label, entries in imports.items()}
    return times, modules, imports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs of each command (the median counts)")
    parser.add_argument("--top", type=int, default=10, help="costliest top-level imports to list (0: none)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="aegress-cli-bench-"))
    try:
        home, user_home = work / "home", work / "user"
        user_home.mkdir()
        policy_file = work / "policy.toml"
        policy_file.write_text(POLICY)
        env = cli_env(home, user_home)
        seed(env, home, policy_file)
        cmds = commands(policy_file)
        times, modules, imports = measure(env, cmds, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = []
    for label in times:
        median = statistics.median(times[label])
        target = None if label == BASELINE else TARGETS_S.get(label, TARGET_S)
        bad = sorted({m.split(".")[0] for m in modules.get(label, ())} & set(FORBIDDEN))
        rows.append({"command": label if label == BASELINE else f"aegress {label}", "median_s": round(median, 3),
                     "min_s": round(min(times[label]), 3), "target_s": target,
                     "pass": (target is None or median <= target) and not bad,
                     "pydantic": "pydantic" in modules[label] if label in modules else None,
                     "forbidden_imports": bad})

    width = max(len(r["command"]) for r in rows)
    print(f"{'command':<{width}}  median_s  min_s  target  pydantic  result")
    for r in rows:
        target = "" if r["target_s"] is None else f"{r['target_s']:.2f}"
        pyd = "" if r["pydantic"] is None else ("yes" if r["pydantic"] else "no")
        result = "" if r["target_s"] is None else ("pass" if r["pass"] else "FAIL")
        if r["forbidden_imports"]:
            result += " imports " + ",".join(r["forbidden_imports"])
        print(f"{r['command']:<{width}}  {r['median_s']:8.3f}  {r['min_s']:5.3f}  {target:>6}  {pyd:>8}  {result}")

    largest = {}
    for label in ("--help", "tenant list") if args.top > 0 else ():
        top = sorted((e for e in imports[label] if e[3] == 0), key=lambda e: -e[2])[:args.top]
        largest[label] = [{"module": m, "cumulative_ms": round(c / 1000, 1)} for m, _, c, _ in top]
        print(f"\nCostliest top-level imports of `aegress {label}` (cumulative ms, under -X importtime):")
        for m, _, c, _ in top:
            print(f"  {c / 1000:7.1f}  {m}")

    results = {"runs": args.runs, "python": sys.version.split()[0], "rows": rows, "largest_imports": largest}
    text = json.dumps(results, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print("\n" + text)
    if not all(r["pass"] for r in rows):
        sys.exit("some commands missed their target or imported the server stack (see the table)")

if __name__ == "__main__":
    main()
