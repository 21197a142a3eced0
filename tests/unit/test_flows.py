"""The flow table (appliance.flows), its keys (appliance.flowkey) and its listing
(appliance.flowlist), with a fake clock.

Packets are built with scapy (conftest's `gwlb`), so the keys the fast readers take from raw bytes
are checked against an independent encoder and against the full parse; the property test builds
keys by hand, in the layout the flowkey docstring gives, to stay fast.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6ND_NS, IPv6
from scapy.layers.l2 import GRE
from scapy.packet import Packet, Raw

from appliance.flowkey import (
    TCP_FLAGS_V4,
    TCP_FLAGS_V6,
    FlowKey,
    describe,
    flow_key,
    key_v4,
    key_v6,
    reverse_key,
    tcp_flags,
)
from appliance.flowlist import FlowRecord, list_flows
from appliance.flows import TICK_SHIFT, Flow, FlowTable
from appliance.geneve import parse_geneve
from appliance.inner import parse_inner

S = 1_000_000_000  # ns
T0 = 1_000 * S  # the fake clock's start: any monotonic time
PASS, DROP, REJECT = 0, 1, 2  # the caller's verdict codes
EP_A = bytes.fromhex("8f3a5c2e91b04d67")
EP_B = bytes.fromhex("2b8ee1d4db0c51c4")
SYN, SYN_ACK, ACK, FIN_ACK, RST = 0x02, 0x12, 0x10, 0x11, 0x04


def swapped(pkt: Packet) -> Packet:
    """`pkt` going the other way: addresses and ports (or nothing, for an echo) swapped."""
    back = pkt.copy()
    back.src, back.dst = pkt.dst, pkt.src
    layer = back.payload
    if hasattr(layer, "sport") and hasattr(layer, "dport"):
        layer.sport, layer.dport = pkt.payload.dport, pkt.payload.sport
    return back


def key_of(gwlb: Any, inner: Packet, endpoint: bytes = EP_A) -> FlowKey:
    """The key of `inner` in a GWLB datagram, by the fast reader; checked against the full parse."""
    datagram = gwlb.wrap(inner, endpoint_id=endpoint)
    fast = (key_v4 if isinstance(inner, IP) else key_v6)(datagram, 0)
    header = parse_geneve(datagram)
    pkt = parse_inner(datagram, header.length, len(datagram), header.protocol)
    assert flow_key(datagram, pkt, header.endpoint_id) == fast
    return fast


def table(max_flows: int = 100, **options: Any) -> FlowTable:
    return FlowTable(max_flows, **options)


# ---- keys ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "inner",
    [
        IP(src="10.1.0.5", dst="10.2.0.9") / TCP(sport=40000, dport=443, flags="S"),
        IP(src="10.1.0.5", dst="10.2.0.9") / UDP(sport=40000, dport=53) / b"q",
        IPv6(src="fd00:a::5", dst="fd00:b::9") / TCP(sport=40000, dport=443, flags="S"),
        IPv6(src="fd00:a::5", dst="fd00:b::9") / UDP(sport=40000, dport=53) / b"q",
        IP(src="10.1.0.5", dst="10.2.0.9") / GRE() / b"tunnelled",
        IPv6(src="fd00:a::5", dst="fd00:b::9") / ICMPv6ND_NS(tgt="fd00:b::9"),
        IP(src="10.1.0.5", dst="10.2.0.9") / ICMP(type=3, code=1) / b"unreachable",
    ],
    ids=["tcp4", "udp4", "tcp6", "udp6", "gre4", "icmp6-non-echo", "icmp4-non-echo"],
)
def test_the_reverse_key_is_the_key_of_the_other_direction(gwlb: Any, inner: Packet) -> None:
    forward, back = key_of(gwlb, inner), key_of(gwlb, swapped(inner))
    assert forward != back
    assert reverse_key(forward) == back and reverse_key(back) == forward


def test_ports_and_protocol_and_endpoint_all_name_the_flow(gwlb: Any) -> None:
    base = IP(src="10.1.0.5", dst="10.2.0.9")
    keys = {
        key_of(gwlb, base / TCP(sport=40000, dport=443)),
        key_of(gwlb, base / UDP(sport=40000, dport=443)),
        key_of(gwlb, base / TCP(sport=40001, dport=443)),
        key_of(gwlb, base / TCP(sport=40000, dport=444)),
        key_of(gwlb, base / TCP(sport=40000, dport=443), endpoint=EP_B),
        key_of(gwlb, IP(src="10.1.0.6", dst="10.2.0.9") / TCP(sport=40000, dport=443)),
    }
    assert len(keys) == 6


@pytest.mark.parametrize("version", [4, 6])
def test_tcp_flags_are_read_where_the_fast_offsets_say(gwlb: Any, version: int) -> None:
    for inner, expected in (
        ((gwlb.tcp4 if version == 4 else gwlb.tcp6)(b"x"), 0x18),  # PA
        ((gwlb.udp4 if version == 4 else gwlb.udp6)(b"x"), 0),
    ):
        datagram = gwlb.wrap(inner)
        header = parse_geneve(datagram)
        pkt = parse_inner(datagram, header.length, len(datagram), header.protocol)
        assert tcp_flags(datagram, pkt) == expected
        if expected:
            assert datagram[TCP_FLAGS_V4 if version == 4 else TCP_FLAGS_V6] == expected


def test_a_later_fragment_has_no_flow(gwlb: Any) -> None:
    datagram = gwlb.wrap(IP(src="10.1.0.5", dst="10.2.0.9", frag=185, proto=17) / Raw(b"x" * 16))
    header = parse_geneve(datagram)
    pkt = parse_inner(datagram, header.length, len(datagram), header.protocol)
    assert flow_key(datagram, pkt, header.endpoint_id) is None


def test_a_general_key_needs_an_eight_byte_endpoint(gwlb: Any) -> None:
    datagram = gwlb.wrap(gwlb.udp4(b"x"))
    header = parse_geneve(datagram)
    pkt = parse_inner(datagram, header.length, len(datagram), header.protocol)
    with pytest.raises(ValueError, match="8 bytes"):
        flow_key(datagram, pkt, b"\x01\x02")


def test_describe_gives_the_ends_in_the_key_s_own_order(gwlb: Any) -> None:
    tcp = key_of(gwlb, IPv6(src="fd00:a::5", dst="fd00:b::9") / TCP(sport=40000, dport=443))
    assert describe(tcp) == (EP_A.hex(), 6, "fd00:a::5", 40000, "fd00:b::9", 443)
    back = describe(reverse_key(tcp))
    assert back == (EP_A.hex(), 6, "fd00:b::9", 443, "fd00:a::5", 40000)
    echo = key_of(gwlb, IP(src="10.1.0.5", dst="10.2.0.9") / ICMP(id=0x1234, seq=1))
    assert describe(echo) == (EP_A.hex(), 1, "10.1.0.5", 0x1234, "10.2.0.9", 0x1234)
    gre = key_of(gwlb, IP(src="10.1.0.5", dst="10.2.0.9") / GRE())
    assert describe(gre) == (EP_A.hex(), 47, "10.1.0.5", None, "10.2.0.9", None)


# ---- both directions, one flow ------------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 6])
def test_both_directions_find_one_flow_and_are_told_apart(gwlb: Any, version: int) -> None:
    inner = (gwlb.tcp4 if version == 4 else gwlb.tcp6)(b"hello")
    forward, back = key_of(gwlb, inner), key_of(gwlb, swapped(inner))
    flows = table()
    assert flows.seen(forward, T0, 100) is None
    flow = flows.open(forward, T0, 100, DROP, 3)
    assert flow.key == forward and not flow.replied
    assert flows.seen(forward, T0 + S, 101) is flow
    assert flows.seen(back, T0 + 2 * S, 1000) is flow
    assert flows.seen(back, T0 + 3 * S, 1001) is flow
    assert flows.seen(back, T0 + 4 * S, 1002) is flow
    assert (flow.fwd_packets, flow.fwd_bytes) == (2, 201)
    assert (flow.rev_packets, flow.rev_bytes) == (3, 3003)
    assert flow.replied and (flow.verdict, flow.rule) == (DROP, 3)
    assert (flow.created_ns, flow.last_ns) == (T0, T0 + 4 * S)
    assert len(flows) == 1 and flows.counters().created == 1


def test_the_direction_is_the_opening_packet_s_whichever_way_it_went(gwlb: Any) -> None:
    """A flow first seen from the server (a worker restarted mid-connection): that is forward."""
    reply = swapped(gwlb.tcp4(b"data"))
    flows = table()
    flow = flows.open(key_of(gwlb, reply), T0, 60, PASS, -1)
    flows.seen(key_of(gwlb, gwlb.tcp4(b"data")), T0, 40)
    assert (flow.fwd_bytes, flow.rev_bytes) == (60, 40)
    record = next(list_flows(flows, T0))
    assert (record.src, record.src_port) == (gwlb.v4["dst"], 3000)


def test_endpoints_with_overlapping_addresses_are_separate_flows(gwlb: Any) -> None:
    inner = gwlb.udp4(b"same addresses, two tenants")
    flows = table()
    a = flows.open(key_of(gwlb, inner, EP_A), T0, 10, PASS, -1)
    b = flows.open(key_of(gwlb, inner, EP_B), T0, 10, DROP, 0)
    assert a is not b and len(flows) == 2
    assert flows.seen(key_of(gwlb, swapped(inner), EP_B), T0, 10) is b
    assert flows.seen(key_of(gwlb, swapped(inner), EP_A), T0, 10) is a
    assert a.verdict == PASS and b.verdict == DROP


@pytest.mark.parametrize("version", [4, 6])
def test_icmp_echo_request_and_reply_pair_up_by_identifier(gwlb: Any, version: int) -> None:
    base: Packet
    back: Packet
    request: Packet
    reply: Packet
    other: Packet
    if version == 4:
        base, back = IP(**gwlb.v4), IP(src=gwlb.v4["dst"], dst=gwlb.v4["src"])
        request, reply = ICMP(type=8, id=7, seq=1), ICMP(type=0, id=7, seq=1)
        other = ICMP(type=8, id=8, seq=1)
    else:
        base, back = IPv6(**gwlb.v6), IPv6(src=gwlb.v6["dst"], dst=gwlb.v6["src"])
        request, reply = ICMPv6EchoRequest(id=7, seq=1), ICMPv6EchoReply(id=7, seq=1)
        other = ICMPv6EchoRequest(id=8, seq=1)
    flows = table()
    flow = flows.open(key_of(gwlb, base / request / b"ping"), T0, 30, PASS, -1)
    assert flows.seen(key_of(gwlb, base / request.copy() / b"ping 2"), T0, 30) is flow
    assert flows.seen(key_of(gwlb, back / reply / b"ping"), T0, 30) is flow
    assert (flow.fwd_packets, flow.rev_packets) == (2, 1)
    assert flows.seen(key_of(gwlb, base / other / b"ping"), T0, 30) is None


def test_protocols_without_ports_pair_up_by_addresses(gwlb: Any) -> None:
    out = IP(**gwlb.v4) / GRE() / b"a"
    flows = table()
    flow = flows.open(key_of(gwlb, out), T0, 30, PASS, -1)
    assert flows.seen(key_of(gwlb, swapped(out)), T0, 30) is flow
    assert flows.seen(key_of(gwlb, IP(**gwlb.v4) / UDP() / b"a"), T0, 30) is None


def test_a_flow_whose_two_ends_are_equal_has_one_key(gwlb: Any) -> None:
    inner = IP(src="10.1.0.5", dst="10.1.0.5") / UDP(sport=5000, dport=5000)
    key = key_of(gwlb, inner)
    assert reverse_key(key) == key
    flows = table()
    flow = flows.open(key, T0, 28, PASS, -1)
    assert flows.seen(key, T0, 28) is flow and flow.fwd_packets == 2
    assert flows.sweep(T0 + 200 * S) == 1 and len(flows) == 0


# ---- timeouts, with a fake clock ----------------------------------------------------------------


def test_idle_timeouts_per_protocol(gwlb: Any) -> None:
    flows = table()
    udp = key_of(gwlb, gwlb.udp4(b"x"))
    tcp = key_of(gwlb, gwlb.tcp4(b"x"))
    flows.open(udp, T0, 10, PASS, -1)
    flows.open(tcp, T0, 10, PASS, -1)
    assert flows.seen(udp, T0 + 119 * S, 10) is not None  # idle 119 s: alive, and seen again
    assert flows.seen(udp, T0 + 238 * S, 10) is not None
    assert flows.seen(udp, T0 + 358 * S, 10) is None  # idle 120 s: gone
    assert flows.seen(tcp, T0 + 349 * S, 10) is not None
    assert flows.seen(tcp, T0 + 699 * S, 10) is None
    assert flows.counters() == (0, 2, 2, 0, 0)


def test_timeouts_are_configurable(gwlb: Any) -> None:
    flows = table(tcp_timeout_s=60, other_timeout_s=30)
    udp, tcp = key_of(gwlb, gwlb.udp4(b"x")), key_of(gwlb, gwlb.tcp4(b"x"))
    flows.open(udp, T0, 10, PASS, -1)
    flows.open(tcp, T0, 10, PASS, -1)
    assert flows.seen(udp, T0 + 30 * S, 10) is None
    assert flows.seen(tcp, T0 + 59 * S, 10) is not None
    assert flows.seen(tcp, T0 + 119 * S, 10) is None


def test_the_sweep_expires_idle_flows_and_keeps_the_ones_seen_since(gwlb: Any) -> None:
    flows = table()
    keys = [key_of(gwlb, gwlb.udp4(b"x", sport=40000 + i)) for i in range(10)]
    for key in keys:
        flows.open(key, T0, 10, PASS, -1)
    for key in keys[:3]:
        flows.seen(key, T0 + 100 * S, 10)  # seen since: re-filed, not expired
    assert flows.sweep(T0 + 119 * S) == 0
    assert flows.sweep(T0 + 125 * S) == 7 and len(flows) == 3
    assert flows.sweep(T0 + 219 * S) == 0
    assert flows.sweep(T0 + 225 * S) == 3 and len(flows) == 0
    assert flows.counters() == (0, 10, 10, 0, 0)


def test_the_sweep_does_a_bounded_amount_of_work_per_call(gwlb: Any) -> None:
    flows = table(1000, sweep_budget=16)
    for i in range(100):
        flows.open(key_of(gwlb, gwlb.udp4(b"", sport=1000 + i)), T0, 10, PASS, -1)
    done = [flows.sweep(T0 + 200 * S + i) for i in range(8)]
    assert done == [16, 16, 16, 16, 16, 16, 4, 0]


@pytest.mark.parametrize("version", [4, 6])
def test_tcp_closing_lingers_briefly(gwlb: Any, version: int) -> None:
    inner = (gwlb.tcp4 if version == 4 else gwlb.tcp6)(b"")
    forward, back = key_of(gwlb, inner), key_of(gwlb, swapped(inner))
    flows = table()
    flow = flows.open(forward, T0, 40, PASS, -1, SYN)
    flows.seen(back, T0, 40, SYN_ACK)
    flows.seen(forward, T0, 40, ACK)
    flows.seen(forward, T0 + S, 40, FIN_ACK)
    assert not flow.closing  # one FIN: the other side may still send for a long time
    assert flows.seen(back, T0 + 200 * S, 40, ACK) is flow
    flows.seen(back, T0 + 201 * S, 40, FIN_ACK)
    assert flow.closing
    assert flows.seen(forward, T0 + 202 * S, 40, ACK) is flow  # the last ACK
    assert flows.seen(forward, T0 + 211 * S, 40, ACK) is not None  # 9 s: still lingering
    assert flows.seen(forward, T0 + 221 * S, 40, ACK) is None  # 10 s idle: gone
    assert flows.counters().expired == 1


def test_an_rst_either_way_closes_at_once_and_the_linger_is_configurable(gwlb: Any) -> None:
    inner = gwlb.tcp4(b"")
    forward, back = key_of(gwlb, inner), key_of(gwlb, swapped(inner))
    flows = table(closing_linger_s=2)
    flow = flows.open(forward, T0, 40, PASS, -1, SYN)
    flows.seen(back, T0, 40, RST)
    assert flow.closing
    assert flows.sweep(T0 + 2 * S + (2 << TICK_SHIFT)) == 1 and len(flows) == 0


def test_a_syn_on_a_closed_flow_starts_a_new_one(gwlb: Any) -> None:
    inner = gwlb.tcp4(b"")
    forward, back = key_of(gwlb, inner), key_of(gwlb, swapped(inner))
    flows = table()
    old = flows.open(forward, T0, 40, DROP, 1, SYN)
    flows.seen(back, T0, 40, RST)
    assert flows.seen(forward, T0 + S, 40, SYN) is None  # the port is reused: judge afresh
    new = flows.open(forward, T0 + S, 40, PASS, -1, SYN)
    assert new is not old and not old.alive and not new.closing
    assert flows.counters() == (1, 2, 1, 0, 0)


def test_opening_a_key_already_in_the_table_replaces_its_flow(gwlb: Any) -> None:
    key = key_of(gwlb, gwlb.udp4(b""))
    flows = table()
    old = flows.open(key, T0, 28, DROP, 0)
    new = flows.open(reverse_key(key), T0 + S, 28, PASS, -1)  # without asking seen() first
    assert not old.alive and flows.seen(key, T0 + S, 28) is new
    assert flows.counters() == (1, 2, 1, 0, 0)


def test_a_syn_retransmitted_on_an_open_flow_is_just_a_packet(gwlb: Any) -> None:
    key = key_of(gwlb, gwlb.tcp4(b""))
    flows = table()
    flow = flows.open(key, T0, 40, PASS, -1, SYN)
    assert flows.seen(key, T0 + S, 40, SYN) is flow and flow.fwd_packets == 2


# ---- the bound and eviction ---------------------------------------------------------------------


def udp_keys(gwlb: Any, count: int, first_port: int = 20000) -> list[tuple[FlowKey, FlowKey]]:
    """(forward, reverse) keys of `count` UDP flows."""
    out = []
    for i in range(count):
        inner = gwlb.udp4(b"", sport=first_port + i)
        out.append((key_of(gwlb, inner), key_of(gwlb, swapped(inner))))
    return out


def test_a_full_table_evicts_a_flow_that_never_saw_a_reply_first(gwlb: Any) -> None:
    flows = table(4)
    (a, ra), (b, rb), (c, _), (d, _), (e, _) = udp_keys(gwlb, 5)
    # The unanswered flows are the oldest by idle time too; early drop must still come first.
    flows.open(c, T0, 1, PASS, -1)
    flows.open(d, T0 + 2 * S, 1, PASS, -1)
    flows.seen(d, T0 + 4 * S, 1)  # d seen after c: c is the longer idle
    flows.open(a, T0 + 10 * S, 1, PASS, -1)
    flows.open(b, T0 + 10 * S, 1, PASS, -1)
    flows.seen(ra, T0 + 10 * S, 1)
    flows.seen(rb, T0 + 10 * S, 1)
    flows.open(e, T0 + 20 * S, 1, PASS, -1)
    assert flows.seen(c, T0 + 20 * S, 1) is None
    assert all(flows.seen(k, T0 + 20 * S, 1) for k in (a, b, d, e))
    assert flows.counters() == (4, 5, 0, 1, 0)


def test_when_every_flow_is_answered_the_longest_idle_goes(gwlb: Any) -> None:
    flows = table(3)
    keys = udp_keys(gwlb, 5)
    for i, (key, back) in enumerate(keys[:3]):
        flows.open(key, T0 + i * S, 1, PASS, -1)
        flows.seen(back, T0 + i * S, 1)
    # Last seen: flow 0 at 12 s, flow 1 at 6 s, flow 2 at 9 s (creation order is 0, 1, 2).
    flows.seen(keys[1][0], T0 + 6 * S, 1)
    flows.seen(keys[2][1], T0 + 9 * S, 1)
    flows.seen(keys[0][0], T0 + 12 * S, 1)
    for new, back in keys[3:]:
        flows.open(new, T0 + 20 * S, 1, PASS, -1)
        flows.seen(back, T0 + 20 * S, 1)  # answered at once: no early drop to fall back on
    alive = [flows.seen(key, T0 + 21 * S, 1) is not None for key, _ in keys]
    assert alive == [True, False, False, True, True]  # flow 1 first, then flow 2
    assert flows.counters() == (3, 5, 0, 0, 2)


def test_closing_flows_go_before_answered_idle_ones(gwlb: Any) -> None:
    flows = table(2)
    idle = key_of(gwlb, gwlb.tcp4(b"", sport=1))
    closing = key_of(gwlb, gwlb.tcp4(b"", sport=2))
    for i, key in enumerate((idle, closing)):
        flows.open(key, T0 + i * S, 40, PASS, -1)
        flows.seen(reverse_key(key), T0 + i * S, 40)
    flows.seen(closing, T0 + 100 * S, 40, RST)
    flows.open(key_of(gwlb, gwlb.tcp4(b"", sport=3)), T0 + 101 * S, 40, PASS, -1)
    assert flows.seen(closing, T0 + 101 * S, 40) is None
    assert flows.seen(idle, T0 + 101 * S, 40) is not None


def test_a_closing_flow_that_never_saw_a_reply_goes_early(gwlb: Any) -> None:
    flows = table(3)
    answered = key_of(gwlb, gwlb.tcp4(b"", sport=1))
    unanswered = key_of(gwlb, gwlb.tcp4(b"", sport=2))
    established = key_of(gwlb, gwlb.tcp4(b"", sport=3))
    for i, key in enumerate((answered, established)):
        flows.open(key, T0 + i * S, 40, PASS, -1, SYN)
        flows.seen(reverse_key(key), T0 + i * S, 40, SYN_ACK)
    flows.seen(answered, T0 + 2 * S, 40, RST)  # closing, the longest idle of the closing two
    flows.open(unanswered, T0 + 4 * S, 40, PASS, -1, SYN)
    flows.seen(unanswered, T0 + 5 * S, 40, RST)  # the client gave up: closing, never answered
    flows.open(key_of(gwlb, gwlb.tcp4(b"", sport=4)), T0 + 6 * S, 40, PASS, -1, SYN)
    assert flows.seen(unanswered, T0 + 6 * S, 40) is None
    assert flows.seen(answered, T0 + 6 * S, 40) is not None
    assert flows.counters() == (3, 4, 0, 1, 0)


def test_the_sweep_expires_a_flow_exactly_at_its_timeout(gwlb: Any) -> None:
    flows = table()
    last = (2000 << TICK_SHIFT) - 1  # the last nanosecond of a tick: its bucket is due at once
    flows.open(key_of(gwlb, gwlb.udp4(b"")), last, 10, PASS, -1)
    assert flows.sweep(last + 120 * S - 1) == 0
    assert flows.sweep(last + 120 * S) == 1


def test_a_flow_past_its_timeout_is_taken_back_before_anything_is_evicted(gwlb: Any) -> None:
    flows = table(2)
    (a, _), (b, rb), (c, _) = udp_keys(gwlb, 3)
    flows.open(a, T0, 1, PASS, -1)
    flows.open(b, T0 + 200 * S, 1, PASS, -1)
    flows.seen(rb, T0 + 200 * S, 1)
    flows.open(c, T0 + 200 * S, 1, PASS, -1)
    assert flows.counters() == (2, 3, 1, 0, 0)


def test_a_sweep_out_of_budget_leaves_the_rest_to_take_back_at_the_same_time(gwlb: Any) -> None:
    flows = table(10, sweep_budget=3)
    old, new = udp_keys(gwlb, 10), udp_keys(gwlb, 5, first_port=30000)
    for key, _ in old:
        flows.open(key, T0, 1, PASS, -1)
    now = T0 + 200 * S
    assert flows.sweep(now) == 3  # 7 flows past their timeout are left
    for key, _ in new:  # the same batch: a full table must take those back, not evict
        flows.open(key, now, 1, PASS, -1)
    assert flows.counters() == (5, 15, 10, 0, 0)


def test_a_flood_of_new_flows_never_grows_the_table_nor_pushes_out_established_ones(
    gwlb: Any,
) -> None:
    flows = table(300)
    established = udp_keys(gwlb, 100)
    for key, back in established:
        flows.open(key, T0, 100, DROP, 7)
        flows.seen(back, T0, 100)
    flood = (
        key_of(gwlb, IP(src=f"198.18.{i >> 8 & 255}.{i & 255}", dst="10.2.0.9") / TCP(dport=80))
        for i in range(3000)
    )
    now = T0
    for n, key in enumerate(flood):
        if n % 50 == 0:
            now += S  # a batch later
            flows.sweep(now)
            for i, (forward, back) in enumerate(established):
                assert flows.seen(back if i % 2 else forward, now, 100) is not None
        if flows.seen(key, now, 40, SYN) is None:
            flows.open(key, now, 40, PASS, -1, SYN)
        assert len(flows) <= 300
    for forward, _ in established:
        flow = flows.seen(forward, now, 100)
        assert flow is not None and (flow.verdict, flow.rule) == (DROP, 7)
    counters = flows.counters()
    assert counters.active == 300 and counters.evicted_idle == 0
    assert counters.evicted_early == 3000 - 200
    assert counters.created == counters.active + counters.expired + counters.evicted_early


# ---- policy generations -------------------------------------------------------------------------


class Judge:
    """The worker's per-packet use of the table (flows module doc), with a counting policy."""

    def __init__(self, flows: FlowTable, verdict: int) -> None:
        self.flows, self.verdict, self.asked = flows, verdict, 0

    def __call__(self, key: FlowKey, now: int) -> int:
        flows = self.flows
        flow = flows.seen(key, now, 100)
        if flow is None:
            self.asked += 1
            flow = flows.open(key, now, 100, self.verdict, 0)
        elif flow.generation != flows.generation:
            self.asked += 1
            flows.decide(flow, self.verdict, 0)
        return flow.verdict


def test_a_reload_has_each_flow_re_judged_once_at_its_next_packet(gwlb: Any) -> None:
    flows = table()
    flows.generation = 1
    judge = Judge(flows, PASS)
    keys = udp_keys(gwlb, 5)
    for key, back in keys:
        assert judge(key, T0) == PASS
        assert judge(back, T0) == PASS
    assert judge.asked == 5
    flows.generation = 2  # a reload; the new policy drops
    judge.verdict = DROP
    for key, back in keys:
        assert judge(back, T0 + S) == DROP
        assert judge(key, T0 + S) == DROP
    assert judge.asked == 10
    assert all(flow.generation == 2 for flow in flows.flows())
    assert [r.verdict for r in list_flows(flows, T0 + S)] == [DROP] * 5


# ---- the listing --------------------------------------------------------------------------------


def listing_table(gwlb: Any) -> FlowTable:
    flows = table()
    flows.open(key_of(gwlb, gwlb.tcp4(b"", sport=41000, dport=443)), T0, 40, PASS, -1)
    flows.open(key_of(gwlb, gwlb.udp4(b"", sport=41001, dport=53), EP_B), T0, 30, DROP, 2)
    flows.open(key_of(gwlb, gwlb.udp6(b"", sport=41002, dport=53)), T0, 50, REJECT, 4)
    six = key_of(gwlb, gwlb.udp6(b"", sport=41002, dport=53))
    flows.seen(reverse_key(six), T0 + 5 * S, 70)
    return flows


def test_the_listing_gives_plain_records_in_forward_order(gwlb: Any) -> None:
    records = sorted(list_flows(listing_table(gwlb), T0 + 10 * S), key=lambda r: r.src_port or 0)
    assert [r.endpoint for r in records] == [EP_A.hex(), EP_B.hex(), EP_A.hex()]
    six = records[2]
    assert six == FlowRecord(
        endpoint=EP_A.hex(),
        protocol=17,
        src=gwlb.v6["src"],
        src_port=41002,
        dst=gwlb.v6["dst"],
        dst_port=53,
        age_s=10.0,
        idle_s=5.0,
        fwd_packets=1,
        fwd_bytes=50,
        rev_packets=1,
        rev_bytes=70,
        verdict=REJECT,
        rule=4,
        generation=0,
        replied=True,
        closing=False,
        name=None,  # it showed no name (appliance/nameflow.py)
    )
    assert six._asdict()["src_port"] == 41002  # plain enough for JSON


def test_the_listing_filters(gwlb: Any) -> None:
    flows = listing_table(gwlb)

    def ports(**filters: Any) -> list[int]:
        return sorted(r.src_port or 0 for r in list_flows(flows, T0, **filters))

    assert ports(address=gwlb.v4["dst"]) == [41000, 41001]
    assert ports(address=gwlb.v6["src"]) == [41002]
    assert ports(address="10.9.9.9") == []
    assert ports(port=53) == [41001, 41002]
    assert ports(port=41000) == [41000]
    assert ports(endpoint=EP_B.hex()) == [41001]
    assert ports(endpoint=EP_A) == [41000, 41002]
    assert ports(verdict=DROP) == [41001]
    assert ports(port=53, endpoint=EP_A.hex(), verdict=REJECT) == [41002]
    with pytest.raises(ValueError, match="8 bytes"):
        ports(endpoint="abcd")
    with pytest.raises(ValueError):
        ports(address="not an address")


def test_a_listing_in_slices_skips_flows_that_left_meanwhile(gwlb: Any) -> None:
    flows = table()
    keys = udp_keys(gwlb, 6)
    for key, _ in keys:
        flows.open(key, T0, 1, PASS, -1)
    records = list_flows(flows, T0)
    first = list(itertools.islice(records, 2))
    for key, _ in keys:
        flows.seen(key, T0 + 200 * S, 1)  # every one expired, at its next packet
    assert len(first) == 2 and list(records) == []


# ---- properties ---------------------------------------------------------------------------------

ENDPOINTS = (EP_A, EP_B)
PROTOCOLS = (6, 17, 47)


def universe_key(i: int) -> FlowKey:
    """Flow i of a small universe (two endpoints, TCP/UDP/GRE, a few addresses and ports), keyed
    as the flowkey docstring says, so this also checks the layout independently."""
    endpoint, proto = ENDPOINTS[i % 2], PROTOCOLS[i // 2 % 3]
    src, dst = bytes([10, 0, 0, i // 6 % 4]), bytes([10, 0, 1, 0])
    ports = (i // 24 % 3 + 1000).to_bytes(2, "big") + (80).to_bytes(2, "big")
    return endpoint + bytes([proto]) + src + dst + (ports if proto != 47 else b"")


Step = tuple[str, int, bool, int]
steps = st.lists(
    st.tuples(
        st.sampled_from(["packet", "packet", "packet", "time", "sweep"]),
        st.integers(0, 71),  # a flow of the universe, or seconds to wait
        st.booleans(),  # reverse direction
        st.sampled_from([0, 0, 0, SYN, SYN_ACK, FIN_ACK, RST]),
    ),
    max_size=120,
)


def check(flows: FlowTable) -> None:
    """The table's own consistency: the bound, the counters, both keys, the wheels."""
    live = flows.flows()
    counters = flows.counters()
    assert len(flows) == len(live) == counters.active <= flows.max_flows
    assert counters.created == (
        counters.active + counters.expired + counters.evicted_early + counters.evicted_idle
    )
    keys = flows._by_key
    assert len(keys) == sum(1 if f.key == f.rkey else 2 for f in live)
    for flow in live:
        assert keys[flow.key] is flow and keys[flow.rkey] is flow and flow.alive
    assert sum(flows.wheel_sizes().values()) == len(live)


@settings(max_examples=300, deadline=None)
@given(
    steps,
    st.integers(1, 12),
    st.sampled_from([(350.0, 120.0, 10.0), (20.0, 5.0, 2.0)]),
    st.integers(0, 8),
)
def test_random_traffic_keeps_the_bound_and_the_counters(
    script: list[Step], max_flows: int, timeouts: tuple[float, float, float], evict_budget: int
) -> None:
    tcp_s, other_s, linger_s = timeouts
    flows = FlowTable(
        max_flows,
        tcp_timeout_s=tcp_s,
        other_timeout_s=other_s,
        closing_linger_s=linger_s,
        sweep_budget=3,
        evict_budget=evict_budget,
    )
    now = T0
    for kind, value, reverse, flags in script:
        if kind == "time":
            now += value * S // 4
        elif kind == "sweep":
            flows.sweep(now)
        else:
            key = universe_key(value)
            key = reverse_key(key) if reverse else key
            tcp = flags if key[8] == 6 else 0
            before = {f: (f.last_ns, f.timeout_ns) for f in flows.flows()}
            flow = flows.seen(key, now, 10, tcp)
            if flow is not None:  # an expired flow never lends its verdict
                last, timeout = before[flow]
                assert now - last < timeout
                assert key in (flow.key, flow.rkey)
            else:
                open_checked(flows, key, now, tcp)
        check(flows)


def open_checked(flows: FlowTable, key: FlowKey, now: int, tcp: int) -> None:
    """`open`, checking that an eviction took a flow that never saw a reply whenever one was
    there to take."""
    before = flows.counters()
    live = flows.flows()
    unanswered = {f for f in live if not f.replied}
    flow = flows.open(key, now, 10, PASS, -1, tcp)
    after = flows.counters()
    removed = set(live) - set(flows.flows())
    evicted = {f for f in removed if now - f.last_ns < f.timeout_ns}  # not past its timeout
    if after.evicted_early > before.evicted_early:
        assert evicted <= unanswered
    if after.evicted_idle > before.evicted_idle:
        assert unanswered <= removed  # none was left to take instead
    assert flow.alive and flow.fwd_packets == 1


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_flows"):
        FlowTable(0)
    with pytest.raises(ValueError, match="tcp_timeout_s"):
        FlowTable(10, tcp_timeout_s=0)
    with pytest.raises(ValueError, match="sweep_budget"):
        FlowTable(10, sweep_budget=0)


def test_a_flow_knows_its_state() -> None:
    flow = Flow()
    flow.rev_packets, flow.tcp = 0, 0
    assert not flow.replied and not flow.closing
