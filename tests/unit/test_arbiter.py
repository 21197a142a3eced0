"""The arbiter's state machine through a fake OS seam: no fork, no signals, a hand-driven clock."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from appliance.stats import S, StatsTable
from supervisor.arbiter import EXIT_BOOT, Arbiter, Timing
from supervisor.states import EDGES, State, StateError

SECOND = 1_000_000_000
TIMING = Timing(
    heartbeat_timeout_ns=5 * SECOND,
    abort_grace_ns=2 * SECOND,
    start_timeout_ns=10 * SECOND,
    stop_timeout_ns=5 * SECOND,
    backoff_base_ns=SECOND // 4,
    backoff_max_ns=2 * SECOND,
    start_retries=3,
)


def exited(code: int) -> int:
    return code << 8  # a wait status, as waitpid encodes it on Linux


def killed(sig: int) -> int:
    return sig


class FakeOs:
    def __init__(self) -> None:
        self.clock = 1000 * SECOND
        self.next_pid = 100
        self.spawned: list[tuple[int, int]] = []  # (slot, pid)
        self.signals: list[tuple[int, int]] = []  # (pid, signal)
        self.dead: list[tuple[int, int]] = []  # (pid, status) to be reaped

    def spawn(self, slot: int) -> int:
        self.next_pid += 1
        self.spawned.append((slot, self.next_pid))
        return self.next_pid

    def kill(self, pid: int, sig: int) -> None:
        self.signals.append((pid, sig))

    def reap(self) -> list[tuple[int, int]]:
        dead, self.dead = self.dead, []
        return dead

    def now_ns(self) -> int:
        return self.clock


@pytest.fixture
def bed(tmp_path: Path) -> tuple[Arbiter, FakeOs]:
    fake = FakeOs()
    return Arbiter(StatsTable.create(tmp_path, 2), [0, 1], fake, TIMING), fake


def heartbeat(arbiter: Arbiter, fake: FakeOs, k: int) -> None:
    arbiter.table.slot(k)[S.HEARTBEAT_NS] = fake.clock


def running(arbiter: Arbiter, fake: FakeOs) -> None:
    arbiter.tick()
    fake.clock += SECOND
    for k in range(len(arbiter.slots)):
        heartbeat(arbiter, fake, k)
    arbiter.tick()
    assert [s.state for s in arbiter.slots] == [State.RUNNING, State.RUNNING]


def test_workers_start_and_count_as_running_only_after_a_heartbeat(bed) -> None:
    arbiter, fake = bed
    arbiter.tick()
    assert [s.state for s in arbiter.slots] == [State.STARTING, State.STARTING]
    assert [slot for slot, _ in fake.spawned] == [0, 1]
    fake.clock += SECOND
    arbiter.tick()
    assert arbiter.slots[0].state is State.STARTING  # no heartbeat yet: not RUNNING
    heartbeat(arbiter, fake, 0)
    arbiter.tick()
    assert [s.state for s in arbiter.slots] == [State.RUNNING, State.STARTING]
    words = arbiter.table.slot(0)
    assert words[S.STATE] == State.RUNNING and words[S.PID] == arbiter.slots[0].pid


def test_a_running_worker_that_dies_is_restarted_at_once(bed) -> None:
    arbiter, fake = bed
    running(arbiter, fake)
    old = arbiter.slots[0].pid
    fake.dead.append((old, killed(signal.SIGKILL)))
    arbiter.tick()
    slot = arbiter.slots[0]
    assert slot.state is State.STARTING and slot.pid != old and slot.restarts == 1
    assert slot.last_exit == "was killed by SIGKILL"
    assert arbiter.table.slot(0)[S.RESTARTS] == 1


def test_quick_deaths_back_off_with_growing_delays_then_go_fatal(bed) -> None:
    arbiter, fake = bed
    arbiter.tick()
    delays = []
    for _ in range(TIMING.start_retries):
        fake.dead.append((arbiter.slots[0].pid, exited(1)))
        arbiter.tick()
        slot = arbiter.slots[0]
        assert slot.state is State.BACKOFF
        delays.append(slot.deadline_ns - fake.clock)
        fake.clock = slot.deadline_ns - 1
        arbiter.tick()
        assert slot.state is State.BACKOFF  # not a nanosecond early
        fake.clock += 1
        arbiter.tick()
        assert slot.state is State.STARTING
    assert delays == [SECOND // 4, SECOND // 2, SECOND]
    fake.dead.append((arbiter.slots[0].pid, exited(1)))
    arbiter.tick()
    assert arbiter.slots[0].state is State.FATAL
    fake.clock += 60 * SECOND
    arbiter.tick()
    assert arbiter.slots[0].state is State.FATAL  # FATAL waits for the operator
    arbiter.start(0)
    assert arbiter.slots[0].state is State.STARTING and arbiter.slots[0].quick_deaths == 0


def test_backoff_delay_is_capped(tmp_path: Path) -> None:
    fake = FakeOs()
    timing = Timing(backoff_base_ns=SECOND, backoff_max_ns=3 * SECOND, start_retries=10)
    arbiter = Arbiter(StatsTable.create(tmp_path, 1), [0], fake, timing)
    arbiter.tick()
    delays = []
    for _ in range(4):
        fake.dead.append((arbiter.slots[0].pid, exited(1)))
        arbiter.tick()
        delays.append(arbiter.slots[0].deadline_ns - fake.clock)
        fake.clock = arbiter.slots[0].deadline_ns
        arbiter.tick()
    assert delays == [SECOND, 2 * SECOND, 3 * SECOND, 3 * SECOND]


def test_a_worker_that_cannot_boot_halts_the_supervisor(bed) -> None:
    arbiter, fake = bed
    arbiter.tick()
    fake.dead.append((arbiter.slots[1].pid, exited(EXIT_BOOT)))
    arbiter.tick()
    assert arbiter.slots[1].state is State.FATAL
    assert arbiter.halt_reason and "worker 1 cannot boot" in arbiter.halt_reason
    spawned = len(fake.spawned)
    fake.clock += 60 * SECOND
    arbiter.tick()
    assert len(fake.spawned) == spawned  # no crash loop


def test_a_stuck_worker_gets_sigabrt_then_sigkill_then_a_restart(bed) -> None:
    arbiter, fake = bed
    running(arbiter, fake)
    pid = arbiter.slots[0].pid
    fake.clock += TIMING.heartbeat_timeout_ns - 1
    heartbeat(arbiter, fake, 1)
    arbiter.tick()
    assert fake.signals == []
    fake.clock += 2
    arbiter.tick()
    assert fake.signals == [(pid, signal.SIGABRT)]
    fake.clock += TIMING.abort_grace_ns + 1
    heartbeat(arbiter, fake, 1)
    arbiter.tick()
    assert fake.signals == [(pid, signal.SIGABRT), (pid, signal.SIGKILL)]
    fake.dead.append((pid, killed(signal.SIGKILL)))
    arbiter.tick()
    assert arbiter.slots[0].state is State.STARTING and arbiter.slots[0].restarts == 1
    assert arbiter.slots[1].state is State.RUNNING


def test_a_worker_that_never_heartbeats_is_killed_and_counts_as_a_quick_death(bed) -> None:
    arbiter, fake = bed
    arbiter.tick()
    pid = arbiter.slots[0].pid
    fake.clock += TIMING.start_timeout_ns + 1
    arbiter.tick()
    assert (pid, signal.SIGKILL) in fake.signals
    fake.dead.append((pid, killed(signal.SIGKILL)))
    arbiter.tick()
    assert arbiter.slots[0].state is State.BACKOFF


def test_stop_start_restart_and_the_stop_timeout(bed) -> None:
    arbiter, fake = bed
    running(arbiter, fake)
    pid = arbiter.slots[0].pid
    arbiter.stop(0)
    assert arbiter.slots[0].state is State.STOPPING and fake.signals == [(pid, signal.SIGTERM)]
    fake.clock += TIMING.stop_timeout_ns + 1
    heartbeat(arbiter, fake, 1)
    arbiter.tick()
    assert fake.signals[-1] == (pid, signal.SIGKILL)
    fake.dead.append((pid, killed(signal.SIGKILL)))
    arbiter.tick()
    assert arbiter.slots[0].state is State.STOPPED
    arbiter.tick()
    assert arbiter.slots[0].state is State.STOPPED  # stopped by the operator: stays stopped
    arbiter.start(0)
    arbiter.tick()
    assert arbiter.slots[0].state is State.STARTING
    heartbeat(arbiter, fake, 0)
    fake.clock += 1
    heartbeat(arbiter, fake, 0)
    arbiter.tick()
    pid = arbiter.slots[0].pid
    arbiter.restart(0)
    fake.dead.append((pid, exited(0)))
    arbiter.tick()
    assert arbiter.slots[0].state is State.STARTING and arbiter.slots[0].pid != pid


def test_shutdown_stops_everything_and_backoff_slots_stop_at_once(bed) -> None:
    arbiter, fake = bed
    arbiter.tick()
    fake.dead.append((arbiter.slots[1].pid, exited(1)))
    arbiter.tick()
    assert arbiter.slots[1].state is State.BACKOFF
    arbiter.shutdown()
    assert arbiter.slots[1].state is State.STOPPED
    assert arbiter.slots[0].state is State.STOPPING and not arbiter.all_stopped()
    fake.dead.append((arbiter.slots[0].pid, exited(0)))
    arbiter.tick()
    assert arbiter.all_stopped()
    fake.clock += 60 * SECOND
    arbiter.tick()
    assert arbiter.all_stopped()  # nothing respawns during shutdown


def test_every_edge_of_the_state_machine_is_reachable_and_nothing_else(bed) -> None:
    arbiter, _ = bed
    slot = arbiter.slots[0]
    for source, targets in EDGES.items():
        for target in State:
            slot.state = source
            if target in targets:
                arbiter.change_state(slot, target, "test")
                assert slot.state is target
            else:
                with pytest.raises(StateError):
                    arbiter.change_state(slot, target, "test")


def test_restart_of_a_fatal_slot_is_a_fresh_start_with_the_full_retry_budget(bed) -> None:
    arbiter, fake = bed
    arbiter.tick()
    for _ in range(TIMING.start_retries + 1):  # quick deaths until FATAL
        fake.dead.append((arbiter.slots[0].pid, exited(1)))
        arbiter.tick()
        fake.clock = arbiter.slots[0].deadline_ns
        arbiter.tick()
    slot = arbiter.slots[0]
    assert slot.state is State.FATAL
    arbiter.restart(0)
    arbiter.tick()
    assert slot.state is State.STARTING and slot.quick_deaths == 0
    fake.dead.append((slot.pid, exited(1)))
    arbiter.tick()
    assert slot.state is State.BACKOFF  # one death after the restart is not FATAL again


def test_a_running_worker_that_exits_with_the_boot_status_is_restarted(bed) -> None:
    arbiter, fake = bed
    running(arbiter, fake)
    fake.dead.append((arbiter.slots[0].pid, exited(EXIT_BOOT)))
    arbiter.tick()  # only a worker that never ran can fail to boot: this one just exited
    assert arbiter.slots[0].state is State.STARTING and arbiter.halt_reason is None
