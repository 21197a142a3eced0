"""The arbiter: keeps one worker per slot alive, as gunicorn's arbiter and supervisord do.

It knows nothing of packets. It forks (through the OS seam), reaps, reads heartbeats from the
stats table, signals stuck workers, and moves each slot through supervisord's states; every state
change happens in `change_state`. Time is the monotonic clock, in nanoseconds.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass

from appliance.stats import S, StatsTable
from supervisor.osapi import OsApi, describe_status
from supervisor.states import EDGES, State, StateError

EXIT_BOOT = 3  # a worker that cannot boot exits with this: retrying would not help
EXIT_SOFTWARE = 70  # sysexits' EX_SOFTWARE: an unexpected exception, its traceback logged

log = logging.getLogger("applianced")


@dataclass(frozen=True)
class Timing:
    heartbeat_timeout_ns: int = 5_000_000_000  # a RUNNING worker silent this long is stuck
    abort_grace_ns: int = 2_000_000_000  # SIGABRT, then SIGKILL after this
    start_timeout_ns: int = 10_000_000_000  # no first heartbeat by then: SIGKILL
    stop_timeout_ns: int = 5_000_000_000  # SIGTERM, then SIGKILL after this
    backoff_base_ns: int = 250_000_000  # the first retry delay after a quick death, doubling
    backoff_max_ns: int = 8_000_000_000
    start_retries: int = 5  # quick deaths in a row before FATAL


@dataclass
class Slot:
    index: int
    cpu: int
    state: State = State.STOPPED
    pid: int = 0
    wanted: bool = True  # the operator wants it running (stop/shutdown clear it)
    spawns: int = 0
    quick_deaths: int = 0  # deaths before the first heartbeat, in a row
    started_ns: int = 0
    deadline_ns: int = 0  # BACKOFF: retry at; STOPPING or after SIGABRT: SIGKILL at
    aborted: bool = False
    last_exit: str = ""

    @property
    def restarts(self) -> int:
        return max(self.spawns - 1, 0)


class Arbiter:
    def __init__(
        self, table: StatsTable, cpus: list[int], os_api: OsApi, timing: Timing = Timing()
    ) -> None:
        self.table = table
        self.os = os_api
        self.timing = timing
        self.slots = [Slot(k, cpus[k % len(cpus)]) for k in range(table.slots)]
        self.halt_reason: str | None = None
        self.unclaimed: list[tuple[int, int]] = []  # reaped children that are not workers
        for slot in self.slots:
            self._publish(slot)

    # --- the one place where state changes --------------------------------------------------

    def change_state(self, slot: Slot, new: State, why: str) -> None:
        if new not in EDGES[slot.state]:
            raise StateError(f"worker {slot.index}: no edge {slot.state.name} -> {new.name}")
        log.info("worker %d: %s -> %s (%s)", slot.index, slot.state.name, new.name, why)
        slot.state = new
        self._publish(slot)

    def _publish(self, slot: Slot) -> None:
        words = self.table.slot(slot.index)
        words[S.PID], words[S.STATE], words[S.CPU] = slot.pid, int(slot.state), slot.cpu
        words[S.RESTARTS], words[S.STARTED_NS] = slot.restarts, slot.started_ns

    # --- operator verbs ---------------------------------------------------------------------

    def start(self, k: int) -> None:
        slot = self.slots[k]
        slot.wanted = True
        if slot.state is State.FATAL:
            slot.quick_deaths = 0
            self.spawn_worker(slot, "started by the operator")

    def stop(self, k: int) -> None:
        slot = self.slots[k]
        slot.wanted = False
        if slot.state in (State.STARTING, State.RUNNING):
            self.os.kill(slot.pid, signal.SIGTERM)
            slot.deadline_ns = self.os.now_ns() + self.timing.stop_timeout_ns
            self.change_state(slot, State.STOPPING, "stop requested")
        elif slot.state in (State.BACKOFF, State.EXITED, State.FATAL):
            self.change_state(slot, State.STOPPED, "stop requested")

    def restart(self, k: int) -> None:
        """Stop, then start again once reaped (manage_workers does the start). The operator's
        restart is a fresh start: quick deaths before it do not count against the retries."""
        self.stop(k)
        slot = self.slots[k]
        slot.wanted, slot.quick_deaths = True, 0

    def shutdown(self) -> None:
        for slot in self.slots:
            self.stop(slot.index)

    def all_stopped(self) -> bool:
        return all(s.state in (State.STOPPED, State.FATAL) for s in self.slots)

    # --- the loop's steps -------------------------------------------------------------------

    def tick(self) -> None:
        self.reap_workers()
        self.observe_heartbeats()
        self.murder_workers()
        self.manage_workers()

    def spawn_worker(self, slot: Slot, why: str) -> None:
        slot.started_ns = self.os.now_ns()
        slot.aborted = False
        slot.spawns += 1
        slot.pid = self.os.spawn(slot.index)
        self.change_state(slot, State.STARTING, f"{why}; pid {slot.pid}")

    def reap_workers(self) -> None:
        by_pid = {s.pid: s for s in self.slots if s.pid}
        for pid, status in self.os.reap():
            slot = by_pid.get(pid)
            if slot is not None:
                self._worker_died(slot, status)
            else:
                self.unclaimed.append((pid, status))

    def _worker_died(self, slot: Slot, status: int) -> None:
        code, how = describe_status(status)
        slot.pid, slot.last_exit = 0, how
        if slot.state is State.STOPPING:
            self.change_state(slot, State.STOPPED, how)
        elif code == EXIT_BOOT and slot.state is State.STARTING:
            self.change_state(slot, State.FATAL, f"{how}: the worker cannot boot")
            self.halt_reason = f"worker {slot.index} cannot boot ({how}); see its log above"
        elif slot.state is State.RUNNING:
            self.change_state(slot, State.EXITED, how)
        else:  # STARTING: died before its first heartbeat
            slot.quick_deaths += 1
            if slot.quick_deaths > self.timing.start_retries:
                self.change_state(slot, State.FATAL, f"{how}; {slot.quick_deaths} quick deaths")
                return
            delay = min(
                self.timing.backoff_base_ns << (slot.quick_deaths - 1), self.timing.backoff_max_ns
            )
            slot.deadline_ns = self.os.now_ns() + delay
            self.change_state(slot, State.BACKOFF, f"{how}; retry in {delay / 1e9:.2f} s")

    def observe_heartbeats(self) -> None:
        for slot in self.slots:
            if slot.state is State.STARTING and self.heartbeat_ns(slot) > slot.started_ns:
                slot.quick_deaths = 0
                self.change_state(slot, State.RUNNING, "first heartbeat")

    def heartbeat_ns(self, slot: Slot) -> int:
        return int(self.table.slot(slot.index)[S.HEARTBEAT_NS])

    def murder_workers(self) -> None:
        """SIGABRT then SIGKILL for stuck workers; SIGKILL for slow starts and slow stops."""
        now, t = self.os.now_ns(), self.timing
        for slot in self.slots:
            if slot.state is State.RUNNING:
                silent_ns = now - self.heartbeat_ns(slot)
                if not slot.aborted and silent_ns > t.heartbeat_timeout_ns:
                    log.warning(
                        "worker %d: no heartbeat for %.1f s: SIGABRT", slot.index, silent_ns / 1e9
                    )
                    slot.aborted, slot.deadline_ns = True, now + t.abort_grace_ns
                    self.os.kill(slot.pid, signal.SIGABRT)
                elif slot.aborted and now > slot.deadline_ns:
                    log.warning("worker %d: still stuck after SIGABRT: SIGKILL", slot.index)
                    self.os.kill(slot.pid, signal.SIGKILL)
            elif slot.state is State.STARTING and now - slot.started_ns > t.start_timeout_ns:
                log.warning("worker %d: no first heartbeat in time: SIGKILL", slot.index)
                self.os.kill(slot.pid, signal.SIGKILL)
            elif slot.state is State.STOPPING and now > slot.deadline_ns:
                log.warning("worker %d: did not stop in time: SIGKILL", slot.index)
                self.os.kill(slot.pid, signal.SIGKILL)

    def manage_workers(self) -> None:
        if self.halt_reason:
            return
        now = self.os.now_ns()
        for slot in self.slots:
            if not slot.wanted:
                continue
            if slot.state is State.STOPPED:
                self.spawn_worker(slot, "wanted")
            elif slot.state is State.EXITED:
                self.spawn_worker(slot, f"restarted after it {slot.last_exit}")
            elif slot.state is State.BACKOFF and now >= slot.deadline_ns:
                self.spawn_worker(slot, f"retry {slot.quick_deaths}")
