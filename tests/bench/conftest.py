"""Fixtures for the benchmark harness's tests (deploy/bench): gen.c and reflector.c built once per
session, and deploy/bench on the import path (the harness is not a package of the product).

    bench_tools     -> {"gen": path, "reflector": path}, compiled with -O2 -Wall -Wextra
    netns_reason()  -> why network namespaces cannot be used here, or None

Tests marked `netns` need root, `ip` and `taskset`; they are skipped, with the reason, elsewhere.
Every namespace and process they create is removed in their fixtures' teardown.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "deploy" / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))


def netns_reason() -> str | None:
    if os.geteuid() != 0:
        return "not root"
    missing = [tool for tool in ("ip", "taskset", "gcc") if shutil.which(tool) is None]
    return f"missing {', '.join(missing)}" if missing else None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("netns") is not None and (reason := netns_reason()):
        pytest.skip(f"network namespaces unusable: {reason}")


@pytest.fixture(scope="session")
def bench_tools(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    if shutil.which("gcc") is None:
        pytest.skip("no gcc")
    out = tmp_path_factory.mktemp("bench-tools")
    tools = {}
    for name, extra in (("gen", ["-pthread"]), ("reflector", [])):
        binary = out / name
        proc = subprocess.run(
            ["gcc", "-O2", "-Wall", "-Wextra", *extra, "-o", str(binary), str(BENCH / f"{name}.c")],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
        tools[name] = str(binary)
    return tools
