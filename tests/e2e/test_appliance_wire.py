"""The real applianced on real sockets: what goes back on the wire, byte for byte (scapy checks).

A GWLB peer is played from this process with sockets made inside the bed's gwlb namespace: a UDP
socket that sends from a chosen outer source port, a UDP socket bound to 6081 (as GWLB has), and a
raw socket that sees each reply whole, outer IPv4 header included.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from appliance_proc import (
    APPLIANCED,
    BACKEND,
    Appliance,
    arrivals,
    config_text,
    ingress_rule_installed,
    run_quiet,
    socket_in,
)
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Packet, Raw, raw
from testbed import Testbed, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.e2e, pytest.mark.usefixtures("both_backends")]

OPTIONS = (
    bytes.fromhex("01080102")
    + bytes(range(1, 9))
    + bytes.fromhex("01080202")
    + bytes(range(11, 19))
    + bytes.fromhex("01080301")
    + bytes.fromhex("c0ffee01")
)
SOURCE_PORT = 40001


def gwlb_datagram(inner: Packet) -> bytes:
    protocol = 0x86DD if isinstance(inner, IPv6) else 0x0800
    return struct.pack("!BBHI", 0x08, 0, protocol, 0) + OPTIONS + raw(inner)


def udp4(payload: bytes, dport: int = 3000) -> Packet:
    return IP(src="10.77.1.2", dst="10.77.2.2") / UDP(sport=40000, dport=dport) / Raw(payload)


class GwlbPeer:
    """Plays one GWLB node towards appliance 1."""

    def __init__(self, tb: Testbed) -> None:
        ns, self.gwlb_ip, self.appliance_ip = tb.ns_gwlb, tb.gwlb_ip(1), tb.appliance_ip(1)
        self.sender = socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
        self.sender.bind((self.gwlb_ip, SOURCE_PORT))
        self.listener = socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
        self.listener.bind((self.gwlb_ip, 6081))  # no ICMP port unreachable for the replies
        self.capture = socket_in(ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
        self.capture.settimeout(0.2)

    def send(self, *datagrams: bytes) -> None:
        for datagram in datagrams:
            self.sender.sendto(datagram, (self.appliance_ip, 6081))

    def replies(self, count: int, timeout_s: float = 5.0) -> list[bytes]:
        """Whole reply packets from the appliance, until `count` came or `timeout_s` passed."""
        got: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < count and time.monotonic() < deadline:
            try:
                packet = self.capture.recv(65535)
            except TimeoutError:
                continue
            from_appliance = packet[12:16] == socket.inet_aton(self.appliance_ip)
            if from_appliance and packet[22:24] == b"\x17\xc1":  # to port 6081
                got.append(packet)
        return got

    def close(self) -> None:
        for sock in (self.sender, self.listener, self.capture):
            sock.close()


@pytest.fixture
def peer(testbed: Testbed) -> Iterator[GwlbPeer]:
    p = GwlbPeer(testbed)
    yield p
    p.close()


def process_state(pid: int) -> str:
    """The state letter of /proc/PID/stat ('R', 'S', 'T' for stopped, ...)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]  # the command name may hold spaces and parentheses


@contextlib.contextmanager
def stopped(tb: Testbed, worker: int) -> Iterator[Callable[..., None]]:
    """Hold `worker` stopped so that what is sent meanwhile arrives in one recvmmsg batch.

    Yields `queue(send, *args)`: it calls `send(*args)` and returns once the datagram is in the
    worker's socket. kill() only queues SIGSTOP, so a worker still running could take the first
    datagram into a batch of its own: wait for the kernel's stopped state ('T') before anything
    is sent. The socket's receive queue grows with every datagram (nothing reads it while the
    worker is stopped), so each arrival is seen, and SIGCONT finds the whole batch waiting.
    With the ring backend an arrival is counted by the nftables rule, which sees a frame after
    the packet ring has it (ETH_P_ALL taps run before the ingress hook).
    """

    def queue(send: Callable[..., object], *args: object) -> None:
        before = arrivals(tb, 1, worker)
        send(*args)
        assert wait_until(lambda: arrivals(tb, 1, worker) > before, 5.0, 0.001), "never queued"

    os.kill(worker, signal.SIGSTOP)
    try:
        assert wait_until(lambda: process_state(worker) == "T", 5.0, 0.001), "never stopped"
        yield queue
    finally:
        os.kill(worker, signal.SIGCONT)


def check_outer(reply: bytes, peer: GwlbPeer) -> bytes:
    """Assert the outer IPv4/UDP header is as DESIGN.md §1 says; return the Geneve payload."""
    outer = IP(reply)
    assert outer.src == peer.appliance_ip and outer.dst == peer.gwlb_ip
    assert outer[UDP].sport == SOURCE_PORT and outer[UDP].dport == 6081  # ports not swapped
    assert outer.len == len(reply) and outer[UDP].len == len(reply) - 20
    rebuilt = IP(reply)
    del rebuilt.chksum
    assert IP(raw(rebuilt)).chksum == outer.chksum
    assert outer[UDP].chksum == 0  # allowed over IPv4 by RFC 8926
    return reply[28:]


def test_pass_through_is_byte_identical_and_rewrite_is_fixed(
    testbed: Testbed, peer: GwlbPeer, tmp_path: Path
) -> None:
    appliance = Appliance(testbed, 1, tmp_path)
    untouched = [
        gwlb_datagram(udp4(b"hello", dport=53)),
        gwlb_datagram(
            IPv6(src="fd77:1::2", dst="fd77:2::2")
            / UDP(sport=5060, dport=5060)
            / Raw(b"INVITE weakly typed")
        ),  # not port 3000: no rewrite
        gwlb_datagram(
            IP(src="10.77.1.2", dst="10.77.2.2", options=b"\x94\x04\x00\x00")
            / ICMP(seq=7)
            / Raw(b"x" * 33)
        ),
    ]
    peer.send(*untouched)
    replies = peer.replies(3)
    assert sorted(check_outer(r, peer) for r in replies) == sorted(untouched)

    peer.send(
        gwlb_datagram(
            IPv6(src="fd77:1::2", dst="fd77:2::2")
            / UDP(sport=3000, dport=9)
            / Raw(b"so weakly typed, weakly typed")
        )
    )
    (reply,) = peer.replies(1)
    geneve = check_outer(reply, peer)
    assert geneve[:40] == struct.pack("!BBHI", 0x08, 0, 0x86DD, 0) + OPTIONS
    inner = IPv6(geneve[40:])
    assert inner[Raw].load == b"so strongly typed, strongly typed"
    recomputed = inner.copy()
    del recomputed.plen, recomputed[UDP].len, recomputed[UDP].chksum
    assert raw(IPv6(raw(recomputed))) == geneve[40:]
    assert ingress_rule_installed(testbed, 1) == (BACKEND[0] == "ring")
    assert appliance.stop() == 0
    assert not ingress_rule_installed(testbed, 1)  # removed at stop


def test_malformed_datagrams_do_not_hurt_their_batch(
    testbed: Testbed, peer: GwlbPeer, tmp_path: Path
) -> None:
    appliance = Appliance(testbed, 1, tmp_path)
    good = [
        gwlb_datagram(udp4(b"first")),
        gwlb_datagram(udp4(b"weakly typed")),
        gwlb_datagram(udp4(b"last", dport=123)),
    ]
    without_cookie = struct.pack("!BBHI", 0x06, 0, 0x0800, 0) + OPTIONS[:24] + raw(udp4(b"x"))
    truncated_inner = gwlb_datagram(udp4(b"cut"))[:-2]
    # Stop the worker so that everything queues and arrives in one recvmmsg batch.
    (worker,) = appliance.worker_pids()
    with stopped(testbed, worker) as queue:
        for datagram in (
            good[0],
            b"\x00\x00junk",
            without_cookie,
            good[1],
            truncated_inner,
            gwlb_datagram(udp4(b"please drop me")),
            good[2],
        ):
            queue(peer.send, datagram)
    replies = [check_outer(r, peer) for r in peer.replies(3)]
    assert [r[40:] for r in replies] == [
        raw(udp4(b"first")),
        raw(IP(raw(udp4(b"strongly typed")))),
        raw(udp4(b"last", dport=123)),
    ]
    # Replies after a refused datagram were sent from later messages of the batch; the next
    # batch, with nothing refused, must find every message pointing at its own slot again.
    second = [raw(udp4(b"second %d" % k)) for k in range(4)]
    with stopped(testbed, worker) as queue:
        for k in range(4):
            queue(peer.send, gwlb_datagram(udp4(b"second %d" % k)))
    assert [check_outer(r, peer)[40:] for r in peer.replies(4)] == second
    assert appliance.stop() == 0
    counters = appliance.counters()
    assert counters["received"] == 11 and counters["batches"] == 2
    assert counters["sent"] == 7 and counters["rewritten"] == 1 and counters["dropped"] == 1
    assert counters["malformed_by_reason"] == {
        "truncated": 1,
        "geneve_missing_aws_option": 1,
        "ip_length_mismatch": 1,
    }
    assert counters["dropped_by_rule"] == {"drop-me": 1}


def test_jumbo_inner_packets_and_the_8500_byte_limit(
    testbed: Testbed, peer: GwlbPeer, tmp_path: Path
) -> None:
    appliance = Appliance(testbed, 1, tmp_path)
    filler = 8500 - 20 - 8
    biggest = gwlb_datagram(udp4(b"z" * filler, dport=80))
    peer.send(biggest)
    (reply,) = peer.replies(1)
    assert check_outer(reply, peer) == biggest and len(reply) == 8500 + 68
    # One replace grows the packet by 2 bytes: at the limit that must drop it, not send 8502.
    at_limit = gwlb_datagram(udp4(b"weakly typed" + b"z" * (filler - 12)))
    peer.send(at_limit)
    assert appliance.wait_counter("oversize", 1)
    assert peer.replies(1, timeout_s=0.5) == []
    assert appliance.stop() == 0


def test_allow_list_drops_and_counts_other_sources(
    testbed: Testbed, peer: GwlbPeer, tmp_path: Path
) -> None:
    runtime = tmp_path / "run-app1"
    config = config_text(runtime, allow_sources='["10.77.250.0/24"]')
    appliance = Appliance(testbed, 1, tmp_path, config=config)
    before = testbed.snmp(testbed.ns_app(1))["Udp"]["NoPorts"]
    peer.send(gwlb_datagram(udp4(b"from a stranger")))
    assert appliance.wait_counter("disallowed_source", 1)
    assert peer.replies(1, timeout_s=0.5) == []
    assert testbed.snmp(testbed.ns_app(1))["Udp"]["NoPorts"] == before
    assert appliance.stop() == 0


def test_allow_list_judges_each_sender_of_a_mixed_batch(
    testbed: Testbed, peer: GwlbPeer, tmp_path: Path
) -> None:
    # The worker checks a batch's distinct senders once; one stranger among allowed senders must
    # still be refused on its own, and its neighbours answered.
    stranger_ip = "10.77.101.9"  # beside the GWLB node, on the same link
    testbed.ip(testbed.ns_gwlb, "addr", "add", f"{stranger_ip}/32", "dev", "to-app1")
    stranger = socket_in(testbed.ns_gwlb, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        stranger.bind((stranger_ip, SOURCE_PORT))
        config = config_text(tmp_path / "run-app1", allow_sources=f'["{peer.gwlb_ip}/32"]')
        appliance = Appliance(testbed, 1, tmp_path, config=config)
        (worker,) = appliance.worker_pids()
        with stopped(testbed, worker) as queue:  # so that all three arrive in one recvmmsg batch
            queue(peer.send, gwlb_datagram(udp4(b"allowed 1")))
            queue(stranger.sendto, gwlb_datagram(udp4(b"stranger")), (peer.appliance_ip, 6081))
            queue(peer.send, gwlb_datagram(udp4(b"allowed 2")))

        def settled() -> bool:  # the batch is decided and its replies were handed to the kernel
            c = appliance.counters()
            return c["received"] == 3 and c["sent"] + c["disallowed_source"] == 3

        assert wait_until(settled, 5.0, 0.01), appliance.counters()
        replies = [check_outer(r, peer)[40:] for r in peer.replies(2)]
        assert replies == [raw(udp4(b"allowed 1")), raw(udp4(b"allowed 2"))]
        assert appliance.stop() == 0
        counters = appliance.counters()
        assert counters["batches"] == 1 and counters["received"] == 3
        assert counters["disallowed_source"] == 1 and counters["sent"] == 2
    finally:
        stranger.close()
        testbed.ip(testbed.ns_gwlb, "addr", "del", f"{stranger_ip}/32", "dev", "to-app1")


def test_unbindable_address_or_port_is_a_boot_error(testbed: Testbed, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(config_text(tmp_path / "run", bind='"10.77.250.9"'))
    argv = ["ip", "netns", "exec", testbed.ns_app(1), APPLIANCED, "--config", str(config)]
    done = run_quiet(argv)
    assert done.returncode == 3
    assert "bind address 10.77.250.9: on no interface" in done.stderr
    assert "Traceback" not in done.stderr
    # The port taken by a socket outside our reuseport group: the bind itself fails.
    squatter = socket_in(testbed.ns_app(1), socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind(("0.0.0.0", 6081))
    try:
        config.write_text(config_text(tmp_path / "run"))
        done = run_quiet(argv)
    finally:
        squatter.close()
    assert done.returncode == 3
    assert "cannot bind UDP 0.0.0.0:6081" in done.stderr and "Traceback" not in done.stderr
