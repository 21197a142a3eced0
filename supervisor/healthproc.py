"""The health service as a child of the supervisor: gunicorn serving health.wsgi.

Why a child and not its own systemd unit: one command (`applianced`) starts the whole appliance on
any host, systemd or not, and the supervisor restarts gunicorn if it dies, as it does workers. It is
deliberately *not* tied to the supervisor's death (no parent-death signal): if the supervisor
vanishes, the health service stays up and says so with a 503, the truthful answer, instead of
leaving GWLB to infer it from a refused connection. The next supervisor replaces that instance
through the pidfile before starting its own. Under the systemd unit (KillMode=control-group) the
whole cgroup stops when the supervisor dies, and the unit restarts the appliance (deploy/README.md).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from config.schema import ApplianceConfig
from supervisor.childproc import STOP_TIMEOUT_NS, ChildProcess
from supervisor.files import write_whole
from supervisor.schedattr import set_priority
from supervisor.states import State

PIDFILE = "health.pid"
PORT_RETRY_NS = 5_000_000_000  # how often a port someone else holds is tried again

log = logging.getLogger("applianced")


TITLE = b"[applianced: health]"  # gunicorn's title for us (health.gunicorn_conf proc_name)


def is_health_service(cmdline: bytes) -> bool:
    """Whether /proc/PID/cmdline is our gunicorn: as spawned, or as it renames itself."""
    return b"health.wsgi" in cmdline or TITLE in cmdline


@contextlib.contextmanager
def handle_closed(fd: int) -> Iterator[None]:
    try:
        yield
    finally:
        os.close(fd)


class HealthService(ChildProcess):
    label = "health service"

    def __init__(self, config: ApplianceConfig, log_fd: int) -> None:
        super().__init__(config.health.enabled)
        self.config = config
        self.log_fd = log_fd
        self.pidfile = config.runtime_dir / PIDFILE
        self.bind = f"{config.health.bind}:{config.health.port}"
        self.port_problem = ""  # why the port cannot be bound, said once until it clears

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            "python:health.gunicorn_conf",
            "health.wsgi:from_environment()",
        ]

    def environment(self) -> dict[str, str]:
        health = self.config.health
        # Without NOTIFY_SOCKET: gunicorn would tell systemd READY=1 before our workers run.
        inherited = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        return {
            **inherited,
            "GWLB_RUNTIME_DIR": str(self.config.runtime_dir),
            "GWLB_HEALTH_BIND": self.bind,
            "GWLB_HEALTH_MIN_WORKERS": repr(health.min_workers),
            "GWLB_HEALTH_STALENESS_S": repr(health.staleness_s),
            "GWLB_HEALTH_OVERFLOW_UNREADY_S": repr(health.overflow_unready_s),
        }

    def evict_previous(self) -> None:
        """Stop a health service a previous, dead supervisor left behind (ours, by its pidfile)."""
        try:
            pid = int(self.pidfile.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if not is_health_service(cmdline):
            return  # the pid was reused by something else: not ours to stop
        log.info("stopping the health service pid %d left by a previous supervisor", pid)
        try:
            handle = os.pidfd_open(pid)  # not our child: a pidfd is how to wait for its exit
        except ProcessLookupError:
            return
        with handle_closed(handle), contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            exited, _, _ = select.select([handle], [], [], STOP_TIMEOUT_NS / 1e9)
            if not exited:
                os.kill(pid, signal.SIGKILL)

    def start(self, now_ns: int) -> None:
        """Spawn gunicorn, once its port can be bound; else say why (once) and retry later."""
        problem = self._port_problem()
        if problem:
            if problem != self.port_problem:
                log.error("health service: %s; retrying every %.0f s", problem, PORT_RETRY_NS / 1e9)
            self.port_problem = problem
            self.retry_at_ns = now_ns + PORT_RETRY_NS
            self.state = State.BACKOFF
            return
        if self.port_problem:
            log.info("health service: %s can be bound now", self.bind)
            self.port_problem = ""
        self._spawn()

    def _port_problem(self) -> str:
        """Why gunicorn could not bind our port, or "" (gunicorn itself would retry each second
        for a while and exit 1, which says nothing to the operator)."""
        health = self.config.health
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
            probe.bind((health.bind, health.port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return f"port {health.port} on {health.bind} is in use by another process"
            if error.errno == errno.EACCES:
                return f"cannot bind port {health.port}: CAP_NET_BIND_SERVICE is needed"
            return f"cannot bind {self.bind}: {error.strerror}"
        finally:
            probe.close()
        return ""

    def _spawn(self) -> None:
        actions = [(os.POSIX_SPAWN_DUP2, self.log_fd, 1), (os.POSIX_SPAWN_DUP2, self.log_fd, 2)]
        self.pid = os.posix_spawn(
            sys.executable, self.argv(), self.environment(), file_actions=actions
        )
        health = self.config.health
        try:  # before gunicorn forks its worker (it is still importing), which inherits it
            set_priority(self.pid, health.nice, health.slice_us)
        except OSError as error:
            log.warning(
                "health service: cannot set nice %d, slice %d us: %s",
                health.nice,
                health.slice_us,
                error,
            )
        try:  # only for evicting a left-behind instance: a full runtime dir must not stop us
            write_whole(self.pidfile, f"{self.pid}\n")
        except OSError as error:
            log.warning("health service: cannot write %s: %s", self.pidfile, error.strerror)
        self.state = State.RUNNING
        log.info("health service: gunicorn pid %d on %s", self.pid, self.bind)

    def stopped_cleanly(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.pidfile.unlink()

    def counts_as_restart(self) -> bool:
        return not self.port_problem  # a port still taken: a retry, not a restart

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state.name if self.config.health.enabled else "DISABLED",
            "problem": self.port_problem or None,
            "pid": self.pid or None,
            "bind": self.bind,
            "restarts": self.restarts,
        }
