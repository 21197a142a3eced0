"""The supervisor process: boots the data plane, runs the arbiter's loop, serves the control socket.

Order matters and follows DESIGN.md §2: config, interface setup, the stats table and the N reuseport
sockets (in slot order) all exist before the first fork, so a restarted worker inherits its slot's
socket and the group never changes shape. Signal handlers only enqueue; all work, logging included,
happens in `run`'s loop, woken by the signal wakeup fd.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import selectors
import signal
import socket
import time
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

from appliance import counters as cnt
from appliance.sockets import open_data_socket
from appliance.stats import H, S, StatsTable, now_ns
from appliance.steering import attach_steering
from config.errors import ConfigError
from config.loader import parse_config
from config.schema import ApplianceConfig
from supervisor.arbiter import EXIT_BOOT, Arbiter, Timing
from supervisor.control import ControlServer, LogRing
from supervisor.healthproc import HealthService
from supervisor.netsetup import configure_interfaces
from supervisor.osapi import RealOs, describe_status
from supervisor.states import State
from supervisor.workerproc import SNAPSHOT_NAME, WorkerContext, worker_main

TICK_S = 0.2
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
        self.config = config
        self.ring = ring
        self.slots = workers or config.workers.count or len(os.sched_getaffinity(0))
        self.signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.stopping = False
        self.exit_code = 0
        self.last_reload: dict[str, Any] = {"ok": True, "detail": "initial config"}
        self.interface_facts: list[str] = []
        self._boot(config_text)

    # --- boot, before any fork --------------------------------------------------------------

    def _boot(self, config_text: str) -> None:
        config = self.config
        config.runtime_dir.mkdir(parents=True, exist_ok=True)
        self.interface_facts = configure_interfaces(config)
        self.table = StatsTable.create(config.runtime_dir, self.slots)
        self.table.header[H.SUPERVISOR_PID] = os.getpid()
        self.table.header[H.STARTED_NS] = now_ns()
        self._write_snapshot(config_text)
        plane = config.dataplane
        self.sockets = [
            open_data_socket(plane.bind, plane.port, plane.receive_buffer_bytes)
            for _ in range(self.slots)
        ]
        if self.slots > 1 and plane.steering == "inner-flow":
            attach_steering(self.sockets[0], self.slots)
        self.log_read, log_write = os.pipe()
        os.set_blocking(self.log_read, False)
        self.control = ControlServer(
            config.control_socket, config.control.mode, config.control.group, self.ring
        )
        self._register_commands()
        self.wakeup_read, wakeup_write = os.pipe()
        for fd in (self.wakeup_read, wakeup_write):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(wakeup_write)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, self._enqueue)
        context = WorkerContext(
            config,
            self.sockets,
            self.table,
            os.getpid(),
            log_write,
            [self.log_read, self.wakeup_read, wakeup_write, self.control.fileno()],
        )
        cpus = sorted(os.sched_getaffinity(0))
        timing = Timing(
            heartbeat_timeout_ns=int(config.workers.heartbeat_timeout_s * 1e9),
            stop_timeout_ns=int(config.workers.stop_timeout_s * 1e9),
        )
        self.arbiter = Arbiter(self.table, cpus, RealOs(lambda k: worker_main(k, context)), timing)
        self.health = HealthService(config, log_write)
        self.health.evict_previous()
        log.info(
            "supervisor ready: %d worker slots on %s:%d, CPUs %s, steering %s, control %s",
            self.slots,
            plane.bind,
            plane.port,
            cpus,
            plane.steering,
            config.control_socket,
        )

    def _enqueue(self, signum: int, frame: FrameType | None) -> None:
        self.signals.put(signum)  # SimpleQueue.put is reentrant: nothing else here

    def _write_snapshot(self, text: str) -> None:
        snapshot = self.config.runtime_dir / SNAPSHOT_NAME
        temporary = snapshot.with_suffix(".new")
        temporary.write_text(text)
        temporary.replace(snapshot)

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> int:
        selector = selectors.DefaultSelector()
        selector.register(self.wakeup_read, selectors.EVENT_READ, "wakeup")
        selector.register(self.log_read, selectors.EVENT_READ, "log")
        selector.register(self.control.fileno(), selectors.EVENT_READ, "control")
        ready_announced = False
        if self.health.wanted:
            self.health.start(now_ns())  # it answers 503 "starting" until the workers run
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
            if self.stopping and self.arbiter.all_stopped() and self.health.stopped():
                break
            for key, _ in selector.select(TICK_S):
                if key.data == "wakeup":
                    _drain(self.wakeup_read)
                elif key.data == "log":
                    self._forward_worker_log()
                else:
                    self.control.serve_one()
        self._forward_worker_log()
        self.close()
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

    def _tend_health(self) -> None:
        now = now_ns()
        for pid, status in self.arbiter.unclaimed:
            if pid == self.health.pid:
                self.health.died(describe_status(status)[1], now)
        self.arbiter.unclaimed.clear()
        self.health.tick(now)

    def _forward_worker_log(self) -> None:
        try:
            data = os.read(self.log_read, 65536)
        except BlockingIOError:
            return
        for line in data.decode(errors="replace").splitlines():
            os.write(2, (line + "\n").encode())
            self.ring.add(line)

    def close(self) -> None:
        self.control.close()
        for sock in self.sockets:
            sock.close()  # port 6081 is unbound when we return

    # --- reload -----------------------------------------------------------------------------

    def reload(self) -> dict[str, Any]:
        """Validate the config file again; apply its policy in every worker, or refuse it."""
        try:
            text = self.config_path.read_text(encoding="utf-8")
            config = parse_config(text, str(self.config_path))
        except (OSError, UnicodeDecodeError, ConfigError) as error:
            self.table.header[H.RELOADS_REFUSED] += 1
            self.last_reload = {
                "ok": False,
                "detail": f"refused: {error}",
                "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            log.error("reload refused, the running policy stays: %s", error)
            return self.last_reload
        fixed = [
            name
            for name in (
                "dataplane.bind",
                "dataplane.port",
                "dataplane.batch_size",
                "workers.count",
                "runtime_dir",
                "control",
            )
            if _get(config, name) != _get(self.config, name)
        ]
        self._write_snapshot(text)
        # What the workers apply: the policy and the allow-list; the rest waits for a restart.
        plane = dataclasses.replace(
            self.config.dataplane, allow_sources=config.dataplane.allow_sources
        )
        self.config = dataclasses.replace(self.config, policy=config.policy, dataplane=plane)
        self.table.header[H.CONFIG_GENERATION] += 1
        generation = int(self.table.header[H.CONFIG_GENERATION])
        detail = f"generation {generation}: {len(config.policy.rules)} rules"
        if fixed:
            detail += f"; needs a restart to change: {', '.join(fixed)}"
        self.last_reload = {
            "ok": True,
            "detail": detail,
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        log.info("reload: %s", detail)
        return self.last_reload

    # --- control commands -------------------------------------------------------------------

    def _register_commands(self) -> None:
        h = self.control.handlers
        h["status"] = lambda args: self.status()
        h["stats"] = lambda args: self.stats()
        h["start"] = lambda args: self._each_slot(args, self.arbiter.start)
        h["stop"] = lambda args: self._each_slot(args, self.arbiter.stop)
        h["restart"] = lambda args: self._each_slot(args, self.arbiter.restart)
        h["reload"] = lambda args: {"reload": self.reload()}
        h["drain"] = lambda args: self._set_draining(1)
        h["undrain"] = lambda args: self._set_draining(0)
        h["tail"] = self._tail
        h["version"] = lambda args: {"version": _version(), "protocol": 1}
        h["shutdown"] = self._shutdown

    def _shutdown(self, args: list[str]) -> dict[str, Any]:
        log.info("shutdown requested over the control socket")
        self.begin_shutdown(0)
        return {"detail": "shutting down"}

    def _each_slot(self, args: list[str], verb: Any) -> dict[str, Any]:
        if args == ["all"]:
            targets = list(range(self.slots))
        elif len(args) == 1 and args[0].isdigit() and int(args[0]) < self.slots:
            targets = [int(args[0])]
        else:
            raise ValueError(f"name a slot from 0 to {self.slots - 1}, or all")
        for k in targets:
            verb(k)
        return {"slots": targets}

    def _set_draining(self, value: int) -> dict[str, Any]:
        self.table.header[H.DRAINING] = value
        log.info("draining %s", "on: health reports 503" if value else "off")
        return {"draining": bool(value)}

    def _tail(self, args: list[str]) -> dict[str, Any]:
        count = int(args[0]) if args and args[0].isdigit() else 50
        follow = "follow" in args
        lines = list(self.ring.lines)[-count:] if count else []
        return {"lines": lines, "follow": follow}

    def status(self) -> dict[str, Any]:
        now, header = now_ns(), self.table.header
        workers = []
        for slot in self.arbiter.slots:
            words, counters = self.table.slot(slot.index), self.table.counters(slot.index)
            alive = slot.state in (State.STARTING, State.RUNNING, State.STOPPING)
            workers.append(
                {
                    "slot": slot.index,
                    "pid": slot.pid or None,
                    "cpu": slot.cpu,
                    "state": slot.state.name,
                    "restarts": slot.restarts,
                    "uptime_s": round((now - slot.started_ns) / 1e9, 1) if alive else None,
                    "heartbeat_age_s": round((now - int(words[S.HEARTBEAT_NS])) / 1e9, 3)
                    if words[S.HEARTBEAT_NS]
                    else None,
                    "generation": int(words[S.GENERATION]),
                    "packets_in": counters[cnt.Counter.RECEIVED],
                    "packets_out": counters[cnt.Counter.SENT],
                    "drops": sum(counters[c] for c in cnt.REFUSALS),
                    "last_exit": slot.last_exit or None,
                }
            )
        return {
            "supervisor": {
                "pid": os.getpid(),
                "uptime_s": round((now - header[H.STARTED_NS]) / 1e9, 1),
                "config": str(self.config_path),
                "generation": int(header[H.CONFIG_GENERATION]),
                "draining": bool(header[H.DRAINING]),
                "ready": bool(header[H.READY]),
                "last_reload": self.last_reload,
                "stopping": self.stopping,
                "interfaces": self.interface_facts,
            },
            "workers": workers,
            "health": self.health.status(),
        }

    def stats(self) -> dict[str, Any]:
        names = tuple(rule.name for rule in self.config.policy.rules)
        per_worker = [cnt.snapshot(self.table.counters(k), names) for k in range(self.slots)]
        return {"workers": per_worker, "total": cnt.total(per_worker)}


def load(path: Path) -> tuple[str, ApplianceConfig]:
    text = path.read_text(encoding="utf-8")
    return text, parse_config(text, str(path))


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


def _get(config: ApplianceConfig, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _version() -> str:
    try:
        return metadata.version("gwlb-appliance")
    except metadata.PackageNotFoundError:
        return "unknown"
