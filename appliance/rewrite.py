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

import struct

from appliance.checksum import adjust, finish, udp_checksum_field
from appliance.inner import PROTO_ICMP, PROTO_UDP, InnerPacket
from appliance.policy import Replacement

MAX_INNER_BYTES = 8500  # GWLB's limit for the inner packet (DESIGN.md §1)
_WORD = struct.Struct("!H")
_TOTAL_AND_CHECKSUM = struct.Struct("!H6xH")  # IPv4 total length, then the header checksum
_UDP_LENGTH_AND_CHECKSUM = struct.Struct("!HH")


def rewrite_in_place(
    buf: bytearray, pkt: InnerPacket, replacements: tuple[Replacement, ...]
) -> int | None:
    """Rewrite pkt's payload inside `buf`, fixing every length and checksum; the new end.

    None when the inner packet would grow past 8500 bytes (or past the buffer). Everything before
    the payload stays where it is, so the Geneve header and options are untouched.
    """
    version, ip, end, protocol, l4, _, _, _, _, _, at, _ = pkt
    payload = buf[at:end]
    parity = (at - l4) & 1
    delta: int | None = 0  # the change of the payload's sum, None when it cannot be tracked
    for find, replace, change in replacements:
        if change is None:
            delta = None
        elif delta is not None:
            # Non-overlapping, left to right, as bytes.replace does; each step passes one match.
            position, step = payload.find(find), len(find)
            while position >= 0:
                delta += change[(parity + position) & 1]
                position = payload.find(find, position + step)
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
        if version == 4 and not old_sum:
            _WORD.pack_into(buf, l4 + 4, l4_len)
            return new_end  # RFC 768: zero means "no checksum" over IPv4, and stays so
        if delta is not None and old_sum:
            # RFC 1624 eqn. 3 over every changed word: ~HC + ~m + m', summed, folded once; the
            # length counts twice (header and pseudo-header).
            total = (~old_sum & 0xFFFF) + 2 * (l4_len - old_len) + delta
            checksum = udp_checksum_field(total % 0xFFFF or 0xFFFF)
            _UDP_LENGTH_AND_CHECKSUM.pack_into(buf, l4 + 4, l4_len, checksum)
            return new_end
        _WORD.pack_into(buf, l4 + 4, l4_len)
    _fix_transport_checksum(buf, ip, l4, l4_len, version, protocol)
    return new_end


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
