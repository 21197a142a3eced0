"""The supervisor process's loop: signals, the arbiter, the health service, the control socket.

Boot (supervisor/boot.py) has made every pre-fork resource; commands (supervisor/commands.py)
answer `appliancectl`; reloads are supervisor/reloading.py's. What is left here is the loop, and
it is bounded: signal handlers only enqueue, the selector waits at most TICK_S, and every event
(a signal, a worker's log lines, a control connection's bytes) is a bounded step, so reaping and
the supervisor's heartbeat in the stats table happen at least every TICK_S whatever a control
client does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from appliance.stats import H, now_ns
from config.schema import ApplianceConfig
from supervisor.arbiter import EXIT_BOOT, Arbiter, Timing
from supervisor.boot import build_plant
from supervisor.commands import Commands
from supervisor.flowlogproc import FlowLogService
from supervisor.healthproc import HealthService
from supervisor.logring import LogRing
from supervisor.osapi import RealOs, describe_status
from supervisor.reloading import Reloader
from supervisor.states import State
from supervisor.workerproc import WorkerContext, worker_main

TICK_S = 0.2
LOG_READ_BYTES = 65536  # per wakeup: a chatty worker cannot keep the loop reading its pipe

log = logging.getLogger("applianced")


class Service:
    def __init__(
        self,
        config_path: Path,
        config_text: str,
        config: ApplianceConfig,
        workers: int | None,
        ring: LogRing,
    ) -> None:
        self.config_path = config_path
        self.ring = ring
        self.slots = workers or config.workers.count or len(os.sched_getaffinity(0))
        self.signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.stopping = False
        self.exit_code = 0
        self.plant = build_plant(config, self.slots, config_text, ring)
        self.table = self.plant.table
        self.context = WorkerContext(
            config,
            self.plant.sockets,
            self.table,
            os.getpid(),
            self.plant.log_write,
            self.plant.close_in_child,
        )
        self.reloader = Reloader(config_path, config, self.table, self._reloaded)
        cpus = sorted(os.sched_getaffinity(0))
        timing = Timing(
            heartbeat_timeout_ns=int(config.workers.heartbeat_timeout_s * 1e9),
            stop_timeout_ns=int(config.workers.stop_timeout_s * 1e9),
        )
        spawn: Callable[[int], None] = lambda k: worker_main(k, self.context)  # noqa: E731
        self.arbiter = Arbiter(self.table, cpus, RealOs(spawn), timing)
        self.health = HealthService(config, self.plant.log_write)
        self.health.evict_previous()
        self.flowlog = FlowLogService(config, self.plant.log_write)
        self.commands = Commands(
            self.arbiter,
            self.table,
            config.runtime_dir,
            ring,
            self.health,
            self._facts,
            self.reload,
            lambda: self.begin_shutdown(0),
        )
        self.plant.control.handlers.update(self.commands.handlers())
        self._watch_signals()
        plane = config.dataplane
        log.info(
            "supervisor ready: %d worker slots on %s:%d, CPUs %s, steering %s, control %s",
            self.slots,
            plane.bind,
            plane.port,
            cpus,
            plane.steering,
            config.control_socket,
        )

    def _watch_signals(self) -> None:
        plant = self.plant
        signal.set_wakeup_fd(plant.wakeup_write)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, self._enqueue)
        plant.selector.register(plant.wakeup_read, 1, lambda mask: _drain(plant.wakeup_read))
        plant.selector.register(plant.log_read, 1, lambda mask: self._forward_worker_log())

    def _enqueue(self, signum: int, frame: FrameType | None) -> None:
        self.signals.put(signum)  # SimpleQueue.put is reentrant: nothing else here

    def _facts(self) -> dict[str, Any]:
        return {
            "config": str(self.config_path),
            "last_reload": self.reloader.last,
            "stopping": self.stopping,
            "interfaces": self.plant.interface_facts,
            "control_refused": self.plant.control.refused,
            "flowlog": self.flowlog.status(),
        }

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> int:
        ready_announced = False
        if self.health.wanted:
            self.health.start(now_ns())  # it answers 503 "starting" until the workers run
        self.flowlog.start(now_ns())  # before the workers: their first records find it
        while True:
            self._handle_signals()
            self.arbiter.tick()
            self._tend_health()
            if self.arbiter.halt_reason and not self.stopping:
                log.error("stopping: %s", self.arbiter.halt_reason)
                self.begin_shutdown(EXIT_BOOT)
            if not ready_announced and all(s.state is State.RUNNING for s in self.arbiter.slots):
                ready_announced = True
                self.table.header[H.READY] = 1
                notify_systemd("READY=1")
                log.info("all %d workers running", self.slots)
            self.table.header[H.SUPERVISOR_HEARTBEAT_NS] = now_ns()
            if self.stopping and self.arbiter.all_stopped():
                self.flowlog.stop(now_ns())  # after the workers' last records
                if self.health.stopped() and self.flowlog.stopped():
                    break
            for key, mask in self.plant.selector.select(TICK_S):
                key.data(mask)
            self.plant.control.tick(now_ns())
        self._forward_worker_log()
        self.flowlog.close()
        self.plant.close()
        log.info("stopped (exit status %d)", self.exit_code)
        return self.exit_code

    def _handle_signals(self) -> None:
        while not self.signals.empty():
            signum = self.signals.get()
            if signum in (signal.SIGTERM, signal.SIGINT):
                log.info("%s: stopping the workers", signal.Signals(signum).name)
                self.begin_shutdown(0)
            elif signum == signal.SIGHUP:
                self.reload()

    def begin_shutdown(self, code: int) -> None:
        if not self.stopping:
            self.stopping, self.exit_code = True, code
            notify_systemd("STOPPING=1")
        self.arbiter.shutdown()
        self.health.stop(now_ns())

    def reload(self) -> dict[str, Any]:
        return self.reloader.reload()

    def _reloaded(self, running: ApplianceConfig) -> None:
        self.context.config = running  # a worker forked from now on boots with it

    def _tend_health(self) -> None:
        now = now_ns()
        for pid, status in self.arbiter.unclaimed:
            if pid == self.health.pid:
                self.health.died(describe_status(status)[1], now)
            elif pid == self.flowlog.pid:
                self.flowlog.died(describe_status(status)[1], now)
        self.arbiter.unclaimed.clear()
        self.health.tick(now)
        self.flowlog.tick(now)

    def _forward_worker_log(self) -> None:
        try:
            data = os.read(self.plant.log_read, LOG_READ_BYTES)
        except BlockingIOError:
            return
        for line in data.decode(errors="replace").splitlines():
            with contextlib.suppress(OSError):  # stderr gone: the ring still has the line
                os.write(2, (line + "\n").encode())
            self.ring.add(line)


def notify_systemd(state: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET, when there is one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(state.encode(), address)
        except OSError as error:
            log.warning("cannot notify systemd (%s): %s", state, error)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
