"""The supervisor under the faults an operator meets at 3 a.m.: a second daemon on the same runtime
directory, control clients that stall, reloads of keys that need a restart, log followers across
worker restarts, and a health port someone else holds."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from appliance_proc import APPLIANCED, Appliance, config_text, ctl, run_quiet, socket_in
from test_appliance_wire import GwlbPeer, gwlb_datagram, peer, udp4
from test_health import answers, probe
from testbed import Testbed, wait_until

from supervisor.protocol import encode, recv_message

pytestmark = [pytest.mark.netns, pytest.mark.e2e]
__all__ = ["peer"]  # the fixture, shared with the wire tests


def test_a_second_daemon_on_the_same_runtime_dir_is_refused(
    testbed: Testbed, tmp_path: Path
) -> None:
    first = Appliance(testbed, 1, tmp_path)
    argv = [
        "ip",
        "netns",
        "exec",
        testbed.ns_app(1),
        APPLIANCED,
        "--config",
        str(first.config_path),
    ]
    done = run_quiet(argv)
    assert done.returncode == 3, done.stderr
    assert f"another applianced (pid {first.proc.pid}) is running on {first.runtime}" in done.stderr
    assert "Traceback" not in done.stderr
    # The first one lost nothing: its control socket, its health service and its workers.
    code, status = ctl(first.runtime, "status")
    assert code == 0 and status["supervisor"]["pid"] == first.proc.pid
    assert answers(testbed, 200, "ok")
    assert first.stop() == 0


def test_each_named_network_namespace_has_its_own_default_runtime_dir(testbed: Testbed) -> None:
    code = "from config.runtimedir import default_runtime_dir as d; print(d())"
    python = str(Path(APPLIANCED).with_name("python"))
    seen = {
        ns: run_quiet(["ip", "netns", "exec", ns, python, "-c", code]).stdout.strip()
        for ns in (testbed.ns_app(1), testbed.ns_gwlb)
    }
    assert seen[testbed.ns_app(1)] == f"/run/gwlb-appliance/netns/{testbed.ns_app(1)}"
    assert len(set(seen.values())) == 2


def request(runtime: Path, command: str, *args: str) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5.0)
        sock.connect(str(runtime / "control.sock"))
        sock.sendall(encode({"v": 1, "cmd": command, "args": list(args)}))
        reply = recv_message(sock)
    assert reply is not None
    return reply


def _stalling_clients(path: Path, count: int) -> list[socket.socket]:
    """Half send a request one byte and then nothing; half ask for a large reply, never read."""
    clients = []
    big = encode({"v": 1, "cmd": "tail", "args": ["2000"]})
    for k in range(count):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(str(path))
        sock.sendall(big[:1] if k % 2 else big)
        clients.append(sock)
    return clients


def test_fifty_stalling_control_clients_never_delay_the_supervisor(
    testbed: Testbed, tmp_path: Path
) -> None:
    runtime = tmp_path / "run-app1"
    text = config_text(runtime, staleness_s="1")
    appliance = Appliance(testbed, 1, tmp_path, config=text, workers=2)
    assert wait_until(lambda: answers(testbed, 200, "ok"), 10.0, 0.05), appliance.stderr()
    for _ in range(40):  # fill the log ring, so a tail reply is larger than a socket buffer
        assert request(runtime, "reload")["ok"]
    clients = _stalling_clients(runtime / "control.sock", 50)
    try:
        victim = appliance.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()

        def back() -> bool:
            code, status = ctl(runtime, "status")
            worker = status["workers"][0] if code in (0, 3) else {}
            return worker.get("state") == "RUNNING" and worker.get("pid") not in (victim, None)

        assert wait_until(back, 3.0, 0.02), appliance.stderr()
        assert time.monotonic() - killed < 1.5  # the arbiter's tick, not the clients' timeouts
        deadline = time.monotonic() + 3.0  # past the clients' request deadline
        while time.monotonic() < deadline:
            code, body = probe(testbed)
            assert code == 200, body  # never supervisor_stale: its heartbeat stays fresh
            time.sleep(0.05)  # a probe's pace, as GWLB's (not a synchronisation)
    finally:
        for sock in clients:
            sock.close()
    assert appliance.stop() == 0


def test_reload_says_which_changed_keys_need_a_restart(testbed: Testbed, tmp_path: Path) -> None:
    runtime = tmp_path / "run-app1"
    appliance = Appliance(testbed, 1, tmp_path, config=config_text(runtime))
    changed = config_text(runtime, batch_size="64", min_workers="1").replace(
        'name = "drop-me"', 'name = "drop-me-please"'
    )
    appliance.config_path.write_text(changed.replace("staleness_s = 3", "staleness_s = 2"))
    code, reply = ctl(runtime, "reload")
    assert code == 0, reply
    outcome = reply["reload"]
    assert outcome["live"] == ["policy"]
    assert outcome["restart"] == ["dataplane.batch_size", "health.staleness_s"]
    assert "not applied until applianced restarts: dataplane.batch_size" in outcome["detail"]
    # The live key is applied: the dropped-by-rule counter is named after the new rule.
    assert wait_until(lambda: ctl(runtime, "status")[1]["workers"][0]["generation"] == 1, 5.0)
    assert appliance.stop() == 0


def test_a_follower_gets_each_line_once_across_worker_restarts(
    testbed: Testbed, tmp_path: Path
) -> None:
    runtime = tmp_path / "run-app1"
    appliance = Appliance(testbed, 1, tmp_path, config=config_text(runtime), workers=2)
    follower = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    follower.settimeout(5.0)
    follower.connect(str(runtime / "control.sock"))
    follower.sendall(encode({"v": 1, "cmd": "tail", "args": ["0", "follow"]}))
    try:
        assert recv_message(follower)["lines"] == []
        old = appliance.worker_pids()
        assert request(runtime, "restart", "all")["ok"]
        assert wait_until(lambda: set(appliance.worker_pids()).isdisjoint(old), 10.0, 0.05)
        assert wait_until(lambda: ctl(runtime, "status")[0] == 0, 10.0, 0.05)
        os.kill(appliance.proc.pid, signal.SIGHUP)  # each new worker logs that it applied it
        lines: list[str] = []
        while sum("policy of 4 rules applied" in line for line in lines) < 2:
            lines.append(recv_message(follower)["line"])
        for pid in appliance.worker_pids():  # the new workers hold no copy of the follower
            fds = os.listdir(f"/proc/{pid}/fd")
            peers = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds]
            assert sum(p.startswith("socket:") for p in peers) == 2, peers  # its UDP and raw
        follower.settimeout(0.5)
        with pytest.raises(TimeoutError):  # no duplicate arrives later
            while True:
                line = recv_message(follower)["line"]
                assert "policy of 4 rules applied" not in line, line
    finally:
        follower.close()
    assert appliance.stop() == 0


def test_a_taken_health_port_is_said_once_and_retried(testbed: Testbed, tmp_path: Path) -> None:
    squatter = socket_in(testbed.ns_app(1), socket.AF_INET, socket.SOCK_STREAM)
    squatter.bind(("0.0.0.0", 80))
    squatter.listen(1)
    try:
        appliance = Appliance(testbed, 1, tmp_path)
        status = ctl(appliance.runtime, "status")[1]
        assert status["health"]["state"] == "BACKOFF"
        assert status["health"]["problem"] == "port 80 on 0.0.0.0 is in use by another process"
    finally:
        squatter.close()
    assert wait_until(lambda: answers(testbed, 200, "ok"), 10.0, 0.1), appliance.stderr()
    assert appliance.stderr().count("is in use by another process") == 1
    assert appliance.stop() == 0


def test_a_config_naming_a_missing_group_is_refused_before_anything_starts(
    testbed: Testbed, tmp_path: Path
) -> None:
    config = tmp_path / "c.toml"
    text = config_text(tmp_path / "run").replace('# group = "gwlb-admin"', 'group = "no-such-grp"')
    config.write_text(text)
    argv = ["ip", "netns", "exec", testbed.ns_app(1), APPLIANCED, "--config", str(config)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert "control.group: no group 'no-such-grp' on this host" in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.fixture
def small_runtime(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs for the runtime directory, unmounted even when the test fails."""
    runtime = tmp_path / "run-app1"
    runtime.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(runtime)], check=True)
    try:
        yield runtime
    finally:
        subprocess.run(["umount", "-l", str(runtime)], check=False)


def test_a_full_runtime_dir_refuses_reloads_and_loses_no_packet(
    testbed: Testbed, peer: GwlbPeer, tmp_path: Path, small_runtime: Path
) -> None:
    appliance = Appliance(testbed, 1, tmp_path, config=config_text(small_runtime))
    filler = small_runtime / "filler"
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(bytes(65536))  # until ENOSPC: the runtime dir is full
    code, reply = ctl(small_runtime, "reload")
    assert code == 1, reply
    detail = reply["reload"]["detail"]
    assert "No space left on device" in detail and "the running config stays" in detail
    os.kill(appliance.proc.pid, signal.SIGHUP)  # the same through the signal
    assert wait_until(
        lambda: ctl(small_runtime, "status")[1]["supervisor"]["reloads_refused"] == 2, 5.0
    )
    code, said = ctl(small_runtime, "flows")  # it must write its request: refused, in words
    assert code == 1 and "flows failed: No space left on device" in said, said
    assert appliance.proc.poll() is None
    peer.send(gwlb_datagram(udp4(b"still here", dport=53)))
    assert len(peer.replies(1)) == 1  # the data path never noticed
    filler.unlink()
    assert ctl(small_runtime, "reload")[0] == 0  # and reloads work again once there is room
    assert appliance.stop() == 0
    assert "Traceback" not in appliance.stderr()
