"""Receive-buffer drops for real: a worker held stopped while GWLB keeps sending overflows its
socket, the kernel's count reaches /metrics, /status and `appliancectl status`, and the probe
answers 503 rx_buffer_overflow while the drops keep coming, 200 again once they stop.

The appliance runs with one worker, the smallest receive buffer the config allows (64 KiB, which
the kernel doubles) and health.overflow_unready_s = 1. Each round stops the worker (its 'T' state
awaited), sends FLOOD datagrams from the GWLB side (all of them ones the demo policy drops, so
nothing answers them), continues it, waits for its socket to drain, and then sends datagrams the
policy passes until the worker has published the socket's count (the kernel hands the count to
the worker with each datagram queued after a drop). /proc/PID/net/udp's drops column is the
oracle. The probe looks after every round, and rounds go on until it answers 503: drops seen
rising at every look, the looks far less than the bound apart, are "rising for longer than 1 s"
once they span it.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from appliance_proc import APPLIANCECTL, Appliance, config_text, ctl, run_quiet, socket_in
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw, raw
from testbed import Testbed, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.e2e]

FLOOD = 500  # datagrams a round: about three times what the 128 KiB buffer holds
ROUNDS = 1000  # at most: a round takes some 15 ms here, so some 70 of them span the bound
DEADLINE_S = 30.0
SOURCE_PORT = 40001
OPTIONS = (
    bytes.fromhex("01080102")
    + bytes(range(1, 9))
    + bytes.fromhex("01080202")
    + bytes(range(11, 19))
    + bytes.fromhex("01080301")
    + bytes.fromhex("c0ffee01")
)


def gwlb_datagram(payload: bytes, dport: int) -> bytes:
    inner = IP(src="10.77.1.2", dst="10.77.2.2") / UDP(sport=40000, dport=dport) / Raw(payload)
    return struct.pack("!BBHI", 0x08, 0, 0x0800, 0) + OPTIONS + raw(inner)


DROPPED = gwlb_datagram(b"drop me, I am a flood", 3000)  # the demo's drop-me rule
PASSED = gwlb_datagram(b"pass me", 53)


class Peer:
    """One GWLB node towards appliance 1: a sender, a socket on 6081 for the replies (no ICMP
    port unreachable), and a raw socket that sees each reply whole."""

    def __init__(self, tb: Testbed) -> None:
        ns, self.gwlb_ip, self.appliance_ip = tb.ns_gwlb, tb.gwlb_ip(1), tb.appliance_ip(1)
        self.sender = socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
        self.sender.bind((self.gwlb_ip, SOURCE_PORT))
        self.listener = socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
        self.listener.bind((self.gwlb_ip, 6081))
        self.capture = socket_in(ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
        self.capture.settimeout(0.2)

    def send(self, datagram: bytes, count: int = 1) -> None:
        for _ in range(count):
            self.sender.sendto(datagram, (self.appliance_ip, 6081))

    def replies_to(self, datagram: bytes, count: int, timeout_s: float = 5.0) -> list[bytes]:
        """Whole reply packets from the appliance that carry `datagram`, until `count` came or
        `timeout_s` passed."""
        got: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < count and time.monotonic() < deadline:
            try:
                packet = self.capture.recv(65535)
            except TimeoutError:
                continue
            from_appliance = packet[12:16] == socket.inet_aton(self.appliance_ip)
            if from_appliance and packet[22:24] == b"\x17\xc1" and packet[28:] == datagram:
                got.append(packet)
        return got

    def close(self) -> None:
        for sock in (self.sender, self.listener, self.capture):
            sock.close()


class NsConnection(http.client.HTTPConnection):
    """An HTTP connection whose socket lives in network namespace `ns`."""

    def __init__(self, ns: str, host: str) -> None:
        super().__init__(host, 80, timeout=5.0)
        self.ns = ns

    def connect(self) -> None:
        self.sock = socket_in(self.ns, socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect((self.host, self.port))


def get(tb: Testbed, path: str) -> tuple[int, bytes]:
    conn = NsConnection(tb.ns_gwlb, tb.appliance_ip(1))
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def verdict(tb: Testbed) -> tuple[int, str]:
    """GWLB's probe: status and reason (each probe is also an observation of the drops)."""
    code, body = get(tb, "/")
    return code, orjson.loads(body)["reason"]


def process_state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def socket_line(pid: int) -> list[str]:
    """The UDP 6081 socket's line of /proc/PID/net/udp (the worker's network namespace)."""
    for line in Path(f"/proc/{pid}/net/udp").read_text().splitlines()[1:]:
        fields = line.split()  # sl local rem st tx_queue:rx_queue ... inode ref pointer drops
        if int(fields[1].rsplit(":", 1)[1], 16) == 6081:
            return fields
    raise LookupError("no socket bound to UDP 6081")


def kernel_drops(pid: int) -> int:
    return int(socket_line(pid)[-1])


def queued_bytes(pid: int) -> int:
    return int(socket_line(pid)[4].split(":")[1], 16)


def published(appliance: Appliance) -> int:
    try:
        return int(appliance.counters()["rx_buffer_drops"])
    except (OSError, ValueError, KeyError):
        return -1


@pytest.fixture
def peer(testbed: Testbed) -> Iterator[Peer]:
    p = Peer(testbed)
    yield p
    p.close()


@pytest.fixture
def appliance(testbed: Testbed, tmp_path: Path) -> Iterator[Appliance]:
    text = config_text(
        tmp_path / "run-app1",
        receive_buffer_bytes="65536",
        overflow_unready_s="1",
        heartbeat_timeout_s="60",  # stopped on purpose: not stuck
        staleness_s="30",  # and not counted down either: the reason must be the drops
    )
    app = Appliance(testbed, 1, tmp_path, config=text)
    assert wait_until(lambda: verdict(testbed) == (200, "ok"), 10.0, 0.05), app.stderr()
    yield app
    app.stop()


def overflow_once(peer: Peer, appliance: Appliance, worker: int) -> int:
    """Stop the worker, overflow its socket, continue it, and wait until it has published the
    socket's count; that count."""
    before = kernel_drops(worker)
    os.kill(worker, signal.SIGSTOP)
    try:
        assert wait_until(lambda: process_state(worker) == "T", 5.0, 0.001), "never stopped"
        peer.send(DROPPED, FLOOD)
        assert wait_until(lambda: kernel_drops(worker) > before, 5.0, 0.001), "no drop"
    finally:
        os.kill(worker, signal.SIGCONT)
    assert wait_until(lambda: queued_bytes(worker) == 0, 5.0, 0.001), "never drained"

    def caught_up() -> bool:
        # A datagram queued after the drops brings the worker the count (a late one of the
        # flood, dropped after it, needs another).
        peer.send(PASSED)
        return published(appliance) == kernel_drops(worker)

    assert wait_until(caught_up, 5.0, 0.02), (published(appliance), kernel_drops(worker))
    return kernel_drops(worker)


def test_a_worker_losing_datagrams_to_a_full_buffer_turns_the_probe_503_and_back(
    testbed: Testbed, peer: Peer, appliance: Appliance
) -> None:
    (worker,) = appliance.worker_pids()
    assert published(appliance) == kernel_drops(worker) == 0
    drops, seen, start = 0, (200, "ok"), time.monotonic()
    for _ in range(ROUNDS):
        drops = overflow_once(peer, appliance, worker)
        seen = verdict(testbed)
        if seen == (503, "rx_buffer_overflow") or time.monotonic() - start > DEADLINE_S:
            break
    assert seen == (503, "rx_buffer_overflow"), (seen, drops, time.monotonic() - start)
    assert time.monotonic() - start >= 1.0  # the bound: it took rises over a second

    code, body = get(testbed, "/status")
    status: dict[str, Any] = orjson.loads(body)
    assert code == 200 and status["health"]["reason"] == "rx_buffer_overflow", status["health"]
    assert status["health"]["detail"].startswith("worker 0 kept losing datagrams")
    assert status["workers"][0]["counters"]["rx_buffer_drops"] == drops
    assert status["total"]["rx_buffer_drops"] == drops
    code, body = get(testbed, "/metrics")
    metrics = body.decode()
    assert f'gwlb_worker_rx_buffer_drops_total{{slot="0"}} {float(drops)}' in metrics
    assert f"gwlb_rx_buffer_drops_total {float(drops)}" in metrics
    code, reply = ctl(appliance.runtime, "status")
    assert reply["workers"][0]["rx_buffer_drops"] == drops
    done = run_quiet([APPLIANCECTL, "--socket", str(appliance.runtime / "control.sock"), "status"])
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines() if line.strip()}
    assert rows["0"][rows["SLOT"].index("RCVBUF_DROPS")] == str(drops), done.stdout

    # What still gets through is answered as ever: the socket has dropped, so every datagram
    # now brings its count before the address it came to (appliance/batchio.py).
    after = gwlb_datagram(b"after the drops", 53)
    peer.send(after, 3)
    got = peer.replies_to(after, 3)
    assert len(got) == 3
    for packet in got:
        outer = IP(packet)
        assert (outer.src, outer.dst) == (peer.appliance_ip, peer.gwlb_ip)
        assert (outer[UDP].sport, outer[UDP].dport) == (SOURCE_PORT, 6081)

    # The drops stopped: ready again once the count has stood still for the bound.
    assert wait_until(lambda: verdict(testbed) == (200, "ok"), 10.0, 0.05)
    assert published(appliance) == kernel_drops(worker) == drops
