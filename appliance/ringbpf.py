"""The classic BPF programs of the ring backend: which frames a packet socket keeps, and which
worker of the fanout group gets each one.

Why two programs: a packet socket on ETH_P_ALL sees every frame of its interface (it has to:
only ETH_P_ALL sockets see frames before the ingress hooks, where the nftables rule stops the
tapped datagrams, supervisor/ingressdrop.py), so a socket filter keeps only what the UDP stack
would have given the socket backend: IPv4 without options, not a fragment, a correct header
checksum, UDP to port 6081 of one of the appliance's addresses, the IP and UDP lengths within the
frame. It returns the frame's length up to the end of the UDP datagram as the snap length, so
the ring holds exactly the datagram (Ethernet padding or bytes past the IP total length are cut,
as the UDP stack trims them). The UDP checksum is not checked (classic BPF cannot loop over the
payload); GWLB's datagrams carry none that the kernel would refuse on this path (DESIGN.md §1),
and the worker validates everything from the Geneve header on.

The fanout program is appliance.steering's symmetric inner-flow hash, with the Geneve header
behind the outer IPv4 (20 bytes: the filter takes no options) and UDP headers: a fanout program
sees the frame from its network header on. So both directions of an inner flow meet in one
worker, and in the same slot as the socket backend's reuseport steering would put them. The one
difference: where a load runs past the end (an inner packet cut short), the reuseport program
stops at the datagram's end and the fanout program at the frame's; either way the datagram is
malformed and its worker counts and drops it.
"""

from __future__ import annotations

import ctypes
import socket
import struct

from appliance.steering import (
    ADD_K,
    ADD_X,
    AND_K,
    JEQ_K,
    JSET_K,
    LD_B_ABS,
    LD_H_ABS,
    LD_MEM,
    LDX_MEM,
    RET_A,
    RET_K,
    RSH_K,
    ST,
    TAX,
    Insn,
    Op,
    assemble,
    steering_program,
)

SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
SOL_PACKET = getattr(socket, "SOL_PACKET", 263)
PACKET_FANOUT_DATA = 22
LD_W_ABS, LD_LEN, JA = 0x20, 0x80, 0x05
JGE_K, JGT_X, JGE_X = 0x35, 0x2D, 0x3D
ETHERNET_LEN = 14
OUTER_LEN = ETHERNET_LEN + 20 + 8  # Ethernet, IPv4 without options, UDP: where Geneve starts
_IP = ETHERNET_LEN  # where the IPv4 header starts in a frame
M_SUM, M_LOW = 0, 1  # scratch cells of the filter


def tap_filter(addresses: list[int], port: int) -> list[Insn]:
    """The socket filter: Geneve to `port` of one of `addresses` (IPv4 as integers), or nothing.

    What it keeps is what the nftables rule drops after the tap (supervisor/ingressdrop.py
    matches the same addresses, port, header length and fragment bits)."""
    if not 1 <= len(addresses) <= 64:
        raise ValueError("between 1 and 64 addresses")
    source: list[Op | str] = [
        (LD_H_ABS, 0, 0, 12),
        (JEQ_K, 0, "drop", 0x0800),  # IPv4
        (LD_B_ABS, 0, 0, _IP),
        (JEQ_K, 0, "drop", 0x45),  # version 4, no options
        (LD_H_ABS, 0, 0, _IP + 6),
        (JSET_K, "drop", 0, 0x3FFF),  # more fragments, or a fragment offset
        (LD_B_ABS, 0, 0, _IP + 9),
        (JEQ_K, 0, "drop", 17),  # UDP
        (LD_W_ABS, 0, 0, _IP + 16),
        *[(JEQ_K, "port", 0, address) for address in addresses],
        (JA, 0, 0, "drop"),
        "port",
        (LD_H_ABS, 0, 0, _IP + 22),
        (JEQ_K, 0, "drop", port),
        *_header_checksum(),
        (JEQ_K, 0, "drop", 0xFFFF),
        # The IP total length within the frame, the UDP length within the IP packet.
        (LD_H_ABS, 0, 0, _IP + 2),
        (ADD_K, 0, 0, ETHERNET_LEN),
        (TAX, 0, 0, 0),
        (LD_LEN, 0, 0, 0),
        (JGE_X, 0, "drop", 0),
        (LD_H_ABS, 0, 0, _IP + 24),
        (JGE_K, 0, "drop", 8),
        (ADD_K, 0, 0, _IP + 20),
        (JGT_X, "drop", 0, 0),
        (RET_A, 0, 0, 0),  # the snap length: the frame up to the datagram's end
        "drop",
        (RET_K, 0, 0, 0),
    ]
    return assemble(source)


def _header_checksum() -> list[Op | str]:
    """A = the ones' complement sum of the IPv4 header, folded to 16 bits (0xFFFF when right)."""
    ops: list[Op | str] = [(LD_H_ABS, 0, 0, _IP), (ST, 0, 0, M_SUM)]
    for offset in range(_IP + 2, _IP + 20, 2):
        ops += [
            (LDX_MEM, 0, 0, M_SUM),
            (LD_H_ABS, 0, 0, offset),
            (ADD_X, 0, 0, 0),
            (ST, 0, 0, M_SUM),
        ]
    for _ in range(2):  # ten words sum below 2**20: two folds bring it under 2**16
        ops += [
            (LD_MEM, 0, 0, M_SUM),
            (AND_K, 0, 0, 0xFFFF),
            (ST, 0, 0, M_LOW),
            (LD_MEM, 0, 0, M_SUM),
            (RSH_K, 0, 0, 16),
            (LDX_MEM, 0, 0, M_LOW),
            (ADD_X, 0, 0, 0),
            (ST, 0, 0, M_SUM),
        ]
    return ops


def fanout_program(slots: int) -> list[Insn]:
    """The fanout group's program: the member (= slot) for a frame seen from its IPv4 header."""
    return steering_program(slots, geneve_at=OUTER_LEN - ETHERNET_LEN)


class Program:
    """A classic BPF program as the kernel takes it (struct sock_fprog), kept alive with it."""

    def __init__(self, program: list[Insn]) -> None:
        self.filters = (ctypes.c_ubyte * (8 * len(program)))()
        for i, (code, jt, jf, k) in enumerate(program):
            struct.pack_into("=HBBI", self.filters, 8 * i, code, jt, jf, k & 0xFFFFFFFF)
        self.fprog = struct.pack("@HxxxxxxP", len(program), ctypes.addressof(self.filters))


def attach_filter(sock: socket.socket, program: list[Insn]) -> None:
    """Attach a socket filter (the kernel copies the program)."""
    compiled = Program(program)  # alive until the kernel has copied it
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, compiled.fprog)


def set_fanout_program(sock: socket.socket, program: list[Insn]) -> None:
    """Give `sock`'s fanout group (of type PACKET_FANOUT_CBPF) its program."""
    compiled = Program(program)  # alive until the kernel has copied it
    sock.setsockopt(SOL_PACKET, PACKET_FANOUT_DATA, compiled.fprog)
