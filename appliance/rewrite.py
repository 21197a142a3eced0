"""Rewriting an inner packet's payload, with every length and checksum fixed.

The payload changes, so the transport checksum is recomputed in full (RFC 1071 with the
pseudo-header); the IPv4 header checksum only sees its total length change, so it is updated
incrementally (RFC 1624), which also keeps a sender's deliberately odd header as it was.
"""

from __future__ import annotations

import struct

from appliance.checksum import adjust, finish, udp_checksum_field
from appliance.inner import PROTO_ICMP, PROTO_UDP, InnerPacket

MAX_INNER_BYTES = 8500  # GWLB's limit for the inner packet (DESIGN.md §1)
_WORD = struct.Struct("!H")
_TOTAL_AND_CHECKSUM = struct.Struct("!H6xH")  # IPv4 total length, then the header checksum


def rewrite_in_place(
    buf: bytearray, pkt: InnerPacket, replacements: tuple[tuple[bytes, bytes], ...]
) -> int | None:
    """Rewrite pkt's payload inside `buf`, fixing every length and checksum; the new end.

    None when the inner packet would grow past 8500 bytes (or past the buffer). Everything before
    the payload stays where it is, so the Geneve header and options are untouched.
    """
    version, ip, end, protocol, l4, _, _, _, _, _, at, _ = pkt
    payload = buf[at:end]
    for find, replace in replacements:
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
        _WORD.pack_into(buf, l4 + 4, l4_len)
        if version == 4 and not (buf[l4 + 6] or buf[l4 + 7]):
            return new_end  # RFC 768: zero means "no checksum" over IPv4, and stays so
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
