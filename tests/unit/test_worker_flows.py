"""Verdicts that stick to whole flows, through the worker loop and a fake backend (no root):
both directions, per GWLB endpoint, default deny, rejects, reloads that judge flows again, and
the demo's per-packet rules still acting on flows that pass."""

from __future__ import annotations

import gc
import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.packet import Raw, raw
from test_worker_loop import Datagram, FakeIO, worker_over

from appliance.counters import snapshot
from appliance.worker import Worker
from config.loader import default_config_path, parse_config

A, B = "10.0.0.1", "10.0.0.2"
TENANT_1, TENANT_2 = bytes.fromhex("2b8ee1d4db0c51c4"), bytes.fromhex("00000000000000b2")


def gwlb(inner: IP, endpoint: bytes = TENANT_1) -> bytes:
    options = (
        bytes.fromhex("01080102")
        + endpoint
        + bytes.fromhex("01080202")
        + bytes(8)
        + bytes.fromhex("01080301")
        + bytes.fromhex("0badf00d")
    )
    return struct.pack("!BBHI", 8, 0, 0x0800, 0) + options + raw(inner)


def answered(worker: Worker, io: FakeIO, *datagrams: bytes) -> list[bool]:
    """Send one batch; which datagrams got a reply."""
    io.sent.clear()
    worker.process(io.lay([Datagram(d) for d in datagrams]))
    worker.flush()
    got = {r.index for r in io.sent}
    return [i in got for i in range(len(datagrams))]


def replies(io: FakeIO) -> list[bytes]:
    return [r.data for r in io.sent]


def policy(text: str, default: str = "pass"):
    return parse_config(f'[policy]\ndefault = "{default}"\n{text}').policy


DENY_LAB = """
[[policy.rules]]
name = "no-lab"
action = "drop"
match = { dst = "10.0.0.2/32", protocol = "tcp", tcp_flags = "syn" }
"""


def test_a_flow_dropped_at_its_first_packet_stays_dropped_both_ways() -> None:
    io = FakeIO()
    worker = worker_over(io, policy(DENY_LAB))
    syn = gwlb(IP(src=A, dst=B) / TCP(sport=40000, dport=22, flags="S"))
    later = gwlb(IP(src=A, dst=B) / TCP(sport=40000, dport=22, flags="A") / Raw(b"x"))
    back = gwlb(IP(src=B, dst=A) / TCP(sport=22, dport=40000, flags="A") / Raw(b"y"))
    other = gwlb(IP(src=A, dst=B) / TCP(sport=40001, dport=22, flags="A"))
    # Only the SYN matches the rule (tcp_flags), but the verdict sticks to its flow, both ways;
    # a flow that was never opened by a SYN is judged on its own packet: it passes.
    assert answered(worker, io, syn, later, back, other) == [False, False, False, True]
    assert snapshot(worker.counters, ("no-lab",))["dropped_by_rule"] == {"no-lab": 3}


def test_each_direction_of_a_passed_flow_is_counted_as_itself() -> None:
    """Packets and bytes each way, whichever path counts them (the loop's inline count for a
    passed flow, FlowTable.seen for the rest: a reply's first packet, SYN, FIN)."""
    io = FakeIO()
    worker = worker_over(io, policy(DENY_LAB, default="pass"))
    c, d = "10.0.0.5", "10.0.0.6"  # not the lab: the flow passes
    out = [IP(src=c, dst=d) / TCP(sport=40000, dport=443, flags=f) / Raw(p) for f, p in
           (("S", b""), ("A", b"a" * 10), ("PA", b"b" * 30), ("FA", b""))]  # fmt: skip
    back = [IP(src=d, dst=c) / TCP(sport=443, dport=40000, flags=f) / Raw(p) for f, p in
            (("SA", b""), ("A", b"c" * 7), ("A", b""))]  # fmt: skip
    for packet in (out[0], back[0], out[1], back[1], out[2], back[2], out[3]):
        assert answered(worker, io, gwlb(packet)) == [True]
    (flow,) = set(worker.flows.flows())
    assert (flow.fwd_packets, flow.fwd_bytes) == (4, sum(len(p) for p in out))
    assert (flow.rev_packets, flow.rev_bytes) == (3, sum(len(p) for p in back))


def test_the_same_addresses_under_two_endpoints_are_two_flows() -> None:
    io = FakeIO()
    worker = worker_over(
        io,
        policy(
            '[[policy.rules]]\nname = "t1-only"\naction = "pass"\n'
            'match = { endpoint = "2b8ee1d4db0c51c4" }\n',
            default="drop",
        ),
    )
    inner = IP(src=A, dst=B) / UDP(sport=5000, dport=53) / Raw(b"q")
    reply = IP(src=B, dst=A) / UDP(sport=53, dport=5000) / Raw(b"r")
    assert answered(worker, io, gwlb(inner, TENANT_1), gwlb(inner, TENANT_2)) == [True, False]
    assert answered(worker, io, gwlb(reply, TENANT_1), gwlb(reply, TENANT_2)) == [True, False]
    assert worker.flows.active == 2


def test_a_rejected_flow_gets_an_answer_for_each_packet_within_the_ceiling() -> None:
    io = FakeIO()
    worker = worker_over(
        io,
        policy(
            '[[policy.rules]]\nname = "no-23"\naction = "reject"\n'
            'match = { protocol = "tcp", dst_port = 23 }\n'
        ),
    )
    syn = IP(src=A, dst=B) / TCP(sport=40000, dport=23, seq=7, flags="S")
    assert answered(worker, io, gwlb(syn)) == [True]
    rst = IP(replies(io)[0][40:])
    assert (rst.src, rst.dst, str(rst[TCP].flags), rst[TCP].ack) == (B, A, "RA", 8)
    retry = IP(src=A, dst=B) / TCP(sport=40000, dport=23, seq=7, flags="S")
    assert answered(worker, io, gwlb(retry)) == [True]  # the flow's verdict, not the rules
    assert worker.flows.active == 1


def test_a_reload_judges_every_flow_again_at_its_next_packet() -> None:
    io = FakeIO()
    worker = worker_over(io, policy(""))
    flow = gwlb(IP(src=A, dst=B) / TCP(sport=40000, dport=443, flags="A") / Raw(b"x"))
    assert answered(worker, io, flow) == [True]
    worker.policy = policy(
        '[[policy.rules]]\nname = "no-443"\naction = "drop"\n'
        'match = { protocol = "tcp", port = 443 }\n'
    )
    assert answered(worker, io, flow) == [False]  # stopped within one packet
    worker.policy = policy("")
    assert answered(worker, io, flow) == [True]
    assert worker.flows.active == 1 and worker.flows.created == 1


@pytest.mark.parametrize("tracked", [False, True], ids=["stateless", "track_flows"])
def test_the_demo_still_acts_on_each_packet_of_a_passing_flow(tracked: bool) -> None:
    text = default_config_path().read_text()
    if tracked:
        text = text.replace("track_flows = false", "track_flows = true")
    io = FakeIO()
    worker = worker_over(io, parse_config(text).policy)
    lines = [
        gwlb(IP(src=A, dst=B) / UDP(sport=40000, dport=3000) / Raw(text))
        for text in (b"test", b"drop me", b"weakly typed")
    ]
    assert answered(worker, io, *lines) == [True, False, True]
    assert replies(io)[1].endswith(b"strongly typed")
    pings = [gwlb(IP(src=A, dst=B) / ICMP(type=8, id=9, seq=s)) for s in range(1, 11)]
    assert answered(worker, io, *pings) == [s % 5 != 0 for s in range(1, 11)]
    # One UDP flow, one echo flow (identifier 9), when flows are tracked at all: the demo has
    # no flow rule, so by default each packet is judged alone and nothing is tracked.
    assert worker.flows.active == (2 if tracked else 0)


def test_under_default_deny_only_flows_a_rule_passes_go_through() -> None:
    io = FakeIO()
    worker = worker_over(
        io,
        policy(
            '[[policy.rules]]\nname = "dns"\naction = "pass"\n'
            'match = { protocol = "udp", dst_port = 53 }\n',
            default="reject",
        ),
    )
    query = gwlb(IP(src=A, dst=B) / UDP(sport=5000, dport=53) / Raw(b"q"))
    answer = gwlb(IP(src=B, dst=A) / UDP(sport=53, dport=5000) / Raw(b"a"))
    other = gwlb(IP(src=A, dst=B) / UDP(sport=5000, dport=123) / Raw(b"t"))
    assert answered(worker, io, query, answer, other) == [True, True, True]
    error = IP(replies(io)[2][40:])
    assert (error[ICMP].type, error[ICMP].code) == (3, 13)  # the default's reject, answered
    counters = snapshot(worker.counters, ("dns",))
    assert counters["default_decided"] == 1 and counters["rejects_sent"] == 1


def test_the_flow_table_is_kept_out_of_the_cyclic_collectors_way() -> None:
    io = FakeIO()
    worker = worker_over(io, policy(DENY_LAB))
    try:
        gc.unfreeze()
        flows = [gwlb(IP(src=A, dst=B) / UDP(sport=port, dport=53)) for port in range(7000, 7010)]
        assert all(answered(worker, io, *flows))
        assert worker.flows.active == 10
        assert gc.get_freeze_count() >= 10  # frozen at the end of the batch: no full-gc stall
    finally:
        gc.unfreeze()
