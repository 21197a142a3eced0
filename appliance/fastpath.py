"""The fast path: prove with one or two struct reads that no rule can touch a packet.

Why: most packets through an appliance match no rule, and parsing each one into an InnerPacket and
asking every rule costs microseconds of Python per packet. `FastPath` is compiled from the policy
once: per transport protocol, the ports (UDP, TCP) or ICMP types that some rule might match, or
"all" when a rule has no such condition. A packet in GWLB's usual layout (Geneve with the three
AWS options in order; IPv4 without options or fragments, or IPv6 without extension headers) whose
ports or type are outside those sets, and whose lengths are exactly consistent, passes without
further work. Everything else takes the full path (datapath.handle_datagram), which remains the
reference: the fast path may only ever say "passes untouched" where the full path says PASS
(tests/unit/test_fastpath.py checks that on random packets).
"""

from __future__ import annotations

import struct

from appliance.inner import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP
from appliance.policy import Policy

# Geneve with GWLB's options (4 words: version/opt len/flags/protocol, then the three option
# headers), then IPv4 (version/IHL, total length, flags/fragment, protocol), then 13 bytes of the
# transport header (ports or ICMP type and code, the UDP length, the TCP data offset).
_V4 = struct.Struct("!I4xI8xI8xI4x" + "BxH2xHxB10x" + "HHH6xB")
# The same Geneve words, then IPv6 (version, payload length, next header) and the transport.
_V6 = struct.Struct("!I4xI8xI8xI4x" + "IHB33x" + "HHH6xB")
GENEVE_V4 = 0x08000800  # version 0, opt len 8 words, no flags, protocol IPv4
GENEVE_V6 = 0x080086DD
TAGS = (0x01080102, 0x01080202, 0x01080301)  # endpoint id, attachment id, flow cookie
ALL = None  # every packet of the protocol may match a rule


class FastPath:
    """`passes(buf, start, length)`: True only when the full path would surely say PASS."""

    def __init__(self, policy: Policy) -> None:
        self.watch: dict[int, frozenset[int] | None] = {}
        self.other: bool = False  # some rule may match protocols other than UDP/TCP/ICMP
        for rule in policy.rules:
            m = rule.match
            for proto in (PROTO_UDP, PROTO_TCP, PROTO_ICMP, PROTO_ICMPV6):
                if m.protocol is not None and m.protocol != proto:
                    continue
                if proto in (PROTO_UDP, PROTO_TCP):
                    keys = _ports(m.ports, m.src_ports, m.dst_ports)
                else:
                    keys = m.icmp_types
                self._add(proto, keys)
            if m.protocol is None or m.protocol not in (
                PROTO_UDP,
                PROTO_TCP,
                PROTO_ICMP,
                PROTO_ICMPV6,
            ):
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

    def passes(self, buf: bytearray, start: int, length: int) -> bool:
        """`buf` must hold at least 73 bytes from `start` (the worker's slots hold 9216)."""
        (g0, t1, t2, t3, ver, total, frag, proto, w0, w1, w2, tcp_off) = _V4.unpack_from(buf, start)
        if t1 != 0x01080102 or t2 != 0x01080202 or t3 != 0x01080301:
            return False
        if g0 == GENEVE_V4:
            if ver != 0x45 or total != length - 40 or frag & 0x3FFF:
                return False  # options, a fragment, or lengths to check: the full path
            available = total - 20
        elif g0 == GENEVE_V6:
            (_, _, _, _, first, payload, proto, w0, w1, w2, tcp_off) = _V6.unpack_from(buf, start)
            if first >> 28 != 6 or payload != length - 80:
                return False
            available = payload
        else:
            return False
        if proto == PROTO_UDP:
            watch = self.udp
            if w2 != available or available < 8:
                return False
            return watch is not ALL and w0 not in watch and w1 not in watch
        if proto == PROTO_TCP:
            watch = self.tcp
            offset = (tcp_off >> 4) * 4
            if available < 20 or offset < 20 or offset > available:
                return False
            return watch is not ALL and w0 not in watch and w1 not in watch
        if proto == PROTO_ICMP if g0 == GENEVE_V4 else proto == PROTO_ICMPV6:
            watch = self.icmp if g0 == GENEVE_V4 else self.icmp6
            return available >= 8 and watch is not ALL and (w0 >> 8) not in watch
        if g0 == GENEVE_V6 and proto in _IPV6_EXTENSIONS:
            return False
        return not self.other and proto not in self.watch


_IPV6_EXTENSIONS = frozenset({0, 43, 44, 51, 60, 135, 139, 140})


def _ports(*sets: frozenset[int] | None) -> frozenset[int] | None:
    """The ports a rule names on either side; None when it names none (it matches any port)."""
    named = [s for s in sets if s is not None]
    if not named:
        return None
    return frozenset().union(*named)
