"""What the kernel says about a process: CPU seconds, RSS, children (Linux ``/proc``)."""

from __future__ import annotations

import os
from collections.abc import Iterable

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (its threads included), 0.0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return 0.0
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_kb(pid: int) -> int:
    """VmRSS of ``pid`` in KiB, 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from every thread's ``children`` file)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            continue
    return out


def descendants(pid: int) -> list[int]:
    """``pid`` and everything below it."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children(current))
    return found


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def total_cpu(pids: Iterable[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


def total_rss_kb(pids: Iterable[int]) -> int:
    return sum(rss_kb(p) for p in pids)


# -- latency histograms (1 ms bins) ------------------------------------------------


def merge_hist(parts: Iterable[dict[str, int]]) -> dict[int, int]:
    merged: dict[int, int] = {}
    for part in parts:
        for key, count in part.items():
            ms = int(key)
            merged[ms] = merged.get(ms, 0) + count
    return merged


def percentiles(hist: dict[int, int], points: Iterable[float]) -> dict[str, float | None]:
    """Percentiles (ms, bin resolution) of a 1-ms histogram, plus max and mean."""
    total = sum(hist.values())
    out: dict[str, float | None] = {}
    wanted = list(points)
    if total == 0:
        out.update({f"p{p:g}": None for p in wanted})
        out["max"] = out["mean"] = None
        return out
    ordered = sorted(hist.items())
    for p in wanted:
        rank = max(1, int(-(-p * total // 100)))  # ceil(p% of total), at least the first
        seen = 0
        for ms, count in ordered:
            seen += count
            if seen >= rank:
                out[f"p{p:g}"] = float(ms)
                break
    out["max"] = float(ordered[-1][0])
    out["mean"] = sum(ms * c for ms, c in ordered) / total
    return out
