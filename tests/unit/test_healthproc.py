"""The supervisor stops a health service a dead predecessor left behind, and nothing else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from config.loader import parse_config
from supervisor.healthproc import HealthService

# It says "ready" once running: right after Popen returns, /proc/PID/cmdline may still read
# empty (151 of 200 times here), and an empty cmdline is no health service to stop.
SLEEPER = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_DFL); "
    "print('ready', flush=True); time.sleep(60)"
)


def started(*argv: str) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", SLEEPER, *argv], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    with child.stdout:
        assert child.stdout.readline() == "ready\n"
    return child


def service(tmp_path: Path) -> HealthService:
    config = parse_config(f'[runtime]\ndir = "{tmp_path}"\n')
    return HealthService(config, log_fd=2)


def test_a_left_behind_health_service_is_stopped(tmp_path: Path) -> None:
    orphan = started("health.wsgi:from_environment()")
    try:
        health = service(tmp_path)
        health.pidfile.write_text(f"{orphan.pid}\n")
        health.evict_previous()
        assert orphan.wait(timeout=2) == -15  # SIGTERM, waited for through its pidfd
    finally:
        orphan.kill()
        orphan.wait()


def test_a_reused_pid_is_left_alone(tmp_path: Path) -> None:
    stranger = started()
    try:
        health = service(tmp_path)
        health.pidfile.write_text(f"{stranger.pid}\n")
        health.evict_previous()
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()
