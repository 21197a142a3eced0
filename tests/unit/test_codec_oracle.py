"""Our codec against scapy: scapy builds and our codec parses; our codec rewrites and scapy checks.

The expected values always come from scapy (its builder or its dissector), never from our codec.
"""

from __future__ import annotations

import itertools
import random

import pytest
from scapy.compat import raw
from scapy.contrib.geneve import GENEVE
from scapy.layers.inet import (
    ICMP,
    IP,
    TCP,
    UDP,
    IPOption_NOP,
    IPOption_Router_Alert,
    IPOption_RR,
    fragment,
    in4_chksum,
)
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
    in6_chksum,
)
from scapy.layers.ipsec import AH
from scapy.packet import Packet, Raw
from scapy.utils import checksum as scapy_checksum

from appliance.checksum import (
    finish,
    internet_checksum,
    ones_sum,
    pseudo_header_sum_v4,
    pseudo_header_sum_v6,
    udp_checksum_field,
)
from appliance.datapath import Outcome, handle_datagram
from appliance.errors import DecodeError, Reason
from appliance.geneve import check_geneve, parse_geneve
from appliance.inner import Fragment, parse_inner
from appliance.rewrite import MAX_INNER_BYTES
from config.loader import parse_config

# Wire facts (DESIGN.md §1), spelled out here rather than taken from the product.
AWS_CLASS = 0x0108
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
GENEVE_LEN = 40

# Rule indices in the shipped default policy.
DROP_ME, WEAKLY_TO_STRONGLY, ICMP_FIFTH, ICMPV6_FIFTH = 0, 1, 2, 3
WEAK, STRONG = b"weakly typed", b"strongly typed"


# ---- Geneve ------------------------------------------------------------------------------------


def scapy_options(datagram: bytes) -> dict[int, bytes]:
    """The AWS options' bodies as scapy's GENEVE dissector reads them."""
    dissected = GENEVE(datagram)
    return {o.type: bytes(o.data) for o in dissected.options if o.classid == AWS_CLASS}


@pytest.mark.parametrize("version", [4, 6])
def test_parse_geneve_reads_the_gwlb_options(gwlb, version):
    inner = gwlb.udp4(b"x") if version == 4 else gwlb.udp6(b"x")
    datagram = gwlb.wrap(inner)
    header = parse_geneve(datagram)
    assert header.length == GENEVE_LEN
    assert header.protocol == (ETH_P_IP if isinstance(inner, IP) else ETH_P_IPV6)
    assert header.endpoint_id == gwlb.endpoint_id
    assert header.attachment_id == gwlb.attachment_id
    assert header.flow_cookie == gwlb.flow_cookie
    # scapy's dissector reads the same values from the same bytes.
    seen = scapy_options(datagram)
    assert seen[1] == header.endpoint_id
    assert seen[2] == header.attachment_id
    assert int.from_bytes(seen[3], "big") == header.flow_cookie
    assert GENEVE(datagram).optionlen * 4 + 8 == header.length


def test_struct_builder_matches_scapy_geneve(gwlb):
    """The hand-built Geneve used by the property tests is byte-identical to scapy's."""
    options = gwlb.aws_options(extra=[(0x0101, 5, b"abcd")], order=(3, 1, 2))
    for protocol in (ETH_P_IP, ETH_P_IPV6):
        assert gwlb.geneve_struct(protocol, options) == gwlb.geneve_scapy(protocol, options)


EXTRA_PLAIN = (0x0101, 0x05, b"\x11\x22\x33\x44")
EXTRA_EMPTY = (0xFFFF, 0x7F, b"")
EXTRA_AWS_UNKNOWN_TYPE = (AWS_CLASS, 0x09, b"\x00" * 12)
# The longest option body, 31 words (a 5-bit length): read as options, 0xff bytes would be a
# critical option, so a walk that misreads the length cannot get through it.
EXTRA_LONG = (0x0104, 0x01, b"\xff" * 124)

LAYOUTS = [
    pytest.param(list(p), id="order-" + "".join(map(str, p)))
    for p in itertools.permutations((1, 2, 3))
]
LAYOUTS += [
    pytest.param([EXTRA_PLAIN, 1, 2, 3], id="extra-first"),
    pytest.param([1, 2, 3, EXTRA_EMPTY], id="extra-last"),
    pytest.param([3, EXTRA_AWS_UNKNOWN_TYPE, 2, EXTRA_PLAIN, 1], id="interleaved"),
    pytest.param([2, EXTRA_LONG, 3, 1], id="long-option"),
]


def layout_options(gwlb, layout, cookie=None):
    aws = {o[1]: o for o in gwlb.aws_options(flow_cookie=cookie)}
    return [aws[item] if isinstance(item, int) else item for item in layout]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("version", [4, 6])
def test_options_in_any_order_with_foreign_options(gwlb, default_policy, layout, version):
    inner = (gwlb.udp4 if version == 4 else gwlb.udp6)(b"so " + WEAK)
    protocol = ETH_P_IP if version == 4 else ETH_P_IPV6
    cookie = 0xFFFFFFFE
    options = layout_options(gwlb, layout, cookie)
    geneve = gwlb.geneve_scapy(protocol, options)
    datagram = geneve + raw(inner)

    header = parse_geneve(datagram)
    assert header.length == len(geneve) == 8 + sum(4 + len(o[2]) for o in options)
    assert (header.endpoint_id, header.attachment_id) == (gwlb.endpoint_id, gwlb.attachment_id)
    assert header.flow_cookie == cookie
    assert check_geneve(datagram, 0, len(datagram)) == (len(geneve), protocol)
    seen = scapy_options(datagram)
    assert (seen[1], seen[2], seen[3]) == (
        header.endpoint_id,
        header.attachment_id,
        cookie.to_bytes(4, "big"),
    )

    outcome, rule, out = handle_datagram(datagram, 0, len(datagram), default_policy)
    assert (outcome, rule) == (Outcome.REWRITE, WEAKLY_TO_STRONGLY)
    assert out is not None
    assert bytes(out[: len(geneve)]) == geneve
    assert bytes(out[len(geneve) :]) == raw(
        (gwlb.udp4 if version == 4 else gwlb.udp6)(b"so " + STRONG)
    )


def test_geneve_at_an_offset_in_a_larger_buffer(gwlb, default_policy):
    """buf[start:end] is honoured: bytes around the datagram are neither read nor copied."""
    datagram = gwlb.wrap(gwlb.udp4(WEAK))
    buf = b"\xee" * 28 + datagram + b"\xee" * 13
    header = parse_geneve(buf, 28, 28 + len(datagram))
    assert header.flow_cookie == gwlb.flow_cookie
    outcome, _, out = handle_datagram(buf, 28, 28 + len(datagram), default_policy)
    assert outcome is Outcome.REWRITE
    assert out is not None
    assert bytes(out) == datagram[:GENEVE_LEN] + raw(gwlb.udp4(STRONG))


def _bad_geneve(gwlb, kind):
    options = gwlb.aws_options()
    if kind == "version":
        return gwlb.geneve_scapy(ETH_P_IP, options, version=1), Reason.GENEVE_VERSION
    if kind == "oam":
        return gwlb.geneve_scapy(ETH_P_IP, options, oam=1), Reason.GENEVE_OAM
    if kind == "protocol":
        return gwlb.geneve_scapy(0x6558, options), Reason.GENEVE_PROTOCOL
    if kind == "critical":
        extra = [(0x0101, 0x85, b"\0" * 4)]
        return gwlb.geneve_scapy(ETH_P_IP, options + extra), Reason.GENEVE_CRITICAL_OPTION
    if kind == "missing-cookie":
        return gwlb.geneve_scapy(ETH_P_IP, options[:2]), Reason.GENEVE_MISSING_AWS_OPTION
    if kind == "short-endpoint-id":
        options[0] = (AWS_CLASS, 1, b"\0" * 4)
        return gwlb.geneve_scapy(ETH_P_IP, options), Reason.GENEVE_AWS_OPTION_LENGTH
    if kind == "options-overrun":
        return gwlb.geneve_scapy(ETH_P_IP, options, optionlen=63), Reason.GENEVE_OPTIONS_LENGTH
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "version",
        "oam",
        "protocol",
        "critical",
        "missing-cookie",
        "short-endpoint-id",
        "options-overrun",
    ],
)
def test_not_a_gwlb_geneve_header_is_malformed(gwlb, default_policy, kind):
    geneve, reason = _bad_geneve(gwlb, kind)
    datagram = geneve + raw(gwlb.udp4(b"hello"))
    with pytest.raises(DecodeError) as caught:
        check_geneve(datagram, 0, len(datagram))
    assert caught.value.layer == "geneve"
    assert caught.value.reason is reason
    assert handle_datagram(datagram, 0, len(datagram), default_policy) == (
        Outcome.MALFORMED,
        int(reason),
        None,
    )


def test_truncated_geneve_header_is_malformed(gwlb, default_policy):
    datagram = gwlb.wrap(gwlb.udp4(b"hello"))
    for cut in (0, 1, 7):
        assert handle_datagram(datagram, 0, cut, default_policy) == (
            Outcome.MALFORMED,
            Reason.TRUNCATED,
            None,
        )
    for cut in (8, 20, 39):  # the header promises 32 bytes of options that are not there
        assert handle_datagram(datagram, 0, cut, default_policy) == (
            Outcome.MALFORMED,
            Reason.GENEVE_OPTIONS_LENGTH,
            None,
        )


# ---- inner packets -----------------------------------------------------------------------------

TRANSPORTS = (UDP, TCP, ICMP, ICMPv6EchoRequest, ICMPv6EchoReply)


def scapy_expectation(inner: bytes, start: int) -> dict[str, object]:
    """What our parse_inner should say about `inner`, read by scapy's dissector."""
    pkt = IP(inner) if inner[0] >> 4 == 4 else IPv6(inner)
    assert raw(pkt) == inner  # scapy read every byte
    end = start + len(inner)
    transport = next((pkt[t] for t in TRANSPORTS if t in pkt), None)
    if isinstance(pkt, IP):
        version, protocol = 4, pkt.proto
        more, offset = bool(pkt.flags.MF), pkt.frag
        l4 = start + pkt.ihl * 4
    else:
        version = 6
        frag = pkt.getlayer(IPv6ExtHdrFragment)
        more, offset = (bool(frag.m), frag.offset) if frag else (False, 0)
        # the last header before the transport (or before a later fragment's data) names it
        last: Packet = pkt
        while not isinstance(last.payload, (Raw, *TRANSPORTS)) and last.payload:
            last = last.payload
        protocol = last.nh
        l4 = end - len(raw(last.payload))
        if transport is None and isinstance(last.payload, Raw) and protocol == 17 and not offset:
            transport = UDP(raw(last.payload))  # scapy leaves what follows AH undissected
    fragment_state = Fragment.LATER if offset else Fragment.FIRST if more else Fragment.NONE
    expected: dict[str, object] = {
        "version": version,
        "start": start,
        "end": end,
        "protocol": protocol,
        "l4": l4,
        "fragment": fragment_state,
        "src_port": -1,
        "dst_port": -1,
        "icmp_type": -1,
        "icmp_seq": -1,
        "payload": l4,
    }
    if fragment_state is Fragment.LATER or transport is None:
        return expected
    assert l4 == end - len(raw(transport))
    if isinstance(transport, (UDP, TCP)):
        expected.update(src_port=transport.sport, dst_port=transport.dport)
        expected["payload"] = l4 + (8 if isinstance(transport, UDP) else transport.dataofs * 4)
    else:
        expected.update(icmp_type=transport.type, payload=l4 + 8)
        if transport.type in (0, 8, 128, 129):
            expected["icmp_seq"] = transport.seq
    return expected


def _inner_cases(g) -> dict[str, Packet]:
    cases = {
        "udp4-empty": g.udp4(b""),
        "udp4-odd": g.udp4(b"odd!!"),
        "udp4-even": g.udp4(b"even"),
        "tcp4-options": IP(**g.v4)
        / TCP(
            sport=1234,
            dport=80,
            options=[("MSS", 1460), ("NOP", None), ("WScale", 7), ("Timestamp", (1, 2))],
        )
        / b"GET / HTTP/1.1\r\n",
        "tcp4-odd": g.tcp4(b"abc"),
        "icmp4-request": g.icmp4(seq=7, icmp_type=8, payload=b"ping!"),
        "icmp4-reply": g.icmp4(seq=65535, icmp_type=0),
        "icmp4-unreachable": IP(**g.v4) / ICMP(type=3, code=3) / raw(g.udp4(b"quoted")),
        "ipv4-options-udp": IP(
            **g.v4,
            options=[IPOption_Router_Alert(), IPOption_NOP(), IPOption_RR(routers=["10.9.9.9"])],
        )
        / UDP(sport=5, dport=3000)
        / b"with options",
        "ipv4-options-icmp": IP(**g.v4, options=[IPOption_NOP()] * 4) / ICMP(seq=3) / b"x",
        "ipv4-gre": IP(**g.v4, proto=47) / (b"\x00\x00\x08\x00" + b"carried"),
        "udp6-odd": g.udp6(b"odd!!"),
        "tcp6": g.tcp6(b"data"),
        "icmp6-request": g.icmp6(seq=10, request=True),
        "icmp6-reply": g.icmp6(seq=11, request=False, payload=b"odd"),
        "ipv6-hbh-dst-routing0-udp": IPv6(**g.v6)
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrRouting(type=0, segleft=0, addresses=["fd00:c::1"])
        / UDP(sport=9, dport=3000)
        / b"walked",
        "ipv6-dst-tcp": IPv6(**g.v6) / IPv6ExtHdrDestOpt() / TCP(sport=1, dport=2) / b"t",
        "ipv6-hbh-icmp6": IPv6(**g.v6)
        / IPv6ExtHdrHopByHop()
        / ICMPv6EchoRequest(seq=15, data=b"echo"),
        # AH counts its length in 4-byte words minus 2 (RFC 4302), unlike the other headers
        "ipv6-ah-udp": IPv6(**g.v6)
        / AH(nh=17, payloadlen=4, spi=5, seq=1, icv=b"\x01" * 12)
        / UDP(sport=1, dport=3000)
        / b"after AH",
    }
    for index, piece in enumerate(fragment(g.udp4(WEAK * 30, dport=3000), fragsize=96)):
        cases[f"ipv4-fragment{index}"] = piece
    whole6 = IPv6(**g.v6) / IPv6ExtHdrFragment(id=77) / UDP(sport=4, dport=3000) / (WEAK * 200)
    for index, piece in enumerate(fragment6(whole6, 1280)):
        cases[f"ipv6-fragment{index}"] = piece
    return cases


INNER_CASE_NAMES = [
    "udp4-empty",
    "udp4-odd",
    "udp4-even",
    "tcp4-options",
    "tcp4-odd",
    "icmp4-request",
    "icmp4-reply",
    "icmp4-unreachable",
    "ipv4-options-udp",
    "ipv4-options-icmp",
    "ipv4-gre",
    "udp6-odd",
    "tcp6",
    "icmp6-request",
    "icmp6-reply",
    "ipv6-hbh-dst-routing0-udp",
    "ipv6-dst-tcp",
    "ipv6-hbh-icmp6",
    "ipv6-ah-udp",
    "ipv4-fragment0",
    "ipv4-fragment1",
    "ipv4-fragment2",
    "ipv4-fragment3",
    "ipv6-fragment0",
    "ipv6-fragment1",
]


@pytest.fixture(scope="module")
def inner_cases(gwlb) -> dict[str, Packet]:
    return _inner_cases(gwlb)


def test_inner_cases_are_all_tested(inner_cases):
    assert sorted(inner_cases) == sorted(INNER_CASE_NAMES)


@pytest.mark.parametrize("name", INNER_CASE_NAMES)
def test_parse_inner_agrees_with_scapy(gwlb, inner_cases, name):
    inner = raw(inner_cases[name])
    datagram = gwlb.wrap(inner)
    start, protocol = check_geneve(datagram, 0, len(datagram))
    parsed = parse_inner(datagram, start, len(datagram), protocol)
    expected = scapy_expectation(inner, start)
    assert {k: getattr(parsed, k) for k in expected} == expected
    assert parsed.routed is False


def test_fragment_cases_cover_first_and_later(inner_cases):
    """The fragment cases above really contain first and later fragments of both versions."""

    def state(name):
        return scapy_expectation(raw(inner_cases[name]), 0)["fragment"]

    assert state("ipv4-fragment0") is state("ipv6-fragment0") is Fragment.FIRST
    assert state("ipv4-fragment3") is state("ipv6-fragment1") is Fragment.LATER
    assert state("udp4-odd") is Fragment.NONE


def test_routing_header_with_segments_left_is_routed(gwlb):
    inner = raw(
        IPv6(**gwlb.v6)
        / IPv6ExtHdrRouting(type=0, segleft=1, addresses=["fd00:c::1"])
        / UDP(sport=9, dport=3000)
        / WEAK
    )
    datagram = gwlb.wrap(inner)
    parsed = parse_inner(datagram, GENEVE_LEN, len(datagram), ETH_P_IPV6)
    assert parsed.routed is True
    assert (parsed.protocol, parsed.dst_port) == (17, 3000)


@pytest.mark.parametrize("claimed_words", [1, 2, 255])
def test_ipv6_extension_header_overrun_is_reported_where_it_starts(
    gwlb, default_policy, claimed_words
):
    """A hop-by-hop header claiming more 8-byte units than the packet holds is truncated, and the
    error points at that header (offset 40 of the inner packet), not past the end of the buffer."""
    inner = raw(IPv6(**gwlb.v6, nh=0) / Raw(bytes([59, claimed_words]) + b"\1" * 6))
    assert IPv6(inner).plen == 8
    datagram = gwlb.wrap(inner)
    with pytest.raises(DecodeError) as caught:
        parse_inner(datagram, GENEVE_LEN, len(datagram), ETH_P_IPV6)
    assert (caught.value.layer, caught.value.reason) == ("ipv6", Reason.TRUNCATED)
    assert caught.value.offset == GENEVE_LEN + 40
    assert handle_datagram(datagram, 0, len(datagram), default_policy) == (
        Outcome.MALFORMED,
        Reason.TRUNCATED,
        None,
    )


TRANSPORT, MISMATCH = Reason.TRANSPORT_LENGTH, Reason.IP_LENGTH_MISMATCH
HEADER_LEN, CHAIN = Reason.IP_HEADER_LENGTH, Reason.IPV6_EXTENSION_CHAIN


def _malformed_inner(g) -> dict[str, tuple[Packet | bytes, str, Reason, int]]:
    """Inner packets scapy builds broken on purpose: (packet, layer, reason, offset in it)."""
    udp4, udp6 = IP(**g.v4) / UDP(sport=1, dport=3000), IPv6(**g.v6) / UDP(sport=1, dport=3000)
    return {
        "udp-len-too-big": (IP(**g.v4) / UDP(len=100) / b"abc", "udp", TRANSPORT, 24),
        "udp-len-too-small": (IP(**g.v4) / UDP(len=9) / b"abc", "udp", TRANSPORT, 24),
        "udp-len-below-8": (IP(**g.v4) / UDP(len=7) / b"", "udp", TRANSPORT, 24),
        "udp6-len-mismatch": (IPv6(**g.v6) / UDP(len=12) / b"abc", "udp", TRANSPORT, 44),
        "udp-truncated": (IP(**g.v4, proto=17) / (b"\0" * 7), "udp", Reason.TRUNCATED, 20),
        "ip-total-too-big": (IP(**g.v4, len=100) / UDP() / b"abc", "ipv4", MISMATCH, 2),
        "ip-total-too-small": (IP(**g.v4, len=30) / UDP() / b"abc", "ipv4", MISMATCH, 2),
        "ihl-below-5": (IP(**g.v4, ihl=4) / UDP() / b"abc", "ipv4", HEADER_LEN, 0),
        "ihl-past-total": (IP(**g.v4, ihl=15) / b"abc", "ipv4", HEADER_LEN, 0),
        "ipv4-too-short": (raw(udp4)[:19], "ipv4", Reason.TRUNCATED, 0),
        "ipv6-plen-mismatch": (IPv6(**g.v6, plen=100) / UDP() / b"abc", "ipv6", MISMATCH, 4),
        "ipv6-too-short": (raw(udp6)[:39], "ipv6", Reason.TRUNCATED, 0),
        "tcp-dataofs-4": (IP(**g.v4) / TCP(dataofs=4) / b"abc", "tcp", TRANSPORT, 32),
        "tcp-dataofs-past-end": (IP(**g.v4) / TCP(dataofs=15) / b"abc", "tcp", TRANSPORT, 32),
        "tcp-truncated": (IP(**g.v4, proto=6) / (b"\0" * 19), "tcp", Reason.TRUNCATED, 20),
        "icmp-truncated": (IP(**g.v4, proto=1) / b"\x08\0\0\0", "icmp", Reason.TRUNCATED, 20),
        "icmp6-truncated": (IPv6(**g.v6, nh=58) / b"\x80\0\0\0", "icmp", Reason.TRUNCATED, 40),
        "hop-by-hop-not-first": (
            IPv6(**g.v6) / IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop() / UDP(),
            "ipv6",
            CHAIN,
            48,
        ),
        "too-many-extension-headers": (
            IPv6(**g.v6) / _chain(IPv6ExtHdrDestOpt, 17) / UDP(),
            "ipv6",
            CHAIN,
            40 + 17 * 8,
        ),
    }


MALFORMED_INNER = [
    "udp-len-too-big",
    "udp-len-too-small",
    "udp-len-below-8",
    "udp6-len-mismatch",
    "udp-truncated",
    "ip-total-too-big",
    "ip-total-too-small",
    "ihl-below-5",
    "ihl-past-total",
    "ipv4-too-short",
    "ipv6-plen-mismatch",
    "ipv6-too-short",
    "tcp-dataofs-4",
    "tcp-dataofs-past-end",
    "tcp-truncated",
    "icmp-truncated",
    "icmp6-truncated",
    "hop-by-hop-not-first",
    "too-many-extension-headers",
]


def _chain(header, count):
    chain = header()
    for _ in range(count - 1):
        chain = chain / header()
    return chain


def test_malformed_cases_are_all_tested(gwlb):
    assert sorted(_malformed_inner(gwlb)) == sorted(MALFORMED_INNER)


@pytest.mark.parametrize("name", MALFORMED_INNER)
def test_malformed_inner_packets(gwlb, default_policy, name):
    packet, layer, reason, offset = _malformed_inner(gwlb)[name]
    inner = packet if isinstance(packet, bytes) else raw(packet)
    protocol = (
        ETH_P_IPV6 if name.startswith(("ipv6", "udp6", "icmp6", "hop", "too-many")) else ETH_P_IP
    )
    datagram = gwlb.wrap(inner, protocol=protocol)
    with pytest.raises(DecodeError) as caught:
        parse_inner(datagram, GENEVE_LEN, len(datagram), protocol)
    assert (caught.value.layer, caught.value.reason) == (layer, reason)
    assert caught.value.offset == GENEVE_LEN + offset
    assert handle_datagram(datagram, 0, len(datagram), default_policy) == (
        Outcome.MALFORMED,
        int(reason),
        None,
    )


@pytest.mark.parametrize("version", [4, 6])
def test_ip_version_must_match_the_geneve_protocol(gwlb, default_policy, version):
    inner = raw(gwlb.udp4(b"x" * 40) if version == 4 else gwlb.udp6(b"x"))  # long enough
    datagram = gwlb.wrap(inner, protocol=ETH_P_IPV6 if version == 4 else ETH_P_IP)
    assert handle_datagram(datagram, 0, len(datagram), default_policy) == (
        Outcome.MALFORMED,
        Reason.IP_VERSION,
        None,
    )


# ---- rewrite through the default policy --------------------------------------------------------

REWRITE_PAYLOADS = {
    "alone": (WEAK, STRONG),
    "odd-prefix": (b"odd" + WEAK, b"odd" + STRONG),
    "twice": (WEAK + b" and " + WEAK + b"!", STRONG + b" and " + STRONG + b"!"),
    "at-end": (b"Python is " + WEAK, b"Python is " + STRONG),
}


def check_rewrite(gwlb, policy, before: Packet, after: Packet) -> bytearray:
    """`before` goes in, the datagram with scapy's build of `after` must come out."""
    datagram = gwlb.wrap(before)
    outcome, _, out = handle_datagram(datagram, 0, len(datagram), policy)
    assert outcome is Outcome.REWRITE
    assert out is not None
    assert bytes(out[:GENEVE_LEN]) == datagram[:GENEVE_LEN]  # Geneve and options untouched
    assert bytes(out[GENEVE_LEN:]) == raw(after)
    # scapy dissects our bytes, derives every length and checksum afresh: nothing changes.
    dissected = GENEVE(bytes(out))
    inner = dissected.payload
    assert gwlb.recomputed(inner) == bytes(out[GENEVE_LEN:])
    return out


@pytest.mark.parametrize("payloads", REWRITE_PAYLOADS.values(), ids=REWRITE_PAYLOADS.keys())
@pytest.mark.parametrize(
    "ports", [(40000, 3000), (3000, 40000), (3000, 3000)], ids=["dst3000", "src3000", "both3000"]
)
@pytest.mark.parametrize("version", [4, 6])
def test_weakly_typed_becomes_strongly_typed(gwlb, default_policy, payloads, ports, version):
    build = gwlb.udp4 if version == 4 else gwlb.udp6
    before, after = payloads
    sport, dport = ports
    out = check_rewrite(
        gwlb, default_policy, build(before, sport, dport), build(after, sport, dport)
    )
    dissected = GENEVE(bytes(out))
    assert dissected[UDP].len == 8 + len(after)
    assert bytes(dissected[UDP].payload) == after
    if version == 4:
        assert dissected[IP].len == 28 + len(after)
    else:
        assert dissected[IPv6].plen == 8 + len(after)


def test_rewrite_keeps_ipv4_options(gwlb, default_policy):
    def build(payload):
        return (
            IP(**gwlb.v4, id=999, ttl=3, options=[IPOption_RR(routers=["10.9.9.9"])])
            / UDP(sport=1, dport=3000)
            / payload
        )

    out = check_rewrite(gwlb, default_policy, build(b"x" + WEAK), build(b"x" + STRONG))
    assert GENEVE(bytes(out))[IP].ihl == 7  # 7-byte record-route option, padded to 8


def test_rewrite_after_ipv6_extension_headers(gwlb, default_policy):
    def build(payload):
        return (
            IPv6(**gwlb.v6)
            / IPv6ExtHdrHopByHop()
            / IPv6ExtHdrDestOpt()
            / IPv6ExtHdrRouting(type=0, segleft=0, addresses=["fd00:c::1"])
            / UDP(sport=3000, dport=5)
            / payload
        )

    check_rewrite(gwlb, default_policy, build(WEAK + b"."), build(STRONG + b"."))


def test_udp_checksum_zero_over_ipv4_stays_zero(gwlb, default_policy):
    before = IP(**gwlb.v4) / UDP(sport=1, dport=3000, chksum=0) / WEAK
    after = IP(**gwlb.v4) / UDP(sport=1, dport=3000, chksum=0) / STRONG
    datagram = gwlb.wrap(before)
    outcome, _, out = handle_datagram(datagram, 0, len(datagram), default_policy)
    assert outcome is Outcome.REWRITE
    assert out is not None
    assert bytes(out[GENEVE_LEN:]) == raw(after)  # scapy: lengths and IP checksum derived
    dissected = GENEVE(bytes(out))
    assert dissected[UDP].chksum == 0
    assert dissected[UDP].len == 8 + len(STRONG)


def _dissect(version: int, data: bytes) -> Packet:
    return IP(data) if version == 4 else IPv6(data)


def _payload_for_zero_checksum(version: int, build) -> bytes:
    """A payload STRONG + 2 bytes whose UDP checksum computes to zero (so is sent as 0xFFFF).

    The two trailing bytes w sit at an even offset, so the one's-complement sum is S + w. scapy's
    checksum with w = 0 is ~S; w = 0xFFFF - S makes the sum -0, whose complement is 0.
    """
    probe = _dissect(version, raw(build(STRONG + b"\0\0")))
    partial = ~probe[UDP].chksum & 0xFFFF
    word = (0xFFFF - partial) or 0xFFFF
    return STRONG + word.to_bytes(2, "big")


@pytest.mark.parametrize("version", [4, 6])
def test_computed_udp_checksum_zero_is_sent_as_ffff(gwlb, default_policy, version):
    build = gwlb.udp4 if version == 4 else gwlb.udp6
    payload = _payload_for_zero_checksum(version, build)
    after = build(payload)
    # The oracle confirms the boundary case: its raw checksum is 0, its UDP field 0xFFFF.
    pkt = _dissect(version, raw(after))
    udp = raw(pkt[UDP])
    segment = udp[:6] + b"\0\0" + udp[8:]
    raw_sum = (
        in4_chksum(17, pkt[IP], segment) if version == 4 else in6_chksum(17, pkt[UDP], segment)
    )
    assert raw_sum == 0
    assert pkt[UDP].chksum == 0xFFFF
    out = check_rewrite(gwlb, default_policy, build(payload.replace(STRONG, WEAK)), after)
    assert GENEVE(bytes(out))[UDP].chksum == 0xFFFF


@pytest.mark.parametrize("version", [4, 6])
def test_drop_me_is_dropped(gwlb, default_policy, version):
    build = gwlb.udp4 if version == 4 else gwlb.udp6
    for payload in (b"drop me", b"please drop me now", b"drop me and " + WEAK):
        datagram = gwlb.wrap(build(payload, 40000, 3000))
        assert handle_datagram(datagram, 0, len(datagram), default_policy) == (
            Outcome.DROP,
            DROP_ME,
            None,
        )
    # the substring must really be there
    datagram = gwlb.wrap(build(b"drop_me", 40000, 3000))
    assert handle_datagram(datagram, 0, len(datagram), default_policy)[0] is Outcome.PASS


ECHO_SEQS = [0, 1, 4, 5, 6, 10, 11, 4095, 4100, 65534, 65535]


@pytest.mark.parametrize("seq", ECHO_SEQS)
@pytest.mark.parametrize("kind", ["icmp4-request", "icmp4-reply", "icmp6-request", "icmp6-reply"])
def test_every_fifth_echo_is_dropped(gwlb, default_policy, kind, seq):
    if kind.startswith("icmp4"):
        inner, rule = gwlb.icmp4(seq, icmp_type=8 if kind.endswith("request") else 0), ICMP_FIFTH
    else:
        inner, rule = gwlb.icmp6(seq, request=kind.endswith("request")), ICMPV6_FIFTH
    datagram = gwlb.wrap(inner)
    result = handle_datagram(datagram, 0, len(datagram), default_policy)
    if seq % 5 == 0:
        assert result == (Outcome.DROP, rule, None)
    else:
        assert result == (Outcome.PASS, -1, None)


def test_non_echo_icmp_passes(gwlb, default_policy):
    for inner in (
        IP(**gwlb.v4) / ICMP(type=3, code=1, seq=0) / raw(gwlb.udp4(b"q")),
        IP(**gwlb.v4) / ICMP(type=13, seq=5),
    ):
        datagram = gwlb.wrap(inner)
        assert handle_datagram(datagram, 0, len(datagram), default_policy)[0] is Outcome.PASS


def _fragments(gwlb, version, payload):
    if version == 4:
        return fragment(gwlb.udp4(payload, 40000, 3000), fragsize=96)
    whole = IPv6(**gwlb.v6) / IPv6ExtHdrFragment(id=9) / UDP(sport=40000, dport=3000) / payload
    return fragment6(whole, 1280)


@pytest.mark.parametrize("version", [4, 6])
def test_fragment_with_weakly_typed(gwlb, default_policy, version):
    pieces = _fragments(gwlb, version, WEAK * 200)
    assert len(pieces) >= 2
    first = gwlb.wrap(pieces[0])
    assert WEAK in first
    assert handle_datagram(first, 0, len(first), default_policy) == (
        Outcome.UNREWRITABLE,
        WEAKLY_TO_STRONGLY,
        None,
    )
    assert WEAK in raw(pieces[1])
    for piece in pieces[1:]:
        later = gwlb.wrap(piece)
        assert handle_datagram(later, 0, len(later), default_policy) == (Outcome.PASS, -1, None)


@pytest.mark.parametrize("version", [4, 6])
def test_first_fragment_is_subject_to_drop_rules(gwlb, default_policy, version):
    pieces = _fragments(gwlb, version, b"drop me " + WEAK * 200)
    first = gwlb.wrap(pieces[0])
    assert handle_datagram(first, 0, len(first), default_policy) == (Outcome.DROP, DROP_ME, None)
    later = gwlb.wrap(pieces[1])
    assert handle_datagram(later, 0, len(later), default_policy)[0] is Outcome.PASS


def _sized_udp(gwlb, version, inner_len, occurrences=10):
    build = gwlb.udp4 if version == 4 else gwlb.udp6
    headers = 28 if version == 4 else 48
    filler = inner_len - headers - occurrences * len(WEAK)
    payload = WEAK * occurrences + b"." * filler
    packet = build(payload)
    assert len(raw(packet)) == inner_len
    return packet, payload


@pytest.mark.parametrize("version", [4, 6])
def test_rewrite_up_to_8500_bytes(gwlb, default_policy, version):
    grown = 2 * 10  # ten occurrences, two bytes each
    packet, payload = _sized_udp(gwlb, version, MAX_INNER_BYTES - grown)
    build = gwlb.udp4 if version == 4 else gwlb.udp6
    out = check_rewrite(gwlb, default_policy, packet, build(payload.replace(WEAK, STRONG)))
    assert len(out) - GENEVE_LEN == MAX_INNER_BYTES


@pytest.mark.parametrize("version", [4, 6])
def test_rewrite_past_8500_bytes_is_oversize(gwlb, default_policy, version):
    packet, _ = _sized_udp(gwlb, version, MAX_INNER_BYTES - 19)  # grows to 8501
    datagram = gwlb.wrap(packet)
    assert handle_datagram(datagram, 0, len(datagram), default_policy) == (
        Outcome.OVERSIZE,
        WEAKLY_TO_STRONGLY,
        None,
    )


@pytest.mark.parametrize("port", [53, 123, 4789, 5060, 6081])
@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("direction", ["to", "from"])
def test_well_known_ports_pass_untouched(gwlb, default_policy, port, version, direction):
    build = gwlb.udp4 if version == 4 else gwlb.udp6
    sport, dport = (40000, port) if direction == "to" else (port, 40000)
    for payload in (WEAK, b"drop me"):
        datagram = bytearray(gwlb.wrap(build(payload, sport, dport)))
        copy = bytes(datagram)
        assert handle_datagram(datagram, 0, len(datagram), default_policy) == (
            Outcome.PASS,
            -1,
            None,
        )
        assert datagram == copy


@pytest.mark.parametrize("version", [4, 6])
def test_tcp_port_3000_is_not_rewritten(gwlb, default_policy, version):
    build = gwlb.tcp4 if version == 4 else gwlb.tcp6
    datagram = gwlb.wrap(build(WEAK, 40000, 3000))
    assert handle_datagram(datagram, 0, len(datagram), default_policy)[0] is Outcome.PASS


ICMP_REPLACE = """
[[policy.rules]]
name = "icmp"
action = "replace"
match = { protocol = "icmp" }
find = "weakly typed"
replace = "strongly typed!"

[[policy.rules]]
name = "icmpv6"
action = "replace"
match = { protocol = "icmpv6" }
find = "weakly typed"
replace = "strongly typed!"
"""


@pytest.mark.parametrize("icmp_type", [8, 0])
def test_icmp_payload_rewrite(gwlb, icmp_type):
    policy = parse_config(ICMP_REPLACE).policy
    check_rewrite(
        gwlb,
        policy,
        gwlb.icmp4(3, icmp_type, WEAK + b"!"),
        gwlb.icmp4(3, icmp_type, b"strongly typed!!"),
    )


@pytest.mark.parametrize("is_request", [True, False], ids=["request", "reply"])
def test_icmpv6_payload_rewrite(gwlb, is_request):
    policy = parse_config(ICMP_REPLACE).policy
    check_rewrite(
        gwlb, policy, gwlb.icmp6(3, is_request, WEAK), gwlb.icmp6(3, is_request, b"strongly typed!")
    )


@pytest.mark.parametrize("version", [4, 6])
def test_computed_icmp_checksum_zero_stays_zero(gwlb, version):
    """Unlike UDP's, an ICMP checksum that computes to 0 is sent as 0 (no 0xFFFF rule)."""
    policy = parse_config(ICMP_REPLACE).policy

    def build(payload):
        return gwlb.icmp4(3, 8, payload) if version == 4 else gwlb.icmp6(3, True, payload)

    after_text = b"x" + b"strongly typed!"  # 16 bytes: the last two land on a word boundary
    probe = _dissect(version, raw(build(after_text + b"\0\0")))
    field = probe[ICMP].chksum if version == 4 else probe[ICMPv6EchoRequest].cksum
    word = (0xFFFF - (~field & 0xFFFF)) or 0xFFFF
    after = build(after_text + word.to_bytes(2, "big"))
    pkt = _dissect(version, raw(after))
    assert (pkt[ICMP].chksum if version == 4 else pkt[ICMPv6EchoRequest].cksum) == 0
    check_rewrite(gwlb, policy, build(b"x" + WEAK + word.to_bytes(2, "big")), after)


# ---- checksums ---------------------------------------------------------------------------------

CHECKSUM_DATA = [
    b"",
    b"\x00",
    b"\xff",
    b"\x00\x00",
    b"\xff\xff",
    b"\xff\xff\xff\xff",
    b"\x00" * 64,
    b"\xab",
    b"\x12\x34\x56",
    bytes(range(256)),
    b"\xff" * 1001,
]
CHECKSUM_DATA += [random.Random(n).randbytes(n) for n in (1, 2, 3, 19, 20, 1499, 1500, 8500, 9001)]


@pytest.mark.parametrize("data", CHECKSUM_DATA, ids=lambda d: f"{len(d)}B")
def test_internet_checksum_equals_scapy(data):
    assert internet_checksum(data) == scapy_checksum(data)
    assert internet_checksum(memoryview(bytearray(data))) == scapy_checksum(data)


@pytest.mark.parametrize(
    "payload",
    [b"", b"a", b"ab", WEAK, random.Random(1).randbytes(1001)],
    ids=lambda p: f"{len(p)}B",
)
def test_pseudo_header_v4_equals_scapy(gwlb, payload):
    pkt = IP(raw(gwlb.udp4(payload)))
    udp = raw(pkt[UDP])
    segment = udp[:6] + b"\0\0" + udp[8:]
    src, dst = raw(pkt)[12:16], raw(pkt)[16:20]
    total = pseudo_header_sum_v4(src, dst, 17, len(segment)) + ones_sum(segment)
    assert finish(total) == in4_chksum(17, pkt, segment)
    assert udp_checksum_field(total) == pkt[UDP].chksum  # scapy's field, 0 sent as 0xFFFF
    tcp = IP(raw(gwlb.tcp4(payload)))
    segment = raw(tcp[TCP])[:16] + b"\0\0" + raw(tcp[TCP])[18:]
    total = pseudo_header_sum_v4(src, dst, 6, len(segment)) + ones_sum(segment)
    assert finish(total) == in4_chksum(6, tcp, segment) == tcp[TCP].chksum


@pytest.mark.parametrize("length", [0, 1, 8, 1001, 65535, 65536, 70001])
def test_pseudo_header_v6_equals_scapy(gwlb, length):
    pkt = IPv6(raw(gwlb.udp6(b"")))
    segment = random.Random(length).randbytes(length)
    src, dst = raw(pkt)[8:24], raw(pkt)[24:40]
    for nh in (6, 17, 58):
        total = pseudo_header_sum_v6(src, dst, nh, len(segment)) + ones_sum(segment)
        assert finish(total) == in6_chksum(nh, pkt[UDP], segment)


@pytest.mark.parametrize("version", [4, 6])
def test_a_wrong_udp_checksum_stays_wrong_by_the_same_amount(gwlb, default_policy, version):
    """End to end: a rewrite must not bless a datagram that arrived corrupted (RFC 1624 update)."""
    build = gwlb.udp4 if version == 4 else gwlb.udp6
    good = raw(build(b"so weakly typed, weakly typed!", sport=3000, dport=9))
    l4 = 20 if version == 4 else 40
    bad = bytearray(good)
    bad[l4 + 6 : l4 + 8] = (int.from_bytes(good[l4 + 6 : l4 + 8], "big") ^ 0x0101).to_bytes(
        2, "big"
    )
    results = []
    for inner in (good, bytes(bad)):
        outcome, _, out = handle_datagram(
            gwlb.wrap(inner), 0, len(gwlb.wrap(inner)), default_policy
        )
        assert outcome is Outcome.REWRITE and out is not None
        results.append(out[40:])
    fixed, kept_bad = results
    assert fixed[: l4 + 6] == kept_bad[: l4 + 6] and fixed[l4 + 8 :] == kept_bad[l4 + 8 :]
    recomputed = IP(fixed) if version == 4 else IPv6(fixed)
    del recomputed[UDP].chksum
    assert raw(recomputed)[l4 + 6 : l4 + 8] == fixed[l4 + 6 : l4 + 8]  # the good one: scapy's
    xor = int.from_bytes(fixed[l4 + 6 : l4 + 8], "big") ^ int.from_bytes(
        kept_bad[l4 + 6 : l4 + 8], "big"
    )
    assert xor != 0  # the bad one is still wrong...
    good_field = int.from_bytes(good[l4 + 6 : l4 + 8], "big")
    bad_field = int.from_bytes(bad[l4 + 6 : l4 + 8], "big")
    new_good = int.from_bytes(fixed[l4 + 6 : l4 + 8], "big")
    new_bad = int.from_bytes(kept_bad[l4 + 6 : l4 + 8], "big")
    # ...by the same one's-complement amount as it arrived.
    assert (bad_field - good_field) % 0xFFFF == (new_bad - new_good) % 0xFFFF


@pytest.mark.parametrize(("find", "replace"), [("ab", "xyz"), ("abc", "x"), ("ab", "abab")])
@pytest.mark.parametrize("version", [4, 6])
def test_odd_and_even_length_changes_at_odd_and_even_offsets(gwlb, version, find, replace):
    """Incremental (even change) and full (odd change) UDP checksums both equal scapy's."""
    policy = parse_config(
        f'[[policy.rules]]\naction = "replace"\nmatch = {{ protocol = "udp", port = 7 }}\n'
        f'find = "{find}"\nreplace = "{replace}"\n'
    ).policy
    build = gwlb.udp4 if version == 4 else gwlb.udp6
    for prefix in (b"", b"-", b"--", b"---"):
        payload = prefix + b"ab.abcab-ab" + prefix + b"zabc"
        datagram = gwlb.wrap(build(payload, sport=7, dport=9))
        outcome, _, out = handle_datagram(datagram, 0, len(datagram), policy)
        assert outcome is Outcome.REWRITE and out is not None
        inner = IP(out[40:]) if version == 4 else IPv6(out[40:])
        assert inner[Raw].load == payload.replace(find.encode(), replace.encode())
        assert raw(inner) == gwlb.recomputed(inner), (find, replace, prefix)
