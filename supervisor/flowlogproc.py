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
import socket
import sys
from typing import Any

from appliance.sockets import SO_RCVBUFFORCE
from config.schema import ApplianceConfig
from supervisor.childproc import ChildProcess
from supervisor.states import State

RECEIVE_BUFFER_BYTES = 8 << 20  # the bounded buffer between the workers and the writer
CHILD_FD = 3

log = logging.getLogger("applianced")


class FlowLogService(ChildProcess):
    """The writer process: spawned, watched, restarted, stopped (module doc)."""

    label = "flow record writer"

    def __init__(self, config: ApplianceConfig, log_fd: int) -> None:
        super().__init__(config.flowlog.enabled)
        self.config, self.log_fd = config, log_fd
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
