"""The rewrite's speed path (appliance/rewrite.py) against scapy and against the code it replaced.

- checksum.adjust_sum, RFC 1624 eqn. 3 for any number of words at once, equals `adjust` word by
  word and a full recompute by scapy;
- rewrite_in_place gives the bytes scapy builds, with scapy's own lengths and checksums, in the
  usual layouts (one struct for the four header fields) and the others (a field at a time),
  growing and shrinking, with matches at even and odd offsets;
- on any packet, with any checksums (right, wrong, zero, 0xFFFF) and any replacements, it gives
  exactly the bytes the rewrite gave before the speed path (kept below as `reference_rewrite`):
  a checksum that arrived wrong leaves wrong by the same amount on every path;
- it reads nothing past the datagram, and leaves the buffer alone when the inner packet would
  grow past 8500 bytes or past the buffer.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scapy.compat import raw
from scapy.layers.inet import ICMP, IP, UDP, IPOption_NOP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrHopByHop
from scapy.packet import Packet
from scapy.utils import checksum as scapy_checksum

from appliance.checksum import adjust, adjust_sum, finish, udp_checksum_field
from appliance.datapath import parse_datagram
from appliance.inner import PROTO_ICMP, PROTO_UDP, InnerPacket
from appliance.policy import Replacement, word_changes
from appliance.rewrite import MAX_INNER_BYTES, rewrite_in_place

GENEVE_LEN = 40
WEAK, STRONG = b"weakly typed", b"strongly typed"
FAST = settings(max_examples=500, deadline=None)
SCAPY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def replacement(find: bytes, replace: bytes) -> Replacement:
    """A replacement as the policy compiles it."""
    return find, replace, word_changes(find, replace)


# ---- the rewrite before the speed path, field by field, as the reference ---------------------


def reference_rewrite(
    buf: bytearray, pkt: InnerPacket, replacements: tuple[Replacement, ...]
) -> int | None:
    """appliance/rewrite.py's rewrite_in_place as it was before the speed path."""
    version, ip, end, protocol, l4, _, _, _, _, _, at, _ = pkt
    payload = buf[at:end]
    parity = (at - l4) & 1
    delta: int | None = 0
    for find, replace, change in replacements:
        if change is None:
            delta = None
        elif delta is not None:
            position, step = payload.find(find), len(find)
            while position >= 0:
                delta += change[(parity + position) & 1]
                position = payload.find(find, position + step)
        payload = payload.replace(find, replace)
    new_end = at + len(payload)
    inner_len = new_end - ip
    if inner_len > MAX_INNER_BYTES or new_end > len(buf):
        return None
    buf[at:new_end] = payload
    l4_len = new_end - l4
    if version == 4:
        old_total, old_sum = struct.unpack_from("!H6xH", buf, ip + 2)
        struct.pack_into("!H", buf, ip + 2, inner_len)
        struct.pack_into("!H", buf, ip + 10, adjust(old_sum, old_total, inner_len))
    else:
        struct.pack_into("!H", buf, ip + 4, inner_len - 40)
    if protocol == PROTO_UDP:
        old_len, old_sum = struct.unpack_from("!HH", buf, l4 + 4)
        if version == 4 and not old_sum:
            struct.pack_into("!H", buf, l4 + 4, l4_len)
            return new_end
        if delta is not None and old_sum:
            total = (~old_sum & 0xFFFF) + 2 * (l4_len - old_len) + delta
            checksum = udp_checksum_field(total % 0xFFFF or 0xFFFF)
            struct.pack_into("!HH", buf, l4 + 4, l4_len, checksum)
            return new_end
        struct.pack_into("!H", buf, l4 + 4, l4_len)
    field = l4 + (6 if protocol == PROTO_UDP else 2)
    struct.pack_into("!H", buf, field, 0)
    total = int.from_bytes(buf[l4:new_end], "big") << (8 if l4_len & 1 else 0)
    if protocol == PROTO_ICMP:
        struct.pack_into("!H", buf, field, finish(total))
        return new_end
    addresses = buf[ip + 12 : ip + 20] if version == 4 else buf[ip + 8 : ip + 40]
    total += int.from_bytes(addresses, "big") + protocol + l4_len
    checksum = udp_checksum_field(total) if protocol == PROTO_UDP else finish(total)
    struct.pack_into("!H", buf, field, checksum)
    return new_end


# ---- checksum.adjust_sum ----------------------------------------------------------------------


@FAST
@given(
    checksum=st.integers(0, 0xFFFF),
    old=st.integers(0, 0xFFFF),
    new=st.one_of(st.integers(0, 0xFFFF), st.sampled_from([0, 0xFFFF])),
)
def test_adjust_sum_equals_adjust_for_one_word(checksum, old, new):
    """Eqn. 3 in closed form; the one exception is the all-zero sum eqn. 3 writes as 0xFFFF."""
    if (checksum, old, new) == (0xFFFF, 0xFFFF, 0):
        assert (adjust(checksum, old, new), adjust_sum(checksum, new - old)) == (0xFFFF, 0)
    else:
        assert adjust_sum(checksum, new - old) == adjust(checksum, old, new)


@FAST
@given(
    words=st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=40),
    data=st.data(),
)
def test_adjust_sum_equals_a_full_recompute_for_many_words(words, data):
    """Any words changed at once, summed into one `change`: scapy's checksum of the new data,
    whenever that data is not all zero (RFC 1624 §3; a recompute then gives 0xFFFF)."""
    at = data.draw(st.integers(0, len(words) - 1), label="checksum at")
    words[at] = 0
    checksum = scapy_checksum(struct.pack(f"!{len(words)}H", *words))
    changed = data.draw(st.lists(st.integers(0, len(words) - 1).filter(lambda i: i != at)))
    new_words = list(words)
    for where in changed:
        new_words[where] = data.draw(st.integers(0, 0xFFFF), label=f"word {where}")
    assume(any(new_words))
    expected = scapy_checksum(struct.pack(f"!{len(new_words)}H", *new_words))
    assert adjust_sum(checksum, sum(new_words) - sum(words)) == expected


def test_adjust_sum_keeps_an_error_by_the_same_amount():
    """A checksum that was off by e is off by e after the update (what the rewrite relies on)."""
    for good, error, change in [(0x1234, 0x0101, 77), (0xFFFE, 1, -5), (0x0000, 0x8000, 0x1FFFE)]:
        bad = (good + error) % 0xFFFF
        assert (adjust_sum(bad, change) - adjust_sum(good, change)) % 0xFFFF == error


# ---- against scapy -----------------------------------------------------------------------------


def rewritten(datagram: bytes, replacements: tuple[Replacement, ...], room: int = 9216) -> bytes:
    """`datagram` rewritten by rewrite_in_place in a buffer of `room` bytes."""
    buf = bytearray(room)
    buf[: len(datagram)] = datagram
    parsed = parse_datagram(buf, 0, len(datagram))
    assert not isinstance(parsed, int), parsed
    new_end = rewrite_in_place(buf, parsed[0], replacements)
    assert new_end is not None
    return bytes(buf[:new_end])


def assert_scapy_agrees(gwlb, before: Packet, after: Packet, *pairs: tuple[bytes, bytes]) -> None:
    """`before` rewritten is `after` as scapy builds it, and scapy derives nothing different."""
    datagram = gwlb.wrap(before)
    out = rewritten(datagram, tuple(replacement(f, r) for f, r in pairs))
    assert out[:GENEVE_LEN] == datagram[:GENEVE_LEN]
    assert out[GENEVE_LEN:] == raw(after)
    inner = (IP if after.version == 4 else IPv6)(out[GENEVE_LEN:])
    assert gwlb.recomputed(inner) == out[GENEVE_LEN:]


LAYOUTS = ["v4", "v4-options", "v6", "v6-hop-by-hop"]


def udp_in(gwlb, layout: str, payload: bytes, **udp: int) -> Packet:
    if layout == "v4":
        ip: Packet = IP(**gwlb.v4, id=7, ttl=9)
    elif layout == "v4-options":
        ip = IP(**gwlb.v4, options=[IPOption_NOP()] * 4)
    elif layout == "v6":
        ip = IPv6(**gwlb.v6, fl=0x12345)
    else:
        ip = IPv6(**gwlb.v6) / IPv6ExtHdrHopByHop()
    return ip / UDP(sport=40000, dport=3000, **udp) / payload


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("prefix", [b"", b"-", b"--", b"---"], ids=["at0", "at1", "at2", "at3"])
@pytest.mark.parametrize(
    ("find", "replace"),
    [(WEAK, STRONG), (b"abcd", b"xy"), (b"ab", b"cd"), (WEAK, b"")],
    ids=["grow", "shrink", "same-length", "to-nothing"],
)
def test_one_match_equals_scapy(gwlb, layout, prefix, find, replace):
    for tail in (b"", b".", b" and more"):
        before = udp_in(gwlb, layout, prefix + find + tail)
        after = udp_in(gwlb, layout, prefix + replace + tail)
        assert_scapy_agrees(gwlb, before, after, (find, replace))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_several_matches_and_replacements_equal_scapy(gwlb, layout):
    payload = b"x" + WEAK + b"abcd" + WEAK + b"!abcd"
    expected = payload.replace(WEAK, STRONG).replace(b"abcd", b"xy").replace(b"!", b"?!")
    assert_scapy_agrees(
        gwlb,
        udp_in(gwlb, layout, payload),
        udp_in(gwlb, layout, expected),
        (WEAK, STRONG),
        (b"abcd", b"xy"),
        (b"!", b"?!"),
    )


@pytest.mark.parametrize("layout", ["v4", "v4-options"])
def test_a_zero_udp_checksum_over_ipv4_stays_zero(gwlb, layout):
    """RFC 768: zero means no checksum; scapy derives the lengths and the header checksum."""
    datagram = gwlb.wrap(udp_in(gwlb, layout, b"." + WEAK, chksum=0))
    out = rewritten(datagram, (replacement(WEAK, STRONG),))
    assert out[GENEVE_LEN:] == raw(udp_in(gwlb, layout, b"." + STRONG, chksum=0))


@pytest.mark.parametrize("version", [4, 6])
def test_icmp_echo_payload_equals_scapy(gwlb, version):
    def build(payload: bytes) -> Packet:
        if version == 4:
            return IP(**gwlb.v4) / ICMP(type=8, id=5, seq=6) / payload
        return IPv6(**gwlb.v6) / ICMPv6EchoRequest(id=5, seq=6, data=payload)

    assert_scapy_agrees(gwlb, build(b"1" + WEAK), build(b"1" + STRONG), (WEAK, STRONG))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_wrong_checksums_stay_wrong_by_the_same_amount(gwlb, layout):
    """The UDP checksum and (IPv4) the header checksum: a sender's error is kept, not blessed."""
    good = bytearray(gwlb.wrap(udp_in(gwlb, layout, b"so " + WEAK + b"!")))
    ip = GENEVE_LEN
    l4 = ip + ((good[ip] & 0x0F) * 4 if layout.startswith("v4") else 40 + 8 * ("hop" in layout))
    fields = [l4 + 6] + ([ip + 10] if layout.startswith("v4") else [])
    bad = bytearray(good)
    for at in fields:
        bad[at : at + 2] = ((int.from_bytes(bad[at : at + 2], "big") + 0x0101) % 0xFFFF).to_bytes(
            2, "big"
        )
    out_good = rewritten(bytes(good), (replacement(WEAK, STRONG),))
    out_bad = rewritten(bytes(bad), (replacement(WEAK, STRONG),))
    for at in fields:
        was = int.from_bytes(bad[at : at + 2], "big") - int.from_bytes(good[at : at + 2], "big")
        now = int.from_bytes(out_bad[at : at + 2], "big") - int.from_bytes(
            out_good[at : at + 2], "big"
        )
        assert was % 0xFFFF == now % 0xFFFF == 0x0101
    assert [b for i, b in enumerate(out_bad) if not any(a <= i < a + 2 for a in fields)] == [
        b for i, b in enumerate(out_good) if not any(a <= i < a + 2 for a in fields)
    ]


# ---- against the rewrite it replaced, on anything ----------------------------------------------

PIECES = [b"a", b"b", b"ab", b"abc", b"abcd", b"x", b"\0", b"\xff\xff", WEAK, STRONG]
PAIRS = [
    (WEAK, STRONG),  # even growth, the demo
    (b"abcd", b"xy"),  # even shrink
    (b"ab", b"cd"),  # the same length
    (b"ab", b"abc"),  # odd growth: a full recompute
    (b"abc", b""),  # odd shrink
    (b"a", b"aaa"),  # even growth from one byte
    (b"\0", b"\0\1"),  # odd growth
]


@st.composite
def packets(draw) -> tuple[bytes, tuple[Replacement, ...]]:
    """A GWLB datagram in any layout, with any payload and checksums, and replacements for it."""
    payload = b"".join(draw(st.lists(st.sampled_from(PIECES), max_size=12)))
    layout = draw(st.sampled_from([*LAYOUTS, "icmp4", "icmp6"]))
    if layout == "icmp4":
        inner: Packet = IP(src="10.1.0.5", dst="10.2.0.9") / ICMP(seq=3) / payload
    elif layout == "icmp6":
        inner = IPv6(src="fd00::5", dst="fd00::9") / ICMPv6EchoRequest(seq=3, data=payload)
    else:
        ip = {"v4": IP(), "v4-options": IP(options=[IPOption_NOP()] * 4)}.get(layout)
        if ip is None:
            ip = IPv6() if layout == "v6" else IPv6() / IPv6ExtHdrHopByHop()
        inner = ip / UDP(sport=3000, dport=draw(st.integers(0, 65535))) / payload
    data = bytearray(raw(inner))
    header = (data[0] & 0x0F) * 4 if data[0] >> 4 == 4 else 40 + 8 * (layout == "v6-hop-by-hop")
    # Checksums as they arrived: right, wrong by any amount, zero or 0xFFFF.
    fields = [header + (2 if layout.startswith("icmp") else 6)]
    fields += [10] if data[0] >> 4 == 4 else []
    for at in fields:
        kind = draw(st.sampled_from(["right", "wrong", "zero", "ffff"]))
        value = {"zero": 0, "ffff": 0xFFFF}.get(kind, int.from_bytes(data[at : at + 2], "big"))
        if kind == "wrong":
            value ^= draw(st.integers(1, 0xFFFF))
        data[at : at + 2] = value.to_bytes(2, "big")
    pairs = draw(st.lists(st.sampled_from(PAIRS), min_size=1, max_size=3))
    protocol = 0x0800 if data[0] >> 4 == 4 else 0x86DD
    return geneve_header(protocol) + bytes(data), tuple(replacement(f, r) for f, r in pairs)


def geneve_header(protocol: int) -> bytes:
    """GWLB's usual Geneve header: version 0, its three options (endpoint, attachment, cookie)."""
    options = b"".join(
        bytes.fromhex(tag) + bytes(size)
        for tag, size in (("01080102", 8), ("01080202", 8), ("01080301", 4))
    )
    return struct.pack("!BBHI", 8, 0, protocol, 0) + options


def both_rewrites(datagram: bytes, replacements, room: int, after: bytes):
    """(new end, buffer) from rewrite_in_place and from reference_rewrite, on the same buffer
    holding `datagram`, then `after` past its end, in `room` bytes."""
    results = []
    for rewrite in (rewrite_in_place, reference_rewrite):
        buf = bytearray(room)
        buf[: len(datagram) + len(after)] = (datagram + after)[:room]
        parsed = parse_datagram(buf, 0, len(datagram))
        assert not isinstance(parsed, int), parsed
        results.append((rewrite(buf, parsed[0], replacements), bytes(buf)))
    return results


@SCAPY
@given(packet=packets(), slack=st.integers(0, 24), after=st.sampled_from([b"", WEAK, b"abcd"]))
def test_the_same_bytes_as_the_rewrite_it_replaced(packet, slack, after):
    """On every path, any checksum and any buffer room (too little included), byte for byte."""
    datagram, replacements = packet
    room = len(datagram) + slack
    assume(room >= len(datagram) + len(after))
    new, reference = both_rewrites(datagram, replacements, room, after)
    assert new == reference


@pytest.mark.parametrize("version", [4, 6])
def test_nothing_past_the_datagram_is_read(gwlb, version):
    """The needle's tail lies just past the datagram: no match there, and a shorter datagram
    rewrites the same whatever follows it."""
    inner = (gwlb.udp4 if version == 4 else gwlb.udp6)(b"so " + WEAK + b" weakly ty")
    datagram = gwlb.wrap(inner)
    outs = []
    for after in (b"ped", b"\0\0\0", WEAK):
        buf = bytearray(9216)
        buf[: len(datagram) + len(after)] = datagram + after
        parsed = parse_datagram(buf, 0, len(datagram))
        assert not isinstance(parsed, int)
        new_end = rewrite_in_place(buf, parsed[0], (replacement(WEAK, STRONG),))
        assert new_end == len(datagram) + 2
        outs.append(bytes(buf[:new_end]))
    assert outs[0] == outs[1] == outs[2]
    assert outs[0].endswith(b"so " + STRONG + b" weakly ty")


@pytest.mark.parametrize("version", [4, 6])
def test_too_big_leaves_the_buffer_alone(gwlb, version):
    """At the 8500-byte limit the rewrite is done; one byte past it, or past the buffer, it is
    refused (None: OVERSIZE) and not a byte of the buffer changes."""
    header = 28 if version == 4 else 48
    build = gwlb.udp4 if version == 4 else gwlb.udp6
    fill = MAX_INNER_BYTES - header - len(STRONG)
    fits = gwlb.wrap(build(b"x" * fill + WEAK))
    assert len(rewritten(fits, (replacement(WEAK, STRONG),))) == GENEVE_LEN + MAX_INNER_BYTES
    for datagram, room in ((gwlb.wrap(build(b"x" * (fill + 1) + WEAK)), 9216), (fits, len(fits))):
        buf = bytearray(room)
        buf[: len(datagram)] = datagram
        before = bytes(buf)
        parsed = parse_datagram(buf, 0, len(datagram))
        assert not isinstance(parsed, int)
        assert rewrite_in_place(buf, parsed[0], (replacement(WEAK, STRONG),)) is None
        assert bytes(buf) == before
