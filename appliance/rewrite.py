"""Rewriting an inner packet's payload, with every length and checksum fixed.

The payload changes, so the transport checksum is recomputed in full (RFC 1071 with the
pseudo-header); the IPv4 header checksum only sees its total length change, so it is updated
incrementally (RFC 1624), which also keeps a sender's deliberately odd header as it was.
"""

from __future__ import annotations

from appliance.checksum import (
    adjust,
    finish,
    ones_sum,
    pseudo_header_sum_v4,
    pseudo_header_sum_v6,
    udp_checksum_field,
)
from appliance.inner import PROTO_ICMP, PROTO_UDP, InnerPacket

MAX_INNER_BYTES = 8500  # GWLB's limit for the inner packet (DESIGN.md §1)


def rewrite_payload(
    buf: bytes | bytearray,
    geneve_start: int,
    pkt: InnerPacket,
    replacements: tuple[tuple[bytes, bytes], ...],
) -> bytearray | None:
    """Geneve header and options (unchanged) + the rewritten inner packet; None if oversize."""
    payload = bytes(buf[pkt.payload : pkt.end])
    for find, replace in replacements:
        payload = payload.replace(find, replace)
    inner_len = pkt.payload - pkt.start + len(payload)
    if inner_len > MAX_INNER_BYTES:
        return None
    out = bytearray(buf[geneve_start : pkt.payload])
    out += payload
    ip = pkt.start - geneve_start
    l4 = pkt.l4 - geneve_start
    l4_len = inner_len - (pkt.l4 - pkt.start)
    if pkt.version == 4:
        old_total = int.from_bytes(out[ip + 2 : ip + 4], "big")
        out[ip + 2 : ip + 4] = inner_len.to_bytes(2, "big")
        old_sum = int.from_bytes(out[ip + 10 : ip + 12], "big")
        out[ip + 10 : ip + 12] = adjust(old_sum, old_total, inner_len).to_bytes(2, "big")
    else:
        out[ip + 4 : ip + 6] = (inner_len - 40).to_bytes(2, "big")
    if pkt.protocol == PROTO_UDP:
        out[l4 + 4 : l4 + 6] = l4_len.to_bytes(2, "big")
        if pkt.version == 4 and out[l4 + 6] == 0 and out[l4 + 7] == 0:
            return out  # RFC 768: zero means "no checksum" over IPv4, and stays so
    _fix_transport_checksum(out, ip, l4, l4_len, pkt)
    return out


def _fix_transport_checksum(
    out: bytearray, ip: int, l4: int, l4_len: int, pkt: InnerPacket
) -> None:
    at = l4 + (6 if pkt.protocol == PROTO_UDP else 2)
    out[at : at + 2] = b"\0\0"
    segment = ones_sum(memoryview(out)[l4 : l4 + l4_len])
    if pkt.protocol == PROTO_ICMP:
        value = finish(segment)  # ICMPv4 has no pseudo-header
    elif pkt.version == 4:
        view = memoryview(out)
        pseudo = pseudo_header_sum_v4(
            view[ip + 12 : ip + 16], view[ip + 16 : ip + 20], pkt.protocol, l4_len
        )
        value = udp_checksum_field(pseudo + segment)
    else:
        view = memoryview(out)
        pseudo = pseudo_header_sum_v6(
            view[ip + 8 : ip + 24], view[ip + 24 : ip + 40], pkt.protocol, l4_len
        )
        total = pseudo + segment
        value = udp_checksum_field(total) if pkt.protocol == PROTO_UDP else finish(total)
    out[at : at + 2] = value.to_bytes(2, "big")
