"""Rewriting an inner packet's payload, with every length and checksum fixed.

Checksums are updated incrementally where that is exact (RFC 1624): the IPv4 header checksum sees
only its total length change, and a UDP checksum sees the length (twice: header and
pseudo-header) and the replaced bytes, as long as every replacement changes the length by an even
number of bytes (so the rest of the payload keeps its 16-bit alignment). Beyond speed, this keeps
the end-to-end property: a datagram that arrived with a wrong checksum leaves with one that is
wrong by the same amount, instead of one we blessed. Anything else (an odd length change, ICMP,
a zero UDP checksum over IPv6) is recomputed in full (RFC 1071 with the pseudo-header).

Why it is written flat: this runs for every rewritten packet, where each Python-level step costs
tens of nanoseconds. The demo's case (one replacement, found once, in UDP right after an IPv4
header without options or an IPv6 header without extensions) reads and writes its four header
fields with one struct each and computes both checksums inline; everything else takes
`_fix_headers`, a field at a time. Incremental beats a full sum here even for a short payload:
summing 64 bytes costs 0.16 us (int.from_bytes and a modulo) and 1400 bytes 2.0 us, against
one find per match. tests/unit/test_rewrite_speedpath.py holds every path to scapy and to the
field-at-a-time code.

`rewrite_found` is the same rewrite for the UDP lane (fastpath.UdpLane), which has found the
match already: one replacement found once, its checksum changes worked out at load, only the
payload's tail moved; it declines (and touches nothing) whatever else, and the lane then calls
rewrite_in_place. tests/unit/test_udp_lane.py holds it to rewrite_in_place, byte for byte.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from appliance.checksum import adjust_sum, finish, udp_checksum_field
from appliance.inner import PROTO_ICMP, PROTO_UDP, InnerPacket
from appliance.policy import Replacement

MAX_INNER_BYTES = 8500  # GWLB's limit for the inner packet (DESIGN.md §1)
_WORD = struct.Struct("!H")
_TOTAL_AND_CHECKSUM = struct.Struct("!H6xH")  # IPv4 total length, then the header checksum
_UDP_LENGTH_AND_CHECKSUM = struct.Struct("!HH")
# From the IPv4 total length (a 20-byte header) or the IPv6 payload length (no extension header)
# to the UDP checksum: the changed fields, and the bytes between them carried through unchanged.
_V4_UDP = struct.Struct("!H6sH12sHH")  # total, (id..protocol), checksum, (addresses, ports), ...
_V6_UDP = struct.Struct("!H38sHH")  # payload length, (next header..ports), UDP length, checksum


def rewrite_in_place(
    buf: bytearray, pkt: InnerPacket, replacements: tuple[Replacement, ...]
) -> int | None:
    """Rewrite pkt's payload inside `buf`, fixing every length and checksum; the new end.

    None when the inner packet would grow past 8500 bytes (or past the buffer); `buf` is then
    untouched. Everything before the payload stays where it is, so the Geneve header and options
    are untouched.
    """
    version, ip, end, protocol, l4, _, _, _, _, _, at, _ = pkt
    payload = buf[at:end]
    parity = (at - l4) & 1
    delta: int | None = 0  # the change of the payload's sum, None when it cannot be tracked
    for find, replace, change in replacements:
        edited = payload.replace(find, replace)
        if change is None:
            delta = None
        elif delta is not None:
            if len(edited) - len(payload) == len(replace) - len(find) != 0:
                # Found once, as the length tells: one find for the match's parity. This step
                # costs 0.34 us at 64 bytes, against 0.39 with a second find to prove it is the
                # only one, and 0.45 in place (two finds in the buffer, a move of what follows).
                delta += change[(parity + payload.find(find)) & 1]
            else:
                # Non-overlapping, left to right, as bytes.replace does; each step passes one.
                position, step = payload.find(find), len(find)
                while position >= 0:
                    delta += change[(parity + position) & 1]
                    position = payload.find(find, position + step)
        payload = edited
    new_end = at + len(payload)
    inner_len, l4_len = new_end - ip, new_end - l4
    if inner_len > MAX_INNER_BYTES or new_end > len(buf):
        return None
    buf[at:new_end] = payload  # as long as the slice: the exported buffer is never resized
    if protocol == PROTO_UDP and delta is not None:
        # _fix_headers for the usual layouts: one struct over the four fields and the bytes
        # between them, checksum.adjust_sum inlined (this function: 0.90 us at 64 bytes, against
        # 1.06 calling _fix_headers for every packet).
        if l4 - ip == 20 and version == 4:
            total, middle, header_sum, between, udp_len, udp_sum = _V4_UDP.unpack_from(buf, ip + 2)
            if udp_sum:
                header_sum = (header_sum - (inner_len - total)) % 0xFFFF
                udp_sum = (udp_sum - 2 * (l4_len - udp_len) - delta) % 0xFFFF or 0xFFFF
                _V4_UDP.pack_into(
                    buf, ip + 2, inner_len, middle, header_sum, between, l4_len, udp_sum
                )
                return new_end
        elif l4 - ip == 40 and version == 6:
            _, middle, udp_len, udp_sum = _V6_UDP.unpack_from(buf, ip + 4)
            if udp_sum:
                udp_sum = (udp_sum - 2 * (l4_len - udp_len) - delta) % 0xFFFF or 0xFFFF
                _V6_UDP.pack_into(buf, ip + 4, inner_len - 40, middle, l4_len, udp_sum)
                return new_end
    _fix_headers(buf, version, ip, l4, protocol, inner_len, l4_len, delta)
    return new_end


class FoundEdit(NamedTuple):
    """A replacement as rewrite_found applies it, its constants worked out once (found_edit)."""

    find: bytes
    # A bytearray: a slice assignment copies any other kind into a new bytearray first (0.1 us
    # of the rewrite's, worker_profile.py at 64 B).
    replace: bytearray
    find_len: int
    grow: int  # how the length changes
    # What the UDP checksum loses for a match at an even or an odd offset from the UDP header:
    # its length twice (header and pseudo-header) and the payload's word sum change, modulo
    # 0xFFFF; None when the length changes by an odd count (rewrite_in_place sums in full).
    udp_change: tuple[int, int] | None
    replacement: Replacement  # as rewrite_in_place takes it


def found_edit(replacement: Replacement) -> FoundEdit:
    """`replacement` (policy.Replacement) as rewrite_found applies it."""
    find, replace, change = replacement
    grow = len(replace) - len(find)
    udp = None
    if change is not None:
        udp = ((2 * grow + change[0]) % 0xFFFF, (2 * grow + change[1]) % 0xFFFF)
    return FoundEdit(find, bytearray(replace), len(find), grow, udp, replacement)


def rewrite_found(
    buf: bytearray, version: int, l4: int, end: int, position: int, edit: FoundEdit
) -> int | None:
    """rewrite_in_place for one replacement in a UDP datagram that ends at `end` (its IP and UDP
    lengths say so) after an IPv4 header without options or an IPv6 header without extensions,
    whose `find` the policy found first at `position`: the new end, and the same bytes
    rewrite_in_place writes.

    None, with `buf` untouched, when it is not that case: `find` occurs again, the length
    changes by an odd count, a zero UDP checksum over IPv6 (these three rewrite_in_place does
    in full), or the packet would grow past 8500 bytes or the buffer (rewrite_in_place refuses
    it too). Why: the match is not searched again, only the payload's tail moves (where
    rewrite_in_place copies, replaces and searches the whole payload again), and the checksum
    changes are worked out at load; fastpath.UdpLane calls it."""
    find, replace, find_len, grow, udp_change, _ = edit
    after = position + find_len
    if udp_change is None or buf.find(find, after, end) >= 0:
        return None
    new_end = end + grow
    ip = l4 - 20 if version == 4 else l4 - 40
    if new_end - ip > MAX_INNER_BYTES or new_end > len(buf):
        return None
    if version == 4:
        total, middle, header_sum, between, udp_len, udp_sum = _V4_UDP.unpack_from(buf, ip + 2)
        if udp_sum:  # RFC 768: zero means "no checksum" over IPv4, and stays so
            udp_sum = (udp_sum - udp_change[(position - l4) & 1]) % 0xFFFF or 0xFFFF
        if grow:
            buf[after + grow : new_end] = buf[after:end]
        buf[position : after + grow] = replace
        _V4_UDP.pack_into(
            buf,
            ip + 2,
            total + grow,
            middle,
            (header_sum - grow) % 0xFFFF,
            between,
            udp_len + grow,
            udp_sum,
        )
        return new_end
    payload_len, middle, udp_len, udp_sum = _V6_UDP.unpack_from(buf, ip + 4)
    if not udp_sum:
        return None
    udp_sum = (udp_sum - udp_change[(position - l4) & 1]) % 0xFFFF or 0xFFFF
    if grow:
        buf[after + grow : new_end] = buf[after:end]
    buf[position : after + grow] = replace
    _V6_UDP.pack_into(buf, ip + 4, payload_len + grow, middle, udp_len + grow, udp_sum)
    return new_end


def _fix_headers(
    buf: bytearray,
    version: int,
    ip: int,
    l4: int,
    protocol: int,
    inner_len: int,
    l4_len: int,
    delta: int | None,
) -> None:
    """Set the IP and transport lengths for a payload now inner_len and l4_len bytes long, and
    fix the checksums: incrementally by `delta` (the payload's word sum change) when known."""
    if version == 4:
        old_total, old_sum = _TOTAL_AND_CHECKSUM.unpack_from(buf, ip + 2)
        _WORD.pack_into(buf, ip + 2, inner_len)
        _WORD.pack_into(buf, ip + 10, adjust_sum(old_sum, inner_len - old_total))
    else:
        _WORD.pack_into(buf, ip + 4, inner_len - 40)
    if protocol == PROTO_UDP:
        old_len, old_sum = _UDP_LENGTH_AND_CHECKSUM.unpack_from(buf, l4 + 4)
        if version == 4 and not old_sum:
            _WORD.pack_into(buf, l4 + 4, l4_len)
            return  # RFC 768: zero means "no checksum" over IPv4, and stays so
        if delta is not None and old_sum:
            # RFC 1624 eqn. 3 over every changed word at once; the length counts twice (header
            # and pseudo-header). A computed zero is sent as 0xFFFF (RFC 768).
            checksum = adjust_sum(old_sum, 2 * (l4_len - old_len) + delta) or 0xFFFF
            _UDP_LENGTH_AND_CHECKSUM.pack_into(buf, l4 + 4, l4_len, checksum)
            return
        _WORD.pack_into(buf, l4 + 4, l4_len)
    _fix_transport_checksum(buf, ip, l4, l4_len, version, protocol)


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
