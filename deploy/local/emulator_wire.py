"""The emulated GWLB's own reading of the wire: Geneve with the AWS options, inner IPv4/IPv6 and
the checks every returned packet must pass (DESIGN.md §1).

Shares no code with appliance/: it is the second opinion on our bytes, written with struct alone.
"""

from __future__ import annotations

import array
import struct
import sys
from dataclasses import dataclass
from typing import Any

GENEVE_PORT = 6081
GENEVE_HEADER = struct.Struct("!BBHI")  # ver|opt_len, O|C|rsvd, protocol, VNI<<8|rsvd
GENEVE_OPTION = struct.Struct("!HBB")  # class, type, R|len (4-byte words)
GWLB_OPTION_CLASS = 0x0108
OPT_ENDPOINT_ID, OPT_ATTACHMENT_ID, OPT_FLOW_COOKIE = 1, 2, 3
GENEVE_LEN = 40
ETH_P_IPV4, ETH_P_IPV6 = 0x0800, 0x86DD
MAX_INNER_LEN = 8500
UDP_HEADER = struct.Struct("!HHHH")
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
IPV6_EXT_HEADERS = {0, 43, 60, 51}  # hop-by-hop, routing, destination options, AH
IPV6_FRAGMENT = 44
IDLE_TIMEOUT_TCP_S, IDLE_TIMEOUT_OTHER_S = 350.0, 120.0


class Malformed(ValueError):
    """A packet that cannot be parsed far enough to be handled."""


# --- checksums (RFC 1071) ----------------------------------------------------------------


def ones_sum(data: bytes) -> int:
    """16-bit ones' complement sum of big-endian words (summed natively, swapped once)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(array.array("H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    if sys.byteorder == "little":
        total = ((total & 0xFF) << 8) | (total >> 8)
    return total


def checksum(data: bytes) -> int:
    return ~ones_sum(data) & 0xFFFF


def pseudo_header(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def checksum_ok(pseudo: bytes, segment: bytes) -> bool:
    """True when the sum over pseudo-header + segment (checksum field included) is 0xFFFF."""
    return ones_sum(pseudo + segment) == 0xFFFF


# --- inner packets -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Inner:
    """What the flow table and the checks need to know about an inner IP packet."""

    version: int
    src: bytes
    dst: bytes
    proto: int  # upper-layer protocol after IPv6 extension headers
    l4_offset: int
    fragment: bool
    sport: int = 0
    dport: int = 0

    def key(self) -> tuple[Any, ...]:
        """Symmetric flow key: both directions of a conversation give the same key."""
        ends = sorted([(self.src, self.sport), (self.dst, self.dport)])
        return (self.version, self.proto, *ends)


def _ports(pkt: bytes, offset: int, proto: int, fragment: bool) -> tuple[int, int]:
    """Ports only for unfragmented TCP/UDP: GWLB keys other protocols by 3-tuple."""
    if fragment or proto not in (TCP, UDP):
        return 0, 0
    if len(pkt) < offset + 4:
        raise Malformed(f"truncated {proto} header at {offset}")
    sport, dport = struct.unpack_from("!HH", pkt, offset)
    return sport, dport


def parse_inner(pkt: bytes) -> Inner:
    if not pkt:
        raise Malformed("empty packet")
    version = pkt[0] >> 4
    if version == 4:
        return _parse_ipv4(pkt)
    if version == 6:
        return _parse_ipv6(pkt)
    raise Malformed(f"IP version {version}")


def _parse_ipv4(pkt: bytes) -> Inner:
    if len(pkt) < 20:
        raise Malformed("truncated IPv4 header")
    ihl = (pkt[0] & 0x0F) * 4
    if ihl < 20 or len(pkt) < ihl:
        raise Malformed(f"IPv4 header length {ihl}")
    frag = struct.unpack_from("!H", pkt, 6)[0]
    fragment = bool(frag & 0x3FFF)  # MF set or offset non-zero: all fragments share the flow
    proto = pkt[9]
    sport, dport = _ports(pkt, ihl, proto, fragment)
    return Inner(4, pkt[12:16], pkt[16:20], proto, ihl, fragment, sport, dport)


def _parse_ipv6(pkt: bytes) -> Inner:
    if len(pkt) < 40:
        raise Malformed("truncated IPv6 header")
    proto, offset, fragment = pkt[6], 40, False
    for _ in range(16):  # bounded walk over extension headers
        if proto == IPV6_FRAGMENT:
            if len(pkt) < offset + 8:
                raise Malformed("truncated fragment header")
            fragment, proto, offset = True, pkt[offset], offset + 8
        elif proto in IPV6_EXT_HEADERS:
            if len(pkt) < offset + 2:
                raise Malformed(f"truncated extension header {proto}")
            # AH counts 4-byte words minus 2; the others 8-byte units minus 1 (RFC 4302, 8200).
            length = (pkt[offset + 1] + 2) * 4 if proto == 51 else (pkt[offset + 1] + 1) * 8
            proto, offset = pkt[offset], offset + length
        else:
            break
    else:
        raise Malformed("too many IPv6 extension headers")
    if offset > len(pkt):
        raise Malformed("IPv6 extension headers overrun the packet")
    sport, dport = _ports(pkt, offset, proto, fragment)
    return Inner(6, pkt[8:24], pkt[24:40], proto, offset, fragment, sport, dport)


def inner_violations(pkt: bytes, inner: Inner) -> list[tuple[str, str]]:
    """Header lengths and checksums of an inner packet an appliance sent back."""
    found: list[tuple[str, str]] = []
    if inner.version == 4:
        total = struct.unpack_from("!H", pkt, 2)[0]
        if total != len(pkt):
            found.append(("inner_ip_length", f"total length {total}, packet {len(pkt)}"))
        if checksum(pkt[: inner.l4_offset]) != 0:
            found.append(("inner_ip_checksum", "IPv4 header checksum wrong"))
    else:
        payload = struct.unpack_from("!H", pkt, 4)[0]
        if payload + 40 != len(pkt):
            found.append(("inner_ip_length", f"payload length {payload}, packet {len(pkt)}"))
    if not found and not inner.fragment:
        found += _transport_violations(pkt, inner)
    if len(pkt) > MAX_INNER_LEN:
        found.append(("inner_too_big", f"{len(pkt)} bytes > {MAX_INNER_LEN}"))
    return found


def _transport_violations(pkt: bytes, inner: Inner) -> list[tuple[str, str]]:
    segment = pkt[inner.l4_offset :]
    pseudo = pseudo_header(inner.src, inner.dst, inner.proto, len(segment))
    if inner.proto == UDP:
        if len(segment) < 8:
            return [("inner_udp_length", "truncated UDP header")]
        length, csum = struct.unpack_from("!HH", segment, 4)
        if length != len(segment):
            return [("inner_udp_length", f"UDP length {length}, segment {len(segment)}")]
        if csum == 0 and inner.version == 4:
            return []
        if csum == 0 or not checksum_ok(pseudo, segment):
            return [("inner_udp_checksum", f"UDP checksum {csum:#06x} wrong")]
    elif inner.proto == TCP and not checksum_ok(pseudo, segment):
        return [("inner_tcp_checksum", "TCP checksum wrong")]
    elif inner.proto == ICMP and inner.version == 4 and checksum(segment) != 0:
        return [("inner_icmp_checksum", "ICMP checksum wrong")]
    elif inner.proto == ICMPV6 and not checksum_ok(pseudo, segment):
        return [("inner_icmp_checksum", "ICMPv6 checksum wrong")]
    return []


def ignorable(inner: Inner) -> bool:
    """Link-local and multicast traffic never reaches a real GWLB through a route."""
    if inner.version == 4:
        return inner.dst[0] >= 224 or inner.dst == b"\xff" * 4
    return inner.dst[0] == 0xFF or inner.dst[:2] == b"\xfe\x80" or inner.src[:2] == b"\xfe\x80"


# --- Geneve --------------------------------------------------------------------------------


def geneve_header(protocol: int, endpoint_id: bytes, attachment_id: bytes, cookie: int) -> bytes:
    """The 40 bytes GWLB puts in front of every inner packet (RFC 8926, AWS options)."""
    opt_len_words = (GENEVE_LEN - GENEVE_HEADER.size) // 4
    return b"".join(
        [
            GENEVE_HEADER.pack(opt_len_words, 0, protocol, 0),
            GENEVE_OPTION.pack(GWLB_OPTION_CLASS, OPT_ENDPOINT_ID, 2),
            endpoint_id,
            GENEVE_OPTION.pack(GWLB_OPTION_CLASS, OPT_ATTACHMENT_ID, 2),
            attachment_id,
            GENEVE_OPTION.pack(GWLB_OPTION_CLASS, OPT_FLOW_COOKIE, 1),
            struct.pack("!I", cookie),
        ]
    )


def find_cookie(geneve: bytes) -> tuple[int | None, int]:
    """(flow cookie or None, header length) from a Geneve header and its options."""
    if len(geneve) < GENEVE_HEADER.size:
        raise Malformed("truncated Geneve header")
    header_len = GENEVE_HEADER.size + (geneve[0] & 0x3F) * 4
    if len(geneve) < header_len:
        raise Malformed("Geneve options overrun the packet")
    offset = GENEVE_HEADER.size
    while offset + GENEVE_OPTION.size <= header_len:  # bounded: offset grows every step
        opt_class, opt_type, opt_len = GENEVE_OPTION.unpack_from(geneve, offset)
        value_len = (opt_len & 0x1F) * 4
        value_at = offset + GENEVE_OPTION.size
        if value_at + value_len > header_len:
            raise Malformed(f"Geneve option at {offset} overruns the options")
        if (opt_class, opt_type & 0x7F, value_len) == (GWLB_OPTION_CLASS, OPT_FLOW_COOKIE, 4):
            return struct.unpack_from("!I", geneve, value_at)[0], header_len
        offset = value_at + value_len
    return None, header_len
