"""gen.c's firewall case without a network: what it describes, the bytes it sends (scapy as the
oracle), and whether the product's policy engine, on firewall_policy.toml, decides each kind of
connection as gen expects. Also: gen's older cases still send what they always sent."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from harness.firewall import POLICY, replace_policy
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.packet import Packet

from appliance.datapath import parse_datagram
from appliance.policy import Verdict
from config.loader import parse_config

REPO = Path(__file__).resolve().parents[2]
STEPS = [  # flags, from the client
    ("S", True),
    ("SA", False),
    ("A", True),
    ("PA", True),
    ("PA", False),
    ("FA", True),
    ("FA", False),
    ("A", True),
]
# sha256 of every packet `gen --dump 200 --flows 3` sends (hex, in order) per (case, payload),
# taken from gen.c before the firewall case existed: its older cases must not change.
OLD_CASES = {
    ("pass", 64): "68d4900f98833aa3f5da797b693e8d691a02896bc895ccc3e4f00ae65abc9aa0",
    ("pass", 1400): "5eb94d331249c0f2ba62516aef9565f9d8790502facfeda21ce32fc5ea82acb2",
    ("rewrite", 64): "078f95213a9b5095e77d87686cf2c4f67c17389ab729d34beeeb3ab14808e348",
    ("rewrite", 1400): "7a0f84b34fcedf31f8e992cfce655f9a77e38dadb415d97c6a31918bb4dfedd5",
    ("mix", 64): "428eb7463ee46ca6977e1604c83dc7888b5b13f40ecbc04712e4158a60df41ca",
    ("mix", 1400): "f3003195b116e87d11f911402d6aa6e8787ec2ffd262b3e126b91ed773492211",
}
CLIENTS = (ipaddress.ip_network("10.128.0.0/10"), ipaddress.ip_network("fdc1::/64"))


def gen(tools: dict[str, str], *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [tools["gen"], *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def dissect(hex_packet: str) -> tuple[bytes, Packet]:
    """(the Geneve header with options, the inner packet as scapy reads it)."""
    data = bytes.fromhex(hex_packet)
    inner = IP if data[2:4] == b"\x08\x00" else IPv6
    return data[:40], inner(data[40:])


def rebuilt(inner: Packet) -> Packet:
    """The packet with the checksums scapy computes itself."""
    copy = inner.copy()
    del copy[TCP].chksum
    if IP in copy:
        del copy[IP].chksum
    return type(inner)(bytes(copy))


@pytest.fixture(scope="module")
def described(bench_tools: dict[str, str]) -> dict[str, Any]:
    return gen(bench_tools, "--describe", "--case", "firewall")


@pytest.fixture(scope="module")
def dumped(bench_tools: dict[str, str]) -> dict[str, Any]:
    """Two flows, 170 packets each: two whole cycles of 10 connections, and a third begun."""
    return gen(bench_tools, "--case", "firewall", "--flows", "2", "--dump", "170")


def connections(dump: dict[str, Any]) -> dict[tuple[Any, ...], list[tuple[bytes, Packet]]]:
    """The dumped packets by connection: endpoint id and the client's end and the server's."""
    out: dict[tuple[Any, ...], list[tuple[bytes, Packet]]] = defaultdict(list)
    for flow in dump["packets"]:
        for hex_packet in flow:
            geneve, inner = dissect(hex_packet)
            tcp = inner[TCP]
            to_server = any(ipaddress.ip_address(inner.src) in net for net in CLIENTS)
            client = (inner.src, tcp.sport) if to_server else (inner.dst, tcp.dport)
            server = (inner.dst, tcp.dport) if to_server else (inner.src, tcp.sport)
            out[(geneve[12:20], client, server)].append((geneve, inner))
    return out


def test_gen_and_reflector_compile_without_warnings(bench_tools: dict[str, str]) -> None:
    assert Path(bench_tools["gen"]).exists() and Path(bench_tools["reflector"]).exists()


def test_describe_lists_ten_connections_of_eight_packets(described: dict[str, Any]) -> None:
    slots, kinds = described["slots"], described["connections"]
    assert len(slots) == 80 and len(kinds) == 10 and described["packets_per_connection"] == 8
    for k, kind in enumerate(kinds):
        mine = slots[8 * k : 8 * k + 8]
        assert [s["kind"] for s in mine] == [k] * 8
        assert [s["to_server"] for s in mine] == [c for _, c in STEPS]
        assert {s["expect"] for s in mine} == {kind["expect"]}  # the verdict holds for all 8
        for s in mine:  # the server's port: the destination from the client, else the source
            assert (s["dport"] if s["to_server"] else s["sport"]) == kind["port"]
    # Position p sends packet p // 10 of kind p % 10: each connection's packets in order.
    assert described["send_order"] == [p % 10 * 8 + p // 10 for p in range(80)]
    assert sum(k["expect"] == "drop" for k in kinds) == 3
    assert {k["ip"] for k in kinds} == {4, 6}
    assert {k["ip"] for k in kinds if k["expect"] == "drop"} == {4, 6}
    assert len({k["endpoint"] for k in kinds}) == 4


def test_every_packet_is_a_correct_tcp_packet(dumped: dict[str, Any]) -> None:
    for flow in dumped["packets"]:
        for hex_packet in flow:
            _, inner = dissect(hex_packet)
            again = rebuilt(inner)
            assert inner[TCP].chksum == again[TCP].chksum, inner.summary()
            if IP in inner:
                assert inner[IP].chksum == again[IP].chksum, inner.summary()


def test_connections_are_whole_handshakes_on_new_five_tuples(dumped: dict[str, Any]) -> None:
    conns = connections(dumped)
    # Per flow 2 whole cycles of 10 connections (160 packets), then the SYNs of 10 more.
    assert sorted(len(p) for p in conns.values()) == [1] * 20 + [8] * 40
    cookies = set()
    for (_, client, server), packets in conns.items():
        for (flags, from_client), (geneve, inner) in zip(STEPS, packets, strict=False):
            tcp = inner[TCP]
            assert str(tcp.flags) == flags
            ends = ((inner.src, tcp.sport), (inner.dst, tcp.dport))
            assert ends == ((client, server) if from_client else (server, client))
            cookies.add(geneve[36:40])
        if len(packets) == 8:
            syn, syn_ack, ack, data, reply, fin, fin_reply, last = (p[1][TCP] for p in packets)
            assert (syn_ack.ack, ack.seq, ack.ack) == (syn.seq + 1, syn.seq + 1, syn_ack.seq + 1)
            assert reply.ack == data.seq + len(data.payload) == fin.seq
            assert (fin_reply.ack, last.seq, last.ack) == (
                fin.seq + 1,
                fin.seq + 1,
                fin_reply.seq + 1,
            )
            assert len(data.payload) == len(reply.payload) == 64
            assert not any(len(p[1][TCP].payload) for p in packets if p[1][TCP].flags != "PA")
    assert len(cookies) == len(conns)  # a flow cookie per connection, as GWLB gives
    assert {c[1][0] for c in conns} == {"10.128.0.1", "fdc1::a80:1"}


def test_next_run_continues_with_new_connections(
    bench_tools: dict[str, str], dumped: dict[str, Any]
) -> None:
    later = gen(
        bench_tools,
        *("--case", "firewall", "--flows", "2", "--dump", "170"),
        *("--first-conn", str(dumped["next_conn"])),
    )
    assert later["next_conn"] > dumped["next_conn"]
    assert not set(connections(dumped)) & set(connections(later))


def test_the_policy_decides_each_kind_as_gen_expects(
    described: dict[str, Any], dumped: dict[str, Any]
) -> None:
    config = replace_policy((REPO / "config" / "default.toml").read_text(encoding="utf-8"))
    policy = parse_config(config, str(POLICY)).policy
    assert len(policy.rules) == 50 and policy.stateful
    names = [rule.name for rule in policy.rules]
    flow = dumped["packets"][0]
    for kind in described["connections"]:
        k = kind["kind"]
        syn, syn_ack = decide(policy, flow[k]), decide(policy, flow[10 + k])
        expected = Verdict.PASS if kind["expect"] == "pass" else Verdict.DROP
        assert syn.verdict is expected, kind
        assert (names[syn.rule] if syn.rule >= 0 else "") == kind["rule"], kind
        if expected is Verdict.DROP:
            # Denied at any packet: a connection whose SYN an overloaded flood lost is denied too.
            assert syn_ack.verdict is Verdict.DROP, kind
        elif kind["endpoint"] in ("7f00aa11bb22cc33", "0123456789abcdef"):
            # Deny-by-default endpoints: the server's packets pass only on the SYN's verdict.
            assert syn_ack.verdict is Verdict.DROP, kind


def decide(policy: Any, hex_packet: str) -> Any:
    """The flow decision the product's policy makes on this packet alone."""
    buf = bytearray(bytes.fromhex(hex_packet))
    parsed = parse_datagram(buf, 0, len(buf))
    assert not isinstance(parsed, int), parsed
    pkt, endpoint = parsed
    return policy.decide_flow(buf, pkt, endpoint)


@pytest.mark.parametrize(("case", "payload"), sorted(OLD_CASES))
def test_older_cases_send_what_they_always_sent(
    bench_tools: dict[str, str], case: str, payload: int
) -> None:
    out = gen(
        bench_tools, "--case", case, "--payload", str(payload), "--flows", "3", "--dump", "200"
    )
    digest = hashlib.sha256("".join(p for f in out["packets"] for p in f).encode()).hexdigest()
    assert digest == OLD_CASES[(case, payload)]
