"""The WSGI entry gunicorn runs: `health.wsgi:from_environment()`.

The supervisor passes the runtime dir and the verdict settings through the environment, so the
health service needs no config file of its own and reads nothing but the stats table.
"""

from __future__ import annotations

import os
from pathlib import Path

from flask import Flask

from health.app import create_app
from health.reader import TableReader
from health.verdict import HealthPolicy

ENV_RUNTIME_DIR = "GWLB_RUNTIME_DIR"
ENV_MIN_WORKERS = "GWLB_HEALTH_MIN_WORKERS"
ENV_STALENESS_S = "GWLB_HEALTH_STALENESS_S"
ENV_OVERFLOW_UNREADY_S = "GWLB_HEALTH_OVERFLOW_UNREADY_S"


def from_environment() -> Flask:
    runtime = Path(os.environ.get(ENV_RUNTIME_DIR, "/run/gwlb-appliance"))
    policy = HealthPolicy(
        min_workers=float(os.environ.get(ENV_MIN_WORKERS, "1")),
        staleness_s=float(os.environ.get(ENV_STALENESS_S, "3")),
        overflow_unready_s=float(os.environ.get(ENV_OVERFLOW_UNREADY_S, "10")),
    )
    return create_app(TableReader(runtime), policy)
