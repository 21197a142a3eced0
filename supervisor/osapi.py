"""The one seam between the supervisor and the operating system.

Every fork, signal, reap and clock read of the arbiter goes through an `OsApi`, so the state machine
is tested with a fake one (no processes), and the real one stays small enough to read at a glance.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import traceback
from collections.abc import Callable
from typing import Protocol


class OsApi(Protocol):
    def spawn(self, slot: int) -> int:
        """Start the worker for `slot`; its pid."""

    def kill(self, pid: int, sig: int) -> None:
        """Send `sig` to `pid`; a process that is already gone is not an error."""

    def reap(self) -> list[tuple[int, int]]:
        """Every child that has exited, as (pid, wait status), without blocking."""

    def now_ns(self) -> int:
        """CLOCK_MONOTONIC in nanoseconds (the stats table's clock)."""


class RealOs:
    """fork(2) and friends. `child_main(slot)` runs in the child and must not return."""

    def __init__(self, child_main: Callable[[int], None]) -> None:
        self._child_main = child_main

    def spawn(self, slot: int) -> int:
        pid = os.fork()
        if pid == 0:
            try:
                self._child_main(slot)  # logs its own end; this is the net under it
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(70)  # EX_SOFTWARE: child_main returned or raised
        return pid

    def kill(self, pid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def reap(self) -> list[tuple[int, int]]:
        reaped = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            reaped.append((pid, status))
        return reaped

    def now_ns(self) -> int:
        return time.monotonic_ns()


def describe_status(status: int) -> tuple[int | None, str]:
    """(exit code or None, a sentence) from a wait status, decoded the portable way."""
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
        return code, f"exited with status {code}"  # reads after "it" / "the worker"
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return None, f"was killed by {name}"
    return None, f"wait status {status:#x}"
