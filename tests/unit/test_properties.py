"""Properties of the codec and the data path, checked with hypothesis against scapy.

- anything handed to handle_datagram yields an Outcome and never raises;
- the parsers raise only DecodeError, with layer, offset and reason set;
- a packet no rule matches comes back PASS (the same bytes go back);
- a rewritten packet re-parses with our codec and with scapy, and its checksums verify with scapy;
- RFC 1624 eqn. 3 (`adjust`) equals a full recompute by scapy.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from scapy.compat import raw
from scapy.contrib.geneve import GENEVE
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_Router_Alert, in4_chksum
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    in6_chksum,
)
from scapy.utils import checksum as scapy_checksum

from appliance.checksum import (
    adjust,
    finish,
    internet_checksum,
    ones_sum,
    pseudo_header_sum_v4,
    pseudo_header_sum_v6,
)
from appliance.datapath import Outcome, handle_datagram
from appliance.errors import DecodeError, Reason
from appliance.geneve import check_geneve, parse_geneve
from appliance.inner import Fragment, parse_inner
from config.loader import parse_config

ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
GENEVE_LEN = 40
WEAK, STRONG = b"weakly typed", b"strongly typed"
LAYERS = {"geneve", "ipv4", "ipv6", "udp", "tcp", "icmp"}

# A session fixture (gwlb, default_policy) is safe with @given: it is not reset between examples.
FAST = settings(max_examples=500, deadline=None)
SCAPY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Replaces on the bytes random data is made of, so that fuzzing reaches the rewrite code too.
FUZZ_POLICY = parse_config(r"""
[[policy.rules]]
name = "drop-ff"
action = "drop"
match = { protocol = "udp", payload_contains = "\u0007\u0007" }

[[policy.rules]]
name = "udp-grow"
action = "replace"
match = { protocol = "udp" }
find = "\u0000"
replace = "\u0000\u0001"

[[policy.rules]]
name = "icmp-shrink"
action = "replace"
match = { protocol = "icmp" }
find = "\u0000"
replace = ""

[[policy.rules]]
name = "icmpv6-grow"
action = "replace"
match = { protocol = "icmpv6" }
find = "\u0000"
replace = "xyz"
""").policy


def geneve(gwlb, protocol: int) -> bytes:
    return gwlb.geneve_struct(protocol, gwlb.aws_options())


def assert_outcome(result, policy) -> None:
    """The contract of handle_datagram's result, whatever went in."""
    outcome, detail, out = result
    event(f"outcome {outcome.name}" + (f" {Reason(detail).name}" if outcome == 3 else ""))
    assert isinstance(outcome, Outcome)
    if outcome is Outcome.MALFORMED:
        assert detail in set(Reason)
    elif outcome is Outcome.PASS:
        assert detail == -1
    else:
        assert 0 <= detail < len(policy.rules)
    assert (out is not None) == (outcome is Outcome.REWRITE)


# ---- inner packets drawn at random -------------------------------------------------------------

V4_OPTIONS = [[], [IPOption_NOP()] * 4, [IPOption_Router_Alert()]]
V6_CHAINS = ["", "hbh", "hbh+dst", "dst", "routing0"]


def ip_layer(gwlb, version: int, variant: int):
    if version == 4:
        return IP(
            **gwlb.v4,
            id=variant * 7919 & 0xFFFF,
            ttl=1 + variant % 255,
            tos=variant & 0xFC,
            options=V4_OPTIONS[variant % len(V4_OPTIONS)],
        )
    layer = IPv6(**gwlb.v6, tc=variant & 0xFF, fl=variant * 31 & 0xFFFFF)
    for name in V6_CHAINS[variant % len(V6_CHAINS)].split("+"):
        if name == "hbh":
            layer = layer / IPv6ExtHdrHopByHop()
        elif name == "dst":
            layer = layer / IPv6ExtHdrDestOpt()
        elif name == "routing0":
            layer = layer / IPv6ExtHdrRouting(type=0, segleft=0, addresses=["fd00:c::1"])
    return layer


def udp_packet(gwlb, version, variant, sport, dport, payload, zero_checksum=False):
    udp = UDP(sport=sport, dport=dport, chksum=0 if zero_checksum else None)
    return ip_layer(gwlb, version, variant) / udp / payload


versions = st.sampled_from([4, 6])
variants = st.integers(0, 1000)
ports = st.integers(0, 65535)
not_3000 = ports.filter(lambda p: p != 3000)
payloads = st.binary(max_size=300)


@st.composite
def weakly_typed_payloads(draw) -> bytes:
    """Random bytes with `weakly typed` in them, once or more, anywhere."""
    pieces = draw(st.lists(st.one_of(st.binary(max_size=40), st.just(WEAK)), max_size=8))
    pieces.insert(draw(st.integers(0, len(pieces))), WEAK)
    payload = b"".join(pieces)
    assume(b"drop me" not in payload)
    return payload


# ---- scapy's verdict on a packet we built ------------------------------------------------------


def scapy_verifies_transport(inner: bytes, version: int, protocol: int, l4: int) -> bool:
    """True when scapy's checksum over the transport segment (pseudo-header included) is -0."""
    segment = inner[l4:]
    if version == 4:
        ip = IP(inner[:20])
        if protocol == 1:
            return scapy_checksum(segment) == 0
        if protocol == 17 and segment[6:8] == b"\0\0":
            return True  # RFC 768: no checksum
        return in4_chksum(protocol, IP(src=ip.src, dst=ip.dst), segment) == 0
    ip6 = IPv6(inner[:40])
    return in6_chksum(protocol, IPv6(src=ip6.src, dst=ip6.dst), segment) == 0


def check_rewritten(
    gwlb, datagram: bytes, rewritten: bytearray | None, payload_after: bytes | None
) -> None:
    """The rewritten datagram re-parses with our codec, keeps its Geneve bytes, has consistent
    lengths, and scapy's checksum routines accept its transport checksum. Its IPv4 header checksum
    is valid exactly when the input's was (RFC 1624 updates keep a sender's error as it was)."""
    assert rewritten is not None
    out = bytes(rewritten)
    start, protocol = check_geneve(datagram, 0, len(datagram))
    assert out[:start] == datagram[:start]
    inner_at, out_protocol = check_geneve(out, 0, len(out))
    assert (inner_at, out_protocol) == (start, protocol)
    before = parse_inner(datagram, start, len(datagram), protocol)
    after = parse_inner(out, start, len(out), protocol)
    assert (after.version, after.protocol, after.l4 - after.start) == (
        before.version,
        before.protocol,
        before.l4 - before.start,
    )
    assert (after.src_port, after.dst_port, after.icmp_type, after.icmp_seq) == (
        before.src_port,
        before.dst_port,
        before.icmp_type,
        before.icmp_seq,
    )
    if payload_after is not None:
        assert out[after.payload :] == payload_after
    inner = out[start:]
    valid_before = scapy_verifies_transport(
        datagram[start:], before.version, before.protocol, before.l4 - start
    )
    # A valid transport checksum stays valid; a UDP datagram that arrived with a wrong one keeps
    # its error (RFC 1624 updates, tested on its own in test_codec_oracle.py).
    if valid_before:
        assert scapy_verifies_transport(inner, after.version, after.protocol, after.l4 - start)
    if after.version == 4:
        header = inner[: after.l4 - start]
        valid_before = scapy_checksum(datagram[start : before.l4]) == 0
        assert (scapy_checksum(header) == 0) == valid_before  # RFC 1624 keeps it as it was
        assert struct.unpack_from("!H", inner, 2)[0] == len(inner)
    else:
        assert struct.unpack_from("!H", inner, 4)[0] == len(inner) - 40
    if after.protocol == 17:
        assert struct.unpack_from("!H", inner, after.l4 - start + 4)[0] == len(inner) - (
            after.l4 - start
        )


# ---- never raise -------------------------------------------------------------------------------


@FAST
@given(data=st.binary(max_size=200))
def test_random_bytes_yield_an_outcome(default_policy, data):
    result = handle_datagram(data, 0, len(data), default_policy)
    assert_outcome(result, default_policy)
    if len(data) < 8:
        assert result == (Outcome.MALFORMED, Reason.TRUNCATED, None)


@st.composite
def plausible_inner(draw) -> tuple[int, bytes]:
    """Random bytes with a believable IP version and length, to reach the deeper parsers."""
    version = draw(versions)
    if version == 4:
        body = bytearray(draw(st.binary(min_size=20, max_size=200)))
        body[0] = 0x40 | draw(st.just(5) | st.integers(5, 15))
        body[9] = draw(st.sampled_from([1, 6, 17, 58, 47, body[9]]))
        if draw(st.integers(0, 3)):
            body[6:8] = b"\0\0"  # not a fragment
        body[2:4] = len(body).to_bytes(2, "big")
        l4 = (body[0] & 0x0F) * 4
        if body[9] == 17 and l4 + 8 <= len(body) and draw(st.booleans()):
            body[l4 + 4 : l4 + 6] = (len(body) - l4).to_bytes(2, "big")
        return ETH_P_IP, bytes(body)
    body = bytearray(draw(st.binary(min_size=40, max_size=260)))
    body[0] = 0x60 | (body[0] & 0x0F)
    body[6] = draw(st.sampled_from([0, 43, 44, 51, 60, 135, 139, 140, 59, 6, 17, 58, body[6]]))
    body[4:6] = (len(body) - 40).to_bytes(2, "big")
    if body[6] == 17 and len(body) >= 48 and draw(st.booleans()):
        body[44:46] = (len(body) - 40).to_bytes(2, "big")
    return ETH_P_IPV6, bytes(body)


@FAST
@given(inner=plausible_inner(), policy=st.sampled_from(["default", "fuzz"]))
def test_random_inner_packets_yield_an_outcome(gwlb, default_policy, inner, policy):
    protocol, body = inner
    chosen = default_policy if policy == "default" else FUZZ_POLICY
    datagram = geneve(gwlb, protocol) + body
    result = handle_datagram(datagram, 0, len(datagram), chosen)
    assert_outcome(result, chosen)
    if result[0] is Outcome.REWRITE:
        check_rewritten(gwlb, datagram, result[2], None)


def base_packet(gwlb, kind: str, payload: bytes):
    if kind == "udp4":
        return gwlb.udp4(WEAK + payload, 40000, 3000)
    if kind == "udp6":
        return gwlb.udp6(payload + WEAK, 3000, 40000)
    if kind == "udp6-ext":
        return udp_packet(gwlb, 6, 2, 3000, 3000, payload + WEAK)
    if kind == "udp4-options":
        return udp_packet(gwlb, 4, 1, 3000, 1, payload + WEAK)
    if kind == "tcp4":
        return gwlb.tcp4(payload)
    if kind == "icmp4":
        return gwlb.icmp4(len(payload), 8, payload + b"\0")
    return gwlb.icmp6(len(payload), True, payload + b"\0")


BASE_KINDS = ["udp4", "udp6", "udp6-ext", "udp4-options", "tcp4", "icmp4", "icmp6"]

flips = st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255))
mutations = st.lists(
    st.one_of(
        flips,
        flips,  # twice as likely: a flip keeps the lengths, so it reaches deeper code
        st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
        st.tuples(st.just("extend"), st.binary(min_size=1, max_size=16), st.just(0)),
        st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=8)),
    ),
    min_size=1,
    max_size=4,
)


def mutate(data: bytes, ops) -> bytes:
    buf = bytearray(data)
    for op, a, b in ops:
        if op == "flip" and buf:
            buf[a % len(buf)] ^= b
        elif op == "truncate":
            del buf[a % (len(buf) + 1) :]
        elif op == "extend":
            buf += a
        elif op == "insert":
            at = a % (len(buf) + 1)
            buf[at:at] = b
    return bytes(buf)


@SCAPY
@given(
    kind=st.sampled_from(BASE_KINDS),
    payload=payloads,
    ops=mutations,
    policy=st.sampled_from(["default", "fuzz"]),
)
def test_mutated_gwlb_packets_yield_an_outcome(gwlb, default_policy, kind, payload, ops, policy):
    chosen = default_policy if policy == "default" else FUZZ_POLICY
    datagram = mutate(gwlb.wrap(base_packet(gwlb, kind, payload)), ops)
    copy = bytes(datagram)
    result = handle_datagram(datagram, 0, len(datagram), chosen)
    assert_outcome(result, chosen)
    assert datagram == copy
    if result[0] is Outcome.REWRITE:
        check_rewritten(gwlb, datagram, result[2], None)


# ---- the parsers' errors -----------------------------------------------------------------------


def check_error(error: DecodeError, start: int, end: int) -> None:
    assert isinstance(error, ValueError)
    assert error.layer in LAYERS
    assert isinstance(error.reason, Reason)
    assert start <= error.offset <= end, (error, start, end)
    assert error.reason.name.lower() in str(error)


@FAST
@given(
    inner=plausible_inner()
    | st.tuples(st.sampled_from([ETH_P_IP, ETH_P_IPV6]), st.binary(max_size=120)),
    pad=st.integers(0, 3),
)
def test_parse_inner_raises_only_decode_errors(inner, pad):
    protocol, body = inner
    buf = b"\xaa" * pad + body + b"\xbb" * pad  # bytes outside [start, end) must not matter
    start, end = pad, pad + len(body)
    try:
        pkt = parse_inner(buf, start, end, protocol)
    except DecodeError as error:
        check_error(error, start, end)
        return
    assert pkt.start == start and pkt.end == end
    assert start <= pkt.l4 <= pkt.payload <= end
    assert pkt.version == (4 if protocol == ETH_P_IP else 6)
    has_ports = pkt.protocol in (6, 17) and pkt.fragment is not Fragment.LATER
    assert (pkt.src_port >= 0) == has_ports == (pkt.dst_port >= 0)


@FAST
@given(data=st.binary(max_size=120), pad=st.integers(0, 3))
def test_check_geneve_raises_only_decode_errors(data, pad):
    buf = b"\xaa" * pad + data + b"\xbb" * pad
    try:
        inner, protocol = check_geneve(buf, pad, pad + len(data))
    except DecodeError as error:
        check_error(error, pad, pad + len(data))
        assert error.layer == "geneve"
        return
    assert pad + GENEVE_LEN <= inner <= pad + len(data)
    assert protocol in (ETH_P_IP, ETH_P_IPV6)


@FAST
@given(
    options=st.lists(
        st.tuples(
            st.integers(0, 0xFFFF),
            st.integers(0, 255),
            st.binary(max_size=124).map(lambda b: b + b"\0" * (-len(b) % 4)),
        ),
        max_size=4,
    ),
    order=st.permutations([1, 2, 3]),
)
def test_random_option_lists(gwlb, options, order):
    """Foreign options anywhere: refused if critical, else skipped; our values come out."""
    assume(not any(c == 0x0108 and t in (1, 2, 3) for c, t, _ in options))  # no second copies
    mixed = gwlb.aws_options(order=order) + options
    geneve_bytes = gwlb.geneve_struct(ETH_P_IP, mixed)
    assume(len(geneve_bytes) <= 8 + 63 * 4)  # a 6-bit option length
    datagram = geneve_bytes + raw(gwlb.udp4(b"x"))
    foreign_critical = any(t & 0x80 for _, t, _ in options)
    try:
        header = parse_geneve(datagram)
    except DecodeError as error:
        assert foreign_critical
        assert error.reason is Reason.GENEVE_CRITICAL_OPTION
        return
    assert not foreign_critical
    assert header.length == len(geneve_bytes)
    assert (header.endpoint_id, header.attachment_id, header.flow_cookie) == (
        gwlb.endpoint_id,
        gwlb.attachment_id,
        gwlb.flow_cookie,
    )
    # scapy's dissector agrees on where the options end and what they hold
    dissected = GENEVE(datagram)
    assert dissected.optionlen * 4 + 8 == header.length
    assert [(o.classid, o.type, bytes(o.data)) for o in dissected.options] == mixed


# ---- nothing matches: PASS ---------------------------------------------------------------------


@SCAPY
@given(
    version=versions,
    variant=variants,
    sport=not_3000,
    dport=not_3000,
    payload=payloads,
    tcp=st.booleans(),
)
def test_no_rule_matches_udp_tcp_off_port_3000(
    gwlb, default_policy, version, variant, sport, dport, payload, tcp
):
    transport = TCP(sport=sport, dport=dport) if tcp else UDP(sport=sport, dport=dport)
    datagram = bytearray(gwlb.wrap(ip_layer(gwlb, version, variant) / transport / payload))
    copy = bytes(datagram)
    assert handle_datagram(datagram, 0, len(datagram), default_policy) == (Outcome.PASS, -1, None)
    assert datagram == copy


@SCAPY
@given(version=versions, variant=variants, payload=payloads, sport=ports, dport=ports)
def test_tcp_on_any_port_passes(gwlb, default_policy, version, variant, payload, sport, dport):
    datagram = gwlb.wrap(
        ip_layer(gwlb, version, variant)
        / TCP(sport=sport, dport=dport)
        / (b"drop me " + WEAK + payload)
    )
    assert handle_datagram(datagram, 0, len(datagram), default_policy) == (Outcome.PASS, -1, None)


@SCAPY
@given(version=versions, seq=st.integers(0, 65535), request=st.booleans(), payload=payloads)
def test_echo_verdict_follows_the_sequence_number(
    gwlb, default_policy, version, seq, request, payload
):
    if version == 4:
        inner, rule = gwlb.icmp4(seq, 8 if request else 0, payload), 2
    else:
        inner, rule = gwlb.icmp6(seq, request, payload), 3
    datagram = gwlb.wrap(inner)
    expected = (Outcome.DROP, rule, None) if seq % 5 == 0 else (Outcome.PASS, -1, None)
    assert handle_datagram(datagram, 0, len(datagram), default_policy) == expected


# ---- rewrite -----------------------------------------------------------------------------------


@SCAPY
@given(
    version=versions,
    variant=variants,
    other=ports,
    side=st.sampled_from(["src", "dst"]),
    payload=weakly_typed_payloads(),
    zero_checksum=st.booleans(),
)
def test_rewrite_matches_scapy(
    gwlb, default_policy, version, variant, other, side, payload, zero_checksum
):
    zero_checksum = zero_checksum and version == 4  # a zero UDP checksum is illegal over IPv6
    sport, dport = (3000, other) if side == "src" else (other, 3000)
    after_payload = payload.replace(WEAK, STRONG)
    assume(len(after_payload) < 8000)
    before = udp_packet(gwlb, version, variant, sport, dport, payload, zero_checksum)
    after = udp_packet(gwlb, version, variant, sport, dport, after_payload, zero_checksum)
    datagram = gwlb.wrap(before)
    outcome, rule, out = handle_datagram(datagram, 0, len(datagram), default_policy)
    assert (outcome, rule) == (Outcome.REWRITE, 1)
    assert out is not None
    assert bytes(out) == datagram[:GENEVE_LEN] + raw(after)  # scapy built the expected bytes
    check_rewritten(gwlb, datagram, out, after_payload)
    inner = GENEVE(bytes(out)).payload
    if zero_checksum:
        assert inner[UDP].chksum == 0
    else:
        assert gwlb.recomputed(inner) == bytes(out[GENEVE_LEN:])


@SCAPY
@given(
    version=versions, seq=st.integers(0, 65535), head=payloads, tail=payloads, request=st.booleans()
)
def test_icmp_rewrite_checksums(gwlb, version, seq, head, tail, request):
    payload = head + b"\0" + tail
    datagram = gwlb.wrap(
        gwlb.icmp4(seq, 8 if request else 0, payload)
        if version == 4
        else gwlb.icmp6(seq, request, payload)
    )
    outcome, _, out = handle_datagram(datagram, 0, len(datagram), FUZZ_POLICY)
    assert outcome is Outcome.REWRITE
    assert out is not None
    expected_payload = payload.replace(b"\0", b"" if version == 4 else b"xyz")
    check_rewritten(gwlb, datagram, out, expected_payload)
    inner = GENEVE(bytes(out)).payload
    assert gwlb.recomputed(inner) == bytes(out[GENEVE_LEN:])
    if version == 4:
        assert inner[ICMP].seq == seq


# ---- checksums ---------------------------------------------------------------------------------


@FAST
@given(data=st.binary(max_size=2000))
def test_internet_checksum_equals_scapy(data):
    assert internet_checksum(data) == scapy_checksum(data)


@FAST
@given(
    src=st.binary(min_size=4, max_size=4),
    dst=st.binary(min_size=4, max_size=4),
    protocol=st.integers(0, 255),
    segment=st.binary(max_size=300),
)
def test_pseudo_header_v4_equals_scapy(src, dst, protocol, segment):
    ip = IP(src=".".join(map(str, src)), dst=".".join(map(str, dst)))
    total = pseudo_header_sum_v4(src, dst, protocol, len(segment)) + ones_sum(segment)
    assert finish(total) == in4_chksum(protocol, ip, segment)


@FAST
@given(
    src=st.binary(min_size=16, max_size=16),
    dst=st.binary(min_size=16, max_size=16),
    protocol=st.integers(0, 255),
    segment=st.binary(max_size=300),
)
def test_pseudo_header_v6_equals_scapy(src, dst, protocol, segment):
    ip6 = IPv6(raw(IPv6())[:8] + src + dst)
    total = pseudo_header_sum_v6(src, dst, protocol, len(segment)) + ones_sum(segment)
    assert finish(total) == in6_chksum(protocol, ip6, segment)


@st.composite
def headers_with_a_change(draw, words_min=2):
    """(words with a correct checksum at `at`, position of a changed word, its new value)."""
    words = draw(st.lists(st.integers(0, 0xFFFF), min_size=words_min, max_size=30))
    at = draw(st.integers(0, len(words) - 1))
    words[at] = 0
    words[at] = scapy_checksum(struct.pack(f"!{len(words)}H", *words))
    where = draw(st.integers(0, len(words) - 1).filter(lambda i: i != at))
    new = draw(st.one_of(st.integers(0, 0xFFFF), st.sampled_from([0, 0xFFFF, words[where]])))
    return words, at, where, new


@FAST
@given(change=headers_with_a_change())
def test_adjust_equals_full_recompute(change):
    """RFC 1624 eqn. 3 gives what a recompute from scratch gives, whenever the data is not all
    zero (RFC 1624 §3: 'there is guaranteed to be at least one non-zero field in the IP header';
    for all-zero data a recompute gives ~(+0) = 0xFFFF, which eqn. 3 never yields)."""
    words, at, where, new = change
    old = words[where]
    words[where] = new
    data = words[:at] + words[at + 1 :]
    assume(any(data))
    expected = scapy_checksum(struct.pack(f"!{len(words)}H", *words[:at], 0, *words[at + 1 :]))
    assert adjust(words[at], old, new) == expected


@FAST
@given(
    header=st.binary(min_size=20, max_size=60).map(lambda b: b[: len(b) // 4 * 4]),
    where=st.integers(0, 29),
    new=st.integers(0, 0xFFFF),
)
def test_adjust_on_ipv4_headers(header, where, new):
    """The product's use: an IPv4 header (version 4, so never all zero), any word but the sum."""
    buf = bytearray(header)
    buf[0] = 0x40 | (len(buf) // 4)
    buf[10:12] = b"\0\0"
    buf[10:12] = scapy_checksum(bytes(buf)).to_bytes(2, "big")
    where = where % (len(buf) // 2)
    assume(where not in (0, 5))  # the version word and the checksum itself
    old = int.from_bytes(buf[2 * where : 2 * where + 2], "big")
    checksum_before = int.from_bytes(buf[10:12], "big")
    buf[2 * where : 2 * where + 2] = new.to_bytes(2, "big")
    buf[10:12] = b"\0\0"
    assert adjust(checksum_before, old, new) == scapy_checksum(bytes(buf))


def test_adjust_rfc1624_example():
    """RFC 1624 §3's worked example: m 0x5555 -> 0x3285 with the other words summing to 0xCD7A.

    Recomputation gives ~(0xCD7A + 0x3285) = ~0xFFFF = 0x0000; eqn. 2 wrongly gives 0xFFFF."""
    assert adjust(0xDD2F, 0x5555, 0x3285) == 0x0000
    # Errata 4782 (reported, not verified) says eqn. 3 turns checksum 0x0000 into 0xFFFF when the
    # word does not change; with an end-around carry 0xFFFF + 0xAAAA + 0x5555 is -0 (0xFFFF), so
    # eqn. 3 gives ~0xFFFF = 0x0000, and so must we.
    assert adjust(0x0000, 0x5555, 0x5555) == 0x0000


@pytest.mark.parametrize("checksum_value", [0x0000, 0x1234, 0xFFFE])
def test_adjust_with_no_change_is_identity(checksum_value):
    for word in (0x0000, 0x0001, 0x5555, 0xFFFF):
        assert adjust(checksum_value, word, word) == checksum_value
