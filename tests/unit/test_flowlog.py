"""Flow records from the worker side (appliance/flowlog.py) and the writer (supervisor/flowlogd.py):
records through a real unix datagram socket, sampling, a writer that cannot keep up (records
dropped and counted, the caller never waits), and rotation by size."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Raw
from test_worker_flows import gwlb
from test_worker_loop import Datagram, FakeIO, worker_over

from appliance.counters import snapshot
from appliance.flowlog import FlowLog
from config.loader import parse_config
from supervisor.flowlogd import RotatingFile

FIELDS = {
    "event", "reason", "time", "start", "duration_s", "worker", "endpoint", "protocol", "src",
    "src_port", "dst", "dst_port", "packets_out", "bytes_out", "packets_in", "bytes_in",
    "verdict", "rule", "audited", "name",
}  # fmt: skip
DENY_SSH = '[[policy.rules]]\nname = "no-ssh"\naction = "drop"\nmatch = { dst_port = 22 }\n'


@pytest.fixture
def sock(tmp_path: Path) -> Iterator[socket.socket]:
    """The writer's end, bound where the workers send (as the supervisor binds it)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as bound:
        bound.bind(str(tmp_path / "flowlog.sock"))
        yield bound


@pytest.fixture
def log(tmp_path: Path) -> Iterator[FlowLog]:
    flowlog = FlowLog(tmp_path / "flowlog.sock", 3, 1, ("no-ssh",))
    yield flowlog
    flowlog.close()


def records(sock: socket.socket) -> list[dict[str, object]]:
    got = []
    sock.settimeout(0.0)
    try:
        while True:
            got += [json.loads(line) for line in sock.recv(65536).splitlines()]
    except BlockingIOError:
        return got


def test_a_denied_flow_is_recorded_when_denied_and_every_flow_when_it_ends(
    sock: socket.socket, log: FlowLog
) -> None:
    io = FakeIO()
    worker = worker_over(io, parse_config("[policy]\n" + DENY_SSH).policy)
    worker.flowlog = log
    ssh = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=22, flags="S")
    dns = IP(src="10.0.0.1", dst="10.0.0.53") / UDP(sport=5353, dport=53) / Raw(b"q" * 20)
    answer = IP(src="10.0.0.53", dst="10.0.0.1") / UDP(sport=53, dport=5353) / Raw(b"a" * 50)
    worker.process(io.lay([Datagram(gwlb(p)) for p in (ssh, dns, answer, dns)]))
    worker.flush()
    (denied,) = records(sock)
    assert set(denied) == FIELDS
    assert (denied["event"], denied["verdict"], denied["rule"]) == ("denied", "drop", "no-ssh")
    assert (denied["dst"], denied["dst_port"], denied["worker"]) == ("10.0.0.2", 22, 3)
    worker.close_flows()  # the worker stops
    ended = {r["dst_port"] if r["src_port"] == 5353 else 22: r for r in records(sock)}
    flow = ended[53]
    assert (flow["event"], flow["reason"], flow["verdict"]) == ("end", "shutdown", "pass")
    assert (flow["packets_out"], flow["bytes_out"]) == (2, 2 * len(dns))
    assert (flow["packets_in"], flow["bytes_in"]) == (1, len(answer))
    assert ended[22]["verdict"] == "drop" and snapshot(worker.counters)["flowlog_records"] == 3


def test_allowed_flows_are_sampled_and_denied_ones_never(sock: socket.socket, log: FlowLog) -> None:
    log.sample_allowed = 4
    io = FakeIO(size=64)
    worker = worker_over(io, parse_config("[policy]\n" + DENY_SSH).policy)
    worker.flowlog = log
    flows = [IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000 + k, dport=9) for k in range(40)]
    flows += [IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=k + 1, dport=22) for k in range(8)]
    worker.process(io.lay([Datagram(gwlb(p)) for p in flows]))
    worker.close_flows()
    got = records(sock)
    assert sum(r["verdict"] == "pass" for r in got) == 10  # 1 in 4 of 40
    assert sum(r["verdict"] == "drop" for r in got) == 16  # 8 denied, 8 ended


def test_a_writer_that_falls_behind_costs_records_not_time(
    sock: socket.socket, log: FlowLog
) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # never read: it fills
    io = FakeIO(size=64)
    worker = worker_over(io, parse_config("[policy]\n" + DENY_SSH).policy)
    worker.flowlog = log
    began = time.monotonic()
    for batch in range(50):
        flows = [
            IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=batch * 64 + k + 1, dport=22)
            for k in range(64)
        ]
        worker.process(io.lay([Datagram(gwlb(p)) for p in flows]))
    assert time.monotonic() - began < 10  # a generous bound: a blocked send would hang here
    assert log.dropped > 0 and log.sent + log.dropped == 50 * 64
    assert snapshot(worker.counters)["flowlog_dropped"] == log.dropped


def test_the_writer_rotates_by_size_and_keeps_its_files(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "flows.log"
    out = RotatingFile(path, max_bytes=100, keep=2)
    for k in range(10):
        out.write(b'{"n": %d, "pad": "%s"}\n' % (k, b"x" * 20))
    os.close(out.fd)
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == ["flows.log", "flows.log.1", "flows.log.2"]
    lines = [json.loads(x)["n"] for name in ("flows.log.2", "flows.log.1", "flows.log")
             for x in (path.parent / name).read_text().splitlines()]  # fmt: skip
    assert lines == list(range(lines[0], 10))  # nothing out of order, only the oldest gone
    assert all((path.parent / n).stat().st_size <= 100 for n in names)
