"""Audit mode for the rules that act on single packets (payload_contains, drop_seq_multiple, and
any drop or reject judged per packet): a rule in audit mode, or every rule under policy.mode =
"audit", counts what it would deny (audited, audited_by_rule) and lets the packet go on to the
next rule, on the stateless path and on a passed flow's packets alike. Replies are read back with
scapy."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.packet import Packet, Raw
from test_worker_flows import gwlb
from test_worker_loop import Datagram, FakeIO, worker_over

from appliance.counters import snapshot
from appliance.worker import Worker
from config.loader import default_config_path, parse_config

DEMO = default_config_path().read_text()
SOURCES = {"src": "10.0.0.1", "dst": "10.9.9.9"}


def demo(edit: str = "", track_flows: bool = False) -> Worker:
    """The shipped demo policy, with `edit` after the drop-me rule's name line (a rule key)
    or, with track_flows, the flow table on."""
    text = DEMO
    if edit:
        text = text.replace('name = "drop-me"', f'name = "drop-me"\n{edit}', 1)
    if track_flows:
        text = text.replace("track_flows = false", "track_flows = true", 1)
    return worker_over(FakeIO(), parse_config(text).policy)


def send(worker: Worker, *inner: Packet) -> list[Packet | None]:
    """Each packet in a batch of its own; its reply's inner packet (None: no reply)."""
    io: FakeIO = worker.io  # type: ignore[assignment]
    out: list[Packet | None] = []
    for packet in inner:
        io.sent.clear()
        worker.process(io.lay([Datagram(gwlb(packet))]))
        worker.flush()
        out.append(IP(io.sent[0].data[40:]) if io.sent else None)
    return out


def counted(worker: Worker) -> dict[str, object]:
    return snapshot(worker.counters, tuple(r.name for r in worker.policy.rules))


DROP_ME = IP(**SOURCES) / UDP(sport=4000, dport=3000) / Raw(b"drop me, weakly typed")


@pytest.mark.parametrize("track_flows", [False, True], ids=["stateless", "flow-table"])
def test_a_payload_rule_in_audit_mode_counts_and_the_next_rule_acts(track_flows: bool) -> None:
    worker = demo('mode = "audit"', track_flows)
    (reply,) = send(worker, DROP_ME)
    assert reply is not None, "an audited drop must not drop"
    assert bytes(reply[UDP].payload) == b"drop me, strongly typed"  # the rewrite rule acted
    assert reply[UDP].chksum == UDP(bytes(reply[UDP]))[UDP].chksum  # scapy agrees
    checked = reply.copy()
    del checked[UDP].chksum
    assert IP(bytes(checked))[UDP].chksum == reply[UDP].chksum
    shown = counted(worker)
    assert shown["dropped"] == 0 and shown["rewritten"] == 1
    assert shown["audited"] == 1 and shown["audited_by_rule"] == {"drop-me": 1}
    assert shown["dropped_by_rule"] == {}


def test_the_same_rule_enforced_drops() -> None:
    worker = demo()
    assert send(worker, DROP_ME) == [None]
    shown = counted(worker)
    assert shown["dropped"] == 1 and shown["audited"] == 0


@pytest.mark.parametrize("track_flows", [False, True], ids=["stateless", "flow-table"])
def test_policy_audit_mode_passes_every_packet_denial(track_flows: bool) -> None:
    text = DEMO.replace('mode = "enforce"', 'mode = "audit"', 1)
    if track_flows:
        text = text.replace("track_flows = false", "track_flows = true", 1)
    worker = worker_over(FakeIO(), parse_config(text).policy)
    echoes = [IP(**SOURCES) / ICMP(type=8, id=7, seq=seq) / b"ping" for seq in (4, 5, 10)]
    replies = send(worker, DROP_ME, *echoes)
    assert all(reply is not None for reply in replies)
    assert [reply[ICMP].seq for reply in replies[1:]] == [4, 5, 10]  # type: ignore[index]
    shown = counted(worker)
    assert shown["dropped"] == 0
    assert shown["audited"] == 3
    assert shown["audited_by_rule"] == {"drop-me": 1, "icmp-echo-every-fifth": 2}
