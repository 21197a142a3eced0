"""What the worker's new-flow path takes shortcuts with: the fast path's parse of every datagram
in the usual layout (fastpath.parse_usual, in place of parse_datagram) and the struct swap of a
TCP or UDP key (flowkey.reverse_key) give what the general code gives."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.packet import Packet, Raw

from appliance.datapath import parse_datagram
from appliance.fastpath import parse_usual
from appliance.flowkey import reverse_key

ROOM = 128  # the receive slot's spare bytes: parse_usual reads 93 from the start


@st.composite
def inner_packets(draw: st.DrawFn) -> Packet:
    v6 = draw(st.booleans())
    ip = IPv6(src="fd00:a::5", dst="fd00:b::9") if v6 else IP(src="10.1.0.5", dst="10.2.0.9")
    payload = Raw(draw(st.binary(max_size=40)))
    ports = {"sport": draw(st.integers(0, 65535)), "dport": draw(st.integers(0, 65535))}
    kind = draw(st.sampled_from(["tcp", "udp", "icmp", "other"]))
    if kind == "tcp":
        return ip / TCP(**ports, flags=draw(st.integers(0, 255))) / payload
    if kind == "udp":
        return ip / UDP(**ports) / payload
    if kind == "icmp":
        seq = draw(st.integers(0, 65535))
        return ip / (ICMPv6EchoRequest(seq=seq) if v6 else ICMP(type=8, seq=seq)) / payload
    if v6:
        return IPv6(src="fd00:a::5", dst="fd00:b::9", nh=47) / payload
    return IP(src="10.1.0.5", dst="10.2.0.9", proto=47) / payload


@settings(max_examples=300, deadline=None)
@given(inner=inner_packets())
def test_parse_usual_is_the_full_parse(gwlb, inner: Packet) -> None:
    datagram = gwlb.wrap(inner)
    buf = bytearray(datagram) + bytearray(ROOM)
    full = parse_datagram(buf, 0, len(datagram))
    assert not isinstance(full, int)
    assert parse_usual(buf, 0, len(datagram)) == full[0]


@given(inner=inner_packets())
def test_parse_usual_leaves_other_layouts_to_the_full_path(gwlb, inner: Packet) -> None:
    datagram = gwlb.wrap(inner, order=(2, 1, 3))  # GWLB's options out of their usual order
    buf = bytearray(datagram) + bytearray(ROOM)
    assert parse_usual(buf, 0, len(datagram)) is None


def _swapped(key: bytes) -> bytes:
    """The ends of a TCP or UDP key swapped, slice by slice (flowkey's general formula)."""
    head, ends = key[:9], key[9:]
    size = (len(ends) - 4) // 2
    return head + ends[size : 2 * size] + ends[:size] + ends[-2:] + ends[-4:-2]


@given(key=st.one_of(st.binary(min_size=21, max_size=21), st.binary(min_size=45, max_size=45)))
def test_a_ported_key_reverses_as_the_slices_do(key: bytes) -> None:
    assert reverse_key(key) == _swapped(key)
    assert reverse_key(reverse_key(key)) == key
