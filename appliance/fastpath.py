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

For a stateless policy whose UDP rules all have shapes it reads (policy.LaneRule), `UdpLane`
goes one step further for the UDP packets a rule may touch: it asks the rules and rewrites or
drops the packet itself, from the same read, with no Decision or parse built on the way.
tests/unit/test_udp_lane.py holds it to the general path on random policies and packets.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Literal, overload

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
from appliance.policy import Action, LaneRule, Policy, Replacement
from appliance.rewrite import FoundEdit, found_edit, rewrite_found, rewrite_in_place

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
# A lane's answer for a UDP packet in the usual layout (UdpLane.settle), from (buf, start,
# length, version, source port, destination port).
Lane = Callable[[bytearray, int, int, int, int, int], "int | Literal[True] | InnerPacket"]


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
        # The UDP lane (UdpLane) stands for `decide`, which only a stateless policy asks alone
        # (worker.py); what it settles are the UDP packets `watch` sends to the policy.
        self.lane: Lane | None = None
        if policy.udp_lane is not None and not policy.stateful and PROTO_UDP in self.watch:
            self.lane = UdpLane(policy.udp_lane).settle
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

    @overload
    def classify(
        self, buf: bytearray, start: int, length: int
    ) -> Literal[True] | InnerPacket | None: ...

    @overload
    def classify(
        self, buf: bytearray, start: int, length: int, lane: Lane | None
    ) -> Literal[True] | InnerPacket | int | None: ...

    def classify(
        self, buf: bytearray, start: int, length: int, lane: Lane | None = None
    ) -> Literal[True] | InnerPacket | int | None:
        """True: passes untouched. An InnerPacket: the usual layout, parsed; ask the policy.
        None: anything else; take the full path. `buf` must hold 93 bytes from `start` (the
        receive slot does); nothing past `start + length` decides anything.
        With `lane` (self.lane, for a stateless policy), a UDP packet some rule may touch gets
        the lane's answer instead of its parse: True, an int (UdpLane.settle), or the parse."""
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
            if lane is not None and header == 8:  # UDP
                return lane(buf, start, length, version, w0, w1)
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


def _parsing_all() -> FastPath:
    """A FastPath for which some rule may touch every packet: its classify parses every datagram
    in the usual layout (never True), the InnerPacket parse_datagram would make."""
    fast = FastPath(Policy())
    fast.watch = {proto: ALL for proto in _KNOWN}
    fast.other = True
    fast.udp = fast.tcp = fast.icmp = fast.icmp6 = ALL
    return fast


class UdpLane:
    """`Policy.decide` and the rewrite it asks for, in one step, for a UDP packet in GWLB's
    usual layout (classify has vouched for it), from the policy's lane rules (policy.LaneRule:
    derived at load from any rule set whose shape qualifies; other shapes leave the policy
    without a lane, and its UDP packets take `decide`). `settle` answers:
    - True: it passes untouched;
    - an int >= 0: it was rewritten (rewrite.rewrite_found, else rewrite_in_place) and the
      reply is that long;
    - an int < 0: rule ~n dropped it;
    - the parse (an InnerPacket, as classify gives it) when the lane leaves it to the general
      path: a reject, or a rewrite too big (OVERSIZE); the buffer is then untouched.
    Why: the general path parses into an InnerPacket, asks each rule's checks through closures,
    builds Decisions, then the rewrite searches the payload again for the match the policy
    found; the demo's rewrite class cost 3.00 us a packet that way, 1.84 us here, its drops
    1.47 and 0.95 (worker_profile.py, 64 B, pass_v4 0.58). tests/unit/test_udp_lane.py holds
    it to the general path."""

    def __init__(self, rules: tuple[LaneRule, ...]) -> None:
        self.rules = rules
        self.groups = _groups(rules)

    def settle(
        self, buf: bytearray, start: int, length: int, version: int, sport: int, dport: int
    ) -> int | Literal[True] | InnerPacket:
        """The packet's fate, as `Policy.decide` and `datapath.carry_out` make it."""
        l4 = start + 60 if version == 4 else start + 80
        at, end = l4 + 8, start + length
        first: FoundEdit | None = None  # the first matching replace's, where it found `find`
        position = -1
        later: list[Replacement] | None = None  # the replaces that matched after it
        for need, ports, src, dst, steps in self.groups:
            if (
                (need and need != version)
                or (ports is not None and sport not in ports and dport not in ports)
                or (src is not None and sport not in src)
                or (dst is not None and dport not in dst)
            ):
                continue
            for action, rule, needles, key, edit in steps:
                if needles and _missing(buf, needles, at, end):
                    continue
                found = buf.find(key, at, end)
                if found < 0:
                    continue
                if action is _REPLACE:
                    if first is None:
                        first, position = edit, found
                    elif later is None:
                        later = [edit.replacement]
                    else:
                        later.append(edit.replacement)
                elif action is _DROP:
                    return ~rule
                elif action is _PASS:
                    break  # later rules are not asked; earlier replaces apply
                else:  # reject: the general path answers it
                    return _udp_packet(version, start, length, l4, sport, dport)
            else:
                continue
            break  # a pass rule stopped the evaluation
        if first is None:
            return True
        if later is None:
            new_end = rewrite_found(buf, version, l4, end, position, first)
            if new_end is not None:
                return new_end - start
            later = []
        pkt = _udp_packet(version, start, length, l4, sport, dport)
        new_end = rewrite_in_place(buf, pkt, (first.replacement, *later))
        return pkt if new_end is None else new_end - start


# A lane rule as UdpLane.settle reads it: (action, rule index, the needles it must find first,
# the one it finds last (a replace's `find`), its replacement as rewrite_found takes it).
_Step = tuple[Action, int, tuple[bytes, ...], bytes, FoundEdit]
_Group = tuple[
    int,
    "frozenset[int] | None",
    "frozenset[int] | None",
    "frozenset[int] | None",
    tuple[_Step, ...],
]


def _groups(rules: tuple[LaneRule, ...]) -> tuple[_Group, ...]:
    """The lane rules as steps, in order, in groups of consecutive rules with the same version
    and port conditions, which are asked once per group (the demo's two rules: one group)."""
    groups: list[tuple[tuple[object, ...], list[_Step]]] = []
    for rule in rules:
        head = (rule.version, rule.ports, rule.src_ports, rule.dst_ports)
        if rule.action is _REPLACE:
            needles, key = rule.needles, rule.replacement[0]
        else:  # its last needle is found last; b"" is found in any payload
            needles, key = rule.needles[:-1], (rule.needles[-1] if rule.needles else b"")
        step = (rule.action, rule.rule, needles, key, found_edit(rule.replacement))
        if groups and groups[-1][0] == head:
            groups[-1][1].append(step)
        else:
            groups.append((head, [step]))
    return tuple((*head, tuple(steps)) for head, steps in groups)  # type: ignore[misc]


def _missing(buf: bytearray, needles: tuple[bytes, ...], at: int, end: int) -> bool:
    """Whether one of `needles` is not in buf[at:end]."""
    return any(buf.find(needle, at, end) < 0 for needle in needles)


def _udp_packet(
    version: int, start: int, length: int, l4: int, sport: int, dport: int
) -> InnerPacket:
    """The parse classify gives a UDP packet in the usual layout."""
    return _new(
        InnerPacket,
        (
            version,
            start + 40,
            start + length,
            PROTO_UDP,
            l4,
            _WHOLE,
            sport,
            dport,
            -1,
            -1,
            l4 + 8,
            False,
        ),
    )


_REPLACE, _DROP, _PASS = Action.REPLACE, Action.DROP, Action.PASS
_IPV6_EXTENSIONS = frozenset({0, 43, 44, 51, 60, 135, 139, 140})
_PORTED = frozenset({PROTO_UDP, PROTO_TCP})  # transports whose rules may name ports
_KNOWN = frozenset({PROTO_UDP, PROTO_TCP, PROTO_ICMP, PROTO_ICMPV6})

# The usual layout parsed (the fast path's read) or None: for the worker's new flows, which its
# loop has already vouched for. parse_datagram measured 1.55 us a SYN of firewall_profile.py,
# this 0.55 us.
parse_usual = _parsing_all().classify
