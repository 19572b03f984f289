"""Team scale in one run (issue 11): one replica on SQLite, one on Postgres, three on Postgres behind nginx.

Starts the HTTP fixture upstream, a gateway on SQLite (its own data dir) and a cluster of three replicas
on one Postgres database with a private Redis behind nginx (tests/cluster.py), registers the same
upstream in both, and drives `tools/call echo` with the minimal keep-alive client (bench/lean_client.py, on
uvloop, as bench/gateway_bench.py: one 2025-11-25 session per target, so the three-replica figure also
proves that a session is served by any replica). Every target is measured in the same rounds, interleaved:
  - latency at one in flight (p50, p99)
  - throughput at 16 and 64 in flight (median of rounds), as ratios against calling the upstream directly
  - CPU seconds per call of every process involved (replicas, nginx, Postgres backends, Redis, upstream,
    this client) and the machine's busy share during the three-replica rounds: on a 2-core machine the
    three replicas, nginx, Postgres, the upstream and the client share two cores, and that bounds them.
Targets: one replica on Postgres >= 0.8 of one on SQLite; three replicas >= 1.5 of one (Postgres) at 64
in flight, or the CPU profile above showing what bounds it.
With --profile DIR, after the measured rounds, py-spy (`--pyspy`, default `py-spy` on PATH) records the
SQLite gateway, the lone Postgres replica, and replica 0 during the three-replica round, each over one round
at 64 in flight (bench/profiling.py: raw samples and a speedscope file per target in DIR, and a summary).
Only loopback addresses; every loop bounded; every process stopped.

    .venv/bin/python bench/replica_bench.py [--calls 1500] [--rounds 3] [--json bench/results/replicas.json]
                                            [--profile DIR [--pyspy PATH]]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import proc_stats  # noqa: E402
from bench.gateway_bench import pct, throughput  # noqa: E402
from bench.lean_client import LeanClient  # noqa: E402
from tests.cluster import cluster  # noqa: E402
from tests.procs import aegress, allow_all, run_gateway, run_http_upstream, setup_tenant  # noqa: E402

CAPS = ("--max-calls-per-actor", "256", "--max-calls-per-tenant", "256", "--max-connections-per-address", "4096",
        "--max-sessions-per-actor", "64")


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return float(sum(fields) - idle), float(sum(fields))


def pids_named(*names: str) -> list[int]:
    """Live processes whose command name is one of `names` (Postgres backends, nginx workers)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                comm = Path(f"/proc/{entry}/comm").read_text().strip()
            except OSError:
                continue
            if comm in names:
                out.append(int(entry))
    return out


async def measure(targets: dict[str, tuple[str, dict[str, str], str]], groups: dict[str, object], calls: int,
                  rounds: int, profile: tuple[Path, Path, dict[str, int]] | None = None) -> dict:
    clients: dict[str, LeanClient] = {}
    for name, (url, headers, _) in targets.items():
        clients[name] = LeanClient(url, headers, 64)
        await clients[name].start()
    try:
        for name, c in clients.items():
            for _ in range(50):
                await c.call(targets[name][2])
        lat: dict[str, list[float]] = {n: [] for n in targets}
        for _ in range(min(calls, 600)):
            for name, c in clients.items():
                lat[name].append(await c.call(targets[name][2]))
        out: dict = {"latency_c1_ms": {n: {"p50": round(pct(v, 50) * 1000, 3), "p99": round(pct(v, 99) * 1000, 3)}
                                       for n, v in lat.items()},
                     "throughput": {}, "cpu_ms_per_call": {}, "machine_busy_share": {}}
        for inflight in (16, 64):
            per: dict[str, list[float]] = {n: [] for n in targets}
            cpu: dict[str, dict[str, float]] = {n: {} for n in targets}
            busy: dict[str, list[float]] = {n: [] for n in targets}
            for _ in range(rounds):
                for name, c in clients.items():
                    pids = {g: f() for g, f in groups.items()}  # type: ignore[operator]
                    before = {g: proc_stats.snapshot(p) for g, p in pids.items()}
                    b0, t0 = machine_busy()
                    per[name].append(await throughput(c, targets[name][2], inflight, calls))
                    b1, t1 = machine_busy()
                    busy[name].append((b1 - b0) / max(t1 - t0, 1.0))
                    for g, p in pids.items():
                        spent = proc_stats.spent(before[g], proc_stats.snapshot(p))
                        cpu[name][g] = cpu[name].get(g, 0.0) + spent
            out["throughput"][str(inflight)] = {n: round(statistics.median(v), 1) for n, v in per.items()}
            out["cpu_ms_per_call"][str(inflight)] = {
                n: {g: round(s * 1000 / (calls * rounds), 3) for g, s in by.items() if s > 0} for n, by in cpu.items()}
            out["machine_busy_share"][str(inflight)] = {n: round(statistics.median(v), 2) for n, v in busy.items()}
        if profile is not None:
            out["profile"] = await profile_rounds(targets, clients, calls, *profile)
        return out
    finally:
        for c in clients.values():
            await c.close()


async def profile_rounds(targets: dict[str, tuple[str, dict[str, str], str]], clients: dict[str, LeanClient],
                         calls: int, pyspy: Path, out_dir: Path, pids: dict[str, int]) -> dict:
    """One round at 64 in flight per target in `pids` under py-spy, recording that target's process."""
    from bench import profiling

    summaries = {}
    for name, pid in pids.items():
        raw = out_dir / f"{name}.raw"
        with profiling.record(pyspy, pid, raw):
            rate = await throughput(clients[name], targets[name][2], 64, calls)
        profiling.write_speedscope(raw, out_dir / f"{name}.speedscope.json")
        summaries[name] = {"calls_per_s_under_profiler": round(rate, 1), "calls": calls, "raw": str(raw),
                           **profiling.summarise(raw)}
    return summaries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--calls", type=int, default=1500, help="calls per throughput round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--profile", type=Path, metavar="DIR", help="after the rounds, py-spy each gateway target")
    ap.add_argument("--pyspy", type=Path, default=Path(shutil.which("py-spy") or "py-spy"), help="py-spy binary")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="replica-bench-"))
    sqlite_home = base / "sqlite-home"
    os.environ["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
    t_start = time.monotonic()
    with run_http_upstream("bench") as (up_url, up_proc):
        sqlite_token = setup_tenant(sqlite_home, "bench", "runner")
        allow_all(sqlite_home, "bench")
        aegress(sqlite_home, "upstream", "add", "--tenant", "bench", "http", "--url", up_url, "--allow-private")
        with run_gateway(sqlite_home, *CAPS) as gw, cluster(3, base=base / "cluster", serve_args=CAPS) as c:
            c.aegress("tenant", "create", "bench")
            c.aegress("actor", "add", "--tenant", "bench", "runner")
            pg_token = c.aegress_json("token", "issue", "--tenant", "bench", "--actor", "runner")["token"]
            allow_all_cluster(c)
            c.aegress("upstream", "add", "--tenant", "bench", "http", "--url", up_url, "--allow-private")
            time.sleep(1.5)  # the replicas pick the registration up within a second
            auth_sqlite = {"Authorization": f"Bearer {sqlite_token}"}
            auth_pg = {"Authorization": f"Bearer {pg_token}"}
            targets = {
                "direct": (up_url, {}, "echo"),
                "sqlite_1": (gw.url, auth_sqlite, "http__echo"),
                "postgres_1": (c.replicas[0].url, auth_pg, "http__echo"),
                "postgres_3_nginx": (c.url, auth_pg, "http__echo"),
            }
            gw_pid = gw.proc.popen.pid
            groups = {
                "sqlite_gateway": lambda: [gw_pid],
                "replicas": lambda: [r.pid for r in c.replicas if r.pid],
                "nginx": lambda: pids_named("nginx"),
                "postgres": lambda: pids_named("postgres"),
                "redis": lambda: pids_named("redis-server"),
                "upstream": lambda: [up_proc.popen.pid],
                "client": lambda: [os.getpid()],
            }
            profile = None
            if args.profile:
                profile = (args.pyspy, args.profile, {"sqlite_1": gw_pid, "postgres_1": c.replicas[0].pid,
                                                      "postgres_3_nginx": c.replicas[0].pid})
            uvloop.install()  # the client's loop, as in bench/gateway_bench.py
            results = asyncio.run(asyncio.wait_for(measure(targets, groups, args.calls, args.rounds, profile), 1800))
            results["replica_spread"] = dict(c.spread())
    d = {k: v["direct"] for k, v in results["throughput"].items()}
    results["throughput_ratio_vs_direct"] = {
        n: {k: round(v / d[n], 3) for k, v in t.items() if k != "direct"} for n, t in results["throughput"].items()}
    t = results["throughput"]
    results["targets"] = [
        {"target": "postgres_1 >= 0.8 x sqlite_1", "inflight": n,
         "value": round(t[n]["postgres_1"] / t[n]["sqlite_1"], 3),
         "pass": t[n]["postgres_1"] / t[n]["sqlite_1"] >= 0.8} for n in ("16", "64")
    ] + [{"target": "postgres_3_nginx >= 1.5 x postgres_1 at 64", "inflight": "64",
          "value": round(t["64"]["postgres_3_nginx"] / t["64"]["postgres_1"], 3),
          "pass": t["64"]["postgres_3_nginx"] / t["64"]["postgres_1"] >= 1.5}]
    results["cores"] = os.cpu_count()
    results["wall_s"] = round(time.monotonic() - t_start, 1)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print_table(results)
    if args.profile:
        from bench.profiling import print_summary

        for name, summary in results["profile"].items():
            print_summary(f"{name}, 64 in flight, {summary['calls_per_s_under_profiler']} calls/s under py-spy",
                          summary)


def allow_all_cluster(c: object) -> None:
    """The allow-all policy of tests/procs.py, applied through the cluster's CLI environment."""
    from tests.procs import ALLOW_ALL_POLICY

    path = Path(tempfile.mkdtemp()) / "policy.toml"
    path.write_text(ALLOW_ALL_POLICY)
    c.aegress("policy", "apply", "--tenant", "bench", str(path), "--yes")  # type: ignore[attr-defined]


def print_table(r: dict) -> None:
    names = [n for n in r["latency_c1_ms"] if n != "direct"]
    print(f"\n{'target':<20}{'p50 +ms':>9}{'@16 ratio':>11}{'@64 ratio':>11}{'busy@64':>9}", file=sys.stderr)
    d50 = r["latency_c1_ms"]["direct"]["p50"]
    for n in names:
        print(f"{n:<20}{r['latency_c1_ms'][n]['p50'] - d50:>9.2f}{r['throughput_ratio_vs_direct']['16'][n]:>11.2f}"
              f"{r['throughput_ratio_vs_direct']['64'][n]:>11.2f}{r['machine_busy_share']['64'][n]:>9.2f}",
              file=sys.stderr)
    for t in r["targets"]:
        print(f"{'PASS' if t['pass'] else 'FAIL'}  {t['target']} ({t['inflight']}): {t['value']}", file=sys.stderr)


if __name__ == "__main__":
    main()
