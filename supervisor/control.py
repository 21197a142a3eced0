"""The control socket: a Unix stream socket speaking supervisor.protocol, served from the
supervisor's own loop without ever blocking it.

Why non-blocking, with no threads: the same loop reaps workers and stamps the supervisor's
heartbeat, which the health service turns into GWLB's verdict. A client that sends its request one
byte at a time, never finishes it, or never reads its answer must not delay that loop, so every
connection is a pair of buffers driven by the selector: bytes are taken when they arrive and sent
when the socket can take them, each step does a bounded amount of work, and a connection that
misses its deadline (request in REQUEST_TIMEOUT_S, reply taken in REPLY_TIMEOUT_S) or that would
exceed MAX_CONNECTIONS is closed. A `tail -f` follower is a connection whose outbox the log ring
fills; one that falls FOLLOWER_BACKLOG_BYTES behind is dropped.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import selectors
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.stats import now_ns
from supervisor.logring import LogRing
from supervisor.protocol import PROTOCOL_VERSION, ProtocolError, encode, take_message

REQUEST_TIMEOUT_S = 2.0  # a client that does not finish its request in time is dropped
REPLY_TIMEOUT_S = 5.0  # a client that does not take its answer in time is dropped
MAX_CONNECTIONS = 64  # beyond this, new connections are closed at once
FOLLOWER_BACKLOG_BYTES = 1 << 20
RECV_BYTES = 64 << 10
ACCEPTS_PER_EVENT = 16


class Deferred:
    """A handler's answer that is not ready yet (e.g. `flows`, which the workers write at their
    next heartbeat): the loop asks `poll()` at each tick until it returns the reply, or gives
    the client `expired()` once `deadline_ns` passed. The loop never waits for it."""

    def __init__(
        self, poll: Callable[[], dict[str, Any] | None], deadline_ns: int, expired: str
    ) -> None:
        self.poll = poll
        self.deadline_ns = deadline_ns
        self.expired = expired


Handler = Callable[[list[str]], "dict[str, Any] | Deferred"]
log = logging.getLogger("applianced")


class _Connection:
    def __init__(self, sock: socket.socket, deadline_ns: int) -> None:
        self.sock = sock
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.deadline_ns = deadline_ns  # 0: none (a follower)
        self.answered = False  # the one request was answered: close once the outbox is sent
        self.following = False
        self.writing = False  # registered for EVENT_WRITE
        self.feed: Callable[[bytes], None] | None = None  # a follower's entry in the log ring
        self.pending: Deferred | None = None  # an answer the loop is still waiting for

    def fileno(self) -> int:
        return self.sock.fileno()


class ControlServer:
    def __init__(
        self,
        path: Path,
        mode: int,
        group: str | None,
        ring: LogRing,
        selector: selectors.BaseSelector,
    ) -> None:
        self.path = path
        self.ring = ring
        self.selector = selector
        self.handlers: dict[str, Handler] = {}
        self.connections: dict[int, _Connection] = {}
        self.refused = 0  # connections closed at once because MAX_CONNECTIONS were open
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a stale socket from a previous run (the runtime lock is ours)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # no window in which the socket is open to others
        try:
            self.listener.bind(str(path))
        finally:
            os.umask(old_umask)
        if group is not None:  # the loader checked that it exists
            os.chown(path, -1, grp.getgrnam(group).gr_gid)
        os.chmod(path, mode)
        self.listener.listen(64)
        self.listener.setblocking(False)
        selector.register(self.listener, selectors.EVENT_READ, self._accept)

    # --- the selector's callbacks -----------------------------------------------------------

    def _accept(self, mask: int) -> None:
        for _ in range(ACCEPTS_PER_EVENT):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # EMFILE and the like: say so, keep serving the rest
                log.warning("control socket: cannot accept a connection: %s", error)
                return
            if len(self.connections) >= MAX_CONNECTIONS:
                self.refused += 1
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Connection(sock, now_ns() + int(REQUEST_TIMEOUT_S * 1e9))
            self.connections[conn.fileno()] = conn
            self.selector.register(sock, selectors.EVENT_READ, lambda m, c=conn: self._ready(c, m))

    def _ready(self, conn: _Connection, mask: int) -> None:
        if mask & selectors.EVENT_READ and not self._receive(conn):
            return
        if conn.outbox:
            self._send(conn)

    def _receive(self, conn: _Connection) -> bool:
        """Take what arrived; answer a whole request. False when the connection was closed."""
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            data = b""
        if not data:  # the peer is gone (a follower that quit, a client that gave up)
            self._close(conn)
            return False
        if conn.answered:
            return True  # one request per connection: anything more is ignored
        conn.inbox += data
        try:
            request = take_message(conn.inbox)
        except ProtocolError as error:
            log.debug("control client dropped: %s", error)
            self._close(conn)
            return False
        if request is not None:
            self._answer(conn, request)
        return True

    def _answer(self, conn: _Connection, request: dict[str, Any]) -> None:
        answer = self.dispatch(request)
        conn.answered = True
        if isinstance(answer, Deferred):
            conn.pending, conn.deadline_ns = answer, 0
            return
        self._reply(conn, answer)

    def _reply(self, conn: _Connection, reply: dict[str, Any]) -> None:
        conn.outbox += encode(reply)
        if reply.get("follow"):
            conn.following, conn.deadline_ns = True, 0
            conn.feed = lambda frame: self._follow(conn, frame)
            self.ring.followers.append(conn.feed)
        else:
            conn.deadline_ns = now_ns() + int(REPLY_TIMEOUT_S * 1e9)

    def _follow(self, conn: _Connection, frame: bytes) -> None:
        if len(conn.outbox) + len(frame) > FOLLOWER_BACKLOG_BYTES:
            self._close(conn)  # too far behind: a log follower never holds us up
            return
        conn.outbox += frame

    def _send(self, conn: _Connection) -> None:
        try:
            sent = conn.sock.send(conn.outbox)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(conn)
            return
        del conn.outbox[:sent]
        if not conn.outbox and conn.answered and not conn.following:
            self._close(conn)
            return
        wanted = bool(conn.outbox)
        if wanted != conn.writing:
            conn.writing = wanted
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if wanted else 0)
            self.selector.modify(conn.sock, events, lambda m, c=conn: self._ready(c, m))

    # --- the loop's step --------------------------------------------------------------------

    def tick(self, now: int) -> None:
        """Drop connections past their deadline; answer deferred requests that are ready;
        start sending what followers were given."""
        for conn in list(self.connections.values()):
            if conn.pending is not None:
                self._settle(conn, now)
            elif conn.deadline_ns and now > conn.deadline_ns:
                log.debug("control client dropped: too slow (fd %d)", conn.fileno())
                self._close(conn)
            elif conn.outbox and not conn.writing:
                self._send(conn)

    def _settle(self, conn: _Connection, now: int) -> None:
        pending = conn.pending
        assert pending is not None
        reply = pending.poll()
        if reply is None and now > pending.deadline_ns:
            reply = _error(pending.expired)
        if reply is not None:
            conn.pending = None
            if reply.get("ok", True) and "v" not in reply:
                reply = {"v": PROTOCOL_VERSION, "ok": True, **reply}
            self._reply(conn, reply)
            self._send(conn)

    def dispatch(self, request: dict[str, Any]) -> dict[str, Any] | Deferred:
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
        except OSError as error:  # e.g. a full runtime dir: the command fails, the loop goes on
            log.error("%s failed: %s", command, error)
            return _error(f"{command} failed: {error.strerror or error}")
        if isinstance(reply, Deferred):
            return reply
        return {"v": PROTOCOL_VERSION, "ok": True, **reply}

    # --- endings ----------------------------------------------------------------------------

    def _close(self, conn: _Connection) -> None:
        if self.connections.pop(conn.fileno(), None) is None:
            return
        if conn.feed in self.ring.followers:
            self.ring.followers.remove(conn.feed)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn.sock)
        conn.sock.close()

    def close(self) -> None:
        for conn in list(self.connections.values()):
            self._close(conn)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(self.listener)
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def abandon(self) -> None:
        """In a forked child: close our copies of every socket, leave the parent's untouched
        (no unlink, no unregister: the selector is the parent's too)."""
        for conn in self.connections.values():
            conn.sock.close()
        self.connections.clear()
        self.ring.followers.clear()
        self.listener.close()


def _error(text: str) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "ok": False, "error": text}
