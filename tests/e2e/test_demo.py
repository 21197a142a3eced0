"""The seed demo, for real: nc and ping between a and b through the emulated GWLB and applianced
with the shipped demo policy, over IPv4 and IPv6."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from appliance_proc import Appliance
from testbed import EmulatorHandle, LineReader, Testbed, feed_lines, no_ports, ping

pytestmark = [pytest.mark.netns, pytest.mark.e2e, pytest.mark.usefixtures("both_backends")]

VERSIONS = [pytest.param(4, id="ipv4"), pytest.param(6, id="ipv6")]
LINES = [b"test\n", b"drop me\n", b"weakly typed programming language\n"]


@pytest.mark.parametrize("version", VERSIONS)
def test_nc_lines_are_dropped_and_rewritten(
    testbed: Testbed,
    tmp_path: Path,
    start_emulator: Callable[..., EmulatorHandle],
    udp_listener: Callable[..., LineReader],
    udp_sender: Callable[..., subprocess.Popen[bytes]],
    version: int,
) -> None:
    appliance = Appliance(testbed, 1, tmp_path)
    emulator = start_emulator(testbed)
    received = udp_listener(testbed, version)
    before = no_ports(testbed)

    sender = udp_sender(testbed, version)
    assert feed_lines(testbed, sender, testbed.ns_b, version, LINES) == [True] * 3
    # The three lines are one flow, handled in order by one worker: once the last arrived,
    # `drop me` has been decided too.
    assert received.wait_for(lambda r: len(r.lines) >= 2, 5.0)
    report = emulator.finish()
    assert appliance.stop() == 0

    assert received.lines == ["test\n", "strongly typed programming language\n"]
    assert report["violations"]["total"] == 0, report["violations"]
    assert report["packets"]["encapsulated"] == 3 and report["packets"]["delivered"] == 2
    counters = appliance.counters()
    assert counters["dropped_by_rule"] == {"drop-me": 1}
    assert counters["rewritten"] == 1 and counters["passed"] == 1
    assert no_ports(testbed) == before


@pytest.mark.parametrize("version", VERSIONS)
def test_every_fifth_echo_is_dropped(
    testbed: Testbed,
    tmp_path: Path,
    start_emulator: Callable[..., EmulatorHandle],
    version: int,
) -> None:
    appliance = Appliance(testbed, 1, tmp_path)
    emulator = start_emulator(testbed)
    before = no_ports(testbed)

    assert ping(testbed, version, 10) == {1, 2, 3, 4, 6, 7, 8, 9}
    assert emulator.wait_event("return", 5.0, count=16)
    report = emulator.finish()
    assert appliance.stop() == 0

    assert report["violations"]["total"] == 0, report["violations"]
    assert report["packets"]["encapsulated"] == 18  # 10 requests, 8 replies
    assert report["packets"]["delivered"] == 16
    rule = "icmp-echo-every-fifth" if version == 4 else "icmpv6-echo-every-fifth"
    assert appliance.counters()["dropped_by_rule"] == {rule: 2}
    assert no_ports(testbed) == before
