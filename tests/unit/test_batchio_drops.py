"""The socket backend and the kernel's receive-buffer drops (SO_RXQ_OVFL), on loopback, no root.

The data socket is opened as the supervisor opens it (appliance.sockets), with a receive buffer
small enough that a few datagrams fill it. /proc/net/udp's drops column is the oracle for the
count. Datagrams go to several loopback addresses (the socket is bound to 0.0.0.0), so a reply
whose source (IP_PKTINFO) were read from the wrong place in its control buffer would show it.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.batchio import CONTROL_BYTES, ReceiveBatch, SocketBatchIO
from appliance.sockets import IP_PKTINFO, SO_RXQ_OVFL, open_data_socket

SEND_LIMIT = 2000  # datagrams to fill a buffer of a few kB, at most


def kernel_drops(sock: socket.socket) -> int:
    """The socket's drops as /proc/net/udp reports them (its last column)."""
    inode = os.fstat(sock.fileno()).st_ino
    for line in Path("/proc/self/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[9]) == inode:
            return int(fields[-1])
    raise LookupError(f"socket inode {inode} is not in /proc/self/net/udp")


def address(text: str) -> int:
    return int.from_bytes(socket.inet_aton(text), "big")


class Bed:
    """A data socket on 0.0.0.0 with a tiny buffer, a "GWLB node" socket, a reply socket."""

    def __init__(self) -> None:
        self.data = open_data_socket("0.0.0.0", 0, 4096, wait_s=0.1)
        self.port = self.data.getsockname()[1]
        self.node = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.node.bind(("127.0.0.1", 0))
        self.node.settimeout(1.0)
        self.out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # replies as UDP payload

    def send(self, payload: bytes, to: str) -> None:
        self.node.sendto(payload, (to, self.port))  # loopback delivers before sendto returns

    def overflow(self, to: str, drops: int) -> int:
        """Send until the socket has dropped `drops` more datagrams; how many were sent."""
        before, sent = kernel_drops(self.data), 0
        while kernel_drops(self.data) < before + drops:
            assert sent < SEND_LIMIT, "the receive buffer never filled"
            self.send(b"fill %4d" % sent + bytes(56), to)
            sent += 1
        return sent

    def drain(self, io: SocketBatchIO) -> list[int]:
        """Receive until nothing is queued; every datagram's local address."""
        got: list[int] = []
        while n := io.receive():
            got += io.destinations(n)
        return got

    def close(self) -> None:
        for sock in (self.data, self.node, self.out):
            sock.close()


@pytest.fixture
def bed() -> Iterator[Bed]:
    b = Bed()
    yield b
    b.close()


def reply_sources(bed: Bed, io: SocketBatchIO, n: int) -> list[int]:
    """Queue a reply to each of the n datagrams received, flush, and read back the source
    address of each reply's IPv4 header."""
    io.replies[:n] = [16] * n
    assert io.flush(n) == (n, [])
    return [int.from_bytes(bed.node.recv(65536)[12:16], "big") for _ in range(n)]


def test_the_data_socket_asks_for_the_drop_count(bed: Bed) -> None:
    assert bed.data.getsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL) == 1
    assert bed.data.getsockopt(socket.IPPROTO_IP, IP_PKTINFO) == 1


def test_the_count_comes_with_the_first_datagram_queued_after_a_drop(bed: Bed) -> None:
    io = SocketBatchIO(bed.data, bed.out, 64)
    bed.send(b"before", "127.0.0.1")
    assert io.receive() == 1 and io.rx_dropped == 0
    sent = bed.overflow("127.0.0.1", drops=20)
    queued = bed.drain(io)
    assert queued == [address("127.0.0.1")] * (sent - 20)
    assert io.rx_dropped == 0  # all of them were queued before the first drop
    bed.send(b"after", "127.0.0.2")
    assert io.receive() == 1
    assert io.rx_dropped == kernel_drops(bed.data) == 20
    assert io.destinations(1) == (address("127.0.0.2"),)
    assert reply_sources(bed, io, 1) == [address("127.0.0.2")]
    bed.overflow("127.0.0.1", drops=5)
    bed.drain(io)
    bed.send(b"again", "127.0.0.1")
    assert io.receive() == 1 and io.rx_dropped == kernel_drops(bed.data) == 25


def test_a_batch_queued_across_the_first_drop_is_answered_from_the_right_addresses(
    bed: Bed,
) -> None:
    """The datagrams queued before the first drop carry IP_PKTINFO alone, the ones after carry
    the count first: one batch of both has its addresses lined up."""
    sent = bed.overflow("127.0.0.1", drops=3)
    before = ReceiveBatch(3)
    assert before.receive(bed.data.fileno()) == 3  # room for the next two (and more)
    bed.send(b"counted 1", "127.0.0.3")
    bed.send(b"counted 2", "127.0.0.4")
    io = SocketBatchIO(bed.data, bed.out, 64)
    n = io.receive()
    assert n == sent - 3 - 3 + 2
    expected = [address("127.0.0.1")] * (n - 2) + [address("127.0.0.3"), address("127.0.0.4")]
    assert list(io.destinations(n)) == expected
    assert io.rx_dropped == kernel_drops(bed.data) == 3
    assert reply_sources(bed, io, n) == expected
    bed.send(b"next", "127.0.0.5")  # and the next batch reads the counted layout throughout
    assert io.receive() == 1 and io.destinations(1) == (address("127.0.0.5"),)


# ---- the count, laid out by hand ---------------------------------------------------------------


def lay(rx: ReceiveBatch, i: int, local: str, count: int | None) -> None:
    """Message i's control buffer as the kernel writes it: SO_RXQ_OVFL's count first (when the
    socket has dropped any), then IP_PKTINFO (ifindex 1, spec_dst, addr)."""
    pktinfo = socket.CMSG_LEN(12).to_bytes(8, "little") + struct.pack(
        "=ii", socket.IPPROTO_IP, IP_PKTINFO
    )
    pktinfo += struct.pack("=i4s4s", 1, socket.inet_aton(local), socket.inet_aton(local))
    control = pktinfo
    if count is not None:
        header = socket.CMSG_LEN(4).to_bytes(8, "little")
        header += struct.pack("=iiI4x", socket.SOL_SOCKET, SO_RXQ_OVFL, count)
        control = header + pktinfo
    rx.control[i * CONTROL_BYTES : i * CONTROL_BYTES + len(control)] = control


def test_the_count_is_widened_past_32_bits_and_never_goes_back() -> None:
    rx = ReceiveBatch(2)
    lay(rx, 0, "10.9.0.1", 0xFFFF_FFF0)
    rx.read_controls(1)
    assert rx.rx_dropped == 0xFFFF_FFF0  # the first count read is the socket's so far
    lay(rx, 0, "10.9.0.1", 0x10)
    rx.read_controls(1)
    assert rx.rx_dropped == 0x1_0000_0010  # through the kernel's wrap-around
    lay(rx, 0, "10.9.0.1", 0x0F)  # queued from another CPU just before the last one read
    rx.read_controls(1)
    assert rx.rx_dropped == 0x1_0000_0010
    lay(rx, 0, "10.9.0.1", 0x11)
    lay(rx, 1, "10.9.0.2", None)  # after 2**32 drops the count is 0 again: no control message
    rx.read_controls(2)
    assert rx.rx_dropped == 0x1_0000_0010  # only the last datagram's count is read
    assert rx.destinations(2) == (address("10.9.0.1"), address("10.9.0.2"))


@pytest.mark.parametrize(
    "counts",
    [(None, None, None), (7, 7, 8), (None, 3, 4), (None, None, 5), (9, None, None), (1, None, 2)],
)
def test_every_layout_of_a_batch_gives_each_datagram_its_address(
    counts: tuple[int | None, ...],
) -> None:
    rx = ReceiveBatch(4)
    locals_ = [f"10.9.0.{i + 1}" for i in range(3)]
    for i, (local, count) in enumerate(zip(locals_, counts, strict=True)):
        lay(rx, i, local, count)
    rx.read_controls(3)
    assert rx.destinations(3) == tuple(address(local) for local in locals_)
    assert rx.rx_dropped == (counts[-1] or 0)
