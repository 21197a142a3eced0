"""`appliancectl capture`: the client's side. It writes the pcapng file; the workers send it
their packets' blocks straight over a Unix datagram socket (appliance/capture.py).

In order: the output is opened (not yet emptied) so that a file that cannot be written is
refused before anything starts; the socket `capture-PID.sock` is bound in the daemon's runtime
directory (where the control socket is), readable by the daemon's workers; the daemon is asked
(`capture`), and checks everything again. Once it agrees the file is emptied and gets its
section header and one interface per worker slot ("worker N"), then the workers' blocks as they
come, each datagram's flushed at once so that `-w - | tshark -r -` shows packets as they pass. A
datagram's head says how many packets it holds, so its blocks are written in one piece and
walked only when --count falls among them.

It ends when every worker asked has said it ended, or when --count packets are written (the
workers' own count is per worker), or at --seconds (with a moment for the workers' last words),
or at Ctrl-C. When it ends first it asks the daemon to stop the capture and waits up to STOP_WAIT_S
for the workers' counts (a second Ctrl-C does not wait), so that what they dropped is reported.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from appliance.capture import DATA_HEAD, DATA_MAGIC
from appliance.pcapng import BLOCK_EPB, PcapngWriter, is_outbound, split_blocks
from supervisor.ctlargs import (
    CAPTURE_COUNT,
    CAPTURE_SECONDS,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Invocation,
)
from supervisor.ctlrender import compact

if TYPE_CHECKING:
    from supervisor.ctl import Client

RECEIVE_BUFFER_BYTES = 8 << 20
RECV_BYTES = 1 << 20  # more than the workers' largest datagram (capture.MAX_DATAGRAM_BYTES)
END_GRACE_S = 1.5  # after --seconds: the workers' deadline is the same; their end comes after
STOP_WAIT_S = 1.5  # for the workers' counts after a stop (they read requests once a second)
SOCKET_MODE = 0o660


class Output:
    """Where the capture goes: a file (emptied only once the daemon agreed) or stdout."""

    def __init__(self, stream: IO[bytes], path: Path | None, created: bool) -> None:
        self.stream = stream
        self.path = path
        self.created = created  # removed again if the capture never starts
        self.started = False

    @classmethod
    def open(cls, name: str) -> Output:
        if name == "-":
            return cls(sys.stdout.buffer, None, False)
        path = Path(name)
        created = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)  # no O_TRUNC: not before the daemon
        return cls(os.fdopen(fd, "wb"), path, created)

    def begin(self, interfaces: int) -> None:
        if self.path is not None:
            with contextlib.suppress(OSError):  # a FIFO or a device has nothing to empty
                self.stream.truncate(0)
        writer = PcapngWriter(self.stream)
        for k in range(interfaces):
            writer.add_interface(f"worker {k}")
        self.stream.flush()
        self.started = True

    def close(self) -> None:
        if self.path is None:
            with contextlib.suppress(OSError):
                self.stream.flush()
            return
        self.stream.close()
        if self.created and not self.started:
            with contextlib.suppress(OSError):
                self.path.unlink()


def run_capture(client: Client, invocation: Invocation) -> int:
    """The whole command: every outcome is a sentence on stderr and an exit code (Refused and
    Unreachable from the daemon are execute()'s to report)."""
    name = invocation.output or "-"
    try:
        output = Output.open(name)
    except OSError as error:
        print(
            f"appliancectl: capture: cannot write {name}: {error.strerror or error}; name a "
            "file in a directory you may write to, or -w - for standard output",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        sock, path = _bind(invocation.socket)
    except OSError as error:
        output.close()
        print(
            f"appliancectl: capture: cannot make its socket in {invocation.socket.parent}: "
            f"{error.strerror or error}; run appliancectl as root or as the daemon's user",
            file=sys.stderr,
        )
        return EXIT_FAILED
    try:
        return _capture(client, invocation, output, sock, path)
    finally:
        sock.close()
        with contextlib.suppress(OSError):
            path.unlink()
        output.close()


def _bind(control_socket: Path) -> tuple[socket.socket, Path]:
    """A datagram socket for the workers, beside the control socket, with its group."""
    path = control_socket.parent / f"capture-{os.getpid()}.sock"
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by a process of ours that had this pid (a pid comes round)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        for option in (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF):
            with contextlib.suppress(OSError):  # FORCE needs CAP_NET_ADMIN
                sock.setsockopt(socket.SOL_SOCKET, option, RECEIVE_BUFFER_BYTES)
                break
        old_umask = os.umask(0o117)  # no moment in which others may send to it
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        with contextlib.suppress(OSError):  # the workers' group, when we may give it
            os.chown(path, -1, os.stat(control_socket).st_gid)
        os.chmod(path, SOCKET_MODE)
    except BaseException:
        sock.close()
        raise
    return sock, path


def _capture(
    client: Client, invocation: Invocation, output: Output, sock: socket.socket, path: Path
) -> int:
    count = invocation.count or CAPTURE_COUNT
    seconds = invocation.seconds or CAPTURE_SECONDS
    words = [f"filter={invocation.filter_text}", f"count={count}", f"seconds={seconds:g}"]
    reply = client.call("capture", [invocation.target or "all", *words, f"socket={path}"])
    output.begin(int(reply["workers"]))
    slots = [int(k) for k in reply["slots"]]
    session = _Session(client, sock, path, output.stream, count, slots)
    session.run(time.monotonic() + seconds + END_GRACE_S)
    said = compact(session.counts()) if invocation.as_json else session.summary()
    print(said, file=sys.stderr)  # stdout may be the capture itself
    return EXIT_OK


class _Session:
    """The receiving end of one capture (module doc)."""

    def __init__(
        self,
        client: Client,
        sock: socket.socket,
        path: Path,
        stream: IO[bytes],
        count: int,
        slots: list[int],
    ) -> None:
        self.client, self.sock, self.path = client, sock, path
        self.stream, self.count = stream, count
        self.waiting = set(slots)  # workers that have not said they ended
        self.packets = 0  # packets written (as received; their as-sent copies come with them)
        self.records = 0
        self.dropped = 0  # as the workers counted them
        self.stopped_by: float | None = None  # when we asked them to stop: wait for counts
        self.broken = False  # the reader of stdout went away

    def run(self, deadline: float) -> None:
        while self.waiting:
            try:
                if not self._receive(deadline):
                    return
            except KeyboardInterrupt:
                if self.stopped_by is not None:
                    return  # a second Ctrl-C: do not wait for the counts
                self.stop()

    def _receive(self, deadline: float) -> bool:
        """Take the next datagram; False when the time is up."""
        limit = deadline if self.stopped_by is None else min(deadline, self.stopped_by)
        left = limit - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(RECV_BYTES)
        except TimeoutError:
            return False
        self.take(data)
        return True

    def take(self, data: bytes) -> None:
        """One datagram from a worker: packets to write, its end, or a probe (empty)."""
        try:
            if data[:1] == b"{":
                self._end(orjson.loads(data))
                return
            magic, packets, records = DATA_HEAD.unpack_from(data)
        except (ValueError, TypeError, AttributeError, struct.error):
            return  # not from a worker of ours: nothing to write
        if magic != DATA_MAGIC or self.stopped_by is not None:
            return  # past the count, or stopping: the workers' counts are what is awaited
        if self.packets + packets <= self.count:  # all of it, as it came
            self.packets += packets
            self.records += records
            self._write(memoryview(data)[DATA_HEAD.size :])
        else:
            self._write_some(memoryview(data)[DATA_HEAD.size :])
        self._flush()
        if self.packets >= self.count or self.broken:
            self.stop()

    def _write_some(self, data: memoryview) -> None:
        """The packets of `data` up to the count, each with its as-sent copies."""
        try:
            blocks = split_blocks(data)
        except ValueError:
            return
        for block_type, block in blocks:
            if block_type != BLOCK_EPB:
                continue
            if not is_outbound(block):
                if self.packets >= self.count:
                    return
                self.packets += 1
            self._write(block)
            self.records += 1

    def _end(self, message: dict[str, Any]) -> None:
        self.waiting.discard(int(message.get("end", -1)))
        self.dropped += int(message.get("dropped", 0))

    def _write(self, block: memoryview) -> None:
        if self.broken:
            return
        try:
            self.stream.write(block)
        except BrokenPipeError:
            self._broke()

    def _flush(self) -> None:
        if self.broken:
            return
        try:
            self.stream.flush()
        except BrokenPipeError:
            self._broke()

    def _broke(self) -> None:
        """The reader of our stdout has gone (tshark -c N, say): stop; nothing more goes there."""
        self.broken = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self.stream.fileno())  # so that the exit's flush does not fail again
        os.close(devnull)

    def stop(self) -> None:
        """Ask the daemon to end this capture; wait a moment for the workers' counts."""
        if self.stopped_by is not None:
            return
        self.stopped_by = time.monotonic() + STOP_WAIT_S
        self._take_queued()  # the workers' ends may be here already (a worker's own count)
        if not self.waiting:
            return
        # Whatever stops the request (the daemon gone, say: ctl's Unreachable, or Refused), the
        # workers' deadline ends the capture anyway.
        with contextlib.suppress(Exception):
            self.client.call("capture", ["stop", f"socket={self.path}"])

    def _take_queued(self) -> None:
        self.sock.settimeout(0)
        with contextlib.suppress(BlockingIOError):
            while self.waiting:
                self.take(self.sock.recv(RECV_BYTES))

    def counts(self) -> dict[str, Any]:
        return {
            "packets": self.packets,
            "records": self.records,
            "dropped": self.dropped,
            "unreported": sorted(self.waiting),
        }

    def summary(self) -> str:
        said = f"captured {self.packets} packets ({self.dropped} dropped by the workers)"
        if self.records > self.packets:
            said += f", {self.records} records with the changed ones as sent"
        if self.waiting:
            silent = ", ".join(str(k) for k in sorted(self.waiting))
            said += f"; worker {silent} did not report what it dropped"
        return said
