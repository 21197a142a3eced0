"""What runs in a forked worker: reset the process, open the raw socket, run the data path.

Pre-fork, the supervisor builds a `WorkerContext` (no I/O happens in it). Post-fork,
`init_process` makes this a well-behaved child: its own signal handlers, death with the supervisor,
pinned to its CPU, named in `ps`. A worker that cannot open its raw socket exits with EXIT_BOOT so
the supervisor stops with that reason instead of crash-looping.
"""

from __future__ import annotations

import ctypes
import faulthandler
import logging
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import BootError
from appliance.sockets import open_raw_socket
from appliance.sources import SourceFilter
from appliance.stats import H, S, StatsTable, now_ns
from appliance.worker import Worker
from config.errors import ConfigError
from config.loader import load_config
from config.schema import ApplianceConfig
from supervisor.arbiter import EXIT_BOOT

PR_SET_PDEATHSIG = 1
SNAPSHOT_NAME = "config.toml"  # the validated config the workers apply, in the runtime dir

log = logging.getLogger("applianced")


@dataclass
class WorkerContext:
    config: ApplianceConfig
    sockets: list[socket.socket]  # one per slot, bound in slot order before any fork
    table: StatsTable
    supervisor_pid: int
    log_fd: int  # write end of the supervisor's log pipe
    inherited_fds: list[int]  # the supervisor's own descriptors, closed in the child


def worker_main(slot: int, context: WorkerContext) -> None:
    """The child's whole life; never returns."""
    worker = None
    try:
        init_process(slot, context)
        worker = boot(slot, context)
    except BootError as error:
        log.error("worker %d cannot boot: %s", slot, error.strerror or error)
        os._exit(EXIT_BOOT)
    signal.signal(signal.SIGTERM, lambda signum, frame: setattr(worker, "stopping", True))
    worker.run()
    os._exit(0)


def init_process(slot: int, context: WorkerContext) -> None:
    os.dup2(context.log_fd, 2)  # our stderr goes through the supervisor (appliancectl tail)
    for fd in context.inherited_fds:
        os.close(fd)
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_IGN)  # the supervisor handles these, not us
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    faulthandler.enable()  # SIGABRT from the supervisor leaves a traceback in the log
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != context.supervisor_pid:
        os._exit(0)  # the supervisor died before prctl took effect
    cpu = int(context.table.slot(slot)[S.CPU])
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as error:
        log.warning("worker %d: cannot pin to CPU %d: %s", slot, cpu, error)
    _set_title(f"applianced: worker {slot}")
    for k, sock in enumerate(context.sockets):
        if k != slot:
            sock.close()  # the group keeps its shape: the supervisor still holds them all


def _set_title(title: str) -> None:
    try:
        import setproctitle
    except ImportError:  # the name in /proc/PID/comm at least
        libc = ctypes.CDLL(None)
        libc.prctl(15, title.encode()[:15], 0, 0, 0)
    else:
        setproctitle.setproctitle(title)


def boot(slot: int, context: WorkerContext) -> Worker:
    plane = context.config.dataplane
    raw = open_raw_socket(plane.send_buffer_bytes)
    table = context.table
    words, header = table.slot(slot), table.header
    worker = Worker(
        context.sockets[slot],
        raw,
        context.config.policy,
        table.counters(slot),
        _sources(context.config),
        plane.batch_size,
    )
    snapshot = context.config.runtime_dir / SNAPSHOT_NAME
    applied = [int(header[H.CONFIG_GENERATION])]
    words[S.GENERATION] = applied[0]

    def heartbeat() -> None:
        words[S.HEARTBEAT_NS] = now_ns()
        generation = int(header[H.CONFIG_GENERATION])
        if generation != applied[0]:
            applied[0] = generation
            _apply(worker, snapshot, slot)
            words[S.GENERATION] = generation

    worker.heartbeat = heartbeat
    heartbeat()
    return worker


def _apply(worker: Worker, snapshot: Path, slot: int) -> None:
    """Swap in the policy the supervisor validated; between two batches, so nothing is lost."""
    try:
        config = load_config(snapshot)
    except ConfigError as error:  # the supervisor validated it: only a vanished file gets here
        log.error("worker %d: keeping the old policy: %s", slot, error)
        return
    worker.policy = config.policy
    worker.sources = _sources(config)
    log.info("worker %d: policy of %d rules applied", slot, len(config.policy.rules))


def _sources(config: ApplianceConfig) -> SourceFilter | None:
    networks = config.dataplane.allow_sources
    return SourceFilter(networks) if networks else None
