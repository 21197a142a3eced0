"""The inner packet GWLB hands us: IPv4 (options, fragments) or IPv6 (extension headers), then
UDP, TCP (ports only), ICMP or ICMPv6.

Lengths are strict: GWLB delivers whole IP packets, so an IP length that disagrees with what the
Geneve payload holds is malformed, not something to guess around. Only the first fragment of a
datagram carries the transport header; later fragments are reported as such, without ports.
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

from appliance.checksum import Buffer
from appliance.errors import DecodeError, Reason
from appliance.geneve import ETH_P_IP, ETH_P_IPV6

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
ICMP_ECHO_TYPES = frozenset({0, 8})
ICMPV6_ECHO_TYPES = frozenset({128, 129})

# IPv6 extension headers walked to reach the transport header (RFC 8200 §4, RFC 4302).
EXT_HOP_BY_HOP = 0
EXT_ROUTING = 43
EXT_FRAGMENT = 44
EXT_AUTH = 51
EXT_DEST_OPTS = 60
EXT_MOBILITY = 135
EXT_HIP = 139
EXT_SHIM6 = 140
_EXT_GENERIC = frozenset(
    {EXT_HOP_BY_HOP, EXT_ROUTING, EXT_DEST_OPTS, EXT_MOBILITY, EXT_HIP, EXT_SHIM6}
)
MAX_EXTENSION_HEADERS = 16  # bounds the walk; real chains have a handful

_IPV4 = struct.Struct("!BxHHH")  # version/IHL, total length, id, flags/fragment offset
_IPV6 = struct.Struct("!IHB")  # version/class/label, payload length, next header
_PORTS = struct.Struct("!HH")
_ICMP = struct.Struct("!B5xH")  # type; code, checksum, identifier skipped; sequence


class Fragment(enum.IntEnum):
    NONE = 0  # a whole datagram
    FIRST = 1  # offset 0 with more to come: transport header present, payload incomplete
    LATER = 2  # offset > 0: no transport header at all


class InnerPacket(NamedTuple):
    """Where things are in the inner packet; offsets are absolute positions in the buffer."""

    version: int  # 4 or 6
    start: int  # the IP header
    end: int  # one past the last byte of the IP packet
    protocol: int  # the transport protocol after any extension headers
    l4: int  # the transport header (or the fragment's data)
    fragment: Fragment
    src_port: int  # -1 without ports
    dst_port: int
    icmp_type: int  # -1 unless ICMP/ICMPv6
    icmp_seq: int  # -1 unless an ICMP/ICMPv6 echo
    payload: int  # first byte after the transport header (== l4 when it has none)
    routed: bool  # an IPv6 routing header with segments left: the final destination differs


def parse_inner(buf: Buffer, start: int, end: int, ethertype: int) -> InnerPacket:
    """Parse the inner packet at buf[start:end] announced by Geneve as `ethertype`."""
    if ethertype == ETH_P_IP:
        return _parse_ipv4(buf, start, end)
    if ethertype == ETH_P_IPV6:
        return _parse_ipv6(buf, start, end)
    raise DecodeError("geneve", start, Reason.GENEVE_PROTOCOL, f"0x{ethertype:04x}")


def _parse_ipv4(buf: Buffer, start: int, end: int) -> InnerPacket:
    if end - start < 20:
        raise DecodeError("ipv4", start, Reason.TRUNCATED, "shorter than 20 bytes")
    ver_ihl, total, _ident, frag = _IPV4.unpack_from(buf, start)
    if ver_ihl >> 4 != 4:
        raise DecodeError("ipv4", start, Reason.IP_VERSION, f"version {ver_ihl >> 4}")
    header = (ver_ihl & 0x0F) * 4
    if header < 20 or header > total:
        raise DecodeError("ipv4", start, Reason.IP_HEADER_LENGTH, f"IHL {ver_ihl & 0x0F}")
    if total != end - start:
        raise DecodeError(
            "ipv4", start + 2, Reason.IP_LENGTH_MISMATCH, f"total {total}, have {end - start}"
        )
    protocol = buf[start + 9]
    fragment = _fragment_state(frag & 0x1FFF, bool(frag & 0x2000))
    return _transport(buf, 4, start, end, protocol, start + header, fragment, False)


def _parse_ipv6(buf: Buffer, start: int, end: int) -> InnerPacket:
    if end - start < 40:
        raise DecodeError("ipv6", start, Reason.TRUNCATED, "shorter than 40 bytes")
    first, payload_len, next_header = _IPV6.unpack_from(buf, start)
    if first >> 28 != 6:
        raise DecodeError("ipv6", start, Reason.IP_VERSION, f"version {first >> 28}")
    if payload_len != end - start - 40:
        raise DecodeError(
            "ipv6",
            start + 4,
            Reason.IP_LENGTH_MISMATCH,
            f"payload {payload_len}, have {end - start - 40}",
        )
    offset = start + 40
    fragment = Fragment.NONE
    routed = False
    for count in range(MAX_EXTENSION_HEADERS + 1):
        if next_header in _EXT_GENERIC or next_header == EXT_AUTH:
            if next_header == EXT_HOP_BY_HOP and count:
                raise DecodeError("ipv6", offset, Reason.IPV6_EXTENSION_CHAIN, "hop-by-hop later")
            if offset + 8 > end:
                raise DecodeError("ipv6", offset, Reason.TRUNCATED, f"extension {next_header}")
            if next_header == EXT_ROUTING and buf[offset + 3]:
                routed = True  # RFC 8200 §8.1: the pseudo-header uses the final destination
            words = buf[offset + 1]
            size = (words + 2) * 4 if next_header == EXT_AUTH else (words + 1) * 8
            if offset + size > end:  # report the header that overruns, not a place past the end
                raise DecodeError("ipv6", offset, Reason.TRUNCATED, f"extension {next_header}")
            next_header = buf[offset]
            offset += size
        elif next_header == EXT_FRAGMENT:
            if offset + 8 > end:
                raise DecodeError("ipv6", offset, Reason.TRUNCATED, "fragment header")
            frag = int.from_bytes(buf[offset + 2 : offset + 4], "big")
            fragment = _fragment_state(frag >> 3, bool(frag & 1))
            next_header = buf[offset]
            offset += 8
            if fragment == Fragment.LATER:  # what follows is opaque fragment data (RFC 8200
                # §4.5), whatever header type the fragment header names: nothing more to walk
                return _transport(buf, 6, start, end, next_header, offset, fragment, routed)
        else:
            return _transport(buf, 6, start, end, next_header, offset, fragment, routed)
    raise DecodeError("ipv6", offset, Reason.IPV6_EXTENSION_CHAIN, "too many extension headers")


def _fragment_state(offset: int, more: bool) -> Fragment:
    if offset:
        return Fragment.LATER
    return Fragment.FIRST if more else Fragment.NONE


def _transport(
    buf: Buffer,
    version: int,
    start: int,
    end: int,
    protocol: int,
    l4: int,
    fragment: Fragment,
    routed: bool,
) -> InnerPacket:
    """Read the transport header at l4: ports for UDP/TCP, type and echo sequence for ICMP."""
    if fragment == Fragment.LATER:
        return InnerPacket(version, start, end, protocol, l4, fragment, -1, -1, -1, -1, l4, routed)
    available = end - l4
    if protocol in (PROTO_UDP, PROTO_TCP):
        if protocol == PROTO_UDP:
            if available < 8:
                raise DecodeError("udp", l4, Reason.TRUNCATED, f"{available} bytes")
            udp_len = int.from_bytes(buf[l4 + 4 : l4 + 6], "big")
            # A whole datagram's UDP length must match; a first fragment's covers data to come.
            if (fragment == Fragment.NONE and udp_len != available) or udp_len < 8:
                raise DecodeError("udp", l4 + 4, Reason.TRANSPORT_LENGTH, f"length {udp_len}")
            header = 8
        else:
            if available < 20:
                raise DecodeError("tcp", l4, Reason.TRUNCATED, f"{available} bytes")
            header = (buf[l4 + 12] >> 4) * 4  # the data offset
            if header < 20 or header > available:
                raise DecodeError("tcp", l4 + 12, Reason.TRANSPORT_LENGTH, f"offset {header}")
        sport, dport = _PORTS.unpack_from(buf, l4)
        return InnerPacket(
            version, start, end, protocol, l4, fragment, sport, dport, -1, -1, l4 + header, routed
        )
    if (protocol == PROTO_ICMP and version == 4) or (protocol == PROTO_ICMPV6 and version == 6):
        if available < 8:
            raise DecodeError("icmp", l4, Reason.TRUNCATED, f"{available} bytes")
        icmp_type, seq = _ICMP.unpack_from(buf, l4)
        echo = ICMP_ECHO_TYPES if version == 4 else ICMPV6_ECHO_TYPES
        return InnerPacket(
            version,
            start,
            end,
            protocol,
            l4,
            fragment,
            -1,
            -1,
            icmp_type,
            seq if icmp_type in echo else -1,
            l4 + 8,
            routed,
        )
    return InnerPacket(version, start, end, protocol, l4, fragment, -1, -1, -1, -1, l4, routed)
