"""What the supervisor's helper processes share (the health service, the flow-record writer):
supervisord's states, restarts with a doubling delay after each death in a row, and a stop that
turns into SIGKILL after a grace time. The workers have their own (supervisor/arbiter.py)."""

from __future__ import annotations

import logging
import os
import signal

from supervisor.states import State

RESTART_BASE_NS = 500_000_000
RESTART_MAX_NS = 30_000_000_000
STOP_TIMEOUT_NS = 5_000_000_000
STABLE_NS = 60_000_000_000  # up this long: the next death starts the backoff afresh

log = logging.getLogger("applianced")


class ChildProcess:
    """One helper process: `start` (the subclass's) spawns it and sets `pid` and RUNNING; the
    supervisor reports its death (`died`), calls `tick` every turn of its loop, and `stop`s it."""

    label = "child"  # for the log: "health service", "flow record writer"

    def __init__(self, wanted: bool) -> None:
        self.wanted = wanted
        self.state = State.STOPPED
        self.pid = 0
        self.restarts = 0
        self.failures = 0  # deaths in a row, for the restart delay
        self.retry_at_ns = 0
        self.kill_at_ns = 0

    def start(self, now_ns: int) -> None:
        raise NotImplementedError

    def stopped_cleanly(self) -> None:
        """It exited after `stop` (or was not wanted): what the subclass tidies then."""

    def counts_as_restart(self) -> bool:
        return True

    def died(self, description: str, now_ns: int) -> None:
        self.pid = 0
        if self.state is State.STOPPING or not self.wanted:
            self.state = State.STOPPED
            self.stopped_cleanly()
            return
        self.failures += 1
        delay = min(RESTART_BASE_NS << min(self.failures - 1, 10), RESTART_MAX_NS)
        self.retry_at_ns = now_ns + delay
        self.state = State.BACKOFF
        log.warning("%s %s; restart in %.1f s", self.label, description, delay / 1e9)

    def tick(self, now_ns: int) -> None:
        if self.state is State.BACKOFF and self.wanted and now_ns >= self.retry_at_ns:
            self.restarts += 1 if self.counts_as_restart() else 0
            self.start(now_ns)
        elif (
            self.state is State.RUNNING and self.failures and now_ns - self.retry_at_ns > STABLE_NS
        ):
            self.failures = 0
        elif self.state is State.STOPPING and now_ns > self.kill_at_ns and self.pid:
            os.kill(self.pid, signal.SIGKILL)

    def stop(self, now_ns: int) -> None:
        self.wanted = False
        if self.state is State.RUNNING and self.pid:
            os.kill(self.pid, signal.SIGTERM)
            self.kill_at_ns = now_ns + STOP_TIMEOUT_NS
            self.state = State.STOPPING
        elif self.state is State.BACKOFF:
            self.state = State.STOPPED

    def stopped(self) -> bool:
        return self.state is State.STOPPED
