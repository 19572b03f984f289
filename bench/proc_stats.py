"""CPU time and memory of processes and their threads, read from /proc (Linux), for the gateway bench.

CPU figures are user + system time in clock ticks (`SC_CLK_TCK`, usually 100 a second), so a
measured interval should hold at least a few hundred milliseconds of CPU. A process's figure covers
all its threads, live and exited; children are counted apart (`descendants`).
"""

from __future__ import annotations

import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(path: str) -> list[str] | None:
    """The fields of a /proc stat file from field 3 (state) on; None once the process is gone."""
    try:
        text = Path(path).read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text[text.rindex(")") + 2:].split()


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process (all its threads)."""
    f = _stat(f"/proc/{pid}/stat")
    return None if f is None else (int(f[11]) + int(f[12])) / CLK_TCK


def thread_cpu_s(pid: int) -> dict[int, float]:
    """User + system CPU seconds of each live thread of a process, by thread id."""
    out: dict[int, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tids:
        f = _stat(f"/proc/{pid}/task/{tid}/stat")
        if f is not None:
            out[int(tid)] = (int(f[11]) + int(f[12])) / CLK_TCK
    return out


def start_ticks(pid: int) -> int | None:
    """When the process started (ticks since boot): tells a live process from a reused pid."""
    f = _stat(f"/proc/{pid}/stat")
    return None if f is None else int(f[19])


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, their children, ...), found by scanning /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat(f"/proc/{entry}/stat")
            if f is not None:
                children.setdefault(int(f[1]), []).append(int(entry))
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo and len(out) < 10_000:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (NaN once it is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except FileNotFoundError:
        return float("nan")
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def snapshot(pids: list[int]) -> dict[int, float]:
    """CPU seconds of each process still alive."""
    out = {}
    for pid in pids:
        s = cpu_s(pid)
        if s is not None:
            out[pid] = s
    return out


def spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two snapshots (a process or thread first seen in `after` counts whole)."""
    return sum(v - before.get(k, 0.0) for k, v in after.items())
