"""The strict decoder: a GWLB datagram (the UDP payload, Geneve onwards) judged rule by rule.

Written from the RFCs and DESIGN.md §1, not from the product. `decode` names every rule a datagram
breaks, in wire order. A breach that leaves nothing sensible to parse stops the parse; the others
are recorded and the parse goes on, so that the oracle can also say what a reader that tolerates
them (the product, see tolerances.py) does with the datagram.

The rules, layer by layer ("stop" marks the breaches that end the parse):
Geneve (RFC 8926, DESIGN.md §1)
    8 bytes at least (stop); version 0 (§3.4: other versions MUST be dropped; stop); O bit clear
    (a control message is not data; stop); the options fill Opt Len, each inside it (stop);
    protocol 0x0800 or 0x86DD (stop); an unknown option with the critical bit (§3.5; stop);
    class 0x0108 types 1, 2, 3 with 8, 8, 4 bytes of body (stop), each present (stop) and only
    once; the C bit only with a critical option present (§3.4); VNI 0 (the contract).
    Reserved bits and the options' R bits are ignored: §3.4 and §3.5 say they MUST be.
inner
    at most 8500 bytes: GWLB never sends more, and the appliance must never emit more.
IPv4 (RFC 791)
    20 bytes at least, version 4, IHL >= 5, IHL within the total length, total length exactly
    what arrived: GWLB delivers whole packets, there is no link padding (all stop). Options are
    well-formed TLVs, the reserved flag is clear, a fragment with more to come carries a multiple
    of 8 bytes, and no fragment reaches past 65535.
IPv6 (RFC 8200)
    40 bytes at least, version 6, payload length exactly what arrived (stop); every extension
    header inside the packet (stop); hop-by-hop only right after the IPv6 header (§4.1; stop);
    hop-by-hop and destination options well-formed TLVs (§4.2). A later fragment's data is
    opaque (§4.5): nothing after its fragment header is parsed.
UDP (RFC 768), TCP (RFC 9293), ICMP (RFC 792), ICMPv6 (RFC 4443), in a whole datagram or a first
fragment (a later one has no transport header)
    UDP: 8 bytes at least; its length exactly the rest of a whole datagram, in a first fragment at
    least 8 (all stop) and at least what the fragment carries; over IPv6 a zero checksum is
    invalid (RFC 8200 §8.1). TCP: 20 bytes at least, data offset >= 5 and within the segment
    (stop). ICMP over IPv4, ICMPv6 over IPv6: 8 bytes at least (stop).
The inner packet's checksums decide nothing: a bump in the wire passes them on for the end host
to judge, and a rewrite must keep a wrong one wrong by the same amount (oracle.py checks that).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

MAX_INNER = 8500
AWS_CLASS = 0x0108
AWS_BODY = {1: 8, 2: 8, 3: 4}  # endpoint id, attachment id, flow cookie
ETH_IPV4, ETH_IPV6 = 0x0800, 0x86DD
UDP, TCP, ICMP, ICMPV6 = 17, 6, 1, 58
HOP_BY_HOP, ROUTING, FRAGMENT, AUTH, DEST_OPTS = 0, 43, 44, 51, 60
# RFC 8200 §4 and the IANA "IPv6 Extension Header Types" registry, less ESP (its data is opaque)
# and 253/254 (experiments, whose format nobody can know).
EXTENSIONS = frozenset({HOP_BY_HOP, ROUTING, FRAGMENT, AUTH, DEST_OPTS, 135, 139, 140})
ECHO_TYPES = {4: (0, 8), 6: (128, 129)}
WHOLE, FIRST, LATER = "whole", "first", "later"

_GENEVE = struct.Struct("!BBHI")
_OPTION = struct.Struct("!HBB")
_IPV4 = struct.Struct("!BxHxxHxB")  # version/IHL, total length, flags/offset, protocol
_IPV6 = struct.Struct("!IHB")  # version/class/label, payload length, next header
_UDP = struct.Struct("!HHHH")


@dataclass(slots=True)
class Inner:
    """Where things are in the inner packet (offsets into the datagram) and what it carries."""

    version: int
    start: int
    end: int
    protocol: int = -1  # after any extension headers
    l4: int = -1  # the transport header, or a later fragment's data
    fragment: str = WHOLE
    header_len: int = 0  # the IPv4 header's length (IHL * 4)
    sport: int = -1
    dport: int = -1
    icmp_type: int = -1
    icmp_seq: int = -1  # echo request/reply only
    payload: int = -1  # after the transport header (== l4 without one)
    routed: bool = False  # an IPv6 routing header with segments left
    extensions: int = 0  # IPv6 extension headers parsed


@dataclass(slots=True)
class Decoded:
    violations: list[str] = field(default_factory=list)  # rules broken, in wire order
    notes: list[str] = field(default_factory=list)  # legal, but a reader may treat it apart
    stopped: bool = False  # the last violation ended the parse
    geneve_len: int = 0
    inner: Inner | None = None


class _Stop(Exception):
    pass


def decode(d: bytes) -> Decoded:
    """Every strict rule the datagram `d` (Geneve onwards) breaks, and its parse."""
    out = Decoded()
    try:
        out.geneve_len = start = _geneve(d, out)
        if len(d) - start > MAX_INNER:
            out.violations.append("inner.over_8500")
        if d[2:4] == b"\x08\x00":
            out.inner = _ipv4(d, start, out)
        else:
            out.inner = _ipv6(d, start, out)
        _transport(d, out.inner, out)
    except _Stop:
        out.stopped = True
    return out


def _stop(out: Decoded, code: str) -> None:
    out.violations.append(code)
    raise _Stop


def _geneve(d: bytes, out: Decoded) -> int:
    if len(d) < 8:
        _stop(out, "geneve.truncated")
    first: int
    flags: int
    protocol: int
    vni_word: int
    first, flags, protocol, vni_word = _GENEVE.unpack_from(d)
    if first >> 6:
        _stop(out, "geneve.version")
    if flags & 0x80:
        _stop(out, "geneve.oam")
    end = 8 + (first & 0x3F) * 4
    if end > len(d):
        _stop(out, "geneve.options_overrun")
    if protocol not in (ETH_IPV4, ETH_IPV6):
        _stop(out, "geneve.protocol")
    _options(d, end, out)
    if flags & 0x40:  # _options stopped at any critical option: none is present
        out.violations.append("geneve.c_bit")
    if vni_word >> 8:
        out.violations.append("geneve.vni")
    return end


def _options(d: bytes, end: int, out: Decoded) -> None:
    """Walk the options in d[8:end]; each is 4 bytes of header and a whole number of words, and
    Opt Len counts words, so a header can never be cut: only a body can run past `end`."""
    seen: list[int] = []
    at = 8
    while at < end:
        opt_class, opt_type, flags_len = _OPTION.unpack_from(d, at)
        body = at + 4
        at = body + (flags_len & 0x1F) * 4  # the top 3 bits are R: ignored
        if at > end:
            _stop(out, "geneve.option_overrun")
        if opt_class == AWS_CLASS and opt_type in AWS_BODY:
            if at - body != AWS_BODY[opt_type]:
                _stop(out, "geneve.aws_option_length")
            seen.append(opt_type)
        elif opt_type & 0x80:
            _stop(out, "geneve.critical_option")
    if set(seen) != set(AWS_BODY):
        _stop(out, "geneve.aws_option_missing")
    if len(seen) != len(AWS_BODY):
        out.violations.append("geneve.aws_option_duplicate")


def _ipv4(d: bytes, s: int, out: Decoded) -> Inner:
    size = len(d) - s
    if size < 20:
        _stop(out, "ipv4.truncated")
    version_ihl, total, frag, protocol = _IPV4.unpack_from(d, s)
    if version_ihl >> 4 != 4:
        _stop(out, "ip.version")
    ihl = (version_ihl & 0x0F) * 4
    if ihl < 20:
        _stop(out, "ipv4.ihl")
    if ihl > total:
        _stop(out, "ipv4.ihl_over_total")
    if total != size:
        _stop(out, "ipv4.total_length")
    if ihl > 20 and not _ipv4_options_ok(d[s + 20 : s + ihl]):
        out.violations.append("ipv4.options")
    if frag & 0x8000:
        out.violations.append("ipv4.reserved_flag")
    more, offset, data = bool(frag & 0x2000), (frag & 0x1FFF) * 8, total - ihl
    if more and data % 8:
        out.violations.append("ipv4.fragment_size")
    if offset + data > 0xFFFF:
        out.violations.append("ipv4.fragment_overrun")
    fragment = LATER if offset else FIRST if more else WHOLE
    return Inner(4, s, s + size, protocol, s + ihl, fragment, header_len=ihl)


def _ipv4_options_ok(options: bytes) -> bool:
    """RFC 791 §3.1: end of list (0) and no-operation (1) are one byte; every other option is
    type, length (counting both) and data, inside the header."""
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:
            return True  # what follows is padding
        if kind == 1:
            i += 1
            continue
        if i + 2 > len(options) or not 2 <= options[i + 1] <= len(options) - i:
            return False
        i += options[i + 1]
    return True


def _ipv6(d: bytes, s: int, out: Decoded) -> Inner:
    size = len(d) - s
    if size < 40:
        _stop(out, "ipv6.truncated")
    first, payload_len, next_header = _IPV6.unpack_from(d, s)
    if first >> 28 != 6:
        _stop(out, "ip.version")
    if payload_len != size - 40:
        _stop(out, "ipv6.payload_length")
    inner = Inner(6, s, s + size)
    at, end = s + 40, s + size
    while next_header in EXTENSIONS:
        if inner.extensions == 17:  # noted where the product's walk gives up (inner.py walks 17):
            out.notes.append("ipv6.over_16_extension_headers")  # so before a later violation
        if next_header == HOP_BY_HOP and inner.extensions:
            _stop(out, "ipv6.hop_by_hop_not_first")
        if at + 8 > end:
            _stop(out, "ipv6.extension_truncated")
        inner.extensions += 1
        if next_header == FRAGMENT:
            offset_flags = d[at + 2] << 8 | d[at + 3]
            next_header, at = d[at], at + 8
            if offset_flags >> 3:
                inner.fragment = LATER  # §4.5: the rest is fragment data, opaque
                break
            if offset_flags & 1:
                inner.fragment = FIRST
            continue
        size_ext = (d[at + 1] + 2) * 4 if next_header == AUTH else (d[at + 1] + 1) * 8
        if at + size_ext > end:
            _stop(out, "ipv6.extension_truncated")
        if next_header in (HOP_BY_HOP, DEST_OPTS) and not _tlvs_ok(d[at + 2 : at + size_ext]):
            out.violations.append("ipv6.option_tlv")
        if next_header == ROUTING and d[at + 3]:
            inner.routed = True  # §8.1: the UDP pseudo-header holds the final destination
        next_header, at = d[at], at + size_ext
    if inner.extensions > 16 and "ipv6.over_16_extension_headers" not in out.notes:
        out.notes.append("ipv6.over_16_extension_headers")
    inner.protocol, inner.l4 = next_header, at
    return inner


def _tlvs_ok(options: bytes) -> bool:
    """RFC 8200 §4.2: Pad1 is one byte; every other option is type, data length, data."""
    i = 0
    while i < len(options):
        if options[i] == 0:
            i += 1
            continue
        if i + 2 > len(options) or i + 2 + options[i + 1] > len(options):
            return False
        i += 2 + options[i + 1]
    return True


def _transport(d: bytes, inner: Inner, out: Decoded) -> None:
    inner.payload = inner.l4
    if inner.fragment == LATER:
        return
    available, l4, protocol = inner.end - inner.l4, inner.l4, inner.protocol
    if protocol == UDP:
        if available < 8:
            _stop(out, "udp.truncated")
        inner.sport, inner.dport, length, checksum = _UDP.unpack_from(d, l4)
        if (inner.fragment == WHOLE and length != available) or length < 8:
            _stop(out, "udp.length")
        if length < available:  # a first fragment carries more than its whole datagram
            out.violations.append("udp.first_fragment_length")
        if inner.version == 6 and not checksum:
            out.violations.append("udp.zero_checksum_ipv6")
        inner.payload = l4 + 8
    elif protocol == TCP:
        if available < 20:
            _stop(out, "tcp.truncated")
        offset = (d[l4 + 12] >> 4) * 4
        if offset < 20 or offset > available:
            _stop(out, "tcp.data_offset")
        inner.sport, inner.dport = d[l4] << 8 | d[l4 + 1], d[l4 + 2] << 8 | d[l4 + 3]
        inner.payload = l4 + offset
    elif protocol == (ICMP if inner.version == 4 else ICMPV6):
        if available < 8:
            _stop(out, "icmp.truncated")
        inner.icmp_type = d[l4]
        if inner.icmp_type in ECHO_TYPES[inner.version]:
            inner.icmp_seq = d[l4 + 6] << 8 | d[l4 + 7]
        inner.payload = l4 + 8
