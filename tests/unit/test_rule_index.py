"""The policy's rule index (per protocol, then per GWLB endpoint id, endpoint checks left out;
policy._by_endpoint) and its compiled address checks answer exactly as asking every rule in order,
each condition by its own class: random rule sets, endpoints and packets against a plain reference
evaluation written here."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.packet import Packet, Raw

from appliance.conditions import (
    Addr,
    Condition,
    Dst,
    Endpoint,
    IpVersion,
    NameCondition,
    PayloadContains,
    Port,
    Protocol,
    Src,
    TcpFlags,
    TlsSni,
)
from appliance.conditions import DstPort as DstPortCondition
from appliance.conditions import SrcPort as SrcPortCondition
from appliance.datapath import parse_datagram
from appliance.inner import Fragment, InnerPacket
from appliance.policy import (
    DEFAULT_RULE,
    REWRITABLE_PROTOCOLS,
    Action,
    Decision,
    Policy,
    Rule,
    Verdict,
)

IDS = ["2b8ee1d4db0c51c4", "00000000000000b2", "7f00aa11bb22cc33"]
UNKNOWN = "0123456789abcdef"  # named by no rule
NETWORKS = [
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.1.2.0/24",
    "10.1.2.3/32",
    "10.1.2.4/31",
    "0.0.0.0/0",
    "fd00::/8",
    "fd00:a::/32",
    "fd00:a::5/128",
    "fd00:b::/120",
    "::/0",
]
ADDRESSES_V4 = ["10.1.2.3", "10.1.2.4", "10.1.2.5", "10.1.3.1", "10.2.0.9", "192.0.2.1"]
ADDRESSES_V6 = ["fd00:a::5", "fd00:a::6", "fd00:b::ff", "fd00:b::100", "2001:db8::1"]
PORTS: list[int | str] = [22, 80, 443, 3000, 40000, "8000-8999"]

endpoints = st.builds(Endpoint.from_config, st.lists(st.sampled_from(IDS), min_size=1, max_size=2))
conditions = st.one_of(
    endpoints,
    st.builds(Protocol.from_config, st.sampled_from(["tcp", "udp", "icmp", "icmpv6"])),
    st.builds(IpVersion.from_config, st.sampled_from([4, 6])),
    st.builds(Src.from_config, st.lists(st.sampled_from(NETWORKS), min_size=1, max_size=3)),
    st.builds(Dst.from_config, st.lists(st.sampled_from(NETWORKS), min_size=1, max_size=3)),
    st.builds(Addr.from_config, st.lists(st.sampled_from(NETWORKS), min_size=1, max_size=3)),
    st.builds(Port.from_config, st.lists(st.sampled_from(PORTS), min_size=1, max_size=2)),
    st.builds(SrcPortCondition.from_config, st.lists(st.sampled_from(PORTS), min_size=1)),
    st.builds(DstPortCondition.from_config, st.lists(st.sampled_from(PORTS), min_size=1)),
    st.builds(TcpFlags.from_config, st.sampled_from(["syn", ["fin", "ack"]])),
    st.builds(PayloadContains.from_config, st.sampled_from(["evil", "weak"])),
    st.builds(TlsSni.from_config, st.sampled_from([["a.example.com"], ["*.example.com", ""]])),
)


def _rule(
    n: int, action: Action, endpoint: Condition | None, match: list[Condition], audit: bool
) -> Rule:
    conditions = tuple(match) if endpoint is None else (endpoint, *match)
    return Rule(f"r{n}", action, conditions, find=b"weak", replace=b"strong", every=3, audit=audit)


rules = st.lists(
    st.tuples(
        st.sampled_from(list(Action)),
        st.one_of(st.none(), endpoints, endpoints),  # most rules name endpoints, as a firewall's
        st.lists(conditions, max_size=3),  # may name `endpoint` again: both must hold
        st.booleans(),
    ),
    max_size=10,
).map(lambda specs: [_rule(n, *spec) for n, spec in enumerate(specs)])


@st.composite
def packets(draw: st.DrawFn) -> Packet:
    v6 = draw(st.booleans())
    pool = ADDRESSES_V6 if v6 else ADDRESSES_V4
    ip = (IPv6 if v6 else IP)(src=draw(st.sampled_from(pool)), dst=draw(st.sampled_from(pool)))
    kind = draw(st.sampled_from(["tcp", "udp", "icmp"]))
    ports = {
        "sport": draw(st.sampled_from([22, 80, 443, 8080, 40000])),
        "dport": draw(st.sampled_from([22, 80, 443, 3000, 8999, 9000])),
    }
    payload = Raw(draw(st.sampled_from([b"", b"evil", b"weak", b"a weak evil"])))
    if kind == "tcp":
        return ip / TCP(**ports, flags=draw(st.sampled_from(["S", "SA", "FA", "PA"]))) / payload
    if kind == "udp":
        return ip / UDP(**ports) / payload
    seq = draw(st.integers(0, 7))
    return ip / (ICMPv6EchoRequest(seq=seq) if v6 else ICMP(type=8, seq=seq)) / payload


names = st.sampled_from(
    [{}, {"tls_sni": "a.example.com"}, {"tls_sni": "b.example.org"}, {"tls_sni": ""}]
)


# ---- the reference: every rule, in order, each condition by its own class --------------------


def _holds(
    rule: Rule, buf: bytes, pkt: InnerPacket, endpoint: bytes, flow_wide: bool = False
) -> bool:
    """Every condition of the rule but names (asked apart), or only its flow-wide ones."""
    protocols = rule.protocols()
    if protocols is not None and pkt.protocol not in protocols:
        return False
    return all(
        c(buf, pkt, endpoint)
        for c in rule.match
        if not isinstance(c, NameCondition) and (c.flow_wide or not flow_wide)
    )


def _flow_rule(rule: Rule) -> bool:
    flow_actions = (Action.PASS, Action.DROP, Action.REJECT, Action.INSPECT)
    return rule.action in flow_actions and not any(c.per_packet for c in rule.match)


_DECIDED = {Action.DROP: Verdict.DROP, Action.REJECT: Verdict.REJECT}
_DECIDED.update({Action.DROP_SEQ_MULTIPLE: Verdict.DROP, Action.INSPECT: Verdict.INSPECT})


def reference_flow(
    policy: Policy, buf: bytes, pkt: InnerPacket, endpoint: bytes, shown: dict[str, str]
) -> tuple[Decision, list[int]]:
    audited: list[int] = []

    def enforced(verdict: Verdict, rule: int) -> tuple[Decision, list[int]]:
        if policy.audit and verdict in (Verdict.DROP, Verdict.REJECT):
            audited.append(rule)
            return Decision(Verdict.PASS, rule, ()), audited
        return Decision(verdict, rule, ()), audited

    for index, rule in enumerate(policy.rules):
        if not _flow_rule(rule) or not _holds(rule, buf, pkt, endpoint):
            continue
        named = rule.names()
        if any(c.key not in shown for c in named):
            return Decision(Verdict.PENDING, index, ()), audited
        if not all(c.matches(shown[c.key]) for c in named):
            continue
        if rule.action is Action.PASS:
            return Decision(Verdict.PASS, index, ()), audited
        if rule.audit and rule.action is not Action.INSPECT:
            audited.append(index)
            continue
        return enforced(_DECIDED[rule.action], index)
    if policy.default is Verdict.PASS:
        return Decision(Verdict.PASS, -1, ()), audited
    return enforced(policy.default, DEFAULT_RULE)


def reference_packet(
    policy: Policy,
    buf: bytes,
    pkt: InnerPacket,
    endpoint: bytes,
    asked: list[bool],
    limit: int,
    otherwise: Decision,
) -> tuple[Decision, list[int]]:
    audited: list[int] = []
    if pkt.fragment == Fragment.LATER:
        return Decision(Verdict.PASS, -1, ()), audited
    rewrite: Decision | None = None
    passed = False
    for index, rule in enumerate(policy.rules[:limit]):
        if not asked[index] or not _holds(rule, buf, pkt, endpoint):
            continue
        if rule.action is Action.REPLACE:
            if buf.find(rule.find, pkt.payload, pkt.end) >= 0:
                edit = (rule.find, rule.replace)
                if rewrite is None:
                    rewrite = Decision(Verdict.REWRITE, index, (edit,))
                else:
                    rewrite = Decision(Verdict.REWRITE, rewrite.rule, (*rewrite.replacements, edit))
        elif rule.action is Action.PASS:
            passed = True
            break
        elif rule.action is not Action.DROP_SEQ_MULTIPLE or (
            pkt.icmp_seq >= 0 and pkt.icmp_seq % rule.every == 0
        ):
            if not (rule.audit or policy.audit):
                return Decision(_DECIDED[rule.action], index, ()), audited
            audited.append(index)
    if not passed and otherwise.verdict is not Verdict.PASS:
        if not policy.audit:
            return otherwise, audited
        audited.append(otherwise.rule)
        return Decision(Verdict.PASS, -1, ()), audited
    if rewrite is None:
        return Decision(Verdict.PASS, -1, ()), audited
    if pkt.fragment != Fragment.NONE or pkt.routed or pkt.protocol not in REWRITABLE_PROTOCOLS:
        return Decision(Verdict.UNREWRITABLE, rewrite.rule, ()), audited
    return rewrite, audited


def _edits(decision: Decision) -> Decision:
    """The decision with each replacement as (find, replace): the checksum deltas are derived."""
    return decision._replace(replacements=tuple((f, r) for f, r, *_ in decision.replacements))


# ---- the property ----------------------------------------------------------------------------


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chosen=rules,
    default=st.sampled_from([Verdict.PASS, Verdict.DROP, Verdict.REJECT]),
    audit=st.booleans(),
    inner=packets(),
    endpoint=st.sampled_from([*IDS, UNKNOWN]),
    shown=names,
    upto=st.integers(-1, 10),
)
def test_the_index_answers_as_every_rule_in_order(
    gwlb,
    chosen: list[Rule],
    default: Verdict,
    audit: bool,
    inner: Packet,
    endpoint: str,
    shown: dict[str, str],
    upto: int,
) -> None:
    policy = Policy(chosen, default, audit=audit)
    datagram = gwlb.wrap(inner, endpoint_id=bytes.fromhex(endpoint))
    parsed = parse_datagram(bytearray(datagram), 0, len(datagram))
    assert not isinstance(parsed, int)
    pkt, ep = parsed
    assert ep == bytes.fromhex(endpoint)
    why = [(r.action.value, r.match, r.audit) for r in chosen]

    audited: list[int] = []
    got = policy.decide_flow(datagram, pkt, ep, shown, audited)
    assert (got, audited) == reference_flow(policy, datagram, pkt, ep, shown), why

    alone = [not r.names() and r.action is not Action.INSPECT for r in chosen]
    audited = []
    got = _edits(policy.decide(datagram, pkt, ep, audited))
    expected = reference_packet(
        policy, datagram, pkt, ep, alone, len(chosen), policy.default_decision
    )
    assert (got, audited) == expected, why

    packet_rules = [not _flow_rule(r) for r in chosen]
    limit = len(chosen) if upto < 0 else upto
    audited = []
    got = _edits(policy.decide_packet(datagram, pkt, ep, upto, audited))
    pass_ = Decision(Verdict.PASS, -1, ())
    expected = reference_packet(policy, datagram, pkt, ep, packet_rules, limit, pass_)
    assert (got, audited) == expected, why

    inspected = any(
        packet_rules[i] and _holds(r, datagram, pkt, ep, flow_wide=True)
        for i, r in enumerate(chosen[:limit])
    )
    assert policy.inspects(datagram, pkt, ep, upto) is inspected, why


@settings(max_examples=300, deadline=None)
@given(
    networks=st.lists(st.sampled_from(NETWORKS), min_size=1, max_size=4),
    inner=packets(),
)
def test_compiled_address_checks_agree_with_the_conditions(
    gwlb, networks: list[str], inner: Packet
) -> None:
    datagram = gwlb.wrap(inner)
    parsed = parse_datagram(bytearray(datagram), 0, len(datagram))
    assert not isinstance(parsed, int)
    pkt, ep = parsed
    for kind in (Src, Dst, Addr):
        condition = kind.from_config(networks)
        assert condition.compile()(datagram, pkt, ep) is condition(datagram, pkt, ep), kind
