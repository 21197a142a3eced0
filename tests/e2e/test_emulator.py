"""The emulated GWLB against the trivial reflector: the test bed itself is under test here.

If these pass, traffic between a and b really crosses the emulator and a contract-abiding
appliance, and the emulator notices when an appliance breaks the contract.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import gwlb_emulator as emu
import pytest
from testbed import EmulatorHandle, LineReader, Testbed, feed_lines, no_ports, ping

pytestmark = pytest.mark.e2e
netns = pytest.mark.netns

LINES = [b"test\n", b"drop me\n", b"weakly typed programming language\n"]
VERSIONS = [pytest.param(4, id="ipv4"), pytest.param(6, id="ipv6")]


def flows_of(emulator: EmulatorHandle, *kinds: str) -> set[str]:
    return {e["flow"] for kind in kinds for e in emulator.of(kind)}


def send_udp(tb: Testbed, version: int, payloads: list[bytes], first_port: int) -> None:
    """From b to a:3000, payload i from source port first_port + i (one flow each)."""
    family, dst = ("AF_INET", tb.a_ip4) if version == 4 else ("AF_INET6", tb.a_ip6)
    code = (
        f"import socket\nfor i, data in enumerate({payloads!r}):\n"
        f"    s = socket.socket(socket.{family}, socket.SOCK_DGRAM)\n"
        f"    s.bind(('', {first_port} + i)); s.sendto(data, ({dst!r}, 3000)); s.close()\n"
    )
    tb.run(tb.ns_b, [sys.executable, "-c", code], check=True, timeout=10)


def serve_http(tb: Testbed, k: int) -> None:
    """A health endpoint (HTTP 200 on /) in appliance k; the bed stops it."""
    argv = [sys.executable, "-m", "http.server", "80", "--bind", tb.appliance_ip(k)]
    tb.popen(tb.ns_app(k), argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def became_healthy(ip: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["target"] == ip and e["healthy"]


@netns
@pytest.mark.parametrize("version", VERSIONS)
def test_udp_lines_arrive_unchanged(
    testbed: Testbed,
    start_reflector: Callable[..., Any],
    start_emulator: Callable[..., EmulatorHandle],
    udp_listener: Callable[..., LineReader],
    udp_sender: Callable[..., subprocess.Popen[bytes]],
    version: int,
) -> None:
    start_reflector(testbed)
    emulator = start_emulator(testbed)
    received = udp_listener(testbed, version)
    before = no_ports(testbed)

    sender = udp_sender(testbed, version)
    assert feed_lines(testbed, sender, testbed.ns_b, version, LINES) == [True] * 3
    assert received.wait_for(lambda r: len(r.lines) >= 3, 3.0)
    report = emulator.finish()

    assert received.lines == [line.decode() for line in LINES]
    assert report["violations"]["total"] == 0, report["violations"]
    assert report["flows"]["total"] == 1
    assert report["flows"][f"ipv{version}"] == 1
    assert report["packets"]["encapsulated"] == report["packets"]["delivered"] == 3
    assert no_ports(testbed) == before


@netns
@pytest.mark.parametrize("version", VERSIONS)
def test_ping_both_directions_share_one_flow(
    testbed: Testbed,
    start_reflector: Callable[..., Any],
    start_emulator: Callable[..., EmulatorHandle],
    version: int,
) -> None:
    start_reflector(testbed)
    emulator = start_emulator(testbed)
    before = no_ports(testbed)

    assert ping(testbed, version, 10) == set(range(1, 11))
    assert emulator.wait_event("return", 2.0, count=20)
    report = emulator.finish()

    assert report["violations"]["total"] == 0, report["violations"]
    assert report["flows"]["total"] == 1
    # Requests and replies: 20 packets, one cookie, one outer source port.
    assert len(emulator.of("encap")) == 20
    assert len(flows_of(emulator, "flow", "encap", "return")) == 1
    assert len({e["port"] for e in emulator.of("encap")}) == 1
    assert report["packets"]["delivered"] == 20
    assert no_ports(testbed) == before


@netns
def test_fixed_source_port_flows_differ_by_cookie(
    testbed: Testbed,
    start_reflector: Callable[..., Any],
    start_emulator: Callable[..., EmulatorHandle],
    udp_listener: Callable[..., LineReader],
) -> None:
    start_reflector(testbed)
    emulator = start_emulator(testbed, "--fixed-source-port=40000")
    received = udp_listener(testbed, 4)

    send_udp(testbed, 4, [b"one\n", b"two\n"], 5000)
    assert ping(testbed, 4, 2) == {1, 2}
    assert received.wait_for(lambda r: len(r.lines) >= 2, 3.0)
    report = emulator.finish()

    assert {e["port"] for e in emulator.of("encap")} == {40000}
    assert len(flows_of(emulator, "flow")) == report["flows"]["total"] == 3
    assert report["violations"]["total"] == 0


FAULTS = [
    ("corrupt-cookie", "unknown_cookie"),
    ("swap-ports", "outer_src_port"),
    ("swap-ports", "outer_dst_port"),
    ("bad-udp-checksum", "outer_udp_checksum"),
    ("change-endpoint-id", "geneve_header_changed"),
    ("bad-inner-checksum", "inner_icmp_checksum"),
]


@netns
@pytest.mark.parametrize(("fault", "kind"), FAULTS)
def test_contract_violation_is_counted_and_dropped(
    testbed: Testbed,
    start_reflector: Callable[..., Any],
    start_emulator: Callable[..., EmulatorHandle],
    fault: str,
    kind: str,
) -> None:
    start_reflector(testbed, 1, f"--fault={fault}")
    emulator = start_emulator(testbed)

    assert ping(testbed, 4, 2) == set()  # nothing that breaks the contract is delivered
    assert emulator.wait_event("violation", 2.0, where=lambda e: e["kind"] == kind)
    report = emulator.finish()

    assert report["violations"]["by_kind"].get(kind, 0) >= 2
    assert report["violations"]["examples"][0]["detail"]
    assert report["packets"]["returned"] == 2
    assert report["packets"]["delivered"] == 0


@netns
def test_flow_after_idle_timeout_gets_a_new_cookie(
    testbed: Testbed,
    start_reflector: Callable[..., Any],
    start_emulator: Callable[..., EmulatorHandle],
) -> None:
    start_reflector(testbed)
    emulator = start_emulator(testbed, "--idle-timeout-other-s=0.3")

    assert ping(testbed, 4, 1) == {1}
    assert emulator.wait_event("expire", 3.0)
    assert ping(testbed, 4, 1) == {1}
    report = emulator.finish()

    cookies = [e["flow"] for e in emulator.of("flow")]
    assert len(cookies) == 2 and cookies[0] != cookies[1]
    assert report["flows"]["total"] == 2
    assert report["violations"]["total"] == 0


@netns
@pytest.mark.parametrize("testbed", [2], indirect=True)
def test_health_steers_new_flows_only(
    testbed: Testbed,
    start_reflector: Callable[..., Any],
    start_emulator: Callable[..., EmulatorHandle],
    udp_listener: Callable[..., LineReader],
) -> None:
    first, second = testbed.appliance_ip(1), testbed.appliance_ip(2)
    for k in (1, 2):
        start_reflector(testbed, k)
    serve_http(testbed, 2)
    emulator = start_emulator(testbed, "--health-port=80", "--health-interval-s=0.3")
    assert emulator.wait_event("health", 10.0, where=became_healthy(second))
    received = udp_listener(testbed, 4)

    # Eight flows while only the second target is healthy: all of them go there.
    send_udp(testbed, 4, [b"x%d\n" % i for i in range(8)], 5000)
    assert received.wait_for(lambda r: len(r.lines) >= 8, 3.0)
    old_flows = {e["flow"]: e["target"] for e in emulator.of("flow")}
    assert set(old_flows.values()) == {second}

    # The first turns healthy: new flows spread over both, the old ones stay where they are.
    serve_http(testbed, 1)
    assert emulator.wait_event("health", 10.0, where=became_healthy(first))
    send_udp(testbed, 4, [b"y%d\n" % i for i in range(8)], 5000)
    send_udp(testbed, 4, [b"z%d\n" % i for i in range(8)], 6000)
    assert received.wait_for(lambda r: len(r.lines) >= 24, 3.0)
    report = emulator.finish()

    new_targets = [e["target"] for e in emulator.of("flow") if e["flow"] not in old_flows]
    assert len(new_targets) == 8 and first in new_targets
    assert all(e["target"] == second for e in emulator.of("encap") if e["flow"] in old_flows)
    assert report["targets"][first]["flows"] + report["targets"][second]["flows"] == 16
    assert report["violations"]["total"] == 0


@netns
@pytest.mark.parametrize("version", VERSIONS)
def test_fragments_share_one_flow_and_reassemble(
    testbed: Testbed,
    start_reflector: Callable[..., Any],
    start_emulator: Callable[..., EmulatorHandle],
    udp_listener: Callable[..., LineReader],
    version: int,
) -> None:
    start_reflector(testbed)
    emulator = start_emulator(testbed)
    received = udp_listener(testbed, version)
    testbed.ip(testbed.ns_b, "link", "set", "eth0", "mtu", "1500")  # b must fragment

    # Only the first fragment carries the UDP ports; all three must share one flow.
    send_udp(testbed, version, [b"x" * 4000 + b"\n"], 5000)
    assert received.wait_for(lambda r: r.lines, 3.0)
    report = emulator.finish()

    assert received.lines == ["x" * 4000 + "\n"]
    assert report["flows"]["total"] == 1
    assert report["packets"]["encapsulated"] == report["packets"]["delivered"] == 3
    assert report["violations"]["total"] == 0


@netns
def test_emulator_survives_garbage(
    testbed: Testbed,
    start_reflector: Callable[..., Any],
    start_emulator: Callable[..., EmulatorHandle],
) -> None:
    start_reflector(testbed)
    emulator = start_emulator(testbed)
    payloads = [b"", b"\x00", b"\x08" * 7, b"\x3f" * 40, bytes(range(256)) * 4]
    garbage = (
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"s.bind(('', 7000))\nfor data in {payloads!r}:\n"
        f"    s.sendto(data, ({testbed.gwlb_ip(1)!r}, 6081))\n"
    )
    testbed.run(testbed.ns_app(1), [sys.executable, "-c", garbage], check=True, timeout=10)
    assert emulator.wait_event("violation", 3.0, count=5)

    assert ping(testbed, 4, 3) == {1, 2, 3}
    report = emulator.finish()

    assert emulator.proc.returncode == 0
    assert report["packets"]["delivered"] == 6
    assert report["violations"]["total"] == 5


# --- the emulator's own bytes against scapy (no namespaces needed) -----------------------------

EID, AID, COOKIE = bytes(range(8)), bytes(range(8, 16)), 0xDEADBEEF


def test_geneve_header_matches_scapy() -> None:
    from scapy.contrib.geneve import GENEVE, GeneveOptions

    options = [
        GeneveOptions(classid=0x0108, type=1, data=EID),
        GeneveOptions(classid=0x0108, type=2, data=AID),
        GeneveOptions(classid=0x0108, type=3, data=COOKIE.to_bytes(4, "big")),
    ]
    for proto in (0x0800, 0x86DD):
        ours = emu.geneve_header(proto, EID, AID, COOKIE)
        assert ours == bytes(GENEVE(proto=proto, vni=0, options=options))
        assert len(ours) == 40
        assert emu.find_cookie(ours) == (COOKIE, 40)


def scapy_inner() -> dict[str, Any]:
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6

    v4, v6 = IP(src="10.77.2.2", dst="10.77.1.2"), IPv6(src="fd77:2::2", dst="fd77:1::2")
    return {
        "udp4": (v4 / UDP(sport=4000, dport=3000) / b"test\n", UDP, "inner_udp_checksum"),
        "udp6": (v6 / UDP(sport=4000, dport=3000) / b"test\n", UDP, "inner_udp_checksum"),
        "tcp4": (v4 / TCP(sport=4000, dport=80) / b"GET", TCP, "inner_tcp_checksum"),
        "tcp6": (v6 / TCP(sport=4000, dport=80) / b"GET", TCP, "inner_tcp_checksum"),
        "icmp4": (v4 / ICMP(id=7, seq=1) / b"ping", ICMP, "inner_icmp_checksum"),
        "icmp6": (
            v6 / ICMPv6EchoRequest(id=7, seq=1) / b"ping",
            ICMPv6EchoRequest,
            "inner_icmp_checksum",
        ),  # scapy names this checksum field `cksum`
    }


@pytest.mark.parametrize("name", ["udp4", "udp6", "tcp4", "tcp6", "icmp4", "icmp6"])
def test_inner_checks_agree_with_scapy(name: str) -> None:
    packet, layer, kind = scapy_inner()[name]
    good = bytes(packet)
    assert emu.inner_violations(good, emu.parse_inner(good)) == []

    broken = packet.copy()
    field = "cksum" if name == "icmp6" else "chksum"
    setattr(broken[layer], field, 0x1234)
    bad = bytes(broken)
    assert [k for k, _ in emu.inner_violations(bad, emu.parse_inner(bad))] == [kind]


def test_udp_checksum_zero_allowed_only_over_ipv4() -> None:
    from scapy.layers.inet import UDP

    for name, allowed in (("udp4", True), ("udp6", False)):
        packet = scapy_inner()[name][0].copy()
        packet[UDP].chksum = 0
        raw = bytes(packet)
        assert (emu.inner_violations(raw, emu.parse_inner(raw)) == []) is allowed


def test_flow_key_is_symmetric_and_fragments_share_it() -> None:
    from scapy.layers.inet import IP, UDP, fragment
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6

    there = emu.parse_inner(bytes(IP(src="10.77.2.2", dst="10.77.1.2") / UDP(sport=1, dport=2)))
    back = emu.parse_inner(bytes(IP(src="10.77.1.2", dst="10.77.2.2") / UDP(sport=2, dport=1)))
    assert there.key() == back.key()

    big4 = IP(src="10.77.2.2", dst="10.77.1.2") / UDP(sport=1, dport=2) / (b"x" * 3000)
    big6 = (
        IPv6(src="fd77:2::2", dst="fd77:1::2")
        / IPv6ExtHdrFragment()
        / UDP(sport=1, dport=2)
        / (b"x" * 3000)
    )
    for frags in (fragment(big4, 1400), fragment6(big6, 1400)):
        keys = {emu.parse_inner(bytes(f)).key() for f in frags}
        assert len(frags) >= 3 and len(keys) == 1


def test_outer_checks_agree_with_scapy() -> None:
    from scapy.layers.inet import IP, UDP

    payload = emu.geneve_header(0x0800, EID, AID, COOKIE)
    outer = IP(src="10.77.101.2", dst="10.77.101.1") / UDP(sport=40000, dport=6081) / payload
    assert emu.outer_violations(bytes(outer)) == ([], 28)
    outer[UDP].chksum = 0
    assert emu.outer_violations(bytes(outer)) == ([], 28)
    outer[UDP].chksum = 0x1234
    assert [k for k, _ in emu.outer_violations(bytes(outer))[0]] == ["outer_udp_checksum"]
