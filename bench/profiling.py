"""py-spy around a bench round: record a running gateway, name its threads, summarise the samples.

`record` runs `py-spy record --format raw --threads --nonblocking --full-filenames` (the collapsed-stack format,
one `frame;frame;...;leaf count` line per distinct stack, the thread as its first frame) until the
round is over. `summarise` ranks functions by own samples (the leaf) and cumulative samples (any
frame of the stack, counted once per stack), and files by own samples; `write_speedscope` turns the
same lines into a speedscope file (one profile per thread) for https://www.speedscope.app.
Samples where a thread sleeps (epoll, a queue, a lock, fsync's wait) are not recorded (no `--idle`),
so the figures are shares of CPU, not of wall time. `--nonblocking` matters for that: py-spy's
default pauses the process for each sample and then takes many sleeping threads for running ones
(measured here: a thread blocked on a queue got 6% of the samples, one sleeping in a loop 50%); not
pausing also keeps the profiler's cost off the gateway, at the price of an occasional torn stack.
py-spy reads the process's memory: root, or `kernel.yama.ptrace_scope` 0, is needed.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from tests.procs import ROOT, Proc

_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def thread_names(pyspy: Path, pid: int) -> dict[int, str]:
    """OS thread id -> Python thread name, from one `py-spy dump` (empty if py-spy cannot attach)."""
    try:
        out = subprocess.run([str(pyspy), "dump", "--pid", str(pid), "--json"], capture_output=True, text=True,
                             timeout=30)
        traces = json.loads(out.stdout) if out.returncode == 0 else []
    except (subprocess.TimeoutExpired, json.JSONDecodeError):
        return {}
    return {t["os_thread_id"]: t.get("thread_name") or "?" for t in traces if t.get("os_thread_id")}


@contextlib.contextmanager
def record(pyspy: Path, pid: int, raw_path: Path, rate: int = 1000) -> Iterator[None]:
    """Sample `pid` with py-spy while the body runs; the raw (collapsed) samples land in `raw_path`."""
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    proc = Proc([str(pyspy), "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--threads",
                 "--nonblocking", "--full-filenames", "--output", str(raw_path)], {"PATH": "/usr/bin:/bin"})
    try:
        proc.wait_for("Sampling process", timeout=30)
    except AssertionError as exc:
        proc.stop()
        raise SystemExit(f"Error: py-spy could not sample the gateway (pid {pid}):\n{''.join(proc.output)[-1500:]}\n"
                         "Hint: py-spy attaches with ptrace; it needs root or kernel.yama.ptrace_scope=0.") from exc
    try:
        yield
    finally:
        proc.popen.send_signal(signal.SIGINT)  # py-spy writes its file when interrupted
        with contextlib.suppress(AssertionError):  # stop() below ends it either way
            proc.wait_for("Wrote", timeout=60)
        proc.stop()
    if not raw_path.is_file():
        raise SystemExit(f"Error: py-spy wrote no samples:\n{''.join(proc.output)[-1500:]}")


def read_raw(raw_path: Path) -> list[tuple[list[str], int]]:
    """The collapsed stacks: (frames root first, thread frame included, samples)."""
    stacks = []
    for line in raw_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3."):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail if marker == "site-packages/" else "stdlib/" + tail.split("/", 1)[-1]
    with contextlib.suppress(ValueError):
        return str(Path(path).relative_to(ROOT))
    return path


def _function(frame: str) -> str:
    m = _FRAME.match(frame)
    return f"{m['name']} ({_short(m['file'])})" if m else frame


def _file(frame: str) -> str:
    m = _FRAME.match(frame)
    return _short(m["file"]) if m else frame


def _thread(frame: str) -> str:
    """`thread (8437): aegress-evidence` -> `aegress-evidence`."""
    return frame.rpartition(": ")[2] if frame.startswith("thread (") else "?"


def _entry_frames(stacks: list[tuple[list[str], int]]) -> dict[str, set[str]]:
    """Per thread, the root frames all its whole stacks share: the entry point down to the event loop's run,
    a worker thread's bootstrap. Whole stacks are those that start at the thread's usual root (sampling
    without pausing tears a few)."""
    roots: dict[str, Counter[str]] = {}
    for frames, n in stacks:
        if len(frames) > 1:
            roots.setdefault(frames[0], Counter())[frames[1]] += n
    prefix: dict[str, list[str]] = {}
    for frames, _ in stacks:
        body = frames[1:]
        if not body or body[0] != roots[frames[0]].most_common(1)[0][0]:
            continue
        p = prefix.setdefault(frames[0], body[:-1])  # never the leaf: it runs code of its own
        k = 0
        while k < min(len(p), len(body) - 1) and p[k] == body[k]:
            k += 1
        del p[k:]
    return {thread: set(p) for thread, p in prefix.items()}


def summarise(raw_path: Path, top: int = 25) -> dict:
    """Top functions by own and by cumulative samples, top files by own samples, samples per thread.

    The cumulative ranking leaves out each thread's entry frames (`_entry_frames`): they would top it
    with nothing to learn. They still show in the own ranking when they run code themselves (the
    event loop's `run` does: uvloop's C code, the HTTP parser and socket calls it makes have no
    Python frame of their own).
    """
    own: Counter[str] = Counter()
    cum: Counter[str] = Counter()
    files: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    stacks = read_raw(raw_path)
    entry = _entry_frames(stacks)
    for frames, n in stacks:
        body = frames[1:] if frames[0].startswith("thread (") else frames
        total += n
        threads[_thread(frames[0])] += n
        if not body:
            continue
        own[_function(body[-1])] += n
        files[_file(body[-1])] += n
        skip = entry.get(frames[0], set())
        for fn in {_function(f) for f in body if f not in skip}:
            cum[fn] += n

    def ranked(c: Counter[str], k: int) -> list[dict]:
        return [{"samples": v, "pct": round(100 * v / total, 1), "what": name} for name, v in c.most_common(k)]

    return {"samples": total, "threads": ranked(threads, 20), "own": ranked(own, top),
            "cumulative": ranked(cum, top), "files_own": ranked(files, 15)}


def write_speedscope(raw_path: Path, out: Path) -> None:
    """The raw samples as a speedscope file: one sampled profile per thread."""
    index: dict[str, int] = {}
    frames: list[dict] = []
    per_thread: dict[str, tuple[list[list[int]], list[int]]] = {}
    for stack, n in read_raw(raw_path):
        thread = _thread(stack[0])
        body = stack[1:] if stack[0].startswith("thread (") else stack
        ids = []
        for f in body:
            if f not in index:
                m = _FRAME.match(f)
                index[f] = len(frames)
                frames.append({"name": m["name"], "file": _short(m["file"]), "line": int(m["line"] or 0)}
                              if m else {"name": f})
            ids.append(index[f])
        samples, weights = per_thread.setdefault(thread, ([], []))
        samples.append(ids)
        weights.append(n)
    busiest_first = sorted(per_thread.items(), key=lambda x: -sum(x[1][1]))
    profiles = [{"type": "sampled", "name": name, "unit": "none", "startValue": 0, "endValue": sum(w),
                 "samples": s, "weights": w} for name, (s, w) in busiest_first]
    doc = {"$schema": "https://www.speedscope.app/file-format-schema.json", "shared": {"frames": frames},
           "profiles": profiles, "name": raw_path.stem, "exporter": "bench/profiling.py"}
    with tempfile.NamedTemporaryFile("w", dir=out.parent, delete=False, suffix=".tmp") as f:
        json.dump(doc, f)
    Path(f.name).chmod(0o644)
    Path(f.name).replace(out)


def print_summary(title: str, summary: dict, top: int = 25) -> None:
    print(f"\n== profile: {title} ({summary['samples']} samples, CPU only) ==")
    print("threads: " + ", ".join(f"{t['what']} {t['pct']}%" for t in summary["threads"]))
    for key, label in (("own", "own samples (the function itself)"),
                       ("cumulative", "cumulative samples (the function and what it calls)")):
        print(f"-- top {top} functions by {label}")
        for row in summary[key][:top]:
            print(f"{row['pct']:6.1f}%  {row['samples']:7d}  {row['what']}")
    print("-- top files by own samples")
    for row in summary["files_own"]:
        print(f"{row['pct']:6.1f}%  {row['samples']:7d}  {row['what']}")
