"""A worker that dies of an unexpected exception says so, with its traceback, slot and pid, and
exits with EX_SOFTWARE: a real fork through the supervisor's OS seam, its log read from the pipe."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.stats import StatsTable
from config.loader import parse_config
from supervisor.arbiter import EXIT_SOFTWARE
from supervisor.osapi import RealOs, describe_status
from supervisor.workerproc import WorkerContext, worker_main


@pytest.mark.skipif(os.geteuid() != 0, reason="the worker opens a raw socket (CAP_NET_RAW)")
def test_an_unexpected_exception_is_logged_with_its_traceback_before_the_exit(
    tmp_path: Path,
) -> None:
    config = parse_config(f'[runtime]\ndir = "{tmp_path}"\n')
    table = StatsTable.create(tmp_path, 1)
    read, write = os.pipe()
    # No data socket for slot 0: boot() fails with an IndexError, a bug as far as the worker
    # knows, after the process was set up as every worker is.
    context = WorkerContext(config, [], table, os.getpid(), write, lambda: None)
    pid = RealOs(lambda k: worker_main(k, context)).spawn(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        log = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert describe_status(status) == (EXIT_SOFTWARE, f"exited with status {EXIT_SOFTWARE}")
    assert f"worker 0 (pid {pid}) died of an unexpected error" in log
    assert "Traceback (most recent call last):" in log and "IndexError" in log
