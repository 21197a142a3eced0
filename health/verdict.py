"""The health verdict: healthy only on measured facts, with the reason when not.

GWLB uses the answer to decide where *new* flows go, so it must never lie: a dead or stuck data
plane, a starting one, a vanished supervisor, a deliberate drain and a data plane that keeps losing
datagrams to a full receive buffer (health.overflow says which workers) all answer 503.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from health.reader import Snapshot


@dataclass(frozen=True)
class HealthPolicy:
    min_workers: float = 1.0  # a count (>= 1) or a fraction of the slots (< 1)
    staleness_s: float = 3.0  # a heartbeat older than this is not alive
    overflow_unready_s: float = 10.0  # receive-buffer drops rising this long: 503 (0: never)


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    # ok, no_appliance, supervisor_gone, supervisor_stale, starting, draining, workers_down,
    # rx_buffer_overflow
    reason: str
    detail: str
    live: int = 0
    needed: int = 0


def needed_workers(policy: HealthPolicy, slots: int) -> int:
    if policy.min_workers >= 1:
        return min(int(policy.min_workers), slots)
    return max(1, math.ceil(policy.min_workers * slots))


def assess(
    snapshot: Snapshot, policy: HealthPolicy, overflowing: Mapping[int, float] | None = None
) -> Verdict:
    """The verdict on `snapshot`; `overflowing`: the slots whose receive-buffer drops have kept
    rising, with for how many seconds (health.overflow.OverflowWatch)."""
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
    if overflowing:
        slots = ", ".join(str(slot) for slot in sorted(overflowing))
        who = f"worker {slots}" if len(overflowing) == 1 else f"workers {slots}"
        detail = (
            f"{who} kept losing datagrams to a full receive buffer for "
            f"{max(overflowing.values()):.1f} s (overflow_unready_s {policy.overflow_unready_s:g})"
        )
        return Verdict(False, "rx_buffer_overflow", detail, live, needed)
    return Verdict(True, "ok", f"{live} of {len(snapshot.workers)} workers live", live, needed)
