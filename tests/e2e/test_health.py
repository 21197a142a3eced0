"""The health service for real: gunicorn in the appliance namespace, probed from the GWLB side."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from appliance_proc import Appliance, config_text, ctl, socket_in
from testbed import Testbed, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.e2e]


class NsConnection(http.client.HTTPConnection):
    """An HTTP connection whose socket lives in network namespace `ns`."""

    def __init__(self, ns: str, host: str, port: int = 80, timeout: float = 5.0) -> None:
        super().__init__(host, port, timeout=timeout)
        self.ns = ns

    def connect(self) -> None:
        self.sock = socket_in(self.ns, socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect((self.host, self.port))


def probe(tb: Testbed, path: str = "/", method: str = "GET") -> tuple[int, dict[str, Any]]:
    conn = NsConnection(tb.ns_gwlb, tb.appliance_ip(1))
    try:
        conn.request(method, path)
        response = conn.getresponse()
        data = response.read()
        return response.status, orjson.loads(data) if data else {}
    finally:
        conn.close()


def answers(tb: Testbed, status: int, reason: str | None = None) -> bool:
    try:
        code, body = probe(tb)
    except OSError:
        return False
    return code == status and (reason is None or body.get("reason") == reason)


@pytest.fixture
def healthy(testbed: Testbed, tmp_path: Path) -> Appliance:
    runtime = tmp_path / "run-app1"
    text = config_text(runtime, min_workers="2", staleness_s="1.5", heartbeat_timeout_s="60")
    appliance = Appliance(testbed, 1, tmp_path, config=text, workers=2)
    assert wait_until(lambda: answers(testbed, 200, "ok"), 10.0, 0.05), appliance.stderr()
    return appliance


def test_stopped_workers_turn_it_503_and_continued_ones_back(
    testbed: Testbed, healthy: Appliance
) -> None:
    worker = healthy.worker_pids()[1]
    os.kill(worker, signal.SIGSTOP)
    try:
        assert wait_until(lambda: answers(testbed, 503, "workers_down"), 3.0, 0.05)
        _code, body = probe(testbed)
        assert body["live_workers"] == 1 and body["needed_workers"] == 2
        assert [w["state"] for w in body["workers"]] == ["RUNNING", "RUNNING"]
    finally:
        os.kill(worker, signal.SIGCONT)
    assert wait_until(lambda: answers(testbed, 200, "ok"), 3.0, 0.05)


def test_drain_and_undrain(testbed: Testbed, healthy: Appliance) -> None:
    assert ctl(healthy.runtime, "drain")[0] == 0
    assert answers(testbed, 503, "draining")
    assert ctl(healthy.runtime, "undrain")[0] == 0
    assert answers(testbed, 200, "ok")
    _code, status = ctl(healthy.runtime, "status")
    assert status["health"]["state"] == "RUNNING" and status["health"]["bind"] == "0.0.0.0:80"


def test_a_killed_supervisor_turns_it_503_at_once(testbed: Testbed, healthy: Appliance) -> None:
    healthy.proc.send_signal(signal.SIGKILL)
    healthy.proc.wait(5)
    # The first probe after the exit says so: no waiting for its heartbeat to go stale.
    code, body = probe(testbed)
    assert (code, body["reason"]) == (503, "supervisor_gone"), body


def test_bare_tcp_connects_and_many_concurrent_probes(testbed: Testbed, healthy: Appliance) -> None:
    for _ in range(5):  # GWLB's TCP health check: connect, then close without a request
        sock = socket_in(testbed.ns_gwlb, socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(3)
        sock.connect((testbed.appliance_ip(1), 80))
        sock.close()
    assert probe(testbed)[0] == 200
    assert probe(testbed, method="HEAD") == (200, {})
    results: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        code = probe(testbed)[0]
        with lock:
            results.append(code)

    threads = [threading.Thread(target=one) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert results == [200] * 50
    code, metrics = 0, ""
    conn = NsConnection(testbed.ns_gwlb, testbed.appliance_ip(1))
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    code, metrics = response.status, response.read().decode()
    conn.close()
    assert code == 200 and "gwlb_worker_state" in metrics


def test_gunicorn_is_restarted_when_it_dies(testbed: Testbed, healthy: Appliance) -> None:
    old = healthy.health_pid()
    os.kill(old, signal.SIGKILL)
    assert wait_until(lambda: healthy.health_pid() != old and answers(testbed, 200), 10.0, 0.05)
    _code, status = ctl(healthy.runtime, "status")
    assert status["health"]["restarts"] == 1


def slice_ns_of(task: str) -> int:
    """se.slice from /proc/TASK/sched: the task's EEVDF time slice in ns."""
    for line in Path(f"/proc/{task}/sched").read_text().splitlines():
        if line.startswith("se.slice"):
            return int(line.split(":")[1])
    raise AssertionError(f"no se.slice in /proc/{task}/sched")


def custom_slices_supported() -> bool:
    """Linux 6.12 made sched_attr.sched_runtime a fair task's slice; older kernels ignore it."""
    major, minor = (int(part) for part in os.uname().release.split(".")[:2])
    return (major, minor) >= (6, 12)


def nice_of(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[16])  # field 19 of stat(5), counted after the command name


def test_the_health_service_runs_below_the_workers_priority(
    testbed: Testbed, healthy: Appliance
) -> None:
    master = healthy.health_pid()
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    assert children, "gunicorn has no worker process"
    assert nice_of(master) == 10 and all(nice_of(int(pid)) == 10 for pid in children)
    assert all(nice_of(pid) == 0 for pid in healthy.worker_pids())
    # The 100 us time slice (Linux 6.12+): on every thread of gunicorn's processes, including the
    # request threads started after the supervisor set it; the workers keep the kernel's.
    if custom_slices_supported():
        for pid in (master, *map(int, children)):
            for tid in Path(f"/proc/{pid}/task").iterdir():
                assert slice_ns_of(f"{pid}/task/{tid.name}") == 100_000, (pid, tid.name)
        assert all(slice_ns_of(str(pid)) != 100_000 for pid in healthy.worker_pids())
