"""The policy asked in two parts (a flow's verdict once, then the packet rules per packet of a
passing flow) gives every first packet the fate the stateless evaluation gives it, and a flow that
no packet rule can touch is spared them."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.packet import Raw

from appliance.geneve import check_geneve
from appliance.inner import parse_inner
from appliance.policy import Action, Decision, Match, Policy, Rule, Verdict

RULES = [
    Rule(
        "drop-3000-evil",
        Action.DROP,
        Match(protocol=17, ports=frozenset({3000}), payload_contains=b"evil"),
    ),
    Rule(
        "replace",
        Action.REPLACE,
        Match(protocol=17, ports=frozenset({3000})),
        find=b"weak",
        replace=b"strong",
    ),
    Rule("reject-23", Action.REJECT, Match(protocol=6, dst_ports=frozenset({23}))),
    Rule("pass-web", Action.PASS, Match(protocol=6, dst_ports=frozenset({80, 443}))),
    Rule("drop-lab", Action.DROP, Match(src="10.9.0.0/16")),
    Rule("echo", Action.DROP_SEQ_MULTIPLE, Match(protocol=1, icmp_types=frozenset({8})), every=3),
    Rule("pass-udp", Action.PASS, Match(protocol=17)),
    Rule("drop-any-evil", Action.DROP, Match(payload_contains=b"evil")),
]

packets = st.one_of(
    st.builds(
        lambda s, d, p: IP(src=s, dst="10.0.0.2") / UDP(sport=40000, dport=d) / Raw(p),
        st.sampled_from(["10.0.0.1", "10.9.1.1"]),
        st.sampled_from([53, 3000]),
        st.sampled_from([b"weak", b"evil", b"weak evil", b"fine"]),
    ),
    st.builds(
        lambda s, d, p: IP(src=s, dst="10.0.0.2") / TCP(sport=40000, dport=d, flags="S") / Raw(p),
        st.sampled_from(["10.0.0.1", "10.9.1.1"]),
        st.sampled_from([22, 23, 80, 3000]),
        st.sampled_from([b"", b"evil"]),
    ),
    st.builds(
        lambda seq: IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=8, seq=seq),
        st.integers(0, 12),
    ),
)
REFUSED = {Verdict.DROP, Verdict.REJECT, Verdict.UNREWRITABLE}


def fate(decision: Decision) -> object:
    if decision.verdict in REFUSED:
        return "refused"
    return decision.verdict, tuple((f, r) for f, r, _ in decision.replacements)


def two_stage(policy: Policy, datagram: bytes) -> Decision:
    inner, protocol = check_geneve(datagram, 0, len(datagram))
    pkt = parse_inner(datagram, inner, len(datagram), protocol)
    flow = policy.decide_flow(datagram, pkt)
    if flow.verdict is not Verdict.PASS:
        return flow
    return policy.decide_packet(datagram, pkt, b"", flow.rule)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chosen=st.lists(st.sampled_from(range(len(RULES))), min_size=0, max_size=6, unique=True),
    default=st.sampled_from([Verdict.PASS, Verdict.DROP, Verdict.REJECT]),
    inner=packets,
)
def test_a_first_packet_meets_the_fate_the_stateless_policy_gives_it(
    gwlb, chosen: list[int], default: Verdict, inner: IP
) -> None:
    policy = Policy([RULES[i] for i in chosen], default)
    datagram = gwlb.wrap(inner)
    inner_at, protocol = check_geneve(datagram, 0, len(datagram))
    stateless = policy.decide(datagram, parse_inner(datagram, inner_at, len(datagram), protocol))
    assert fate(two_stage(policy, datagram)) == fate(stateless), [RULES[i].name for i in chosen]


def test_a_flow_no_packet_rule_can_touch_is_spared_them(gwlb) -> None:
    demo = Policy(RULES[:2])  # the port-3000 payload rules only
    for inner, touched in (
        (IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=40000, dport=53), False),
        (IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=3000, dport=9), True),
        (IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=3000), False),  # UDP rules
    ):
        datagram = gwlb.wrap(inner)
        at, protocol = check_geneve(datagram, 0, len(datagram))
        pkt = parse_inner(datagram, at, len(datagram), protocol)
        assert demo.inspects(datagram, pkt, b"", -1) is touched, inner.summary()
    # A `pass` rule ahead of them stops the evaluation for its flows: nothing to inspect.
    passing = Policy([RULES[6], *RULES[:2]])
    datagram = gwlb.wrap(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=3000, dport=9))
    at, protocol = check_geneve(datagram, 0, len(datagram))
    pkt = parse_inner(datagram, at, len(datagram), protocol)
    decided = passing.decide_flow(datagram, pkt)
    assert decided == Decision(Verdict.PASS, 0, ())
    assert not passing.inspects(datagram, pkt, b"", decided.rule)
