"""The ring backend's packet sockets: one per worker slot, with its receive ring, in one fanout
group (what appliance/sockets.py is to the socket backend).

Why the supervisor makes them all before any fork, in slot order, as it makes the reuseport
sockets: a fanout group numbers its members in the order they joined and renumbers them when one
leaves, so a worker that opened its own socket would reshuffle every flow each time it died. A
restarted worker instead takes over its slot's socket, still a member, its ring still filling.

Each socket: AF_PACKET, SOCK_RAW (frames from the Ethernet header), bound to the data-plane
interface on ETH_P_ALL (only those see frames before the ingress hooks, where the tapped
datagrams are then dropped), with the tap filter (appliance/ringbpf.py) attached before it is
bound, so nothing else ever enters its ring; a TPACKET_V3 receive ring; PACKET_IGNORE_OUTGOING
(our own replies are none of its business); PACKET_QDISC_BYPASS for what it sends.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from appliance.errors import BootError
from appliance.ringbpf import (
    SOL_PACKET,
    attach_filter,
    fanout_program,
    set_fanout_program,
    tap_filter,
)
from appliance.sockets import SO_SNDBUFFORCE, _set_buffer

ETH_P_ALL = 0x0003
PACKET_RX_RING, PACKET_STATISTICS, PACKET_VERSION = 5, 6, 10
PACKET_FANOUT, PACKET_QDISC_BYPASS, PACKET_IGNORE_OUTGOING = 18, 20, 23
TPACKET_V3 = 2
PACKET_FANOUT_HASH, PACKET_FANOUT_CBPF = 0, 6
PACKET_FANOUT_FLAG_UNIQUEID = 0x2000  # the kernel picks a group id unused in this namespace
BLOCK_BYTES = 1 << 17  # holds 14 jumbo frames, or about 500 of a 64-byte mix's
RETIRE_MS = 1  # a block not yet full is handed over after this long (the least the kernel takes)
NOMINAL_FRAME = 2048  # TPACKET_V3 frames are as long as their packet; the request wants a size
PRIVATE_BYTES = 8  # per block, ours alone: how many of its frames a worker took (ringio.py)


@dataclass(frozen=True)
class RingGeometry:
    """The receive ring's shape; `ring_bytes` of it, in whole blocks (at least 4)."""

    block_bytes: int
    blocks: int
    retire_ms: int = RETIRE_MS

    @classmethod
    def for_bytes(cls, ring_bytes: int) -> RingGeometry:
        return cls(BLOCK_BYTES, max(4, ring_bytes // BLOCK_BYTES))

    @property
    def ring_bytes(self) -> int:
        return self.block_bytes * self.blocks

    def request(self) -> bytes:
        """struct tpacket_req3: block size and count, frame size and count, retire timeout,
        private bytes per block, feature word."""
        per_block = self.block_bytes // NOMINAL_FRAME
        return struct.pack(
            "=7I",
            self.block_bytes,
            self.blocks,
            NOMINAL_FRAME,
            per_block * self.blocks,
            self.retire_ms,
            PRIVATE_BYTES,
            0,
        )


def open_ring_socket(
    interface: str,
    addresses: list[int],
    port: int,
    geometry: RingGeometry,
    send_buffer_bytes: int,
) -> socket.socket:
    """A packet socket on `interface` whose ring takes only Geneve to `port` of `addresses`."""
    try:
        # Protocol 0: nothing is received until bind names ETH_P_ALL, after the filter is on.
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except PermissionError as error:
        raise BootError(
            error.errno, "cannot open a packet socket: CAP_NET_RAW is needed"
        ) from error
    try:
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        attach_filter(sock, tap_filter(addresses, port))
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, geometry.request())
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        _set_buffer(sock, socket.SO_SNDBUF, SO_SNDBUFFORCE, send_buffer_bytes)
        sock.bind((interface, ETH_P_ALL))
    except OSError as error:
        sock.close()
        raise BootError(
            error.errno, f"cannot tap {interface} with a packet ring: {error.strerror}"
        ) from error
    return sock


def join_fanout(sockets: list[socket.socket], steering: str) -> int:
    """Join `sockets` to a new fanout group in slot order; return its id. Steering "inner-flow":
    the inner-flow hash (ringbpf.fanout_program); "kernel": the kernel's symmetric hash of the
    outer header. One socket needs no group."""
    if len(sockets) < 2:
        return -1
    kind = PACKET_FANOUT_CBPF if steering == "inner-flow" else PACKET_FANOUT_HASH
    try:
        first = sockets[0]
        first.setsockopt(SOL_PACKET, PACKET_FANOUT, (kind | PACKET_FANOUT_FLAG_UNIQUEID) << 16)
        group = first.getsockopt(SOL_PACKET, PACKET_FANOUT) & 0xFFFF
        for sock in sockets[1:]:
            sock.setsockopt(SOL_PACKET, PACKET_FANOUT, group | kind << 16)
        if kind == PACKET_FANOUT_CBPF:
            set_fanout_program(first, fanout_program(len(sockets)))
    except OSError as error:
        raise BootError(error.errno, f"cannot make a fanout group: {error.strerror}") from error
    return group
