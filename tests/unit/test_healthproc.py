"""The supervisor stops a health service a dead predecessor left behind, and nothing else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from config.loader import parse_config
from supervisor.healthproc import HealthService

SLEEPER = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_DFL); time.sleep(60)"


def service(tmp_path: Path) -> HealthService:
    config = parse_config(f'[runtime]\ndir = "{tmp_path}"\n')
    return HealthService(config, log_fd=2)


def test_a_left_behind_health_service_is_stopped(tmp_path: Path) -> None:
    orphan = subprocess.Popen([sys.executable, "-c", SLEEPER, "health.wsgi:from_environment()"])
    try:
        health = service(tmp_path)
        health.pidfile.write_text(f"{orphan.pid}\n")
        health.evict_previous()
        assert orphan.wait(timeout=2) == -15  # SIGTERM, waited for through its pidfd
    finally:
        orphan.kill()
        orphan.wait()


def test_a_reused_pid_is_left_alone(tmp_path: Path) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", SLEEPER])
    try:
        health = service(tmp_path)
        health.pidfile.write_text(f"{stranger.pid}\n")
        health.evict_previous()
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()
