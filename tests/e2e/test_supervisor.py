"""The supervisor's process tree for real: steering, restarts, reload, stop, orphans, the CLI."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from appliance_proc import APPLIANCECTL, Appliance, config_text, ctl, run_quiet, socket_in
from testbed import EmulatorHandle, Testbed, wait_until
from traffic import UdpStream

from appliance.counters import Counter
from appliance.stats import StatsTable

pytestmark = [pytest.mark.netns, pytest.mark.e2e]


def received_per_worker(runtime: Path) -> list[int]:
    table = StatsTable.open(runtime)
    return [int(table.counters(k)[Counter.RECEIVED]) for k in range(table.slots)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.usefixtures("both_backends")
def test_inner_flow_steering_spreads_flows_and_keeps_directions_together(
    testbed: Testbed, tmp_path: Path, start_emulator: Callable[..., EmulatorHandle]
) -> None:
    appliance = Appliance(testbed, 1, tmp_path, workers=2)
    emulator = start_emulator(testbed, "--fixed-source-port=40000")  # no outer entropy at all
    a = socket_in(testbed.ns_a, socket.AF_INET, socket.SOCK_DGRAM)
    a.bind((testbed.a_ip4, 5000))
    a.settimeout(3)
    flows_on = [0, 0]
    try:
        for f in range(64):
            b = socket_in(testbed.ns_b, socket.AF_INET, socket.SOCK_DGRAM)
            b.bind((testbed.b_ip4, 21000 + f))
            b.settimeout(3)
            before = received_per_worker(appliance.runtime)
            b.sendto(b"ping %d" % f, (testbed.a_ip4, 5000))
            _, peer = a.recvfrom(100)
            a.sendto(b"pong %d" % f, peer)
            assert b.recv(100) == b"pong %d" % f
            b.close()
            grew = [
                n - o for n, o in zip(received_per_worker(appliance.runtime), before, strict=True)
            ]
            assert sorted(grew) == [0, 2], f"flow {f}: directions split over workers: {grew}"
            flows_on[grew.index(2)] += 1
    finally:
        a.close()
    report = emulator.finish()
    assert report["violations"]["total"] == 0
    assert {e["port"] for e in emulator.of("encap")} == {40000}
    assert all(16 <= n <= 48 for n in flows_on), f"flows per worker: {flows_on}"
    assert appliance.stop() == 0


@pytest.mark.usefixtures("both_backends")
def test_kill_9_of_a_worker_under_traffic_loses_at_most_a_batch(
    testbed: Testbed, tmp_path: Path, start_emulator: Callable[..., EmulatorHandle]
) -> None:
    appliance = Appliance(testbed, 1, tmp_path, workers=2)
    emulator = start_emulator(testbed)
    stream = UdpStream(
        testbed, flows=16, dport=5000, payload=lambda n: b"n%d" % n, rate_pps=1000, limit=3000
    ).start()
    assert wait_until(lambda: stream.sent >= 1000, 10)
    victim = appliance.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()

    def restarted() -> bool:
        code, status = ctl(appliance.runtime, "status")
        worker = status["workers"][0] if isinstance(status, dict) else {}
        return code == 0 and worker.get("state") == "RUNNING" and worker.get("restarts") == 1

    assert wait_until(restarted, 5.0, 0.02)
    assert time.monotonic() - killed_at < 2.0
    stream.finish()
    report = emulator.finish()
    assert appliance.stop() == 0
    assert stream.sent == 3000
    assert stream.sent - len(stream.received) <= 64, "more than one batch was lost"
    assert report["packets"]["encapsulated"] - report["packets"]["returned"] <= 64
    assert report["violations"]["total"] == 0


RULES_STRONG = """
[[policy.rules]]
name = "rewrite"
action = "replace"
match = { protocol = "udp", port = 3000 }
find = "weakly typed"
replace = "strongly typed"
"""


def test_reload_applies_a_valid_policy_live_and_refuses_a_broken_one(
    testbed: Testbed, tmp_path: Path, start_emulator: Callable[..., EmulatorHandle]
) -> None:
    runtime = tmp_path / "run-app1"
    appliance = Appliance(
        testbed, 1, tmp_path, workers=2, config=config_text(runtime, policy=RULES_STRONG)
    )
    emulator = start_emulator(testbed)
    stream = UdpStream(
        testbed,
        flows=8,
        dport=3000,
        payload=lambda n: b"%05d weakly typed" % n,
        rate_pps=500,
        limit=1500,
    ).start()
    assert wait_until(lambda: len(stream.received) >= 300, 10)
    appliance.config_path.write_text(
        config_text(runtime, policy=RULES_STRONG.replace('"strongly typed"', '"statically typed"'))
    )
    appliance.proc.send_signal(signal.SIGHUP)

    def applied(generation: int) -> bool:
        code, status = ctl(runtime, "status")
        return code == 0 and all(w["generation"] == generation for w in status["workers"])

    assert wait_until(lambda: applied(1), 5.0, 0.05)
    assert wait_until(lambda: len(stream.received) >= 900, 10)
    appliance.config_path.write_text("[[policy.rules]]\naction = 'explode'\n")
    appliance.proc.send_signal(signal.SIGHUP)
    assert wait_until(
        lambda: not ctl(runtime, "status")[1]["supervisor"]["last_reload"]["ok"], 5.0, 0.05
    )
    status = ctl(runtime, "status")[1]
    assert "refused" in status["supervisor"]["last_reload"]["detail"]
    assert "unknown action 'explode'" in status["supervisor"]["last_reload"]["detail"]
    assert status["supervisor"]["generation"] == 1
    stream.finish()
    emulator.finish()
    assert appliance.stop() == 0

    assert stream.sent == 1500 and len(stream.received) == 1500, "reload lost packets"
    words = {m[6:] for m in stream.received}
    assert words == {b"strongly typed", b"statically typed"}
    # Per flow, the switch happens once and never goes back.
    for flow in range(8):
        seq = [m[6:] for m in sorted(stream.received) if int(m[:5]) % 8 == flow]
        switch = seq.index(b"statically typed")
        assert set(seq[:switch]) == {b"strongly typed"}
        assert set(seq[switch:]) == {b"statically typed"}


@pytest.mark.usefixtures("both_backends")
def test_term_under_traffic_stops_everything_cleanly(
    testbed: Testbed, tmp_path: Path, start_emulator: Callable[..., EmulatorHandle]
) -> None:
    appliance = Appliance(testbed, 1, tmp_path, workers=2)
    start_emulator(testbed)
    stream = UdpStream(
        testbed, flows=8, dport=5000, payload=lambda n: b"x", rate_pps=1000, limit=3000
    ).start()
    assert wait_until(lambda: len(stream.received) >= 200, 10)
    workers = appliance.worker_pids()
    assert appliance.stop() == 0
    stream.finish(settle_s=0)
    assert not any(alive(pid) for pid in workers)
    assert 6081 not in testbed.udp_ports_bound(testbed.ns_app(1))
    assert not (appliance.runtime / "control.sock").exists()


def test_no_worker_outlives_a_killed_supervisor(testbed: Testbed, tmp_path: Path) -> None:
    appliance = Appliance(testbed, 1, tmp_path, workers=2)
    workers = appliance.worker_pids()
    appliance.proc.send_signal(signal.SIGKILL)
    appliance.proc.wait(5)
    assert wait_until(lambda: not any(alive(pid) for pid in workers), 5.0)


def test_appliancectl_drives_the_daemon(testbed: Testbed, tmp_path: Path) -> None:
    appliance = Appliance(testbed, 1, tmp_path, workers=2)
    runtime = appliance.runtime
    code, status = ctl(runtime, "status")
    assert code == 0 and [w["state"] for w in status["workers"]] == ["RUNNING", "RUNNING"]
    assert ctl(runtime, "stop", "1")[0] == 0
    assert wait_until(lambda: ctl(runtime, "status")[1]["workers"][1]["state"] == "STOPPED", 5)
    assert ctl(runtime, "status")[0] == 3  # LSB: not everything is running
    assert ctl(runtime, "start", "1")[0] == 0
    assert wait_until(lambda: ctl(runtime, "status")[0] == 0, 5)
    assert ctl(runtime, "drain")[1] == {"draining": True}
    assert ctl(runtime, "status")[1]["supervisor"]["draining"] is True
    assert ctl(runtime, "undrain")[1] == {"draining": False}
    code, stats = ctl(runtime, "stats")
    assert code == 0 and len(stats["workers"]) == 2 and "received" in stats["total"]
    code, tail = ctl(runtime, "tail", "200")
    assert any("worker 1: STOPPING -> STOPPED" in line for line in tail["lines"])
    assert ctl(runtime, "stop", "7")[0] == 1  # no such slot: refused, with a reason
    assert ctl(runtime, "version")[1]["protocol"] == 1
    assert ctl(runtime, "shutdown")[0] == 0
    assert appliance.proc.wait(10) == 0


def test_appliancectl_without_a_daemon_says_so(tmp_path: Path) -> None:
    done = run_quiet([APPLIANCECTL, "--socket", str(tmp_path / "none.sock"), "status"])
    assert done.returncode == 4
    assert "applianced is not running" in done.stderr and "Traceback" not in done.stderr
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "stale.sock"))
    stale.close()  # a socket file nobody listens on
    done = run_quiet([APPLIANCECTL, "--socket", str(tmp_path / "stale.sock"), "status"])
    assert done.returncode == 4 and "stale" in done.stderr
