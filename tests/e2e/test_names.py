"""Egress by name for real: openssl s_client and a DNS query in b, through the emulated GWLB and
applianced with rules on TLS server names and DNS questions; the resets and the DNS answer travel
in the offending flows and GWLB delivers them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from appliance_proc import ctl, with_rules
from names_scene import DENIED, RULES, TIMEOUT_S, Attempt, run_scene
from testbed import EmulatorHandle, Testbed

pytestmark = [pytest.mark.netns, pytest.mark.e2e, pytest.mark.usefixtures("both_backends")]


@pytest.mark.parametrize("version", [pytest.param(4, id="ipv4"), pytest.param(6, id="ipv6")])
def test_a_refused_name_is_reset_at_once_and_an_allowed_one_connects(
    testbed: Testbed,
    tmp_path: Path,
    start_emulator: Callable[..., EmulatorHandle],
    version: int,
) -> None:
    appliance, runtime = with_rules(testbed, tmp_path, RULES)
    emulator = start_emulator(testbed)
    found = run_scene(testbed, version)
    code, listing = ctl(runtime, "flows", "--verdict", "reject")
    assert code == 0, listing
    names = {f.get("name") for f in listing["flows"]}
    report = emulator.finish()
    assert appliance.stop() == 0

    allowed, denied = found["allowed"], found["denied"]
    assert isinstance(allowed, Attempt) and isinstance(denied, Attempt)
    assert allowed.ok, allowed.said
    assert not denied.ok, denied.said
    assert denied.elapsed_s < TIMEOUT_S / 5, denied  # a reset, not a timeout
    rcode, ms = str(found["dns"]).split()
    assert rcode == "REFUSED" and int(ms) < 1000
    assert DENIED in names, listing
    assert report["violations"]["total"] == 0, report["violations"]
    counters = appliance.counters()
    assert counters["hits_by_rule"]["names-no-denied-example"] >= 1
    assert counters["dropped_by_rule"]["names-no-trackers"] >= 1
    assert counters["rejects_sent"] >= 2
