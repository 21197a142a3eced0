"""The health verdict: healthy only on measured facts, with the reason when not.

GWLB uses the answer to decide where *new* flows go, so it must never lie: a dead or stuck data
plane, a starting one, a vanished supervisor and a deliberate drain all answer 503.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from health.reader import Snapshot


@dataclass(frozen=True)
class HealthPolicy:
    min_workers: float = 1.0  # a count (>= 1) or a fraction of the slots (< 1)
    staleness_s: float = 3.0  # a heartbeat older than this is not alive


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    # ok, no_appliance, supervisor_gone, supervisor_stale, starting, draining, workers_down
    reason: str
    detail: str
    live: int = 0
    needed: int = 0


def needed_workers(policy: HealthPolicy, slots: int) -> int:
    if policy.min_workers >= 1:
        return min(int(policy.min_workers), slots)
    return max(1, math.ceil(policy.min_workers * slots))


def assess(snapshot: Snapshot, policy: HealthPolicy) -> Verdict:
    if not snapshot.present:
        return Verdict(False, "no_appliance", "no stats table: applianced is not running")
    if not snapshot.supervisor_alive:
        pid = snapshot.supervisor_pid
        return Verdict(False, "supervisor_gone", f"supervisor pid {pid} has exited")
    age = snapshot.supervisor_heartbeat_age_s
    if age is None or age > policy.staleness_s:
        shown = "never" if age is None else f"{age:.1f} s ago"
        return Verdict(False, "supervisor_stale", f"supervisor heartbeat {shown}")
    if not snapshot.ready:
        return Verdict(False, "starting", "workers have not all sent a first heartbeat yet")
    live = sum(
        1
        for w in snapshot.workers
        if w.state == "RUNNING"
        and w.heartbeat_age_s is not None
        and w.heartbeat_age_s <= policy.staleness_s
    )
    needed = needed_workers(policy, len(snapshot.workers))
    if snapshot.draining:
        return Verdict(False, "draining", "drained by the operator", live, needed)
    if live < needed:
        detail = f"{live} of {len(snapshot.workers)} workers live, {needed} needed"
        return Verdict(False, "workers_down", detail, live, needed)
    return Verdict(True, "ok", f"{live} of {len(snapshot.workers)} workers live", live, needed)
