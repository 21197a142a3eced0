"""Memory and descriptors of every process of applianced's tree, sampled over a soak, and the
growth and trend of each."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from harness.product import roles
from harness.targets import Target

FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmSize", "Threads")


def sample_process(pid: int) -> dict[str, int] | None:
    """VmRSS and its parts (KiB), VmSize (KiB), threads and open descriptors of `pid`; None when
    it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    out: dict[str, int] = {"fds": fds}
    for line in status.splitlines():
        name, _, rest = line.partition(":")
        if name in FIELDS:
            out[name] = int(rest.split()[0])
    return out


def sample_tree(target: Target) -> dict[str, Any]:
    """One sample of every process of the tree: {"t_ns", "procs": {role: {pid, ...fields}}}."""
    procs: dict[str, dict[str, int]] = {}
    for pid, role in sorted(roles(target).items()):
        values = sample_process(pid)
        if values is not None:
            key = role if role not in procs else f"{role} ({pid})"
            procs[key] = {"pid": pid, **values}
    return {"t_ns": time.monotonic_ns(), "procs": procs}


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over xs (None with fewer than 3 points)."""
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if not sxx:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def growth(samples: list[dict[str, Any]], since_ns: int) -> dict[str, dict[str, Any]]:
    """Per role, over the samples taken at or after `since_ns`: first and last VmRSS and RssAnon
    (KiB), their growth, the linear trend of VmRSS in KiB per minute and its projection over the
    window, the largest VmRSS, descriptors first and last; `restarted` when the role's PID
    changed within the window (a new process starts small: its growth would hide a leak)."""
    window = [s for s in samples if s["t_ns"] >= since_ns]
    out: dict[str, dict[str, Any]] = {}
    names = list(dict.fromkeys(name for s in window for name in s["procs"]))
    for name in names:
        seen = [(s["t_ns"], s["procs"][name]) for s in window if name in s["procs"]]
        first, last = seen[0][1], seen[-1][1]
        minutes = [(t - seen[0][0]) / 60e9 for t, _ in seen]
        rss = [float(p["VmRSS"]) for _, p in seen]
        trend = slope(minutes, rss)
        span = minutes[-1] if minutes else 0.0
        out[name] = {
            "pids": sorted({p["pid"] for _, p in seen}),
            "samples": len(seen),
            "minutes": round(span, 2),
            "rss_first_kib": first["VmRSS"],
            "rss_last_kib": last["VmRSS"],
            "rss_growth_kib": last["VmRSS"] - first["VmRSS"],
            "rss_max_kib": max(p["VmRSS"] for _, p in seen),
            "anon_first_kib": first.get("RssAnon"),
            "anon_growth_kib": last.get("RssAnon", 0) - first.get("RssAnon", 0),
            "file_growth_kib": last.get("RssFile", 0) - first.get("RssFile", 0),
            "shmem_growth_kib": last.get("RssShmem", 0) - first.get("RssShmem", 0),
            "trend_kib_per_min": None if trend is None else round(trend, 2),
            "trend_over_window_kib": None if trend is None else round(trend * span, 1),
            "fds_first": first["fds"],
            "fds_last": last["fds"],
            "fds_max": max(p["fds"] for _, p in seen),
            "threads_last": last.get("Threads"),
            "restarted": len({p["pid"] for _, p in seen}) > 1,
            "present_throughout": len(seen) == len(window),
        }
    return out
