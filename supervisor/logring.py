"""The ring of the daemon's recent log lines (its own and its workers'), which `tail` reads and
`tail -f` followers receive.

A follower is fed by queueing frames on its control connection, never by writing to its socket
here: the control server sends them when the socket can take them, and drops a follower whose
backlog grows past a bound, so a follower that stops reading costs the supervisor nothing.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable

from supervisor.protocol import PROTOCOL_VERSION, encode

LOG_LINES_KEPT = 2000

Follower = Callable[[bytes], None]  # takes one encoded frame; the control server's queue


class LogRing(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: collections.deque[str] = collections.deque(maxlen=LOG_LINES_KEPT)
        self.followers: list[Follower] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.add(self.format(record))

    def add(self, line: str) -> None:
        self.lines.append(line)
        if self.followers:
            frame = encode({"v": PROTOCOL_VERSION, "ok": True, "line": line})
            for follower in list(self.followers):
                follower(frame)
