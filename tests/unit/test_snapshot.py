"""The snapshot reader tells a live supervisor from a gone one by asking the kernel."""

from __future__ import annotations

import os
import subprocess
import sys

from supervisor.snapshot import applianced_alive


def test_a_pid_that_is_not_an_applianced_is_not_alive() -> None:
    assert not applianced_alive(os.getpid())  # pytest: alive, but not ours
    assert not applianced_alive(0)


def test_an_exited_applianced_is_gone_even_before_it_is_reaped() -> None:
    # A process whose command line names applianced, as the supervisor's does.
    # It says "ready" once running: right after Popen returns, /proc/PID/cmdline may still
    # read empty (tests/unit/test_healthproc.py).
    script = "import sys; print('ready', flush=True); sys.stdin.read()"
    child = subprocess.Popen(
        [sys.executable, "-c", script, "applianced"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline() == "ready\n"
        assert applianced_alive(child.pid)
        child.stdin.close()  # it exits; not reaped yet: a zombie
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        assert not applianced_alive(child.pid)
    finally:
        child.stdin.close()  # never left waiting for input, whatever failed above
        child.stdout.close()
        child.wait()
    assert not applianced_alive(child.pid)
