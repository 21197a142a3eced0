"""The `reject` action's packet: a TCP RST or an ICMP "administratively prohibited", sent back
inside the flow of the packet it answers (issue 11).

The appliance cannot originate flows into GWLB; what it returns inside a flow, GWLB delivers to
that flow's inner destination (DESIGN.md §1). So the answer to the sender is the received Geneve
header and options, byte-identical (GWLB drops a reply with a stale flow cookie), followed by a
generated inner packet from the offending packet's destination to its source: the appliance
speaks for the destination.

- TCP: a RST as RFC 9293 §3.10.7.1 prescribes for an unacceptable segment. With ACK set:
  <SEQ=SEG.ACK><CTL=RST>; without: <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>, SEG.LEN being the
  payload plus one for SYN and one for FIN. Data offset 5, window 0, no options.
- Anything else: ICMP destination unreachable, type 3 code 13 (RFC 1812 §5.2.7.1), quoting the
  offending packet from its IP header on, as much as keeps the ICMP packet within 576 bytes
  (RFC 1812 §4.3.2.3; RFC 792's minimum, the IP header and 8 bytes, always fits); over IPv6,
  type 1 code 1 quoting as much as fits in 1280 bytes (RFC 4443 §3.1, §2.4(c)).
- Nothing (RFC 1122 §3.2.2, RFC 1812 §4.3.2.7, RFC 4443 §2.4(e), RFC 9293 §3.10.7.1) for: an
  ICMP error (ICMPv4 3, 4, 5, 11, 12; ICMPv6 below 128) or ICMPv6 neighbour discovery (133-137);
  a TCP RST; a later fragment (it has no transport header); a source or destination that is not
  one unicast host: 0.0.0.0/8, 127.0.0.0/8, 224.0.0.0/4, 240.0.0.0/4 (255.255.255.255 among
  them); ::, ::1, ff00::/8. Subnet broadcasts cannot be known from here and are not guessed at.
  The destination is checked as strictly as the source because it becomes the reply's source.

Two choices the RFCs leave open:
- A first fragment (offset 0, more to come) is answered with ICMP, whatever its protocol: ICMP
  errors are per datagram and go for fragment zero (RFC 1122 §3.2.2), and the quote carries the
  ports. A RST is not possible: SEG.LEN needs the whole segment, which only reassembly knows.
  A first fragment carrying a RST still gets nothing.
- TCP in an IPv6 packet with a routing header that has segments left is answered with ICMPv6,
  not a RST: the segment's final destination is in the routing header (RFC 8200 §8.1), whose
  types we do not interpret, and a RST from any other address is one the sender ignores. The
  ICMPv6 error comes from the address the packet was sent to, as RFC 4443 §2.2 allows.

Why the checksums are arithmetic: 2**16 is 1 modulo 0xFFFF, so a 32- or 64-bit field adds its own
value to a one's-complement sum (checksum.py), and the headers' sums are a handful of integer
additions over the fields as they are packed: no slice of the output is read back.

In place: every byte of the offending packet that is needed is read before anything is written,
so `out` may be the very buffer the packet lies in (the worker's receive slot), at any offset.
"""

from __future__ import annotations

import enum
import struct

from appliance.checksum import Buffer, finish
from appliance.inner import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, Fragment, InnerPacket

MAX_INNER_BYTES = 8500  # GWLB's limit for the inner packet (DESIGN.md §1)
ICMP_MAX_BYTES = 576  # RFC 1812 §4.3.2.3: the whole ICMPv4 error, IP header included
ICMPV6_MAX_BYTES = 1280  # RFC 4443 §2.4(c): the IPv6 minimum MTU
assert ICMPV6_MAX_BYTES <= MAX_INNER_BYTES and ICMP_MAX_BYTES <= MAX_INNER_BYTES

HOP_LIMIT = 64
ICMP_UNREACHABLE, ICMP_ADMIN_PROHIBITED = 3, 13  # RFC 1812 §5.2.7.1
ICMPV6_UNREACHABLE, ICMPV6_ADMIN_PROHIBITED = 1, 1  # RFC 4443 §3.1
ICMP_ERROR_TYPES = frozenset({3, 4, 5, 11, 12})  # unreachable, quench, redirect, time, parameter
ICMPV6_ND_TYPES = range(133, 138)  # router/neighbour solicitation and advertisement, redirect
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10

_NS_PER_S = 1_000_000_000
_VERSION_IHL_TOS = 0x4500  # IPv4, 20-byte header, TOS 0
_DONT_FRAGMENT = 0x4000  # DF with ID 0: an atomic datagram (RFC 6864 §4.1)
_IPV4_FIXED = _VERSION_IHL_TOS + _DONT_FRAGMENT  # their share of the header checksum
_IPV6_FIRST_WORD = 0x60000000  # version 6, traffic class 0, flow label 0
_TCP_OFFSET_WORD = 5 << 12  # data offset 5 words, flags added per segment

_V4_ADDRESSES = struct.Struct("!II")
_V6_ADDRESSES = struct.Struct("!QQQQ")
_TCP_FIELDS = struct.Struct("!HHII")  # ports, sequence and acknowledgment numbers
# Generated headers, packed in one call each: IPv4 (version/IHL/TOS, total length, ID, flags,
# TTL, protocol, checksum, source, destination) or IPv6 (first word, payload length, next header,
# hop limit, addresses as 64-bit halves), then TCP (ports, seq, ack, offset/flags, window,
# checksum, urgent pointer) or ICMP (type, code, checksum, unused).
_RST_V4 = struct.Struct("!HHHHBBHIIHHIIHHHH")
_RST_V6 = struct.Struct("!IHBBQQQQHHIIHHHH")
_ICMP_V4 = struct.Struct("!HHHHBBHIIBBHI")
_ICMP_V6 = struct.Struct("!IHBBQQQQBBHI")
RST_V4_BYTES, RST_V6_BYTES = _RST_V4.size, _RST_V6.size  # 40, 60
ICMP_V4_HEADERS, ICMP_V6_HEADERS = _ICMP_V4.size, _ICMP_V6.size  # 28, 48


class RejectKind(enum.IntEnum):
    """What a rejected packet gets back."""

    NOTHING = 0  # an excluded kind (see the module docstring): drop silently
    TCP_RESET = 1
    ICMP_PROHIBITED = 2  # ICMP type 3 code 13, or ICMPv6 type 1 code 1


# Module constants: an enum member lookup per packet costs more than the comparison it feeds.
_NOTHING, _TCP_RESET, _ICMP = RejectKind.NOTHING, RejectKind.TCP_RESET, RejectKind.ICMP_PROHIBITED
_WHOLE, _LATER = Fragment.NONE, Fragment.LATER


def reject_kind(buf: Buffer, pkt: InnerPacket) -> RejectKind:
    """What rejecting `pkt` (parsed from `buf` by inner.parse_inner) may send back; cheap."""
    version, ip, _, protocol, l4, fragment, _, _, icmp_type, _, _, routed = pkt
    if fragment == _LATER:
        return _NOTHING
    if version == 4:
        src, dst = _V4_ADDRESSES.unpack_from(buf, ip + 12)
        if not (_one_host_v4(src) and _one_host_v4(dst)) or icmp_type in ICMP_ERROR_TYPES:
            return _NOTHING
    else:
        src_hi, src_lo, dst_hi, dst_lo = _V6_ADDRESSES.unpack_from(buf, ip + 8)
        if not (_one_host_v6(src_hi, src_lo) and _one_host_v6(dst_hi, dst_lo)):
            return _NOTHING
        if 0 <= icmp_type < 128 or icmp_type in ICMPV6_ND_TYPES:  # -1 when not ICMPv6
            return _NOTHING
    if protocol == PROTO_TCP:
        if buf[l4 + 13] & TCP_RST:  # RFC 9293 §3.10.7.1: a RST is never answered
            return _NOTHING
        if fragment == _WHOLE and not routed:
            return _TCP_RESET
    return _ICMP


def _one_host_v4(address: int) -> bool:
    """Not 0/8 ("this network"), 127/8 (loopback), 224/4 (multicast) or 240/4 (reserved and the
    limited broadcast): RFC 1812 §4.3.2.7's addresses that do not define a single host."""
    top = address >> 24
    return 0 < top < 224 and top != 127


def _one_host_v6(high: int, low: int) -> bool:
    """Not ff00::/8 (multicast), :: (unspecified) or ::1 (loopback, never on a wire)."""
    return high >> 56 != 0xFF and (high != 0 or low > 1)


def build_reject(
    src: Buffer,
    start: int,
    pkt: InnerPacket,
    out: bytearray,
    out_start: int,
    out_end: int | None = None,
) -> int | None:
    """Write the reject for `pkt` at out[out_start:]; return where it ends, or None for nothing.

    `src[start:pkt.start]` is the received Geneve header and options, `pkt` the inner packet
    parse_inner found after it. The reply (that Geneve, byte-identical, then the generated inner
    packet) never passes `out_end` (default len(out)): an ICMP quote shrinks to fit the slot, and
    when not even a RST or RFC 792's minimum quote fits, nothing is written and None returned.
    None also for every kind reject_kind refuses. `out` may share memory with `src` (see above).
    Call reject_kind and the RejectBudget first to spend neither a token nor the build on
    a packet that gets nothing.
    """
    kind = reject_kind(src, pkt)
    if kind is _NOTHING:
        return None
    limit = len(out) if out_end is None else min(out_end, len(out))
    if kind is _TCP_RESET:
        return _write_rst(src, start, pkt, out, out_start, limit)
    return _write_icmp(src, start, pkt, out, out_start, limit)


def _write_rst(
    src: Buffer, start: int, pkt: InnerPacket, out: bytearray, out_start: int, limit: int
) -> int | None:
    inner = out_start + pkt.start - start  # where the generated packet goes, after the Geneve
    version, ip, end, _, l4, _, _, _, _, _, payload, _ = pkt
    end_out = inner + (RST_V4_BYTES if version == 4 else RST_V6_BYTES)
    if end_out > limit:
        return None
    geneve = bytes(src[start:ip])  # every read before the first write: src and out may overlap
    sport, dport, seg_seq, seg_ack = _TCP_FIELDS.unpack_from(src, l4)
    flags = src[l4 + 13]
    if flags & TCP_ACK:
        seq, ack, ctl = seg_ack, 0, TCP_RST
    else:
        seg_len = end - payload + (flags >> 1 & 1) + (flags & TCP_FIN)  # SYN and FIN count one
        seq, ack, ctl = 0, (seg_seq + seg_len) & 0xFFFFFFFF, TCP_RST | TCP_ACK
    # The reply's ports and addresses are the offending packet's, swapped; TCP length 20.
    tcp_sum = PROTO_TCP + 20 + (dport << 16 | sport) + seq + ack + (_TCP_OFFSET_WORD | ctl)
    if version == 4:
        a, b = _V4_ADDRESSES.unpack_from(src, ip + 12)
        ip_csum = finish(_IPV4_FIXED + RST_V4_BYTES + (HOP_LIMIT << 8 | PROTO_TCP) + a + b)
        tcp_csum = finish(tcp_sum + a + b)
        _RST_V4.pack_into(
            out, inner,
            _VERSION_IHL_TOS, RST_V4_BYTES, 0, _DONT_FRAGMENT, HOP_LIMIT, PROTO_TCP, ip_csum, b, a,
            dport, sport, seq, ack, _TCP_OFFSET_WORD | ctl, 0, tcp_csum, 0,
        )  # fmt: skip
    else:
        a1, a2, b1, b2 = _V6_ADDRESSES.unpack_from(src, ip + 8)
        tcp_csum = finish(tcp_sum + a1 + a2 + b1 + b2)
        _RST_V6.pack_into(
            out, inner,
            _IPV6_FIRST_WORD, 20, PROTO_TCP, HOP_LIMIT, b1, b2, a1, a2,
            dport, sport, seq, ack, _TCP_OFFSET_WORD | ctl, 0, tcp_csum, 0,
        )  # fmt: skip
    out[out_start:inner] = geneve
    return end_out


def _write_icmp(
    src: Buffer, start: int, pkt: InnerPacket, out: bytearray, out_start: int, limit: int
) -> int | None:
    inner = out_start + pkt.start - start  # where the generated packet goes, after the Geneve
    version, ip, end, _, l4, _, _, _, _, _, _, _ = pkt
    headers = ICMP_V4_HEADERS if version == 4 else ICMP_V6_HEADERS
    ceiling = ICMP_MAX_BYTES if version == 4 else ICMPV6_MAX_BYTES
    size = min(end - ip, ceiling - headers, limit - inner - headers)
    if size < min(end - ip, l4 - ip + 8):  # RFC 792: at least the IP header and 8 bytes
        return None
    quote = bytes(src[ip : ip + size])  # every read before the first write: src and out overlap
    geneve = bytes(src[start:ip])
    quote_sum = int.from_bytes(quote, "big") << (8 if size & 1 else 0)
    if version == 4:
        a, b = _V4_ADDRESSES.unpack_from(src, ip + 12)
        total = headers + size
        ip_csum = finish(_IPV4_FIXED + total + (HOP_LIMIT << 8 | PROTO_ICMP) + a + b)
        icmp_csum = finish((ICMP_UNREACHABLE << 8 | ICMP_ADMIN_PROHIBITED) + quote_sum)
        _ICMP_V4.pack_into(
            out, inner,
            _VERSION_IHL_TOS, total, 0, _DONT_FRAGMENT, HOP_LIMIT, PROTO_ICMP, ip_csum, b, a,
            ICMP_UNREACHABLE, ICMP_ADMIN_PROHIBITED, icmp_csum, 0,
        )  # fmt: skip
    else:
        a1, a2, b1, b2 = _V6_ADDRESSES.unpack_from(src, ip + 8)
        length = 8 + size  # RFC 4443 §2.3: the pseudo-header's upper-layer length
        icmp_sum = a1 + a2 + b1 + b2 + length + PROTO_ICMPV6 + quote_sum
        icmp_csum = finish(icmp_sum + (ICMPV6_UNREACHABLE << 8 | ICMPV6_ADMIN_PROHIBITED))
        _ICMP_V6.pack_into(
            out, inner,
            _IPV6_FIRST_WORD, length, PROTO_ICMPV6, HOP_LIMIT, b1, b2, a1, a2,
            ICMPV6_UNREACHABLE, ICMPV6_ADMIN_PROHIBITED, icmp_csum, 0,
        )  # fmt: skip
    out[out_start:inner] = geneve
    stop = inner + headers + size
    out[inner + headers : stop] = quote
    return stop


class RejectBudget:
    """A worker's ceiling on generated rejects: a token bucket on a clock the caller passes in.

    The bucket holds at most `burst` tokens, starts full, and gains `per_second` tokens a
    second; each reject spends one. Over any span of T nanoseconds it allows at most
    burst + floor(T * per_second / 1e9) rejects, so with the default burst of 1 a flood gets at
    most `per_second` rejects in any one second (any half-open window of 1e9 ns). A larger burst
    lets a quiet worker answer a few rejects at once, at the price of that many more in the
    first second of a flood. `refused` counts the rejects it turned down (those packets are
    dropped silently), `allowed` the ones it let through. The credit is kept in
    token-nanoseconds, integers only, so it cannot drift over a long uptime; a clock that steps
    back adds nothing.
    """

    __slots__ = ("_capacity", "_credit", "_last_ns", "allowed", "burst", "per_second", "refused")

    def __init__(self, per_second: int, burst: int = 1, now_ns: int = 0) -> None:
        if per_second < 0 or burst < 1:
            raise ValueError(f"per_second {per_second} must be >= 0, burst {burst} >= 1")
        self.per_second = per_second
        self.burst = burst if per_second else 0  # no rate, no tokens: every reject refused
        self.allowed = 0
        self.refused = 0
        self._capacity = self.burst * _NS_PER_S
        self._credit = self._capacity
        self._last_ns = now_ns

    def spent(self, now_ns: int) -> bool:
        """Whether a reject at `now_ns` would surely be refused (no token), without spending or
        counting: a flood of rejected packets then costs no parse once the bucket is empty."""
        since = now_ns - self._last_ns
        credit = self._credit + since * self.per_second if since > 0 else self._credit
        return min(self._capacity, credit) < _NS_PER_S

    def allow(self, now_ns: int) -> bool:
        """Spend a token for one reject at `now_ns` (a monotonic clock), if there is one."""
        elapsed = now_ns - self._last_ns
        if elapsed > 0:
            self._last_ns = now_ns
            self._credit = min(self._capacity, self._credit + elapsed * self.per_second)
        if self._credit >= _NS_PER_S:
            self._credit -= _NS_PER_S
            self.allowed += 1
            return True
        self.refused += 1
        return False
