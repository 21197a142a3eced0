"""Rule conditions from the config (addresses, port ranges, TCP flags, GWLB endpoints), the
default verdict, and their refusals at load; datagrams built by scapy, judged by the full path."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from appliance.conditions import REGISTRY, Condition, _Networks
from appliance.datapath import Outcome, handle_datagram
from appliance.inner import InnerPacket
from appliance.policy import DEFAULT_RULE, Action, Policy, Rule
from config.errors import ConfigError
from config.loader import default_config_path, parse_config

TENANT_A, TENANT_B = "2b8ee1d4db0c51c4", "00000000000000b2"


def policy(rules: str, default: str = "pass") -> Policy:
    return parse_config(f'[policy]\ndefault = "{default}"\n{rules}').policy


def judge(gwlb, p: Policy, inner, endpoint: str = TENANT_A) -> tuple[Outcome, int]:
    datagram = gwlb.wrap(inner, endpoint_id=bytes.fromhex(endpoint))
    outcome, rule, _ = handle_datagram(datagram, 0, len(datagram), p)
    return outcome, rule


METADATA = """
[[policy.rules]]
name = "no-metadata-from-a"
action = "reject"
match = { endpoint = "2b8ee1d4db0c51c4", dst = ["169.254.169.254/32", "fd00:ec2::254/128"] }
"""


def test_one_endpoint_is_kept_from_the_metadata_address_and_another_is_not(gwlb) -> None:
    p = policy(METADATA)
    to_metadata = IP(src="10.0.0.5", dst="169.254.169.254") / TCP(dport=80, flags="S")
    assert judge(gwlb, p, to_metadata, TENANT_A) == (Outcome.REJECT, 0)
    assert judge(gwlb, p, to_metadata, TENANT_B) == (Outcome.PASS, -1)  # same addresses
    v6 = IPv6(src="fd00::5", dst="fd00:ec2::254") / UDP(dport=80)
    assert judge(gwlb, p, v6, TENANT_A) == (Outcome.REJECT, 0)
    elsewhere = IP(src="10.0.0.5", dst="169.254.169.253") / TCP(dport=80, flags="S")
    assert judge(gwlb, p, elsewhere, TENANT_A) == (Outcome.PASS, -1)


def test_src_dst_and_addr_look_at_their_side(gwlb) -> None:
    p = policy(
        """
[[policy.rules]]
name = "from-lab"
action = "drop"
match = { src = "10.9.0.0/16" }
[[policy.rules]]
name = "to-printer"
action = "drop"
match = { dst = ["10.8.8.8/32"] }
[[policy.rules]]
name = "anything-v6-lab"
action = "drop"
match = { addr = "fd09::/16" }
"""
    )
    assert judge(gwlb, p, IP(src="10.9.1.1", dst="10.1.1.1") / UDP())[1] == 0
    assert judge(gwlb, p, IP(src="10.1.1.1", dst="10.9.1.1") / UDP()) == (Outcome.PASS, -1)
    assert judge(gwlb, p, IP(src="10.1.1.1", dst="10.8.8.8") / UDP())[1] == 1
    assert judge(gwlb, p, IPv6(src="fd09::1", dst="fd00::1") / UDP())[1] == 2
    assert judge(gwlb, p, IPv6(src="fd00::1", dst="fd09::1") / UDP())[1] == 2
    assert judge(gwlb, p, IPv6(src="fd00::1", dst="fd00::2") / UDP()) == (Outcome.PASS, -1)


def test_port_ranges_and_tcp_opens(gwlb) -> None:
    p = policy(
        """
[[policy.rules]]
name = "no-new-high-ports"
action = "reject"
match = { protocol = "tcp", dst_port = ["1024-65535"], tcp_flags = "syn" }
"""
    )
    syn = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=8080, flags="S")
    assert judge(gwlb, p, syn) == (Outcome.REJECT, 0)
    synack = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=8080, flags="SA")
    assert judge(gwlb, p, synack) == (Outcome.PASS, -1)  # "syn" means a new connection
    low = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=443, flags="S")
    assert judge(gwlb, p, low) == (Outcome.PASS, -1)
    edge = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=1024, flags="S")
    assert judge(gwlb, p, edge) == (Outcome.REJECT, 0)


@pytest.mark.parametrize("default", ["drop", "reject"])
def test_default_deny_decides_what_no_rule_does(gwlb, default: str) -> None:
    p = policy(
        """
[[policy.rules]]
name = "web"
action = "pass"
match = { protocol = "tcp", dst_port = [80, 443] }
""",
        default,
    )
    web = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(dport=443, flags="S")
    assert judge(gwlb, p, web) == (Outcome.PASS, -1)
    other = IP(src="10.0.0.1", dst="10.0.0.2") / UDP(dport=53) / Raw(b"q")
    assert judge(gwlb, p, other) == (Outcome[default.upper()], DEFAULT_RULE)


def test_under_default_deny_only_a_pass_rule_lets_a_packet_through(gwlb) -> None:
    text = default_config_path().read_text()
    p = parse_config(text.replace('default = "pass"', 'default = "drop"')).policy
    weak = IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=9, dport=3000) / Raw(b"weakly typed")
    assert judge(gwlb, p, weak) == (Outcome.DROP, DEFAULT_RULE)  # a replace decides nothing
    opened = parse_config(
        text.replace('default = "pass"', 'default = "drop"')
        + '[[policy.rules]]\nname = "udp-3000"\naction = "pass"\n'
        + 'match = { protocol = "udp", port = 3000 }\n'
    ).policy
    assert judge(gwlb, opened, weak) == (Outcome.REWRITE, 1)


BAD = [
    ('match = { dst = "10.0.0.300/8" }', "match.dst", "not an IPv4 or IPv6 network"),
    ('match = { port = "2000-1000" }', "match.port", "must run upwards"),
    ('match = { endpoint = "2b8ee1d4" }', "match.endpoint", "16 hex digits"),
    ('match = { tcp_flags = "syn-ish" }', "match.tcp_flags", "unknown TCP flag 'syn-ish'"),
    (
        'match = { protocol = "icmp", dst_port = 53 }',
        "match.dst_port",
        "needs protocol tcp or udp, which the rule's other conditions rule out",
    ),
    (
        'match = { protocol = "udp", tcp_flags = "syn" }',
        "match.tcp_flags",
        "needs protocol tcp",
    ),
]


@pytest.mark.parametrize(("match", "where", "reason"), BAD, ids=[b[1] for b in BAD])
def test_bad_conditions_are_refused_with_key_line_and_reason(
    match: str, where: str, reason: str
) -> None:
    text = f'\n[[policy.rules]]\nname = "r"\naction = "drop"\n{match}\n'
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "site.toml")
    error = caught.value
    assert error.where == f"policy.rules[0].{where}" and reason in error.reason
    assert error.line == 5


def test_a_bad_default_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"policy\.default: must be one of pass, drop, reject"):
        parse_config('[policy]\ndefault = "deny"\n')


def test_a_new_condition_is_one_class_and_one_registry_line(gwlb) -> None:
    """The worker loop, the policy and the loader need no edit for a new condition."""

    class TtlBelow(Condition):
        key = "ttl_below"

        def __init__(self, limit: int) -> None:
            self.limit = limit

        @classmethod
        def from_config(cls, value: object) -> TtlBelow:
            if not isinstance(value, int):
                raise ValueError("must be an integer")
            return cls(value)

        def __call__(self, buf: bytes | bytearray, pkt: InnerPacket, endpoint: bytes) -> bool:
            return pkt.version == 4 and buf[pkt.start + 8] < self.limit

    REGISTRY["ttl_below"] = TtlBelow
    try:
        p = policy('[[policy.rules]]\nname = "t"\naction = "drop"\nmatch = { ttl_below = 5 }\n')
        assert p.rules[0] == Rule("t", Action.DROP, (TtlBelow(5),))
        assert judge(gwlb, p, IP(src="10.0.0.1", dst="10.0.0.2", ttl=3) / UDP())[0] is Outcome.DROP
        assert judge(gwlb, p, IP(src="10.0.0.1", dst="10.0.0.2", ttl=9) / UDP())[0] is Outcome.PASS
    finally:
        del REGISTRY["ttl_below"]


@settings(max_examples=200, deadline=None)
@given(
    nets=st.lists(
        st.tuples(st.integers(0, (1 << 32) - 1), st.integers(8, 32)), min_size=1, max_size=12
    ),
    probes=st.lists(st.integers(0, (1 << 32) - 1), max_size=20),
)
def test_an_address_list_holds_exactly_its_networks(
    nets: list[tuple[int, int]], probes: list[int]
) -> None:
    # Overlapping, nested and adjacent networks, merged at load and searched by bisection.
    networks = [ipaddress.ip_network((address, prefix), strict=False) for address, prefix in nets]
    held = _Networks([str(n) for n in networks])
    edges = [int(n.network_address) for n in networks] + [
        int(n.broadcast_address) for n in networks
    ]
    for address in probes + edges + [e + 1 for e in edges if e < (1 << 32) - 1]:
        expected = any(ipaddress.IPv4Address(address) in n for n in networks)
        assert held.holds(4, address) is expected, (networks, address)
