"""`reject` on the wire, through the real daemon: the answer goes back in the offending packet's
flow (its Geneve header byte-identical, outer addresses swapped, ports as they came), a RST with
the sequence numbers RFC 9293 gives, an ICMP unreachable quoting the packet, the per-worker
ceiling, and the counters. Every byte is checked by scapy."""

from __future__ import annotations

from pathlib import Path

import pytest
from appliance_proc import Appliance, config_text
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6
from scapy.packet import Raw, raw
from test_appliance_wire import OPTIONS, GwlbPeer, check_outer, gwlb_datagram, peer
from testbed import Testbed

pytestmark = [pytest.mark.netns, pytest.mark.e2e, pytest.mark.usefixtures("both_backends")]
__all__ = ["peer"]  # the fixture, shared with the other wire tests

POLICY = """
[[policy.rules]]
name = "no-telnet"
action = "reject"
match = { protocol = "tcp", dst_port = 23 }

[[policy.rules]]
name = "no-syslog"
action = "reject"
match = { protocol = "udp", dst_port = 514 }
"""


def checksums_hold(packet: IP | IPv6) -> bool:
    """scapy recomputes every checksum of a copy with them deleted: the bytes must not change."""
    copy = packet.__class__(raw(packet))
    for layer in (IP, TCP, UDP, ICMP):
        if copy.haslayer(layer) and hasattr(copy[layer], "chksum"):
            del copy[layer].chksum
    if copy.haslayer(ICMPv6DestUnreach):
        del copy[ICMPv6DestUnreach].cksum
    return raw(packet.__class__(raw(copy))) == raw(packet)


def test_a_rejected_syn_gets_a_rst_in_its_own_flow(
    testbed: Testbed, peer: GwlbPeer, tmp_path: Path
) -> None:
    appliance = Appliance(
        testbed, 1, tmp_path, config=config_text(tmp_path / "run-app1", policy=POLICY)
    )
    syn = IP(src="10.77.1.2", dst="10.77.2.2") / TCP(sport=41000, dport=23, seq=1000, flags="S")
    peer.send(gwlb_datagram(syn))
    (reply,) = peer.replies(1)
    geneve = check_outer(reply, peer)
    assert geneve[:40] == gwlb_datagram(syn)[:40]  # the flow's Geneve header, options included
    rst = IP(geneve[40:])
    assert (rst.src, rst.dst) == ("10.77.2.2", "10.77.1.2")
    assert (rst[TCP].sport, rst[TCP].dport) == (23, 41000)
    assert rst[TCP].flags == "RA" and rst[TCP].seq == 0 and rst[TCP].ack == 1001  # SYN counts 1
    assert checksums_hold(rst)
    assert appliance.stop() == 0
    counters = appliance.counters()
    assert counters["rejected"] == 1 and counters["rejects_sent"] == 1
    assert counters["dropped_by_rule"] == {"no-telnet": 1}


def test_a_rejected_udp_datagram_gets_icmp_unreachable_quoting_it(
    testbed: Testbed, peer: GwlbPeer, tmp_path: Path
) -> None:
    appliance = Appliance(
        testbed, 1, tmp_path, config=config_text(tmp_path / "run-app1", policy=POLICY)
    )
    v4 = IP(src="10.77.1.2", dst="10.77.2.2") / UDP(sport=40000, dport=514) / Raw(b"<13>hi")
    v6 = IPv6(src="fd77:1::2", dst="fd77:2::2") / UDP(sport=40000, dport=514) / Raw(b"<13>hi")
    peer.send(gwlb_datagram(v4))
    (answer,) = peer.replies(1)
    icmp = IP(check_outer(answer, peer)[40:])
    assert (icmp.src, icmp.dst, icmp[ICMP].type, icmp[ICMP].code) == (
        "10.77.2.2",
        "10.77.1.2",
        3,
        13,
    )
    assert raw(icmp[IPerror]) == raw(v4)  # the whole offending packet, it is that small
    assert icmp[UDPerror].dport == 514 and checksums_hold(icmp)
    peer.send(gwlb_datagram(v6))
    (answer6,) = peer.replies(1)
    geneve = check_outer(answer6, peer)
    assert geneve[8:40] == OPTIONS
    icmp6 = IPv6(geneve[40:])
    unreach = icmp6[ICMPv6DestUnreach]
    assert (icmp6.src, icmp6.dst, unreach.type, unreach.code) == ("fd77:2::2", "fd77:1::2", 1, 1)
    assert raw(unreach.payload) == raw(v6) and checksums_hold(icmp6)
    assert appliance.stop() == 0


def test_the_reject_ceiling_holds_under_a_flood(
    testbed: Testbed, peer: GwlbPeer, tmp_path: Path
) -> None:
    text = config_text(tmp_path / "run-app1", policy=POLICY).replace(
        "reject_per_second = 1000", "reject_per_second = 10"
    )
    appliance = Appliance(testbed, 1, tmp_path, config=text)
    flood = [
        gwlb_datagram(IP(src="10.77.1.2", dst="10.77.2.2") / TCP(sport=port, dport=23, flags="S"))
        for port in range(42000, 42200)
    ]
    peer.send(*flood)  # far faster than 10 a second
    assert appliance.wait_counter("received", len(flood))
    assert appliance.stop() == 0
    counters = appliance.counters()
    sent, suppressed = counters["rejects_sent"], counters["rejects_suppressed"]
    assert counters["rejected"] == len(flood) == sent + suppressed
    assert 1 <= sent <= 10 + 1 + 2  # burst of a tenth, plus the rate over the run's seconds
    assert len(peer.replies(sent + 1, timeout_s=0.5)) == sent  # never more than counted
