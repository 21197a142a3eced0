"""What runs in a forked worker: reset the process, open the raw socket, run the data path.

Pre-fork, the supervisor builds a `WorkerContext` (no I/O happens in it). Post-fork,
`init_process` makes this a well-behaved child: the supervisor's descriptors closed (control
connections and `tail -f` followers included), logging only to its stderr (the supervisor's log
pipe), its own signal handlers, death with the supervisor, pinned to its CPU, named in `ps`.

Exit statuses, a protocol with the arbiter (supervisor/arbiter.py):
    0   stopped by SIGTERM after finishing the batch in hand
    3   EXIT_BOOT: cannot boot (e.g. no CAP_NET_RAW for the raw socket): the supervisor stops
        with that reason instead of crash-looping
    70  EXIT_SOFTWARE: an unexpected exception; its traceback is logged first, with slot and pid
    killed by SIGABRT: stuck (no heartbeat); faulthandler has logged every thread's stack
    killed by SIGKILL: still stuck after SIGABRT, or too slow to start or stop
"""

from __future__ import annotations

import ctypes
import faulthandler
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.capture import Capture
from appliance.errors import BootError
from appliance.flowlog import FlowLog
from appliance.ringio import RingBatchIO
from appliance.ringsocket import RingGeometry
from appliance.sockets import open_raw_socket
from appliance.sources import SourceFilter
from appliance.stats import H, S, StatsTable, now_ns
from appliance.worker import Worker
from config.errors import ConfigError
from config.loader import load_config
from config.schema import ApplianceConfig
from supervisor import flowdump
from supervisor.arbiter import EXIT_BOOT, EXIT_SOFTWARE
from supervisor.boot import SNAPSHOT_NAME

PR_SET_PDEATHSIG = 1
# The keys a worker applies when the config generation changes; config.diff.live_keys() (the
# schema's LIVE marks) must name exactly these (tests/unit/test_reload_plan.py holds them equal).
APPLIED_LIVE = ("dataplane.allow_sources", "policy")
# A worker's lines reach the journal through the supervisor's pipe, so they carry their own pid.
LOG_FORMAT = "applianced[%(process)d]: %(levelname)s: %(message)s"

log = logging.getLogger("applianced")


@dataclass
class WorkerContext:
    config: ApplianceConfig  # the running config; the supervisor replaces it at each reload
    sockets: list[socket.socket]  # one per slot, bound in slot order before any fork
    table: StatsTable
    supervisor_pid: int
    log_fd: int  # write end of the supervisor's log pipe
    close_inherited: Callable[[], None]  # closes the supervisor's own descriptors in the child


def worker_main(slot: int, context: WorkerContext) -> None:
    """The child's whole life; never returns. Whatever ends it, the reason is logged first."""
    try:
        init_process(slot, context)
        worker = boot(slot, context)
        signal.signal(signal.SIGTERM, lambda signum, frame: setattr(worker, "stopping", True))
        worker.run()
    except BootError as error:
        log.error("worker %d cannot boot: %s", slot, error.strerror or error)
        _exit(EXIT_BOOT)
    except BaseException:  # anything at all: the traceback is the evidence
        log.exception("worker %d (pid %d) died of an unexpected error", slot, os.getpid())
        _exit(EXIT_SOFTWARE)
    _exit(0)


def _exit(code: int) -> None:
    logging.shutdown()  # flush the traceback into the pipe before the process is gone
    os._exit(code)


def init_process(slot: int, context: WorkerContext) -> None:
    os.dup2(context.log_fd, 2)  # our stderr goes through the supervisor (appliancectl tail)
    context.close_inherited()
    _log_to_stderr_only()
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


def _log_to_stderr_only() -> None:
    """Drop the handlers inherited from the supervisor (its log ring would write to `tail -f`
    followers from this process too) and log to our stderr, which is the supervisor's pipe."""
    logger = logging.getLogger("applianced")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    # fd 2 itself, not sys.stderr: whatever Python object held stderr before the fork (a
    # test runner's capture, say), the pipe is what the supervisor reads.
    handler = logging.StreamHandler(os.fdopen(2, "w", buffering=1, closefd=False))
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logger.addHandler(handler)


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
    table = context.table
    words, header = table.slot(slot), table.header
    if plane.io == "ring":  # the slot's packet socket, a fanout member since before any fork
        io = RingBatchIO(
            context.sockets[slot],
            plane.batch_size,
            RingGeometry.for_bytes(plane.receive_buffer_bytes),
        )
        policy, sources = context.config.policy, _sources(context.config)
        worker = Worker.over(io, policy, table.counters(slot), sources)
    else:
        worker = Worker(
            context.sockets[slot],
            open_raw_socket(plane.send_buffer_bytes),
            context.config.policy,
            table.counters(slot),
            _sources(context.config),
            plane.batch_size,
        )
    flowlog = context.config.flowlog
    if flowlog.enabled:
        names = tuple(rule.name for rule in worker.policy.rules)
        worker.flowlog = FlowLog(context.config.flowlog_socket, slot, flowlog.sample_allowed, names)
    snapshot = context.config.runtime_dir / SNAPSHOT_NAME
    applied = [int(header[H.CONFIG_GENERATION])]
    words[S.GENERATION] = applied[0]
    words[S.FLOWS_SERVED] = int(header[H.FLOWS_REQUEST])  # requests before we came: not ours
    runtime = context.config.runtime_dir
    capture = Capture(worker, slot, runtime)  # `appliancectl capture` (appliance/capture.py)

    def heartbeat() -> None:
        words[S.HEARTBEAT_NS] = now_ns()
        generation = int(header[H.CONFIG_GENERATION])
        if generation != applied[0]:
            applied[0] = generation
            _apply(worker, snapshot, slot)
            words[S.GENERATION] = generation
        request = int(header[H.FLOWS_REQUEST])
        if request != words[S.FLOWS_SERVED]:
            names = tuple(rule.name for rule in worker.policy.rules)
            try:
                flowdump.serve(worker, runtime, slot, names)
            except OSError as error:  # a full disk, say: the data path goes on regardless
                log.warning("worker %d: cannot list its flows: %s", slot, error)
            words[S.FLOWS_SERVED] = request
        if header[H.CAPTURE_REQUEST] != capture.seen:  # the only cost when none runs
            said = capture.look(int(header[H.CAPTURE_REQUEST]))
            if said is not None:
                log.info("worker %d: %s", slot, said)

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
