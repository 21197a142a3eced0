"""Rewriting an inner packet's payload, with every length and checksum fixed.

Checksums are updated incrementally where that is exact (RFC 1624): the IPv4 header checksum sees
only its total length change, and a UDP checksum sees the length (twice: header and
pseudo-header) and the replaced bytes, as long as every replacement changes the length by an even
number of bytes (so the rest of the payload keeps its 16-bit alignment). Beyond speed, this keeps
the end-to-end property: a datagram that arrived with a wrong checksum leaves with one that is
wrong by the same amount, instead of one we blessed. Anything else (an odd length change, ICMP,
a zero UDP checksum over IPv6) is recomputed in full (RFC 1071 with the pseudo-header).
"""

from __future__ import annotations

import functools
import struct

from appliance.checksum import adjust, finish, udp_checksum_field
from appliance.inner import PROTO_ICMP, PROTO_UDP, InnerPacket

MAX_INNER_BYTES = 8500  # GWLB's limit for the inner packet (DESIGN.md §1)
_WORD = struct.Struct("!H")
_TOTAL_AND_CHECKSUM = struct.Struct("!H6xH")  # IPv4 total length, then the header checksum
_UDP_LENGTH_AND_CHECKSUM = struct.Struct("!HH")


def rewrite_in_place(
    buf: bytearray, pkt: InnerPacket, replacements: tuple[tuple[bytes, bytes], ...]
) -> int | None:
    """Rewrite pkt's payload inside `buf`, fixing every length and checksum; the new end.

    None when the inner packet would grow past 8500 bytes (or past the buffer). Everything before
    the payload stays where it is, so the Geneve header and options are untouched.
    """
    version, ip, end, protocol, l4, _, _, _, _, _, at, _ = pkt
    payload = buf[at:end]
    delta: int | None = 0  # the change of the payload's sum, None when it cannot be tracked
    for find, replace in replacements:
        if delta is not None:
            delta = _sum_change(payload, find, replace, (at - l4) & 1, delta)
        payload = payload.replace(find, replace)
    new_end = at + len(payload)
    inner_len = new_end - ip
    if inner_len > MAX_INNER_BYTES or new_end > len(buf):
        return None
    buf[at:new_end] = payload  # as long as the slice: the exported buffer is never resized
    l4_len = new_end - l4
    if version == 4:
        old_total, old_sum = _TOTAL_AND_CHECKSUM.unpack_from(buf, ip + 2)
        _WORD.pack_into(buf, ip + 2, inner_len)
        _WORD.pack_into(buf, ip + 10, adjust(old_sum, old_total, inner_len))
    else:
        _WORD.pack_into(buf, ip + 4, inner_len - 40)
    if protocol == PROTO_UDP:
        old_len, old_sum = _UDP_LENGTH_AND_CHECKSUM.unpack_from(buf, l4 + 4)
        _WORD.pack_into(buf, l4 + 4, l4_len)
        if version == 4 and not old_sum:
            return new_end  # RFC 768: zero means "no checksum" over IPv4, and stays so
        if delta is not None and old_sum:
            # RFC 1624 eqn. 3 over every changed word: ~HC + ~m + m', summed, folded once.
            total = (~old_sum & 0xFFFF) + 2 * (l4_len - old_len) + delta
            _WORD.pack_into(buf, l4 + 6, udp_checksum_field(total % 0xFFFF or 0xFFFF))
            return new_end
    _fix_transport_checksum(buf, ip, l4, l4_len, version, protocol)
    return new_end


def _aligned_sum(data: bytes, odd: int) -> int:
    """The 16-bit word sum of `data` placed at an even (odd=0) or odd (odd=1) offset."""
    value = int.from_bytes(data, "big")
    return value << 8 if (len(data) + odd) & 1 else value


@functools.lru_cache(maxsize=256)  # rules are few: each pair is worked out once
def _word_changes(find: bytes, replace: bytes) -> tuple[int, int] | None:
    """How the word sum changes when `find` becomes `replace` at an even or an odd offset; None
    when the length changes by an odd number of bytes."""
    if (len(replace) - len(find)) & 1:
        return None
    even, odd = (_aligned_sum(replace, q) - _aligned_sum(find, q) for q in (0, 1))
    return even, odd


def _sum_change(
    payload: bytearray, find: bytes, replace: bytes, parity: int, delta: int
) -> int | None:
    """`delta` plus the change of the payload's word sum when `find` becomes `replace` everywhere
    (non-overlapping, left to right, as bytes.replace does); None when a replacement changes the
    length by an odd number of bytes, which would shift the rest by one byte."""
    change = _word_changes(find, replace)
    if change is None:
        return None
    position = payload.find(find)
    while position >= 0:  # bounded: each step moves past one occurrence
        delta += change[(parity + position) & 1]
        position = payload.find(find, position + len(find))
    return delta


def _fix_transport_checksum(
    out: bytearray, ip: int, l4: int, l4_len: int, version: int, protocol: int
) -> None:
    """Recompute the transport checksum in full: the payload changed.

    The sums are big integers added before a single fold (checksum.fold is a modulo, so any
    16-bit-aligned run of bytes can be summed as one integer): the segment, and for the
    pseudo-header both addresses at once, which lie side by side in the IP header.
    """
    at = l4 + (6 if protocol == PROTO_UDP else 2)
    _WORD.pack_into(out, at, 0)
    total = int.from_bytes(out[l4 : l4 + l4_len], "big") << (8 if l4_len & 1 else 0)
    if protocol == PROTO_ICMP:
        _WORD.pack_into(out, at, finish(total))  # ICMPv4 has no pseudo-header
        return
    addresses = out[ip + 12 : ip + 20] if version == 4 else out[ip + 8 : ip + 40]
    total += int.from_bytes(addresses, "big") + protocol + l4_len
    _WORD.pack_into(out, at, udp_checksum_field(total) if protocol == PROTO_UDP else finish(total))
