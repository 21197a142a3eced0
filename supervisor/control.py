"""The control socket: a Unix stream socket speaking supervisor.protocol, served from the
supervisor's own loop (no threads), and the ring of recent log lines that `tail` follows."""

from __future__ import annotations

import collections
import contextlib
import grp
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from supervisor.protocol import PROTOCOL_VERSION, ProtocolError, encode, recv_message

REQUEST_TIMEOUT_S = 2.0  # a client that does not finish its request in time is dropped
LOG_LINES_KEPT = 2000

Handler = Callable[[list[str]], dict[str, Any]]
log = logging.getLogger("applianced")


class LogRing(logging.Handler):
    """Keeps the last lines of the daemon's log (its own and its workers') and feeds followers."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: collections.deque[str] = collections.deque(maxlen=LOG_LINES_KEPT)
        self.followers: list[socket.socket] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.add(self.format(record))

    def add(self, line: str) -> None:
        self.lines.append(line)
        for follower in list(self.followers):
            try:
                follower.sendall(encode({"v": PROTOCOL_VERSION, "ok": True, "line": line}))
            except OSError:  # gone, or too slow to keep up: a log follower never blocks us
                self.followers.remove(follower)
                follower.close()


class ControlServer:
    def __init__(self, path: Path, mode: int, group: str | None, ring: LogRing) -> None:
        self.path = path
        self.ring = ring
        self.handlers: dict[str, Handler] = {}
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a stale socket from a previous run
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # no window in which the socket is open to others
        try:
            self.listener.bind(str(path))
        finally:
            os.umask(old_umask)
        if group is not None:
            os.chown(path, -1, grp.getgrnam(group).gr_gid)
        os.chmod(path, mode)
        self.listener.listen(16)
        self.listener.setblocking(False)

    def fileno(self) -> int:
        return self.listener.fileno()

    def serve_one(self) -> None:
        """Accept one connection and answer its request (called when the listener is readable)."""
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        conn.settimeout(REQUEST_TIMEOUT_S)
        try:
            request = recv_message(conn)
            if request is None:
                conn.close()
                return
            reply = self.dispatch(request)
            conn.sendall(encode(reply))
            if reply.get("follow"):
                conn.setblocking(False)
                self.ring.followers.append(conn)
                return
        except (OSError, ProtocolError) as error:
            log.debug("control client dropped: %s", error)
        conn.close()

    def dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("v") != PROTOCOL_VERSION:
            return _error(f"protocol version {request.get('v')!r} is not {PROTOCOL_VERSION}")
        command, args = request.get("cmd"), request.get("args", [])
        handler = self.handlers.get(command) if isinstance(command, str) else None
        if handler is None or not isinstance(args, list):
            known = ", ".join(sorted(self.handlers))
            return _error(f"unknown command {command!r} (known: {known})")
        try:
            reply = handler([str(a) for a in args])
        except ValueError as error:
            return _error(str(error))
        return {"v": PROTOCOL_VERSION, "ok": True, **reply}

    def close(self) -> None:
        for follower in self.ring.followers:
            follower.close()
        self.ring.followers.clear()
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _error(text: str) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "ok": False, "error": text}
