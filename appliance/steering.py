"""Inner-flow steering: a classic BPF program that picks the reuseport socket (= worker slot).

Why: GWLB's outer source port is the kernel's only entropy for its default reuseport hash, and GWLB
may use one port for many flows. This program hashes the *inner* addresses (and ports for an
unfragmented UDP/TCP packet) symmetrically, so both directions of a flow land on the same worker.
Attached with SO_ATTACH_REUSEPORT_CBPF to one socket of the group, it runs with the UDP payload
(the Geneve header) at offset 0 and returns a socket index, i.e. a slot, as sockets were bound in
slot order. A load past the packet's end makes a classic BPF program return 0: malformed packets
land on slot 0, which the worker there counts and drops.
"""

from __future__ import annotations

import ctypes
import socket
import struct

SO_ATTACH_REUSEPORT_CBPF = 51
GOLDEN = 0x9E3779B1  # Knuth's multiplicative hash constant

# Classic BPF opcodes (linux/filter.h), the few this program uses.
LD_IMM, LD_MEM, LDX_MEM, ST = 0x00, 0x60, 0x61, 0x02
LD_H_ABS, LD_B_ABS = 0x28, 0x30
LD_W_IND, LD_H_IND, LD_B_IND = 0x40, 0x48, 0x50
ADD_K, ADD_X, MUL_K, AND_K, LSH_K, RSH_K, MOD_K, XOR_X = (
    0x04,
    0x0C,
    0x24,
    0x54,
    0x64,
    0x74,
    0x94,
    0xAC,
)
JA, JEQ_K, JSET_K = 0x05, 0x15, 0x45
TAX, TXA, RET_A, RET_K = 0x07, 0x87, 0x16, 0x06
M_INNER, M_HASH, M_TMP = 0, 1, 2  # scratch memory cells

Insn = tuple[int, int, int, int]
Op = tuple[int, "int | str", "int | str", "int | str"]  # jump targets may be labels


def assemble(source: list[Op | str]) -> list[Insn]:
    """Resolve labels (strings in the list) into relative jump offsets."""
    labels: dict[str, int] = {}
    ops: list[Op] = []
    for item in source:
        if isinstance(item, str):
            labels[item] = len(ops)
        else:
            ops.append(item)

    def offset(target: int | str, pc: int) -> int:
        return labels[target] - pc - 1 if isinstance(target, str) else target

    return [
        (code, offset(jt, pc), offset(jf, pc), offset(k, pc))
        for pc, (code, jt, jf, k) in enumerate(ops)
    ]


def _xor_word(offset: int) -> list[Op | str]:
    """hash ^= the 32-bit word at inner+offset (X holds the inner offset before and after)."""
    return [
        (LD_W_IND, 0, 0, offset),
        (LDX_MEM, 0, 0, M_HASH),
        (XOR_X, 0, 0, 0),
        (ST, 0, 0, M_HASH),
        (LDX_MEM, 0, 0, M_INNER),
    ]


def _xor_ports() -> list[Op | str]:
    """hash ^= sport ^ dport, with X at the transport header (symmetric in the two ports)."""
    return [
        (LD_H_IND, 0, 0, 0),
        (ST, 0, 0, M_TMP),
        (LD_H_IND, 0, 0, 2),
        (LDX_MEM, 0, 0, M_TMP),
        (XOR_X, 0, 0, 0),
        (LDX_MEM, 0, 0, M_HASH),
        (XOR_X, 0, 0, 0),
        (ST, 0, 0, M_HASH),
        (JA, 0, 0, "finish"),
    ]


def steering_program(slots: int, geneve_at: int = 0) -> list[Insn]:
    """The program for a reuseport group of `slots` sockets, as (code, jt, jf, k) instructions.

    `geneve_at`: where the Geneve header starts in what the program sees (0 for a reuseport
    group; behind the outer IPv4 and UDP headers for a packet fanout group, appliance/ringbpf.py).
    """
    if not 1 <= slots <= 1024:
        raise ValueError("slots must be between 1 and 1024")
    source: list[Op | str] = [
        (LD_IMM, 0, 0, 0),
        (ST, 0, 0, M_HASH),
        # X = M_INNER = where the inner packet starts: behind 8 + 4 * Geneve opt len bytes.
        (LD_B_ABS, 0, 0, geneve_at),
        (AND_K, 0, 0, 0x3F),
        (LSH_K, 0, 0, 2),
        (ADD_K, 0, 0, geneve_at + 8),
        (ST, 0, 0, M_INNER),
        (TAX, 0, 0, 0),
        (LD_H_ABS, 0, 0, geneve_at + 2),
        (JEQ_K, "v4", 0, 0x0800),
        (JEQ_K, "v6", "unknown", 0x86DD),
        "v4",
        *_xor_word(12),
        *_xor_word(16),
        (LD_H_IND, 0, 0, 6),
        (JSET_K, "finish", 0, 0x1FFF),  # a later fragment has no ports
        (LD_B_IND, 0, 0, 9),
        (JEQ_K, "v4ports", 0, 17),
        (JEQ_K, "v4ports", "finish", 6),
        "v4ports",
        (LD_B_IND, 0, 0, 0),
        (AND_K, 0, 0, 0x0F),
        (LSH_K, 0, 0, 2),
        (ADD_X, 0, 0, 0),
        (TAX, 0, 0, 0),
        *_xor_ports(),
        "v6",
        *[insn for offset in range(8, 40, 4) for insn in _xor_word(offset)],
        (LD_B_IND, 0, 0, 6),
        (JEQ_K, "v6ports", 0, 17),
        (JEQ_K, "v6ports", "finish", 6),
        "v6ports",
        (TXA, 0, 0, 0),
        (ADD_K, 0, 0, 40),
        (TAX, 0, 0, 0),
        *_xor_ports(),
        "finish",
        (LD_MEM, 0, 0, M_HASH),
        (MUL_K, 0, 0, GOLDEN),
        (TAX, 0, 0, 0),
        (RSH_K, 0, 0, 16),
        (XOR_X, 0, 0, 0),
        (MOD_K, 0, 0, slots),
        (RET_A, 0, 0, 0),
        "unknown",
        (RET_K, 0, 0, 0),
    ]
    return assemble(source)


def attach_steering(sock: socket.socket, slots: int) -> None:
    """Attach the steering program to `sock`'s reuseport group (once, to any socket of it)."""
    program = steering_program(slots)
    filters = (ctypes.c_ubyte * (8 * len(program)))()
    for i, (code, jt, jf, k) in enumerate(program):
        struct.pack_into("=HBBI", filters, 8 * i, code, jt, jf, k & 0xFFFFFFFF)
    fprog = struct.pack("@HxxxxxxP", len(program), ctypes.addressof(filters))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
