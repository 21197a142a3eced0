"""The fast path: prove with one or two struct reads that no packet rule can touch a packet.

Why: most packets through an appliance match no packet rule (policy.py: replace,
drop_seq_multiple, payload conditions), and parsing each one into an InnerPacket and asking the
rules costs microseconds of Python per packet. `FastPath` is compiled from the policy's packet
rules once: per transport protocol, the ports (UDP, TCP) or ICMP types that some packet rule
might match, or "all" when one has no such condition. A packet in GWLB's usual layout (Geneve
with the three AWS options in order; IPv4 without options or fragments, or IPv6 without extension
headers), whose lengths are exactly consistent, comes back True when its ports or type are
outside those sets, and parsed (the same InnerPacket parse_inner would make) when a packet rule
might touch it; either way its flow's verdict is the flow table's (worker.py). Everything else
takes the full path (datapath.parse_datagram), which remains the reference:
tests/unit/test_fastpath.py checks on random packets that True means the full path parses the
datagram and no packet rule acts on it, and that the parse is the same.
"""

from __future__ import annotations

import struct
from typing import Literal

from appliance.inner import (
    ICMP_ECHO_TYPES,
    ICMPV6_ECHO_TYPES,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    Fragment,
    InnerPacket,
)
from appliance.policy import Policy

# Geneve with GWLB's options (4 words: version/opt len/flags/protocol, then the three option
# headers), then IPv4 (version/IHL, total length, flags/fragment, protocol), then 13 bytes of the
# transport header (ports or ICMP type/code and identifier, the UDP length or ICMP sequence
# number, the TCP data offset).
_V4 = struct.Struct("!I4xI8xI8xI4x" + "BxH2xHxB10x" + "HHHH4xB")
# The same Geneve words, then IPv6 (version, payload length, next header) and the transport.
_V6 = struct.Struct("!I4xI8xI8xI4x" + "IHB33x" + "HHHH4xB")
GENEVE_V4 = 0x08000800  # version 0, opt len 8 words, no flags, protocol IPv4
GENEVE_V6 = 0x080086DD
ALL = None  # every packet of the protocol may match a rule
_WHOLE = Fragment.NONE
_new = tuple.__new__  # builds the NamedTuple without its Python-level __new__: half the cost
_ECHO4, _ECHO6 = ICMP_ECHO_TYPES, ICMPV6_ECHO_TYPES


class FastPath:
    """`classify(buf, start, length)`: settle the common packets with one or two struct reads."""

    def __init__(self, policy: Policy) -> None:
        self.watch: dict[int, frozenset[int] | None] = {}
        self.other: bool = False  # some rule may match protocols other than UDP/TCP/ICMP
        for rule in policy.packet_rules:  # the flow rules are the flow table's (worker.py)
            allowed = rule.protocols()
            for proto in _KNOWN:
                if allowed is not None and proto not in allowed:
                    continue
                keys = rule.ports() if proto in _PORTED else rule.icmp_types()
                self._add(proto, keys)
            if allowed is None or allowed - _KNOWN:
                self.other = True
        self.udp = self.watch.get(PROTO_UDP, frozenset())
        self.tcp = self.watch.get(PROTO_TCP, frozenset())
        self.icmp = self.watch.get(PROTO_ICMP, frozenset())
        self.icmp6 = self.watch.get(PROTO_ICMPV6, frozenset())

    def _add(self, proto: int, keys: frozenset[int] | None) -> None:
        if proto in self.watch and self.watch[proto] is ALL:
            return
        if keys is None:
            self.watch[proto] = ALL
        else:
            self.watch[proto] = self.watch.get(proto, frozenset()) | keys  # type: ignore[operator]

    def classify(
        self, buf: bytearray, start: int, length: int
    ) -> Literal[True] | InnerPacket | None:
        """True: passes untouched. An InnerPacket: the usual layout, parsed; ask the policy.
        None: anything else; take the full path. `buf` must hold 93 bytes from `start` (the
        receive slot does); nothing past `start + length` decides anything."""
        (g0, t1, t2, t3, ver, total, frag, proto, w0, w1, w2, w3, tcp_off) = _V4.unpack_from(
            buf, start
        )
        if t1 != 0x01080102 or t2 != 0x01080202 or t3 != 0x01080301:
            return None
        # What a passing packet needs is checked first; the parse is built only when asked for.
        # Every field is read from the slot whether or not the datagram reaches it; a field past
        # `length` holds an earlier datagram's bytes, so each is used only once a length check
        # proves it lies inside: the total length below (IPv4 at least 20, IPv6 40 by
        # construction) and `available` per transport.
        if g0 == GENEVE_V4:
            if ver != 0x45 or total != length - 40 or total < 20 or frag & 0x3FFF:
                return None  # options, a fragment, or lengths to check: the full path
            version, available, l4 = 4, total - 20, start + 60
        elif g0 == GENEVE_V6:
            (_, _, _, _, first, available, proto, w0, w1, w2, w3, tcp_off) = _V6.unpack_from(
                buf, start
            )
            if first >> 28 != 6 or available != length - 80 or proto in _IPV6_EXTENSIONS:
                return None
            version, l4 = 6, start + 80
        else:
            return None
        if proto in _PORTED:
            if proto == PROTO_UDP:
                if w2 != available or available < 8:
                    return None
                watch, header = self.udp, 8
            else:
                header = (tcp_off >> 4) * 4  # the data offset
                if available < 20 or header < 20 or header > available:
                    return None
                watch = self.tcp
            if watch is not ALL and w0 not in watch and w1 not in watch:
                return True
            return _new(
                InnerPacket,
                (
                    version,
                    start + 40,
                    start + length,
                    proto,
                    l4,
                    _WHOLE,
                    w0,
                    w1,
                    -1,
                    -1,
                    l4 + header,
                    False,
                ),
            )
        if proto == (PROTO_ICMP if version == 4 else PROTO_ICMPV6):
            if available < 8:
                return None
            kind = w0 >> 8
            watch = self.icmp if version == 4 else self.icmp6
            if watch is not ALL and kind not in watch:
                return True
            echo = kind in (_ECHO4 if version == 4 else _ECHO6)
            return _new(
                InnerPacket,
                (
                    version,
                    start + 40,
                    start + length,
                    proto,
                    l4,
                    _WHOLE,
                    -1,
                    -1,
                    kind,
                    w3 if echo else -1,
                    l4 + 8,
                    False,
                ),
            )
        if not self.other and proto not in self.watch:
            return True
        return _new(
            InnerPacket,
            (version, start + 40, start + length, proto, l4, _WHOLE, -1, -1, -1, -1, l4, False),
        )


_IPV6_EXTENSIONS = frozenset({0, 43, 44, 51, 60, 135, 139, 140})
_PORTED = frozenset({PROTO_UDP, PROTO_TCP})  # transports whose rules may name ports
_KNOWN = frozenset({PROTO_UDP, PROTO_TCP, PROTO_ICMP, PROTO_ICMPV6})
