"""The flow-record writer: receives the workers' records and writes them, rotating by size.

    python -m supervisor.flowlogd --fd 3 (--file PATH --max-bytes N --keep K | --stdout)

Why its own process: the workers must never wait for a disk, and neither must the supervisor's
loop. The supervisor binds the unix datagram socket the workers send to (supervisor/
flowlogproc.py) and hands it over as fd 3, so records queue there while this process starts or
restarts; a full socket makes the workers drop and count, not wait (appliance/flowlog.py).

Each datagram is whole lines of JSON, written as they come. With --file, once the file reaches
--max-bytes it becomes PATH.1 (PATH.1 becomes PATH.2, ..., up to --keep files; the oldest goes)
and a new PATH starts: the rotation logrotate's "rotate N" makes, done here so that no record is
written to a renamed file. A write that fails (a full disk, a path gone) is counted and said
once on stderr (the supervisor's log); the writer goes on with the next datagram. SIGTERM ends
it after the datagrams already queued.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from pathlib import Path
from types import FrameType

DATAGRAM_BYTES = 64 * 1024


class RotatingFile:
    """PATH opened for appending, rotated at `max_bytes` keeping `keep` old files."""

    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        self.path, self.max_bytes, self.keep = path, max_bytes, keep
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self.size = os.fstat(self.fd).st_size

    def write(self, data: bytes) -> None:
        if self.size and self.size + len(data) > self.max_bytes:
            self.rotate()
        os.write(self.fd, data)
        self.size += len(data)

    def rotate(self) -> None:
        os.close(self.fd)
        for k in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{k}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{k + 1}"))
        if self.keep:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o640)
        self.size = 0


class Stdout:
    def write(self, data: bytes) -> None:
        os.write(1, data)


def serve(sock: socket.socket, out: RotatingFile | Stdout) -> int:
    """Write what arrives until SIGTERM; return how many writes failed."""
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        sock.settimeout(0.0)  # drain what is queued, then leave

    signal.signal(signal.SIGTERM, stop)
    failed = 0
    while True:
        try:
            data = sock.recv(DATAGRAM_BYTES)
        except BlockingIOError:
            if stopping:
                return failed
            continue
        except InterruptedError:
            continue
        try:
            out.write(data)
        except OSError as error:
            failed += 1
            if failed == 1 or failed % 10000 == 0:
                print(f"flowlogd: cannot write flow records ({failed} lost writes): {error}",
                      file=sys.stderr, flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fd", type=int, required=True, help="the bound socket, inherited")
    parser.add_argument("--file", type=Path)
    parser.add_argument("--max-bytes", type=int, default=100 << 20)
    parser.add_argument("--keep", type=int, default=5)
    parser.add_argument("--stdout", action="store_true")
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.fd)
    try:
        out: RotatingFile | Stdout = (
            Stdout() if args.stdout else RotatingFile(args.file, args.max_bytes, args.keep)
        )
    except OSError as error:
        print(f"flowlogd: cannot open {args.file}: {error.strerror}; check [flowlog] path and "
              "its directory's permissions", file=sys.stderr, flush=True)  # fmt: skip
        return 1
    serve(sock, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
