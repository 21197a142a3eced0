"""`appliancectl capture`, the supervisor's part: check the request again, keep one capture per
worker, and post it to the workers (appliance/capture.py), which send their packets straight to
the client's socket; the supervisor carries none of them.

Why check again what appliancectl checked: the control socket is the boundary, and what it is
handed names a socket the workers will send to. So the socket must be `capture-PID.sock` beside
this daemon's control socket (in its runtime directory, unless `control.socket` puts it
elsewhere) and be a socket: nothing else on the host can be made a target. The filter must
compile, and the bounds hold.

Which worker is busy: the supervisor remembers each slot's capture (its client's pid, socket and
deadline) and refuses another while that client's socket still takes a datagram (an empty one,
which the client ignores) and the deadline has not passed. A client that ended, was interrupted
or killed frees its workers at once; the workers themselves notice within a second.
"""

from __future__ import annotations

import math
import re
import socket
import stat
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.capture import Request, request_path
from appliance.capturefilter import FilterError, compile_filter
from appliance.stats import H, StatsTable, now_ns
from supervisor.boot import SNAPSHOT_NAME
from supervisor.ctlargs import CAPTURE_MAX_COUNT as MAX_COUNT
from supervisor.ctlargs import CAPTURE_MAX_SECONDS as MAX_SECONDS
from supervisor.files import write_whole

SOCKET_NAME = re.compile(r"capture-([0-9]{1,10})\.sock")
KEYS = ("filter", "count", "seconds", "socket")


@dataclass(frozen=True)
class Session:
    pid: int  # the client's, from its socket's name
    socket: Path
    deadline_ns: int


class CaptureDesk:
    """The captures running, by slot, and the requests that start and stop them."""

    def __init__(self, table: StatsTable, runtime_dir: Path) -> None:
        self.table = table
        self.runtime_dir = runtime_dir
        self.sessions: dict[int, Session] = {}

    def begin(self, running: list[int], words: list[str]) -> dict[str, Any]:
        """Start a capture on the `running` slots asked for (`words`: key=value, KEYS);
        ValueError with a sentence when it is refused."""
        options = self._options(words)
        path = self._client_socket(options.get("socket", ""))
        text = options.get("filter", "")
        try:
            compile_filter(text)
        except FilterError as error:
            raise ValueError(f"the filter does not parse at {error}; correct it") from None
        count = _bounded_int(options.get("count", str(MAX_COUNT)), "count", MAX_COUNT)
        seconds = _seconds(options.get("seconds", ""))
        if not running:
            raise ValueError("no worker asked for is running; start one (appliancectl start)")
        now = now_ns()
        for k in running:
            busy = self.sessions.get(k)
            if busy is not None and busy.socket != path and self._alive(busy, now):
                left_s = (busy.deadline_ns - now) / 1e9
                raise ValueError(
                    f"worker {k} is already capturing (appliancectl pid {busy.pid}'s, for "
                    f"{left_s:.0f} s more at most); wait for it or stop it (Ctrl-C there, or "
                    f"kill {busy.pid})"
                )
        session = Session(_pid(path), path, now + int(seconds * 1e9))
        number = self._post(
            running, lambda n: Request(n, text, count, session.deadline_ns, str(path))
        )
        for k in running:
            self.sessions[k] = session
        return {"slots": running, "request": number, "count": count, "seconds": seconds}

    def stop(self, words: list[str]) -> dict[str, Any]:
        """End the capture to the client socket `words` name, on every worker it runs on."""
        path = self._client_socket(self._options(words).get("socket", ""))
        slots = sorted(k for k, s in self.sessions.items() if s.socket == path)
        if slots:
            self._post(slots, lambda n: Request(n, "", 0, 0, str(path), stop=True))
            for k in slots:
                del self.sessions[k]
        return {"slots": slots}

    # --- helpers ---------------------------------------------------------------------------------

    def _post(self, slots: list[int], request: Callable[[int], Request]) -> int:
        """Write request `number` for each slot, then publish its number (workers read the file
        once they see the word change)."""
        header = self.table.header
        number = int(header[H.CAPTURE_REQUEST]) + 1
        for k in slots:
            write_whole(request_path(self.runtime_dir, k), request(number).to_json())
        header[H.CAPTURE_REQUEST] = number
        return number

    @staticmethod
    def _options(words: list[str]) -> dict[str, str]:
        options = {}
        for word in words:
            key, sep, value = word.partition("=")
            if not sep or key not in KEYS:
                raise ValueError(f"capture takes {', '.join(KEYS)} as key=value, not {word!r}")
            options[key] = value
        return options

    def _client_socket(self, text: str) -> Path:
        """The client's socket: capture-PID.sock beside the control socket, and a socket."""
        path = Path(text)
        where = [d for d in self._socket_dirs() if _same_dir(path.parent, d)]
        if not SOCKET_NAME.fullmatch(path.name) or not where:
            raise ValueError(
                f"the capture socket must be capture-PID.sock beside the control socket, not "
                f"{text!r}; use an appliancectl of this version"
            )
        path = where[0] / path.name
        try:
            mode = path.lstat().st_mode
        except OSError as error:
            raise ValueError(f"the capture socket {path} is not there ({error.strerror})") from None
        if not stat.S_ISSOCK(mode):
            raise ValueError(f"{path} is not a socket; remove it and capture again")
        return path

    def _socket_dirs(self) -> list[Path]:
        """Where appliancectl binds its socket: beside the control socket, which is in the
        runtime directory unless `control.socket` (read from the config snapshot) says else."""
        dirs = [self.runtime_dir]
        try:
            config = tomllib.loads((self.runtime_dir / SNAPSHOT_NAME).read_text())
            dirs.append(Path(config["control"]["socket"]).parent)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no snapshot, or the default place
        return dirs

    @staticmethod
    def _alive(session: Session, now: int) -> bool:
        """Whether a capture still holds its workers: before its deadline, its client's socket
        still there and taking datagrams (a full one counts as there)."""
        if now >= session.deadline_ns:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
            probe.setblocking(False)
            try:
                probe.sendto(b"", str(session.socket))
            except BlockingIOError:
                return True
            except OSError:
                return False
        return True


def _same_dir(given: Path, runtime_dir: Path) -> bool:
    try:
        return given.resolve() == runtime_dir.resolve()
    except OSError:
        return False


def _pid(path: Path) -> int:
    match = SOCKET_NAME.fullmatch(path.name)
    assert match is not None
    return int(match.group(1))


def _bounded_int(text: str, name: str, high: int) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= high:
        raise ValueError(f"{name} must be a whole number from 1 to {high}, not {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_SECONDS:
        raise ValueError(f"seconds must be above 0 and at most {MAX_SECONDS:g}, not {text!r}")
    return value
