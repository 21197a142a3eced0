"""Everything the supervisor makes before the first fork, in the order DESIGN.md §2 gives.

The runtime directory's lock comes first (a second daemon must change nothing before it is
refused), then the interface setup, the stats table, the config snapshot, the N reuseport sockets
in slot order (so a restarted worker inherits its slot's socket and the group never changes
shape), the log pipe the workers write to, the control socket and the signal wakeup pipe. No
worker exists yet; `Plant.close_in_child` is what a forked worker runs to drop the supervisor's
own descriptors.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
from dataclasses import dataclass

from appliance.sockets import open_data_socket
from appliance.stats import H, StatsTable, now_ns
from appliance.steering import attach_steering
from config.schema import ApplianceConfig
from supervisor.control import ControlServer
from supervisor.files import write_whole
from supervisor.logring import LogRing
from supervisor.netsetup import configure_interfaces
from supervisor.ringtap import RingTap, open_ring_tap
from supervisor.runlock import RuntimeLock
from supervisor.snapshot import write_rule_names

SNAPSHOT_NAME = "config.toml"  # the validated config the workers apply, in the runtime dir

log = logging.getLogger("applianced")


@dataclass
class Plant:
    """The supervisor's pre-fork resources."""

    lock: RuntimeLock
    interface_facts: list[str]
    table: StatsTable
    sockets: list[socket.socket]
    selector: selectors.BaseSelector
    control: ControlServer
    log_read: int  # workers' stderr, forwarded to ours and to the log ring
    log_write: int
    wakeup_read: int  # signal.set_wakeup_fd's pipe: a signal wakes the loop
    wakeup_write: int
    tap: RingTap | None = None  # dataplane.io = "ring": `sockets` are its packet sockets

    def close_in_child(self) -> None:
        """Run in a forked worker: close the supervisor's descriptors that are not the worker's
        (its stderr is dup2'ed from log_write first). The parent's copies stay as they are."""
        self.control.abandon()
        with contextlib.suppress(OSError):
            self.selector.close()
        for fd in (self.log_read, self.wakeup_read, self.wakeup_write, self.lock.fileno()):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.tap is not None:
            self.tap.guard.close()

    def close(self) -> None:
        """At the end of the supervisor's life: unbind 6081, remove the control socket."""
        self.control.close()
        if self.tap is not None:
            self.tap.close()  # the nftables rule first
        for sock in self.sockets:
            sock.close()
        self.selector.close()
        self.lock.release()


def build_plant(config: ApplianceConfig, slots: int, config_text: str, ring: LogRing) -> Plant:
    """Make the pre-fork resources; a BootError (or OSError) when the host cannot run us."""
    config.runtime_dir.mkdir(parents=True, exist_ok=True)
    lock = RuntimeLock(config.runtime_dir)
    lock.acquire()
    try:
        return _build(config, slots, config_text, ring, lock)
    except BaseException:
        lock.release()
        raise


def _build(
    config: ApplianceConfig, slots: int, config_text: str, ring: LogRing, lock: RuntimeLock
) -> Plant:
    facts = configure_interfaces(config)
    table = StatsTable.create(config.runtime_dir, slots)
    table.header[H.SUPERVISOR_PID] = os.getpid()
    table.header[H.STARTED_NS] = now_ns()
    write_snapshot(config, config_text, 0)
    plane = config.dataplane
    sockets = []  # with io = "ring", the tap's: made last, when nothing else can fail
    if plane.io == "socket":
        sockets = [
            open_data_socket(plane.bind, plane.port, plane.receive_buffer_bytes)
            for _ in range(slots)
        ]
    if slots > 1 and plane.steering == "inner-flow" and plane.io == "socket":
        attach_steering(sockets[0], slots)
    log_read, log_write = os.pipe()
    os.set_blocking(log_read, False)
    selector = selectors.DefaultSelector()
    control = ControlServer(
        config.control_socket, config.control.mode, config.control.group, ring, selector
    )
    wakeup_read, wakeup_write = os.pipe()
    for fd in (wakeup_read, wakeup_write):
        os.set_blocking(fd, False)
    tap = open_ring_tap(config, slots) if plane.io == "ring" else None
    if tap is not None:
        sockets = tap.sockets
        facts += tap.facts
    return Plant(
        lock,
        facts,
        table,
        sockets,
        selector,
        control,
        log_read,
        log_write,
        wakeup_read,
        wakeup_write,
        tap,
    )


def write_snapshot(config: ApplianceConfig, text: str, generation: int) -> None:
    """The config text the workers apply, and its rule names for readers, both by rename."""
    write_whole(config.runtime_dir / SNAPSHOT_NAME, text)
    names = tuple(rule.name for rule in config.policy.rules)
    write_rule_names(config.runtime_dir, generation, names)
