"""The ring backend's packet sockets: one per worker slot, with its receive ring, in one fanout
group (what appliance/sockets.py is to the socket backend).

Why the supervisor makes them all before any fork, in slot order, as it makes the reuseport
sockets: a fanout group numbers its members in the order they joined and renumbers them when one
leaves, so a worker that opened its own socket would reshuffle every flow each time it died. A
restarted worker instead takes over its slot's socket, still a member, its ring still filling.

Each socket: AF_PACKET, SOCK_RAW (frames from the Ethernet header), bound to the data-plane
interface on ETH_P_ALL (only those see frames before the ingress hooks, where the tapped
datagrams are then dropped), with the tap filter (appliance/ringbpf.py) attached before it is
bound, so nothing else ever enters its ring; a TPACKET_V2 receive ring of 2 KiB frames, with
PACKET_COPY_THRESH so that a frame too long for one (a jumbo datagram) also waits whole in the
socket's receive queue; PACKET_IGNORE_OUTGOING (our own replies are none of its business);
PACKET_QDISC_BYPASS for what it sends.

Why TPACKET_V2 and not V3: a V3 block reaches user space only when it is full or when its retire
timer fires (1 ms at the least, about 0.6 ms measured), so at 10k pps every datagram waited for
the timer (p99 about 1 ms against the socket path's 0.05-0.1 ms). A V2 frame is the reader's as
soon as the kernel wrote it, and a reader in poll(2) is woken for it. Why 2 KiB frames: a V2
frame has a fixed size, and frames the size of a jumbo datagram would hold four times fewer
64-byte datagrams in the same memory; a 2 KiB frame holds any datagram of a 1500-byte path, and
the rare longer one is read from the receive queue (appliance/ringio.py).
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
from appliance.sockets import SO_RCVBUFFORCE, SO_SNDBUFFORCE, _set_buffer

ETH_P_ALL = 0x0003
PACKET_RX_RING, PACKET_STATISTICS, PACKET_COPY_THRESH, PACKET_VERSION = 5, 6, 7, 10
PACKET_FANOUT, PACKET_QDISC_BYPASS, PACKET_IGNORE_OUTGOING = 18, 20, 23
TPACKET_V2 = 1
PACKET_FANOUT_HASH, PACKET_FANOUT_CBPF = 0, 6
PACKET_FANOUT_FLAG_UNIQUEID = 0x2000  # the kernel picks a group id unused in this namespace
FRAME_BYTES = 2048  # a datagram of up to 1940 bytes in the frame; a longer one also waits whole
BLOCK_BYTES = 1 << 16  # the kernel maps the ring in blocks; 32 frames each
COPY_QUEUE_BYTES = 4 << 20  # the receive queue's share for whole copies of long datagrams


@dataclass(frozen=True)
class RingGeometry:
    """The receive ring's shape: `blocks` blocks of `block_bytes`, cut into `frame_bytes`
    frames (at least 4 blocks)."""

    block_bytes: int
    blocks: int
    frame_bytes: int = FRAME_BYTES

    @classmethod
    def for_bytes(cls, ring_bytes: int) -> RingGeometry:
        return cls(BLOCK_BYTES, max(4, ring_bytes // BLOCK_BYTES))

    @property
    def ring_bytes(self) -> int:
        return self.block_bytes * self.blocks

    @property
    def frames(self) -> int:
        return self.blocks * (self.block_bytes // self.frame_bytes)

    def request(self) -> bytes:
        """struct tpacket_req: block size and count, frame size and count."""
        return struct.pack("=4I", self.block_bytes, self.blocks, self.frame_bytes, self.frames)


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
    except OSError as error:  # EAFNOSUPPORT: a sandbox (systemd's RestrictAddressFamilies=)
        raise BootError(
            error.errno,
            f"cannot open a packet socket ({error.strerror}): allow AF_PACKET to the service "
            '(RestrictAddressFamilies= in its unit), or set dataplane.io = "socket"',
        ) from error
    try:
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        attach_filter(sock, tap_filter(addresses, port))
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, geometry.request())
        sock.setsockopt(SOL_PACKET, PACKET_COPY_THRESH, 1)
        _set_buffer(sock, socket.SO_RCVBUF, SO_RCVBUFFORCE, COPY_QUEUE_BYTES)
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
