"""Several gateway replicas behind real nginx: the harness of the multi-replica tests and benchmarks.

    from tests.cluster import cluster
    with cluster(3) as c:          # 3 x `aegress serve`, one Postgres database, a private Redis, nginx
        c.url                      # http://127.0.0.1:<nginx port>/mcp, round-robin over the replicas
        c.replicas[1].url          # one replica, directly
        c.aegress("token", "issue", ...)   # a CLI command on the cluster's database (replica 0's data dir)
        c.kill(2); c.restart(2)    # SIGKILL, then the same replica id and port again
        c.redis.stop(); c.redis.start()

What the replicas share, and why (docs/postgres.md, docs/dev-notes/cluster-harness.md):
- the database (`AEGRESS_DATABASE_URL`): tenants, tokens, policies, reviews, evidence;
- the master key file (`secrets/master.key`): token hashes and evidence keys derive from it, so a token
  issued through one data dir must hash the same on every replica;
- the checkpoint signing key (`secrets/audit-signing.key`): checkpoints in the shared database are signed
  by whichever replica wrote them, and `aegress audit verify` trusts only its own data dir's `keys.txt`.
  Replica 0 creates the key at its first start; the others get a copy before they start.
Each replica has its own data dir (the data dir lock allows one gateway per dir), its own
`AEGRESS_REPLICA_ID` (`replica-<i>`) and the same `AEGRESS_REDIS_URL` (a private redis-server).

No pytest here: the launchers are plain context managers. Every process they start is stopped when the
context exits, also on failure (terminate, bounded wait, kill of the whole process tree); every wait is
bounded. Only loopback addresses.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.procs import ROOT, Proc, aegress, cli_env

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0

SHARED_SECRETS = ("master.key", "audit-signing.key")
"""Files of `<data dir>/secrets/` every replica needs identical (see the module docstring)."""


class ClusterError(RuntimeError):
    """A process of the harness did not start or answer; the message carries its output's tail."""


# -- processes ------------------------------------------------------------------------------------------
def free_port() -> int:
    """A loopback port nobody listens on right now (the caller retries if another process takes it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _started(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc/<pid>/stat field 22): with the pid, it
    names one process, so a pid the kernel has since given to someone else is never signalled."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _descendants(pid: int) -> list[tuple[int, str]]:
    """Every process below `pid` (Linux /proc) as (pid, start time), children first; [] when it is gone."""
    found: list[tuple[int, str]] = []
    todo = [pid]
    while todo and len(found) < 1000:
        parent = todo.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            with contextlib.suppress(OSError, ValueError):
                for kid in (int(k) for k in children.read_text().split()):
                    started = _started(kid)
                    if started is not None:
                        found.append((kid, started))
                        todo.append(kid)
    return found


def _kill_if_same(procs: Sequence[tuple[int, str]]) -> None:
    for pid, started in procs:
        if _started(pid) == started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def kill_tree(popen: subprocess.Popen[str]) -> None:
    """SIGKILL a process we started and everything it started (stdio upstreams run in their own sessions,
    so killing the process group alone would leave them behind)."""
    if popen.poll() is not None:
        return
    below = _descendants(popen.pid)
    with contextlib.suppress(ProcessLookupError):
        popen.kill()
    _kill_if_same(below)
    popen.wait(STOP_TIMEOUT_S)


def stop_proc(proc: Proc, sig: int = signal.SIGTERM) -> None:
    """Ask politely (`sig`), wait a bounded time, then kill the tree; close the output reader."""
    if proc.popen.poll() is None:
        below = _descendants(proc.popen.pid)
        with contextlib.suppress(ProcessLookupError):
            proc.popen.send_signal(sig)
        try:
            proc.popen.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            kill_tree(proc.popen)
        _kill_if_same(below)  # children a clean exit should have ended; one still running is ended here
    proc.stop()


def _tail(proc: Proc, n: int = 4000) -> str:
    return "".join(proc.output)[-n:]


def _wait_port(port: int, proc: Proc, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            time.sleep(0.2)  # let the reader thread collect the last lines
            raise ClusterError(f"{what} exited ({proc.popen.returncode}):\n{_tail(proc)}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise ClusterError(f"{what} did not listen on {LOOPBACK}:{port} within {timeout:g} s:\n{_tail(proc)}")


# -- a private Redis ------------------------------------------------------------------------------------
@dataclass
class Redis:
    """A redis-server of our own on a loopback port: no persistence, its files under `dir`."""

    dir: Path
    port: int = 0
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        """Start it (again on the same port once it has one); a taken port is retried a few times."""
        if self.proc is not None and self.proc.popen.poll() is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        fixed = self.port != 0
        for _ in range(1 if fixed else 5):
            port = self.port if fixed else free_port()
            proc = Proc([REDIS_SERVER, "--bind", LOOPBACK, "--port", str(port), "--dir", str(self.dir),
                         "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes",
                         "--loglevel", "warning", "--logfile", ""], dict(os.environ))
            try:
                _wait_port(port, proc, timeout, "redis-server")
            except ClusterError as exc:
                stop_proc(proc)
                if fixed or "Address already in use" not in str(exc):
                    raise
                continue
            self.port, self.proc = port, proc
            if not self.ping():
                raise ClusterError(f"redis-server on port {port} does not answer PING:\n{_tail(proc)}")
            return
        raise ClusterError("redis-server: no free loopback port after 5 tries")

    def stop(self) -> None:
        """SIGTERM (redis saves nothing: persistence is off), bounded wait, then kill."""
        if self.proc is not None:
            stop_proc(self.proc)
            self.proc = None

    def ping(self, timeout: float = 2.0) -> bool:
        """PING over a raw socket (no client library needed): True when it answers +PONG."""
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=timeout) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False


@contextlib.contextmanager
def private_redis(base: Path | None = None) -> Iterator[Redis]:
    """A redis-server of this test or benchmark only, stopped at exit. Never the machine's shared one."""
    with contextlib.ExitStack() as stack:
        if base is None:
            base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aegress-redis-")))
        redis = Redis(base / "redis")
        stack.callback(redis.stop)
        redis.start()
        yield redis


# -- nginx ------------------------------------------------------------------------------------------------
NGINX_CONF = """\
# Written by tests/cluster.py: round-robin over the gateway replicas, no stickiness.
worker_processes 1;
{user}pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format cluster '$msec $request_method $status upstream=$upstream_addr upstream_status=$upstream_status '
                       'time=$request_time version=$http_mcp_protocol_version method=$http_mcp_method '
                       'session=$http_mcp_session_id';
    access_log {dir}/access.log cluster;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    upstream aegress {{
{servers}
        keepalive 256;                 # HTTP/1.1 keep-alive to the replicas: idle connections kept for reuse, all
                                       # replicas together; fewer than the requests in flight means a new
                                       # connection (accept, TCP set-up) for many requests
    }}
    server {{
        listen {listen};
        client_max_body_size 0;        # the gateway enforces its own body limit (413)
        location / {{
            proxy_pass http://aegress;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;          # the gateway checks Host against its allowed hosts
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering off;                       # SSE: every event goes out at once
            proxy_request_buffering off;
            proxy_cache off;
            proxy_connect_timeout 5s;
            proxy_read_timeout 3600s;                  # held reviews and long calls keep a stream open
            proxy_send_timeout 3600s;
        }}
    }}
}}
"""


@dataclass
class Nginx:
    """nginx in the foreground (`daemon off`), its config, pid file and logs under `dir`."""

    dir: Path
    upstreams: Sequence[int]
    port: int = 0
    proc: Proc | None = None

    @property
    def base(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def config(self) -> str:
        servers = "\n".join(f"        server {LOOPBACK}:{p};" for p in self.upstreams)
        # as root, workers would run as nobody and could not open files under a 0700 temp dir
        user = "user root;\n" if os.geteuid() == 0 else ""
        return NGINX_CONF.format(user=user, dir=self.dir, servers=servers, listen=f"{LOOPBACK}:{self.port}")

    def start(self, timeout: float = 20.0) -> None:
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.dir / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        fixed = self.port != 0
        for _ in range(1 if fixed else 5):
            if not fixed:
                self.port = free_port()
            conf = self.dir / "nginx.conf"
            conf.write_text(self.config())
            proc = Proc([NGINX, "-p", str(self.dir), "-e", str(self.dir / "error.log"), "-c", str(conf),
                         "-g", "daemon off;"], dict(os.environ))
            try:
                _wait_port(self.port, proc, timeout, "nginx")
            except ClusterError as exc:
                stop_proc(proc)
                log = (self.dir / "error.log").read_text() if (self.dir / "error.log").exists() else ""
                if fixed or "Address already in use" not in str(exc) + log:
                    raise ClusterError(f"{exc}\nerror.log:\n{log[-2000:]}") from None
                continue
            self.proc = proc
            return
        raise ClusterError("nginx: no free loopback port after 5 tries")

    def stop(self) -> None:
        """SIGTERM is nginx's fast shutdown (open SSE streams are cut, not waited for)."""
        if self.proc is not None:
            stop_proc(self.proc)
            self.proc = None

    def upstream_counts(self) -> collections.Counter[str]:
        """Requests per replica address (`127.0.0.1:<port>`) from the access log."""
        counts: collections.Counter[str] = collections.Counter()
        log = self.dir / "access.log"
        for line in log.read_text().splitlines() if log.exists() else []:
            for part in line.split():
                if part.startswith("upstream="):
                    for addr in part[len("upstream="):].split(","):  # "a, b" when nginx tried the next one
                        if addr.strip() and addr.strip() != "-":
                            counts[addr.strip()] += 1
        return counts


# -- the replicas ------------------------------------------------------------------------------------------
@dataclass
class Replica:
    index: int
    replica_id: str
    home: Path
    env: dict[str, str]
    serve_args: tuple[str, ...]
    port: int = 0
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/mcp"

    @property
    def base(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.popen.pid if self.proc is not None and self.proc.popen.poll() is None else None

    @property
    def output(self) -> str:
        return "".join(self.proc.output) if self.proc is not None else ""

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """`aegress serve` on `port` (0 the first time: the gateway picks and prints one)."""
        proc = Proc([sys.executable, "-m", "aegress_cli.main", "serve", "--port", str(self.port), *self.serve_args],
                    self.env)
        try:
            line = proc.wait_for("listening on", timeout=timeout)
        except AssertionError as exc:
            stop_proc(proc)
            raise ClusterError(f"replica {self.replica_id} did not start: {exc}") from None
        self.proc = proc
        self.port = int(line.split("listening on", 1)[1].strip().rsplit("/mcp", 1)[0].rsplit(":", 1)[1])

    def stop(self) -> None:
        """SIGTERM: the gateway drains calls in flight (bounded by its drain grace), then exits."""
        if self.proc is not None:
            stop_proc(self.proc)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL, like a crash: no drain, open intents stay open until this replica id starts again."""
        if self.proc is not None:
            kill_tree(self.proc.popen)
            self.proc.stop()
            self.proc = None


@dataclass
class Cluster:
    base_dir: Path
    database_url: str
    redis: Redis
    nginx: Nginx
    replicas: list[Replica] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The MCP endpoint through nginx."""
        return f"{self.nginx.base}/mcp"

    @property
    def base(self) -> str:
        return self.nginx.base

    def env(self, replica: int = 0, **extra: str) -> dict[str, str]:
        """The environment of an `aegress` command run "on" a replica's host: its data dir, the database."""
        env = dict(self.replicas[replica].env)
        env.update(extra)
        return env

    def cli_extra(self, replica: int = 0) -> dict[str, str]:
        """The variables `env()` adds to `tests.procs.cli_env` (for helpers that take **env)."""
        r = self.replicas[replica]
        return {k: v for k, v in r.env.items() if k.startswith("AEGRESS_") and k != "AEGRESS_HOME"}

    def aegress(self, *args: str, replica: int = 0, check: bool = True, input: str | None = None,
                timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        """An `aegress` command with replica `replica`'s data dir on the shared database."""
        return aegress(self.replicas[replica].home, *args, check=check, input=input, timeout=timeout,
                       **{**self.cli_extra(replica), **env})

    def aegress_json(self, *args: str, replica: int = 0) -> Any:
        return json.loads(self.aegress(*args, "--json", replica=replica).stdout)

    def kill(self, i: int) -> None:
        """SIGKILL replica i (and its upstream processes). nginx keeps it in the pool and, on connection
        errors, passes requests to the next replica."""
        self.replicas[i].kill()

    def stop(self, i: int) -> None:
        self.replicas[i].stop()

    def restart(self, i: int, timeout: float = START_TIMEOUT_S) -> None:
        """Start replica i again with the same replica id, data dir and port (after kill or stop)."""
        r = self.replicas[i]
        if r.pid is not None:
            r.stop()
        deadline = time.monotonic() + timeout
        while True:  # the port of a process just killed can take a moment to be free again
            try:
                r.start(timeout=max(1.0, deadline - time.monotonic()))
                return
            except ClusterError as exc:
                taken = "bind-failed" in str(exc) or "Cannot listen" in str(exc)
                if not taken or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def replica_of_port(self) -> dict[str, str]:
        """`127.0.0.1:<port>` -> replica id, to read `nginx.upstream_counts()`."""
        return {f"{LOOPBACK}:{r.port}": r.replica_id for r in self.replicas}

    def spread(self) -> collections.Counter[str]:
        """Requests nginx passed to each replica so far, by replica id."""
        names = self.replica_of_port()
        return collections.Counter({names.get(a, a): n for a, n in self.nginx.upstream_counts().items()})


def _stop_all(replicas: Sequence[Replica]) -> None:
    """SIGTERM every replica at once (each drains on its own), so stopping N costs one drain, not N."""
    with ThreadPoolExecutor(max_workers=max(1, len(replicas))) as pool:
        for done in [pool.submit(r.stop) for r in replicas]:
            with contextlib.suppress(Exception):
                done.result()
    for r in replicas:  # whatever a failed stop left behind
        r.kill()


def _copy_secret(src: Path, dst_home: Path) -> None:
    dst = dst_home / "secrets" / src.name
    dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o600)


@contextlib.contextmanager
def cluster(n: int = 3, *, base: Path | None = None, database_url: str | None = None,
            serve_args: Sequence[str] = (), env: dict[str, str] | None = None,
            start_timeout: float = START_TIMEOUT_S) -> Iterator[Cluster]:
    """N replicas of `aegress serve` on one Postgres database, a private Redis, nginx in front.

    `database_url`: a Postgres URL the replicas share (e.g. `tests.pg.PgDatabase().schema_url()`); None
    makes a database of its own (tests.pg) and drops it at exit. `env`: extra variables for every replica
    and CLI command (e.g. AEGRESS_CHECKPOINT_INTERVAL). `serve_args`: extra `aegress serve` options.
    """
    if n < 1:
        raise ValueError("a cluster needs at least one replica")
    with contextlib.ExitStack() as stack:
        if base is None:
            base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aegress-cluster-")))
        base.mkdir(parents=True, exist_ok=True)
        if database_url is None:
            from tests.pg import PgDatabase

            db = PgDatabase()
            stack.callback(db.drop)
            database_url = db.schema_url()

        redis = Redis(base / "redis")
        stack.callback(redis.stop)
        redis.start()

        shared = {
            "AEGRESS_DATABASE_URL": database_url,
            "AEGRESS_REDIS_URL": redis.url,
            # behind nginx every connection comes from 127.0.0.1 (the flag's help says: raise it)
            "AEGRESS_MAX_CONNECTIONS_PER_ADDRESS": "4096",
            **(env or {}),
        }
        replicas = []
        for i in range(n):
            home = base / f"replica-{i}" / "home"
            home.mkdir(parents=True, exist_ok=True, mode=0o700)
            renv = cli_env(home, AEGRESS_REPLICA_ID=f"replica-{i}", **shared)
            replicas.append(Replica(i, f"replica-{i}", home, renv, tuple(serve_args)))
        c = Cluster(base, database_url, redis, Nginx(base / "nginx", []), replicas, shared)
        stack.callback(_stop_all, replicas)
        stack.callback(c.nginx.stop)

        # one master key for all (made the way any `aegress` command makes it), copied before anyone starts
        from gateway.secrets import load_master_key

        load_master_key(replicas[0].home)
        for r in replicas[1:]:
            _copy_secret(replicas[0].home / "secrets" / "master.key", r.home)
        # replica 0 first: it migrates the schema and creates the checkpoint signing key; the rest then
        # start together with copies of that key
        replicas[0].start(start_timeout)
        signing_key = replicas[0].home / "secrets" / "audit-signing.key"
        if not signing_key.exists():
            raise ClusterError(f"replica-0 made no signing key at {signing_key} (is AEGRESS_SIGNING_KEY_FILE set?)")
        for r in replicas[1:]:
            _copy_secret(signing_key, r.home)
        if n > 1:
            with ThreadPoolExecutor(max_workers=n - 1) as pool:
                for done in [pool.submit(r.start, start_timeout) for r in replicas[1:]]:
                    done.result()

        c.nginx.upstreams = [r.port for r in replicas]
        c.nginx.start()
        yield c


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tests.cluster [N]`: run a cluster by hand until Ctrl-C (see docs/dev-notes/cluster-harness.md)."""
    args = list(sys.argv[1:] if argv is None else argv)
    n = int(args[0]) if args else 3
    with cluster(n) as c:
        print(f"nginx:    {c.url}")
        for r in c.replicas:
            print(f"{r.replica_id}: {r.url} (pid {r.pid}, data dir {r.home})")
        print(f"redis:    {c.redis.url}")
        print(f"database: {c.database_url}")
        print("CLI:      env " + " ".join(f"{k}={v!r}" for k, v in {"AEGRESS_HOME": str(c.replicas[0].home),
                                                                       **c.cli_extra(0)}.items())
              + f" PYTHONPATH={ROOT} {sys.executable} -m aegress_cli.main ...")
        print("Ctrl-C stops everything.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while all(r.pid is not None for r in c.replicas):
                time.sleep(1)
            print("a replica exited; stopping", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
