"""The fast path against the full path: it may only ever say "passes" where the full path says
PASS, and it must actually take the common packets (or it would be a fast path in name only)."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.packet import Raw, raw

from appliance.fastpath import FastPath
from appliance.geneve import check_geneve
from appliance.inner import parse_inner
from appliance.policy import PASS_DECISION, Action, Match, Policy, Rule

SLOT = 9216
START = 28
OPTIONS = (
    bytes.fromhex("01080102")
    + bytes(8)
    + bytes.fromhex("01080202")
    + bytes(8)
    + bytes.fromhex("01080301")
    + bytes(4)
)
POLICIES = {
    "demo": None,  # the shipped default, from the fixture
    "tcp-port": Policy([Rule("t", Action.DROP, Match(protocol=6, dst_ports=frozenset({22})))]),
    "any-protocol": Policy([Rule("a", Action.DROP, Match(payload_contains=b"evil"))]),
    "udp-all-ports": Policy([Rule("u", Action.DROP, Match(protocol=17, payload_contains=b"x"))]),
    "gre": Policy([Rule("g", Action.DROP, Match(protocol=47))]),
    "empty": Policy([]),
}


def slot(datagram: bytes, stale: bytes = b"") -> bytearray:
    """A receive slot holding `datagram`, and after it whatever an earlier datagram left there:
    `stale` repeated over the rest of the slot (the worker never clears its slots)."""
    buf = bytearray(SLOT)
    if stale:
        buf[:] = (stale * (SLOT // len(stale) + 1))[:SLOT]
    buf[START : START + len(datagram)] = datagram
    return buf


def geneve(protocol: int) -> bytes:
    return struct.pack("!BBHI", 8, 0, protocol, 0) + OPTIONS


def agree(policy: Policy, datagram: bytes, stale: bytes = b"") -> bool:
    """Assert the fast path is sound on this datagram; return whether it settled it alone."""
    buf = slot(datagram, stale)
    end = START + len(datagram)
    found = FastPath(policy).classify(buf, START, len(datagram))
    if found is True:
        # The full path parses it, and no packet rule acts on it (its flow's verdict is the
        # flow table's: the worker's tests).
        inner, protocol = check_geneve(buf, START, end)
        pkt = parse_inner(buf, inner, end, protocol)
        assert policy.decide_packet(buf, pkt, bytes(buf[START + 12 : START + 20]), -1) == (
            PASS_DECISION
        ), datagram.hex()
    elif found is not None:  # parsed: exactly as the full path parses it
        inner, protocol = check_geneve(buf, START, end)
        assert found == parse_inner(buf, inner, end, protocol), datagram.hex()
        assert found.end <= end and found.payload <= end, datagram.hex()
    return found is True


def test_common_pass_through_takes_the_fast_path(default_policy: Policy) -> None:
    v4, v6 = {"src": "10.1.0.5", "dst": "10.2.0.9"}, {"src": "fd00::5", "dst": "fd00::9"}
    common = [
        IP(**v4) / UDP(sport=40000, dport=53) / Raw(b"q" * 30),
        IP(**v4) / TCP(sport=40000, dport=443) / Raw(b"x" * 1400),
        IP(**v4) / ICMP(type=3, code=4) / Raw(b"y" * 28),  # not an echo: no rule watches it
        IPv6(**v6) / UDP(sport=123, dport=123) / Raw(b"n" * 48),
        IPv6(**v6) / TCP(sport=5060, dport=5060),
        IP(**v4, proto=47) / Raw(b"\x00\x00\x08\x00" + b"g" * 20),  # GRE: no rule names it
    ]
    for inner in common:
        protocol = 0x86DD if isinstance(inner, IPv6) else 0x0800
        assert agree(default_policy, geneve(protocol) + raw(inner)), inner.summary()


def test_the_usual_layout_comes_back_parsed_for_the_policy(default_policy: Policy) -> None:
    v4 = {"src": "10.1.0.5", "dst": "10.2.0.9"}
    for inner in (
        IP(**v4) / UDP(sport=3000, dport=9) / Raw(b"weakly typed"),
        IP(**v4) / ICMP(type=8, seq=10),
        IPv6(src="fd00::5", dst="fd00::9") / UDP(sport=9, dport=3000),
    ):
        protocol = 0x86DD if isinstance(inner, IPv6) else 0x0800
        datagram = geneve(protocol) + raw(inner)
        found = FastPath(default_policy).classify(slot(datagram), START, len(datagram))
        assert found is not None and found is not True, inner.summary()
        assert not agree(default_policy, datagram)


def test_what_a_rule_might_touch_takes_the_full_path(default_policy: Policy) -> None:
    v4 = {"src": "10.1.0.5", "dst": "10.2.0.9"}
    watched = [
        IP(**v4) / UDP(sport=3000, dport=9) / Raw(b"weakly typed"),
        IP(**v4) / UDP(sport=9, dport=3000) / Raw(b"harmless"),
        IP(**v4) / ICMP(type=8, seq=7),
        IP(**v4, options=b"\x94\x04\x00\x00") / UDP(dport=53),  # IPv4 options
        IP(**v4, flags="MF") / UDP(dport=53) / Raw(b"z" * 16),  # a first fragment
        IPv6(src="fd00::5", dst="fd00::9") / IPv6ExtHdrHopByHop() / UDP(dport=53),
    ]
    for inner in watched:
        protocol = 0x86DD if isinstance(inner, IPv6) else 0x0800
        assert not agree(default_policy, geneve(protocol) + raw(inner)), inner.summary()


inner_packets = st.one_of(
    st.builds(
        lambda s, d, p: raw(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=s, dport=d) / Raw(p)),
        st.integers(0, 65535),
        st.sampled_from([3000, 22, 53, 80]),
        st.binary(max_size=64),
    ),
    st.builds(
        lambda s, d, p: raw(IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=s, dport=d) / Raw(p)),
        st.sampled_from([22, 3000, 443]),
        st.integers(0, 65535),
        st.binary(max_size=64),
    ),
    st.builds(
        lambda t, q: raw(IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=t, seq=q)),
        st.integers(0, 255),
        st.integers(0, 65535),
    ),
    st.builds(
        lambda proto, p: raw(IP(src="10.0.0.1", dst="10.0.0.2", proto=proto) / Raw(p)),
        st.sampled_from([1, 6, 17, 47, 50, 58]),
        st.binary(max_size=40),
    ),
    st.builds(
        lambda nh, p: raw(IPv6(src="fd00::1", dst="fd00::2", nh=nh) / Raw(p)),
        st.sampled_from([0, 1, 6, 17, 44, 47, 58, 59]),
        st.binary(max_size=40),
    ),
)


def consistently_cut(inner: bytes, keep: int) -> bytes:
    """The first `keep` bytes of `inner` with its IP length field saying exactly that: a packet
    shorter than its headers whose lengths nevertheless agree with what arrived."""
    data = bytearray(inner[:keep])
    if inner[0] >> 4 == 4 and keep >= 4:
        data[2:4] = keep.to_bytes(2, "big")
    elif keep >= 6:
        data[4:6] = max(keep - 40, 0).to_bytes(2, "big")
    return bytes(data)


short_inner_packets = st.builds(consistently_cut, inner_packets, st.integers(1, 60))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    inner=st.one_of(inner_packets, short_inner_packets),
    flips=st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=3),
    cut=st.one_of(st.integers(-8, 0), st.integers(-120, 0)),
    stale=st.one_of(
        st.just(b""),
        st.binary(min_size=1, max_size=96),
        inner_packets.map(lambda p: bytes(START) + geneve(0x0800) + p),  # an earlier datagram
    ),
)
def test_the_fast_path_never_passes_what_the_full_path_would_not(
    default_policy: Policy, inner: bytes, flips: list[tuple[int, int]], cut: int, stale: bytes
) -> None:
    protocol = 0x86DD if inner[0] >> 4 == 6 else 0x0800
    datagram = bytearray(geneve(protocol) + inner)
    for at, value in flips:  # mutate headers: lengths, versions, option tags, ports
        if at < len(datagram):
            datagram[at] = value
    data = bytes(datagram[: len(datagram) + cut] if cut else datagram)
    for policy in POLICIES.values():
        agree(policy or default_policy, data, stale)


def test_a_short_inner_packet_is_never_judged_on_the_bytes_after_it(default_policy: Policy) -> None:
    # Found by the differential wire fuzz: an inner IPv4 header whose total length (8) matches
    # what arrived but is under 20 bytes. Its protocol and ports would be read from the stale
    # bytes of an earlier datagram in the slot; here those say GRE, which no rule of the demo
    # watches, so a fast path that read them would pass the packet.
    earlier = geneve(0x0800) + raw(IP(src="10.0.0.1", dst="10.0.0.2", proto=47) / Raw(b"g" * 24))
    for inner in (bytes.fromhex("4500000800000000"), bytes.fromhex("450000130000")):
        datagram = geneve(0x0800) + inner
        for policy in POLICIES.values():
            buf = slot(datagram, bytes(START) + earlier)
            assert FastPath(policy or default_policy).classify(buf, START, len(datagram)) is None
            agree(policy or default_policy, datagram, bytes(START) + earlier)
