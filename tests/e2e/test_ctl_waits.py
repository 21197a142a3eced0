"""`appliancectl start|stop|restart` against the real applianced: each returns once the worker got
where it was sent, and the pid it prints is the one `status` shows at that moment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from appliance_proc import APPLIANCECTL, Appliance, ctl, run_quiet
from testbed import Testbed

pytestmark = [pytest.mark.netns, pytest.mark.e2e]


def appliancectl(runtime: Path, *args: str) -> tuple[int, str]:
    done = run_quiet([APPLIANCECTL, "--socket", str(runtime / "control.sock"), *args])
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout + done.stderr


def test_restart_returns_once_the_new_worker_runs(testbed: Testbed, tmp_path: Path) -> None:
    appliance = Appliance(testbed, 1, tmp_path, workers=2)
    old = appliance.worker_pids()
    code, out = appliancectl(appliance.runtime, "restart", "0")
    assert code == 0, out
    printed = re.fullmatch(r"worker 0: restarted, pid (\d+)\n", out)
    assert printed, out
    new_pid = int(printed[1])
    code, status = ctl(appliance.runtime, "status")  # at once: no waiting here
    assert code == 0, status
    first, second = status["workers"]
    assert (first["state"], first["pid"]) == ("RUNNING", new_pid)
    assert new_pid != old[0] and first["restarts"] == 1
    assert (second["state"], second["pid"]) == ("RUNNING", old[1])  # untouched


def test_stop_and_start_return_once_the_worker_got_there(testbed: Testbed, tmp_path: Path) -> None:
    appliance = Appliance(testbed, 1, tmp_path, workers=2)
    runtime = appliance.runtime
    assert appliancectl(runtime, "stop", "1") == (0, "worker 1: stopped\n")
    code, status = ctl(runtime, "status")
    assert code == 3 and status["workers"][1]["state"] == "STOPPED"
    code, out = appliancectl(runtime, "start", "1")
    printed = re.fullmatch(r"worker 1: started, pid (\d+)\n", out)
    assert code == 0 and printed, out
    code, status = ctl(runtime, "status")
    assert code == 0 and status["workers"][1]["pid"] == int(printed[1])
    code, outcome = ctl(runtime, "restart", "all")  # --json
    assert code == 0 and [r["ok"] for r in outcome["results"]] == [True, True], outcome
    code, status = ctl(runtime, "status")
    assert code == 0
    assert [w["pid"] for w in status["workers"]] == [r["pid"] for r in outcome["results"]]
