"""The flow-record writer as a child of the supervisor (supervisor/flowlogd.py).

Why the supervisor binds the socket: it lives as long as the supervisor, so the workers' records
queue in it while the writer starts or restarts, and a writer that dies loses only what it had
read; the workers reach it by path (config.flowlog_socket). The writer is restarted with a
backoff when it dies, like a worker; `status` shows it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
from typing import Any

from appliance.sockets import SO_RCVBUFFORCE
from config.schema import ApplianceConfig
from supervisor.states import State

RESTART_BASE_NS = 500_000_000
RESTART_MAX_NS = 30_000_000_000
STOP_TIMEOUT_NS = 5_000_000_000
RECEIVE_BUFFER_BYTES = 8 << 20  # the bounded buffer between the workers and the writer
CHILD_FD = 3

log = logging.getLogger("applianced")


class FlowLogService:
    """The writer process: spawned, watched, restarted, stopped (module doc)."""

    def __init__(self, config: ApplianceConfig, log_fd: int) -> None:
        self.config, self.log_fd = config, log_fd
        self.wanted = config.flowlog.enabled
        self.state = State.STOPPED
        self.pid = 0
        self.restarts = 0
        self.failures = 0
        self.retry_at_ns = 0
        self.kill_at_ns = 0
        self.sock: socket.socket | None = None
        if self.wanted:
            self.sock = self._bind()

    def _bind(self) -> socket.socket:
        path = self.config.flowlog_socket
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a previous daemon's: the runtime lock says none runs now
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        os.chmod(path, 0o600)  # the workers run as we do
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER_BYTES)
        return sock

    def argv(self) -> list[str]:
        flowlog = self.config.flowlog
        argv = [sys.executable, "-m", "supervisor.flowlogd", "--fd", str(CHILD_FD)]
        if flowlog.destination == "stdout":
            return [*argv, "--stdout"]
        return [*argv, "--file", str(flowlog.path), "--max-bytes", str(flowlog.max_bytes),
                "--keep", str(flowlog.keep)]  # fmt: skip

    def start(self, now_ns: int) -> None:
        if not self.wanted or self.sock is None:
            return
        # stdout: the daemon's own (journald under systemd); stderr: the supervisor's log pipe.
        actions = [
            (os.POSIX_SPAWN_DUP2, self.sock.fileno(), CHILD_FD),
            (os.POSIX_SPAWN_DUP2, self.log_fd, 2),
        ]
        self.pid = os.posix_spawn(
            sys.executable, self.argv(), dict(os.environ), file_actions=actions
        )
        self.state = State.RUNNING
        log.info("flow records: writer pid %d (%s)", self.pid, self._where())

    def _where(self) -> str:
        flowlog = self.config.flowlog
        return "standard output" if flowlog.destination == "stdout" else str(flowlog.path)

    def died(self, description: str, now_ns: int) -> None:
        self.pid = 0
        if self.state is State.STOPPING or not self.wanted:
            self.state = State.STOPPED
            return
        self.failures += 1
        delay = min(RESTART_BASE_NS << min(self.failures - 1, 10), RESTART_MAX_NS)
        self.retry_at_ns = now_ns + delay
        self.state = State.BACKOFF
        log.warning("flow record writer %s; restart in %.1f s", description, delay / 1e9)

    def tick(self, now_ns: int) -> None:
        if self.state is State.BACKOFF and self.wanted and now_ns >= self.retry_at_ns:
            self.restarts += 1
            self.start(now_ns)
        elif self.state is State.RUNNING and self.failures and now_ns - self.retry_at_ns > 60e9:
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

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            with contextlib.suppress(FileNotFoundError):
                self.config.flowlog_socket.unlink()

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state.name if self.config.flowlog.enabled else "DISABLED",
            "pid": self.pid or None,
            "to": self._where(),
            "restarts": self.restarts,
        }
