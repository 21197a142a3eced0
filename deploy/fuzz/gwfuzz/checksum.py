"""Internet checksums (RFC 1071) for the strict decoder and the generator.

Why `int.from_bytes` and `% 0xFFFF`: 2**16 is 1 modulo 0xFFFF, so the one's-complement sum of a
buffer's 16-bit big-endian words is the buffer read as one integer, modulo 0xFFFF. A buffer with
a correct checksum in place sums to 0 modulo 0xFFFF (0xFFFF, "negative zero", is the same
residue), and a wrong one sums to its error: the residue is what "wrong by the same amount"
compares.
"""

from __future__ import annotations

import struct

_WORD = struct.Struct("!H")


def residue(*parts: bytes) -> int:
    """The one's-complement sum of the concatenated parts modulo 0xFFFF (each part must start
    at an even offset of the whole, as pseudo-headers and headers do)."""
    total = 0
    for part in parts:
        value = int.from_bytes(part, "big")
        total += value << 8 if len(part) & 1 else value
    return total % 0xFFFF


def field(*parts: bytes) -> int:
    """The checksum field that makes the parts (their checksum field zeroed) sum to zero: never
    0, which for UDP means "no checksum" (a computed 0 is sent as 0xFFFF, RFC 768)."""
    return 0xFFFF - residue(*parts)


def pseudo_v4(ip: bytes, protocol: int, length: int) -> bytes:
    """The IPv4 pseudo-header (RFC 768) of the IPv4 header `ip`."""
    return ip[12:20] + bytes((0, protocol)) + _WORD.pack(length)


def pseudo_v6(ip: bytes, protocol: int, length: int) -> bytes:
    """The IPv6 pseudo-header (RFC 8200 §8.1), with the header's destination."""
    return ip[8:40] + length.to_bytes(4, "big") + bytes((0, 0, 0, protocol))


def with_field(data: bytes, at: int, value: int) -> bytes:
    """`data` with the 16-bit word at `at` replaced."""
    return data[:at] + _WORD.pack(value) + data[at + 2 :]
