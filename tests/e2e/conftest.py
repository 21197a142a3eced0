"""Fixtures for end-to-end tests in network namespaces (DESIGN.md §4).

Tests marked `netns` are skipped, with the reason, where namespaces cannot be used (not root, no
tun, no `ip netns`). Every namespace and process a test creates is removed in the fixtures'
teardown, whether the test passed or not.

    both_backends                each test once per dataplane.io ("socket", "ring")
    testbed                      a Testbed with one appliance namespace; for more, parametrize
                                 indirectly: @pytest.mark.parametrize("testbed", [2], indirect=True)
    start_emulator(tb, *args)    -> a ready EmulatorHandle (events, finish() -> report)
    start_reflector(tb, k, *args) -> the trivial reflector in appliance k, bound to UDP 6081
    udp_listener(tb, version)    -> a LineReader over `nc -u -l -k 3000` running in a
    udp_sender(tb, version)      -> `nc -u -p 4000` in b towards a:3000, fed with feed_lines()
"""

from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from appliance_proc import io_backend
from testbed import (
    LOCAL_DIR,
    EmulatorHandle,
    LineReader,
    Testbed,
    launch_emulator,
    netns_unusable_reason,
)

REFLECTOR = str(LOCAL_DIR / "trivial_reflector.py")
LISTEN_PORT, SENDER_PORT = 3000, 4000


@functools.cache
def _netns_reason() -> str | None:
    return netns_unusable_reason()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("netns") is not None and (reason := _netns_reason()):
        pytest.skip(f"network namespaces unusable: {reason}")


def _log_tail(path: Path, limit: int = 4000) -> str:
    return path.read_text(errors="replace")[-limit:] if path.exists() else ""


@pytest.fixture
def testbed(request: pytest.FixtureRequest) -> Iterator[Testbed]:
    if reason := _netns_reason():  # also for tests that forgot the netns mark
        pytest.skip(f"network namespaces unusable: {reason}")
    with Testbed(appliances=getattr(request, "param", 1)) as tb:
        yield tb


@pytest.fixture(params=["socket", "ring"])
def both_backends(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every Appliance of the test runs with dataplane.io = this (the test runs with each):
    `pytestmark = pytest.mark.usefixtures("both_backends")` in a module runs all of its tests
    on both I/O backends."""
    with io_backend(request.param) as backend:
        yield backend


@pytest.fixture
def start_emulator(tmp_path: Path) -> Callable[..., EmulatorHandle]:
    """The emulator prints events (--events), its report goes to tmp_path."""
    count = 0

    def start(tb: Testbed, *extra: str) -> EmulatorHandle:
        nonlocal count
        count += 1
        report, log = tmp_path / f"emulator-{count}.json", tmp_path / f"emulator-{count}.log"
        handle = launch_emulator(tb, report, log, extra)
        if not handle.wait_ready(10.0):
            handle.finish()
            pytest.fail(f"emulator never became ready; stderr:\n{_log_tail(log)}")
        return handle

    return start


@pytest.fixture
def start_reflector(tmp_path: Path) -> Callable[..., subprocess.Popen[Any]]:
    def start(tb: Testbed, k: int = 1, *extra: str) -> subprocess.Popen[Any]:
        log = tmp_path / f"reflector-{k}.log"
        with open(log, "ab") as stderr:
            proc = tb.popen(tb.ns_app(k), [sys.executable, REFLECTOR, *extra], stderr=stderr)
        if not tb.wait_udp_bound(tb.ns_app(k), 6081, 5.0, proc):
            tb.stop(proc)
            pytest.fail(f"reflector {k} never bound UDP 6081; stderr:\n{_log_tail(log)}")
        return proc

    return start


@pytest.fixture
def udp_listener() -> Callable[[Testbed, int], LineReader]:
    """`nc -u -l -k` keeps answering every sender (openbsd nc does not connect() with -k)."""

    def start(tb: Testbed, version: int) -> LineReader:
        argv = ["nc", f"-{version}", "-u", "-l", "-k", "-d", str(LISTEN_PORT)]
        proc = tb.popen(tb.ns_a, argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        if not tb.wait_udp_bound(tb.ns_a, LISTEN_PORT, 5.0, proc):
            tb.stop(proc)
            pytest.fail("nc never bound its UDP port in a")
        return LineReader(proc.stdout)

    return start


@pytest.fixture
def udp_sender() -> Callable[[Testbed, int], subprocess.Popen[bytes]]:
    def start(tb: Testbed, version: int) -> subprocess.Popen[bytes]:
        dst = tb.a_ip4 if version == 4 else tb.a_ip6
        argv = ["nc", f"-{version}", "-u", "-p", str(SENDER_PORT), dst, str(LISTEN_PORT)]
        return tb.popen(
            tb.ns_b,
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    return start
