"""The ring backend's kernel parts for real, one at a time: the tap filter and the fanout program
run by the kernel on frames crafted with scapy, the ring's replies as they leave, a restarted
worker's takeover of a ring, a full ring and datagrams longer than a frame, and the nftables
rule. Two namespaces of this test's own, joined by
a veth pair (198.18.7.0/24), deleted whatever happens."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, Raw, raw
from testbed import in_netns, netns_unusable_reason

from appliance.ringio import RingBatchIO
from appliance.ringsocket import RingGeometry, join_fanout, open_ring_socket
from appliance.sockets import open_data_socket
from appliance.steering import attach_steering
from supervisor.ingressdrop import IngressDrop

pytestmark = [pytest.mark.netns]

TX_IP, RX_IP, OTHER_IP = "198.18.7.1", "198.18.7.2", "198.18.7.9"
GEOMETRY = RingGeometry(1 << 17, 32)
OPTIONS = (
    bytes.fromhex("01080102")
    + bytes(range(1, 9))
    + bytes.fromhex("01080202")
    + bytes(range(11, 19))
    + bytes.fromhex("01080301c0ffee01")
)


@dataclass
class Link:
    tx: str  # namespace that sends (plays GWLB)
    rx: str  # namespace that taps (plays the appliance)
    tx_mac: str
    rx_mac: str

    def ring(self, count: int = 1, steering: str = "inner-flow") -> list[socket.socket]:
        address = int.from_bytes(socket.inet_aton(RX_IP), "big")
        with in_netns(self.rx):
            sockets = [
                open_ring_socket("v1", [address], 6081, GEOMETRY, 1 << 20) for _ in range(count)
            ]
        join_fanout(sockets, steering)
        return sockets

    def sender(self) -> socket.socket:
        with in_netns(self.tx):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        sock.bind(("v0", 0))
        return sock

    def frame(self, packet: Packet) -> bytes:
        return raw(Ether(src=self.tx_mac, dst=self.rx_mac) / packet)


def _ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)


def _mac(ns: str, dev: str) -> str:
    shown = subprocess.run(
        ["ip", "-n", ns, "-j", "link", "show", "dev", dev], check=True, capture_output=True
    )
    return str(json.loads(shown.stdout)[0]["address"])


@pytest.fixture
def link() -> Iterator[Link]:
    if reason := netns_unusable_reason():
        pytest.skip(f"network namespaces unusable: {reason}")
    tx, rx = f"rk{os.getpid()}-tx", f"rk{os.getpid()}-rx"
    try:
        for ns in (tx, rx):
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        veth = ["type", "veth", "peer", "name", "v1", "netns", rx, "mtu", "9001"]
        subprocess.run(
            ["ip", "link", "add", "v0", "netns", tx, "mtu", "9001", *veth],
            check=True,
            capture_output=True,
        )
        for ns, dev, address in ((tx, "v0", TX_IP), (rx, "v1", RX_IP)):
            _ip(ns, "addr", "add", f"{address}/24", "dev", dev)
            _ip(ns, "link", "set", dev, "up")
            _ip(ns, "link", "set", "lo", "up")
        _ip(rx, "addr", "add", f"{OTHER_IP}/32", "dev", "v1")
        yield Link(tx, rx, _mac(tx, "v0"), _mac(rx, "v1"))
    finally:
        for ns in (tx, rx):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def geneve(inner: Packet) -> bytes:
    protocol = 0x86DD if isinstance(inner, IPv6) else 0x0800
    return struct.pack("!BBHI", 0x08, 0, protocol, 0) + OPTIONS + raw(inner)


def take(io: RingBatchIO, want: int, timeout_s: float = 2.0) -> list[bytes]:
    """Datagrams from the ring until `want` came or `timeout_s` passed (replies not sent)."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        n = io.receive()
        results = io.results(n)
        got += [bytes(io.buffer[s : s + results[2 * i + 1]]) for i, s in enumerate(io.starts(n))]
        if n:
            io.flush(n)
    return got


def listener_on(link: Link) -> socket.socket:
    """A raw UDP socket on the sending side: it sees the replies as its kernel took them."""
    with in_netns(link.tx):
        listener = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    listener.settimeout(2)
    return listener


def replies_to(listener: socket.socket, count: int) -> list[Packet]:
    """The next `count` packets from the tapped side, each with right lengths and checksum."""
    replies: list[Packet] = []
    while len(replies) < count:
        packet = IP(listener.recv(65535))
        if packet.src != RX_IP:
            continue
        assert packet.len == len(raw(packet)) == packet[UDP].len + 20
        rebuilt = packet.copy()
        del rebuilt.chksum
        assert IP(raw(rebuilt)).chksum == packet.chksum
        replies.append(packet)
    return replies


def test_the_tap_filter_keeps_what_the_udp_stack_would_take(link: Link) -> None:
    (sock,) = link.ring()
    io = RingBatchIO(sock, 32, GEOMETRY, wait_s=0.05)
    sender = link.sender()

    def udp(marker: bytes, **fields: object) -> Packet:
        ip_fields = {k: v for k, v in fields.items() if k in ("dst", "options", "flags", "frag")}
        ip_fields.setdefault("dst", RX_IP)
        udp_fields = {k: v for k, v in fields.items() if k in ("dport", "len", "chksum")}
        udp_fields.setdefault("dport", 6081)
        return IP(src=TX_IP, **ip_fields) / UDP(sport=40001, **udp_fields) / Raw(marker * 4)

    bad_ip_checksum = IP(raw(udp(b"ipsum")))
    bad_ip_checksum.chksum ^= 0x0101
    bad_udp_checksum = IP(raw(udp(b"udpsum")))
    bad_udp_checksum[UDP].chksum ^= 0x0101
    frames = [
        link.frame(udp(b"kept1")),
        link.frame(udp(b"zero", chksum=0)),  # no checksum: allowed over IPv4
        link.frame(udp(b"port", dport=6082)),
        link.frame(udp(b"other", dst=OTHER_IP)),
        link.frame(udp(b"opts", options=b"\x94\x04\x00\x00")),
        link.frame(udp(b"frag", flags="MF")),
        link.frame(udp(b"later", frag=8)),
        link.frame(bad_ip_checksum),
        link.frame(bad_udp_checksum),
        link.frame(udp(b"long", len=200, chksum=0)),  # UDP longer than its IP packet
        link.frame(udp(b"short", len=8 + 6, chksum=0)),  # shorter: cut there, as UDP cuts
        link.frame(udp(b"padded")) + b"\x00" * 12,  # bytes past the IP packet
        link.frame(IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=1, dport=6081) / Raw(b"v6")),
        raw(Ether(src=link.tx_mac, dst="ff:ff:ff:ff:ff:ff") / ARP(pdst=RX_IP)),
        link.frame(IP(src=TX_IP, dst=RX_IP) / ICMP() / Raw(b"icmp")),
        link.frame(udp(b"kept2")),
    ]
    try:
        for frame in frames:
            sender.send(frame)
        got = take(io, 5)
        assert got == [b"kept1" * 4, b"zero" * 4, b"shorts", b"padded" * 4, b"kept2" * 4]
        assert io.checksum_errors == 1
        assert take(io, 1, timeout_s=0.2) == []
    finally:
        io.close()
        sender.close()
        sock.close()


def flows() -> list[tuple[Packet, Packet]]:
    """Inner flows, each as (one direction, the other): UDP and TCP over IPv4 and IPv6, ICMP."""
    pairs: list[tuple[Packet, Packet]] = []
    for k in range(24):
        a, b = f"10.{k}.1.{k + 2}", f"10.200.{k}.9"
        pairs.append(
            (
                IP(src=a, dst=b) / UDP(sport=40000 + k, dport=53) / Raw(b"q"),
                IP(src=b, dst=a) / UDP(sport=53, dport=40000 + k) / Raw(b"r"),
            )
        )
        pairs.append(
            (
                IP(src=a, dst=b) / TCP(sport=50000 + k, dport=443, flags="S"),
                IP(src=b, dst=a) / TCP(sport=443, dport=50000 + k, flags="SA"),
            )
        )
    for k in range(8):
        a, b = f"fd00:{k}::1", f"fd77::{k + 1}"
        pairs.append(
            (
                IPv6(src=a, dst=b) / UDP(sport=3000 + k, dport=9) / Raw(b"6"),
                IPv6(src=b, dst=a) / UDP(sport=9, dport=3000 + k) / Raw(b"6"),
            )
        )
        pairs.append(
            (
                IP(src=f"10.9.{k}.1", dst="10.8.0.1") / ICMP(),
                IP(src="10.8.0.1", dst=f"10.9.{k}.1") / ICMP(type=0),
            )
        )
    return pairs


def test_fanout_steers_both_directions_to_the_slot_reuseport_steering_picks(link: Link) -> None:
    """Four ring sockets in a fanout group and, in the same namespace, a reuseport group of four
    UDP sockets with the socket backend's steering (no nftables rule: both see every datagram).
    Each datagram must reach the same slot in both, and both directions of a flow one slot."""
    slots = 4
    rings = link.ring(slots)
    ios = [RingBatchIO(sock, 64, GEOMETRY, wait_s=0.05) for sock in rings]
    with in_netns(link.rx):
        group = [open_data_socket("0.0.0.0", 6081, 1 << 20, wait_s=0.05) for _ in range(slots)]
    attach_steering(group[0], slots)
    sender = link.sender()
    pairs = flows()
    try:
        for i, (forth, back) in enumerate(pairs):
            for d, inner in enumerate((forth, back)):
                marker = b"%04d%d" % (i, d)  # the inner packet's bytes say nothing of it
                packet = IP(src=TX_IP, dst=RX_IP) / UDP(sport=41000 + d, dport=6081, chksum=0)
                sender.send(link.frame(packet / Raw(geneve(inner) + marker)))
        expected = 2 * len(pairs)
        ring_slot: dict[bytes, int] = {}
        deadline = time.monotonic() + 5
        while len(ring_slot) < expected and time.monotonic() < deadline:
            for slot, io in enumerate(ios):
                for datagram in take(io, 1, timeout_s=0.05):
                    ring_slot[datagram[-5:]] = slot
        socket_slot: dict[bytes, int] = {}
        for slot, sock in enumerate(group):
            sock.setblocking(False)
            while True:
                try:
                    socket_slot[sock.recv(9000)[-5:]] = slot
                except BlockingIOError:
                    break
        assert len(ring_slot) == expected and ring_slot == socket_slot
        for i in range(len(pairs)):
            forth, back = ring_slot[b"%04d0" % i], ring_slot[b"%04d1" % i]
            assert forth == back, f"flow {i}: {pairs[i][0].summary()} split over {forth}, {back}"
        assert len(set(ring_slot.values())) == slots  # flows spread over every member
    finally:
        for io in ios:
            io.close()
        for sock in (*rings, *group, sender):
            sock.close()


def test_replies_leave_turned_around_and_a_new_reader_skips_what_was_taken(link: Link) -> None:
    observer = observer_on(link)
    (sock,) = link.ring()
    first = RingBatchIO(sock, 2, GEOMETRY, wait_s=0.05)
    listener = listener_on(link)
    sender = link.sender()
    inner = IP(src="10.1.1.1", dst="10.2.2.2") / UDP(sport=5, dport=7) / Raw(b"weakly typed")
    datagrams = [geneve(inner) + b"%d" % k for k in range(5)]
    try:
        for datagram in datagrams:
            packet = IP(src=TX_IP, dst=RX_IP, ttl=9) / UDP(sport=40001, dport=6081)
            sender.send(link.frame(packet / Raw(datagram)))
        seen(observer, datagrams[-1])  # all five are in the ring
        assert first.receive() == 2
        # A reply grown by 2 bytes (as a rewrite grows one), an unchanged one, and an extra.
        start = first.starts(2)[0]
        first.buffer[start + len(datagrams[0]) : start + len(datagrams[0]) + 2] = b"!!"
        first.replies[0] = len(datagrams[0]) + 2
        first.replies[1] = len(datagrams[1])
        first.extra(1, b"an extra datagram")
        assert first.flush(2) == (3, [])
        replies = replies_to(listener, 3)
        expected = [datagrams[0] + b"!!", datagrams[1], b"an extra datagram"]
        assert [bytes(p[UDP].payload) for p in replies] == expected
        for packet in replies:
            addressed = (packet.src, packet.dst, packet.sport, packet.dport)
            assert addressed == (RX_IP, TX_IP, 40001, 6081)
            assert packet[UDP].chksum == 0
        # The next batch is taken, then its worker dies before answering: a new reader of the
        # same ring skips that batch in hand and takes what waited behind it.
        assert first.receive() == 2
        second = RingBatchIO(sock, 8, GEOMETRY, wait_s=0.05)
        assert take(second, 1) == [datagrams[4]]
        second.close()
    finally:
        first.close()
        for s in (sock, listener, sender, observer):
            s.close()


def test_a_batch_of_any_size_is_answered_turned_around(link: Link) -> None:
    """Small batches are turned around slot by slot, larger ones by strided copies: both give
    every reply the swapped Ethernet and IPv4 addresses, the ports as they came, checksum 0."""
    observer = observer_on(link)
    (sock,) = link.ring()
    io = RingBatchIO(sock, 16, GEOMETRY, wait_s=0.05)
    listener = listener_on(link)
    sender = link.sender()
    try:
        for count in (1, 4, 5, 16):
            datagrams = [b"batch %d datagram %d" % (count, k) for k in range(count)]
            for k, datagram in enumerate(datagrams):
                packet = IP(src=TX_IP, dst=RX_IP) / UDP(sport=41000 + k, dport=6081)
                sender.send(link.frame(packet / Raw(datagram)))
            seen(observer, datagrams[-1])
            assert io.receive() == count
            for i, length in enumerate(io.results(count)[1::2]):
                io.replies[i] = length
            assert io.flush(count) == (count, [])
            replies = replies_to(listener, count)
            assert [bytes(p[UDP].payload) for p in replies] == datagrams
            for k, packet in enumerate(replies):
                addressed = (packet.src, packet.dst, packet.sport, packet.dport)
                assert addressed == (RX_IP, TX_IP, 41000 + k, 6081)
                assert packet[UDP].chksum == 0
    finally:
        io.close()
        for s in (sock, listener, sender, observer):
            s.close()


def observer_on(link: Link) -> socket.socket:
    """A plain packet socket on the tapped side, opened before the ring: the kernel shows each
    frame to the newest packet socket first, so once this one has a frame the ring has it."""
    with in_netns(link.rx):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    sock.bind(("v1", 0))
    sock.settimeout(2)
    return sock


def seen(observer: socket.socket, marker: bytes) -> None:
    """Wait for the frame that ends with `marker` (earlier frames, ARP and such, pass by)."""
    while not observer.recv(65535).endswith(marker):
        pass


def test_a_reply_to_a_datagram_with_bytes_after_it_says_its_own_length(link: Link) -> None:
    """An IPv4 packet longer than its UDP datagram (the UDP stack trims the rest, as the tap
    does), and a frame with Ethernet padding: each reply's IPv4 total length is the reply's,
    so the GWLB side's kernel takes it rather than drop it as truncated."""
    (sock,) = link.ring()
    io = RingBatchIO(sock, 8, GEOMETRY, wait_s=0.05)
    listener = listener_on(link)
    sender = link.sender()
    datagram = geneve(IP(src="10.1.1.1", dst="10.2.2.2") / UDP(sport=5, dport=7) / b"tail")
    outer = IP(src=TX_IP, dst=RX_IP)
    udp = UDP(sport=40001, dport=6081, len=8 + len(datagram), chksum=0)
    short = UDP(sport=40002, dport=6081, chksum=0) / b"tiny"  # 46 bytes, padded to 60
    try:
        sender.send(link.frame(outer / udp / Raw(datagram + b"after the datagram")))
        sender.send(link.frame(outer / short) + bytes(14))
        assert take(io, 2) == [datagram, b"tiny"]
        io.replies[0], io.replies[1] = len(datagram), 4
        assert io.flush(2) == (2, [])
        replies = replies_to(listener, 2)
        assert [bytes(p[UDP].payload) for p in replies] == [datagram, b"tiny"]
    finally:
        io.close()
        for s in (sock, listener, sender):
            s.close()


def test_the_nftables_rule_keeps_tapped_datagrams_from_the_udp_stack(link: Link) -> None:
    (sock,) = link.ring()
    io = RingBatchIO(sock, 8, GEOMETRY, wait_s=0.05)
    with in_netns(link.rx):
        guard = open_data_socket("0.0.0.0", 6081, 1 << 16, wait_s=0.05)
    guard.setblocking(False)
    drop = IngressDrop("v1", [RX_IP], 6081)
    with in_netns(link.tx):
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def guard_got() -> int:
        count = 0
        while True:
            try:
                guard.recv(9000)
            except BlockingIOError:
                return count
            count += 1

    try:
        with in_netns(link.rx):
            drop.install()
            drop.install()  # a second start replaces the table (a killed supervisor's)
        for k in range(3):
            sender.sendto(b"tapped %d" % k, (RX_IP, 6081))
        assert take(io, 3) == [b"tapped %d" % k for k in range(3)]
        with in_netns(link.rx):
            assert drop.dropped() == 3
        assert guard_got() == 0
        with in_netns(link.rx):
            drop.remove()
            drop.remove()  # gone already: nothing to do
        sender.sendto(b"both", (RX_IP, 6081))
        assert take(io, 1) == [b"both"]
        time.sleep(0.05)
        assert guard_got() == 1  # the UDP stack has it too now
    finally:
        with in_netns(link.rx):
            drop.remove()
        io.close()
        for s in (sock, guard, sender):
            s.close()


def small_ring(link: Link) -> tuple[socket.socket, RingGeometry]:
    small = RingGeometry(1 << 16, 4)  # the least: 128 frames
    address = int.from_bytes(socket.inet_aton(RX_IP), "big")
    with in_netns(link.rx):
        return open_ring_socket("v1", [address], 6081, small, 1 << 20), small


def test_a_full_ring_counts_what_it_dropped_and_reads_on_round_its_end(link: Link) -> None:
    """More datagrams than the ring has frames, none read: the ring keeps the first 128 and
    counts the rest dropped; read in batches they come in order, and the reader goes on round
    the ring's end. A new reader then finds the oldest frame waiting, wherever it is."""
    observer = observer_on(link)
    sock, small = small_ring(link)
    assert small.frames == 128
    io = RingBatchIO(sock, 64, small, wait_s=0.05)
    with in_netns(link.tx):
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for k in range(200):
            sender.sendto(b"first %d" % k, (RX_IP, 6081))
        seen(observer, b"first 199")  # every one has met the full ring before a frame is freed
        assert take(io, 128) == [b"first %d" % k for k in range(128)]
        assert io.receive() == 0
        assert io.rx_dropped == 72
        for k in range(100):  # frames 0-99 again: past the ring's end from frame 128 on
            sender.sendto(b"second %d" % k, (RX_IP, 6081))
        assert take(io, 100) == [b"second %d" % k for k in range(100)]
        for k in range(60):  # frames 100-127, then 0-31
            sender.sendto(b"third %d" % k, (RX_IP, 6081))
        later = RingBatchIO(sock, 64, small, wait_s=0.05)
        assert take(later, 60) == [b"third %d" % k for k in range(60)]
        later.close()
    finally:
        io.close()
        for s in (sock, sender, observer):
            s.close()


def test_a_datagram_longer_than_a_frame_is_read_whole_in_its_turn(link: Link) -> None:
    """Frames are 2 KiB: a jumbo datagram comes whole from the receive queue, between its
    neighbours in the ring, and its UDP checksum is checked as theirs are."""
    sock, small = small_ring(link)
    io = RingBatchIO(sock, 64, small, wait_s=0.05)
    sender = link.sender()
    sizes = [100, 1940, 1941, 8000, 64, 8973, 1500]
    datagrams = [bytes([k]) * size for k, size in enumerate(sizes)]
    try:
        for datagram in datagrams:
            packet = IP(src=TX_IP, dst=RX_IP) / UDP(sport=40001, dport=6081) / Raw(datagram)
            sender.send(link.frame(packet))
        # Bytes past the UDP datagram's end in a long IP packet: cut, as the UDP stack cuts them.
        tail = UDP(sport=40001, dport=6081, len=8 + 5000, chksum=0) / Raw(b"y" * 5000 + b"tail")
        sender.send(link.frame(IP(src=TX_IP, dst=RX_IP) / tail))
        wrong = IP(raw(IP(src=TX_IP, dst=RX_IP) / UDP(sport=40001, dport=6081) / Raw(b"x" * 5000)))
        wrong[UDP].chksum ^= 0x0101
        sender.send(link.frame(wrong))
        sender.send(link.frame(IP(src=TX_IP, dst=RX_IP) / UDP(sport=1, dport=6081) / b"end"))
        assert take(io, len(datagrams) + 2) == [*datagrams, b"y" * 5000, b"end"]
        assert io.checksum_errors == 1
    finally:
        io.close()
        sock.close()
        sender.close()
