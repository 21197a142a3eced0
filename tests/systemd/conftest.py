"""Fixtures for the unit under a real systemd: one booted container per session.

These tests need root, mmdebstrap, systemd-nspawn (systemd-container), nsenter and ip, and build
or reuse a Debian root (systemd_container.py). Where they run:

- `tox -e systemd` sets GWLB_SYSTEMD_TESTS=require: they run, and a missing tool is a failure;
- `pytest tests/systemd` (only these tests collected): they run where the tools are, and are
  skipped, naming what is missing, elsewhere;
- the whole suite (`pytest`, tox's `py` environment): skipped, because `tox -e systemd` runs them
  in their own environment and the suite must not boot the container a second time.

    machine      the booted container with the appliance installed (not started)
    figures      name -> measured value, printed at the end of the run
    staleness_s  health.staleness_s of the site config, as the installed code reads it

GWLB_SYSTEMD_CACHE is where the root tarball and the dependency wheels are kept between runs
(default: .tox/systemd-cache in the repository); GWLB_SYSTEMD_SOURCE the source tree whose wheel
is installed (default: this checkout).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from systemd_container import (
    REPO,
    SITE_CONFIG,
    VENV,
    Machine,
    add_network,
    booted,
    build_wheelhouse,
    missing_tools,
    provision,
    root_tarball,
    stage,
)

HERE = Path(__file__).resolve().parent
FIGURES = pytest.StashKey[dict[str, Any]]()
ALONE = (
    "tests/systemd boot a Debian container under systemd: they run in their own tox environment "
    "(`tox -e systemd`, part of `tox` and so of CI) or alone (`pytest tests/systemd`), not twice"
)


def _required() -> bool:
    return os.environ.get("GWLB_SYSTEMD_TESTS") == "require"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [item for item in items if HERE in item.path.parents]
    if not ours or _required():
        return
    if len(ours) < len(items):
        reason = ALONE
    elif missing := missing_tools():
        reason = f"needs {', '.join(missing)}; deploy/local/bootstrap.sh installs the tools"
    else:
        return
    for item in ours:
        item.add_marker(pytest.mark.skip(reason=reason))


def pytest_configure(config: pytest.Config) -> None:
    config.stash[FIGURES] = {}


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    figures = config.stash.get(FIGURES, {})
    if figures:
        terminalreporter.section("the unit under systemd: figures")
        for name, value in figures.items():
            terminalreporter.write_line(f"{name}: {value}")


@pytest.fixture(scope="session")
def figures(pytestconfig: pytest.Config) -> dict[str, Any]:
    return pytestconfig.stash[FIGURES]


@pytest.fixture(scope="session")
def machine(figures: dict[str, Any]) -> Iterator[Machine]:
    if missing := missing_tools():
        message = f"cannot boot the container: needs {', '.join(missing)}"
        if _required():
            pytest.fail(message + " (deploy/local/bootstrap.sh installs the tools)")
        pytest.skip(message)
    cache = Path(os.environ.get("GWLB_SYSTEMD_CACHE") or REPO / ".tox" / "systemd-cache")
    source = Path(os.environ.get("GWLB_SYSTEMD_SOURCE") or REPO)
    workdir = Path(tempfile.mkdtemp(prefix="gwlb-systemd-", dir="/var/tmp"))
    try:
        started = time.monotonic()
        root_tar, built = root_tarball(cache)
        figures["root"] = f"{'built' if built else 'cached'} in {time.monotonic() - started:.1f} s"
        started = time.monotonic()
        wheel = build_wheelhouse(source, cache, workdir / "wheelhouse")
        figures["wheelhouse"] = f"{time.monotonic() - started:.1f} s"
        started = time.monotonic()
        with booted(root_tar, workdir) as booted_machine:
            figures["unpack and boot"] = f"{time.monotonic() - started:.1f} s"
            started = time.monotonic()
            add_network(booted_machine)
            stage(booted_machine, workdir / "wheelhouse")
            provision(booted_machine, wheel.name)
            figures["provision"] = f"{time.monotonic() - started:.1f} s"
            yield booted_machine
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def staleness_s(machine: Machine) -> float:
    code = (
        "import sys; from config.loader import load_config; "
        "print(load_config(sys.argv[1]).health.staleness_s)"
    )
    out = machine.run(f"{VENV}/bin/python", "-c", code, SITE_CONFIG).stdout
    return float(out)
