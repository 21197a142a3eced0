"""The flow-record writer stopped (SIGSTOP) for real: the data path goes on as fast as before
(a rejected connection is still refused in milliseconds, an allowed one connects), and once the
writer runs again the records the socket the supervisor holds could keep arrive, and the others
were counted as dropped."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from appliance_proc import ctl, with_rules
from firewall_scene import (
    ALLOWED_TCP,
    CONNECT_TIMEOUT_S,
    REJECTED_TCP,
    RULES,
    listeners,
    tcp_connect,
)
from testbed import EmulatorHandle, Testbed, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.e2e]


def test_a_stopped_writer_does_not_slow_the_data_path(
    testbed: Testbed, tmp_path: Path, start_emulator: Callable[..., EmulatorHandle]
) -> None:
    log = tmp_path / "logs" / "flows.log"
    edits = {
        "[flowlog]\n": "[flowlog]\nenabled = true\n",
        "\nenabled = false\n": "\n",
        'path = "/var/log/gwlb-appliance/flows.log"': f'path = "{log}"',
    }
    appliance, runtime = with_rules(testbed, tmp_path, RULES, edits)
    emulator = start_emulator(testbed)
    code, status = ctl(runtime, "status")
    assert code == 0, status
    writer = status["supervisor"]["flowlog"]["pid"]
    assert status["supervisor"]["flowlog"]["state"] == "RUNNING"
    os.kill(writer, signal.SIGSTOP)
    try:
        assert wait_until(lambda: _state(writer) == "T", 5.0, 0.01)
        with listeners(testbed, 4):
            attempts = [tcp_connect(testbed, 4, REJECTED_TCP) for _ in range(20)]
            allowed = tcp_connect(testbed, 4, ALLOWED_TCP)
        assert allowed.ok, allowed.said
        assert all(not a.ok for a in attempts)
        assert max(a.elapsed_s for a in attempts) < CONNECT_TIMEOUT_S / 5  # RSTs, not timeouts
        assert not log.exists() or log.stat().st_size == 0 or _denied(log) == 0
    finally:
        os.kill(writer, signal.SIGCONT)
    # What the socket could hold (net.unix.max_dgram_qlen datagrams: 10 by default, each a
    # batch's records) comes once the writer runs again; the rest was dropped and counted.
    emulator.finish()
    assert appliance.stop() == 0
    dropped = appliance.counters()["flowlog_dropped"]
    assert wait_until(lambda: _denied(log) + dropped >= 20, 5.0, 0.05), (_denied(log), dropped)
    assert _denied(log) > 0


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _denied(log: Path) -> int:
    if not log.exists():
        return 0
    return sum(json.loads(line)["event"] == "denied" for line in log.read_text().splitlines())
