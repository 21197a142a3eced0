"""The firewall scene for real: nc and a UDP socket in b, through the emulated GWLB and applianced
with rules that reject; the answers travel in the offending flows and GWLB delivers them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from appliance_proc import ctl, with_rules
from firewall_scene import CONNECT_TIMEOUT_S, RULES, Attempt, run_scene
from testbed import EmulatorHandle, Testbed

pytestmark = [pytest.mark.netns, pytest.mark.e2e, pytest.mark.usefixtures("both_backends")]


@pytest.mark.parametrize("version", [pytest.param(4, id="ipv4"), pytest.param(6, id="ipv6")])
def test_rejected_connections_fail_at_once_and_allowed_ones_connect(
    testbed: Testbed,
    tmp_path: Path,
    start_emulator: Callable[..., EmulatorHandle],
    version: int,
) -> None:
    appliance, runtime = with_rules(testbed, tmp_path, RULES)
    emulator = start_emulator(testbed)
    found = run_scene(testbed, version)
    code, listing = ctl(runtime, "flows", "--port", "23")
    assert code == 0, listing
    (telnet,) = [f for f in listing["flows"] if f["protocol"] == 6]
    assert (telnet["dst_port"], telnet["verdict"], telnet["rule"]) == (
        23,
        "reject",
        "firewall-no-telnet",
    )
    code, listing = ctl(runtime, "flows", "--verdict", "pass")
    assert {f["dst_port"] for f in listing["flows"]} >= {8080}
    report = emulator.finish()
    assert appliance.stop() == 0

    allowed, rejected = found["allowed"], found["rejected"]
    assert isinstance(allowed, Attempt) and isinstance(rejected, Attempt)
    assert allowed.ok, allowed.said
    assert not rejected.ok and "refused" in rejected.said, rejected.said
    assert rejected.elapsed_s < CONNECT_TIMEOUT_S / 5  # a RST, not a timeout
    assert found["udp"] == ("EHOSTUNREACH" if version == 4 else "EACCES")
    assert report["violations"]["total"] == 0, report["violations"]
    counters = appliance.counters()
    assert counters["rejects_sent"] >= 2
    assert counters["dropped_by_rule"]["firewall-no-telnet"] >= 1
    assert counters["dropped_by_rule"]["firewall-no-syslog"] >= 1
