"""One daemon per runtime directory: an exclusive lock held for the daemon's whole life.

Why: a second `applianced` on the same runtime directory would stop the first one's health
service, replace its stats table and control socket and join its 6081 reuseport group; after it
left, the first would still forward packets while `appliancectl` could not reach it and health
answered 503 `supervisor_stale`. flock(2) on a file in the directory settles it: the kernel drops
the lock when the holder dies however it dies, so a crashed daemon never leaves a stale lock, and
the file names the holder's pid for the refusal.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from appliance.errors import BootError

LOCK_NAME = "applianced.lock"


class RuntimeDirBusy(BootError):
    """Another daemon holds the runtime directory."""


class RuntimeLock:
    def __init__(self, runtime_dir: Path) -> None:
        self.path = runtime_dir / LOCK_NAME
        self._fd = -1

    def acquire(self) -> None:
        """Take the lock or raise RuntimeDirBusy naming the holder; then write our pid in it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RuntimeDirBusy(
                f"another applianced (pid {holder}) is running on {self.path.parent}; stop it "
                "first, or give this one its own [runtime] dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the last descriptor drops the lock
            self._fd = -1
