"""The policy engine's semantics, as documented in appliance/policy.py.

Packets are built by scapy and parsed by our codec; the rules are built directly (the config
loader's checks are tested in test_config.py), so combinations the loader refuses can be asked too.
"""

from __future__ import annotations

import pytest
from scapy.compat import raw
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrRouting, fragment6

from appliance.datapath import Outcome, handle_datagram
from appliance.geneve import check_geneve
from appliance.inner import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, parse_inner
from appliance.policy import Action, Match, Policy, Rule, Verdict

GENEVE_LEN = 40


def decide(gwlb, policy: Policy, inner) -> tuple[object, ...]:
    """The decision, with each replacement as its (find, replace) pair: the word-sum changes the
    policy precomputes for the rewrite are checked against scapy by the rewrite's tests."""
    datagram = gwlb.wrap(inner)
    start, protocol = check_geneve(datagram, 0, len(datagram))
    found = policy.decide(datagram, parse_inner(datagram, start, len(datagram), protocol))
    return (found.verdict, found.rule, tuple((f, r) for f, r, _ in found.replacements))


def drop(name="drop", **match) -> Rule:
    return Rule(name, Action.DROP, Match(**match))


def replace(find: bytes, new: bytes, name="replace", **match) -> Rule:
    return Rule(name, Action.REPLACE, Match(**match), find=find, replace=new)


def pass_(name="pass", **match) -> Rule:
    return Rule(name, Action.PASS, Match(**match))


def every(n: int, name="every", **match) -> Rule:
    return Rule(name, Action.DROP_SEQ_MULTIPLE, Match(**match), every=n)


PASSED = (Verdict.PASS, -1, ())
UDP_ONLY = {"protocol": PROTO_UDP}


def ports(*values: int) -> frozenset[int]:
    return frozenset(values)


# ---- drop, replace, pass -----------------------------------------------------------------------


def test_no_rules_pass_everything(gwlb):
    for inner in (gwlb.udp4(b"drop me"), gwlb.tcp6(b"x"), gwlb.icmp4(5)):
        assert decide(gwlb, Policy(), inner) == PASSED


def test_first_matching_drop_wins_even_after_a_matching_replace(gwlb):
    rules = [replace(b"hello", b"bye", **UDP_ONLY), drop(payload_contains=b"hello")]
    assert decide(gwlb, Policy(rules), gwlb.udp4(b"hello")) == (Verdict.DROP, 1, ())
    # without the drop, the replace would have applied
    assert decide(gwlb, Policy(rules[:1]), gwlb.udp4(b"hello")) == (
        Verdict.REWRITE,
        0,
        ((b"hello", b"bye"),),
    )


def test_the_first_of_several_matching_drops_decides(gwlb):
    rules = [drop(dst_ports=ports(9)), drop(**UDP_ONLY), drop(), drop(payload_contains=b"x")]
    assert decide(gwlb, Policy(rules), gwlb.udp4(b"x", dport=3000)) == (Verdict.DROP, 1, ())
    assert decide(gwlb, Policy(rules), gwlb.udp4(b"x", dport=9)) == (Verdict.DROP, 0, ())
    assert decide(gwlb, Policy(rules), gwlb.tcp4(b"x")) == (Verdict.DROP, 2, ())


def test_all_matching_replaces_apply_in_rule_order(gwlb, default_policy):
    rules = [
        replace(b"ab", b"cd", **UDP_ONLY),
        replace(b"zz", b"yy", **UDP_ONLY),  # not in the payload: does not match
        replace(b"cd", b"ef", **UDP_ONLY),
    ]
    packet = gwlb.udp4(b"ab cd", dport=7)
    assert decide(gwlb, Policy(rules), packet) == (
        Verdict.REWRITE,
        0,
        ((b"ab", b"cd"), (b"cd", b"ef")),
    )
    datagram = gwlb.wrap(packet)
    outcome, rule, out = handle_datagram(datagram, 0, len(datagram), Policy(rules))
    assert (outcome, rule) == (Outcome.REWRITE, 0)
    assert out is not None
    assert bytes(out[GENEVE_LEN:]) == raw(gwlb.udp4(b"ef ef", dport=7))  # ab->cd, then cd->ef
    # the other order gives another packet
    outcome, _, out = handle_datagram(datagram, 0, len(datagram), Policy(rules[::-1]))
    assert out is not None
    assert bytes(out[GENEVE_LEN:]) == raw(gwlb.udp4(b"cd ef", dport=7))  # cd->ef, then ab->cd


def test_replace_matches_only_when_its_text_is_there(gwlb):
    rules = [replace(b"weakly typed", b"strongly typed", **UDP_ONLY)]
    assert decide(gwlb, Policy(rules), gwlb.udp4(b"weakly  typed")) == PASSED
    # the rule index of a rewrite is the first replace that matched
    rules = [replace(b"nope", b"x", **UDP_ONLY), *rules]
    assert decide(gwlb, Policy(rules), gwlb.udp4(b"weakly typed"))[:2] == (Verdict.REWRITE, 1)


def test_pass_stops_the_evaluation(gwlb):
    rules = [pass_(dst_ports=ports(53)), drop(**UDP_ONLY)]
    assert decide(gwlb, Policy(rules), gwlb.udp4(b"q", dport=53)) == PASSED
    assert decide(gwlb, Policy(rules), gwlb.udp4(b"q", dport=54)) == (Verdict.DROP, 1, ())
    rules = [pass_(**UDP_ONLY), replace(b"q", b"r", **UDP_ONLY)]
    assert decide(gwlb, Policy(rules), gwlb.udp4(b"q")) == PASSED


def test_pass_keeps_the_replaces_matched_before_it(gwlb):
    """Replaces before a matching pass still apply: pass only stops later rules being asked."""
    rules = [replace(b"q", b"r", **UDP_ONLY), pass_(), drop()]
    assert decide(gwlb, Policy(rules), gwlb.udp4(b"q")) == (Verdict.REWRITE, 0, ((b"q", b"r"),))


# ---- matchers ----------------------------------------------------------------------------------


def test_ip_version(gwlb):
    policy = Policy([drop(ip_version=6)])
    assert decide(gwlb, policy, gwlb.udp6(b"x")) == (Verdict.DROP, 0, ())
    assert decide(gwlb, policy, gwlb.icmp6(1)) == (Verdict.DROP, 0, ())
    assert decide(gwlb, policy, gwlb.udp4(b"x")) == PASSED
    assert decide(gwlb, Policy([drop(ip_version=4)]), gwlb.tcp4(b"x")) == (Verdict.DROP, 0, ())


def test_protocol(gwlb):
    policy = Policy([drop(protocol=PROTO_TCP)])
    assert decide(gwlb, policy, gwlb.tcp4(b"x")) == (Verdict.DROP, 0, ())
    assert decide(gwlb, policy, gwlb.udp4(b"x")) == PASSED
    assert decide(gwlb, Policy([drop(protocol=PROTO_ICMPV6)]), gwlb.icmp6(1))[0] is Verdict.DROP
    assert decide(gwlb, Policy([drop(protocol=PROTO_ICMP)]), gwlb.icmp6(1)) == PASSED


@pytest.mark.parametrize("version", [4, 6])
def test_port_on_either_side(gwlb, version):
    build = gwlb.udp4 if version == 4 else gwlb.udp6
    policy = Policy([drop(ports=ports(3000, 3001))])
    assert decide(gwlb, policy, build(b"", 3000, 1))[0] is Verdict.DROP
    assert decide(gwlb, policy, build(b"", 1, 3001))[0] is Verdict.DROP
    assert decide(gwlb, policy, build(b"", 2999, 3002)) == PASSED
    assert decide(gwlb, policy, gwlb.icmp4(3000)) == PASSED  # ICMP has no ports


@pytest.mark.parametrize("version", [4, 6])
def test_src_port_and_dst_port_look_at_one_side(gwlb, version):
    build = gwlb.udp4 if version == 4 else gwlb.udp6
    by_src = Policy([drop(src_ports=ports(3000))])
    assert decide(gwlb, by_src, build(b"", 3000, 1))[0] is Verdict.DROP
    assert decide(gwlb, by_src, build(b"", 1, 3000)) == PASSED
    by_dst = Policy([drop(dst_ports=ports(3000))])
    assert decide(gwlb, by_dst, build(b"", 1, 3000))[0] is Verdict.DROP
    assert decide(gwlb, by_dst, build(b"", 3000, 1)) == PASSED
    both = Policy([drop(src_ports=ports(5), dst_ports=ports(6))])
    assert decide(gwlb, both, build(b"", 5, 6))[0] is Verdict.DROP
    assert decide(gwlb, both, build(b"", 6, 5)) == PASSED
    assert decide(gwlb, both, build(b"", 5, 5)) == PASSED
    tcp = gwlb.tcp4 if version == 4 else gwlb.tcp6
    assert decide(gwlb, by_dst, tcp(b"", 1, 3000))[0] is Verdict.DROP


def test_icmp_type(gwlb):
    requests = Policy([drop(protocol=PROTO_ICMP, icmp_types=ports(8))])
    assert decide(gwlb, requests, gwlb.icmp4(1, icmp_type=8))[0] is Verdict.DROP
    assert decide(gwlb, requests, gwlb.icmp4(1, icmp_type=0)) == PASSED
    unreachable = IP(**gwlb.v4) / ICMP(type=3, code=3) / raw(gwlb.udp4(b"quoted"))
    assert decide(gwlb, Policy([drop(icmp_types=ports(3))]), unreachable)[0] is Verdict.DROP
    v6 = Policy([drop(icmp_types=ports(129))])
    assert decide(gwlb, v6, gwlb.icmp6(1, request=False))[0] is Verdict.DROP
    assert decide(gwlb, v6, gwlb.icmp6(1, request=True)) == PASSED
    assert decide(gwlb, Policy([drop(icmp_types=ports(0))]), gwlb.udp4(b"\0" * 8)) == PASSED


def test_payload_contains_looks_only_at_the_payload(gwlb):
    policy = Policy([drop(payload_contains=b"needle")])
    assert decide(gwlb, policy, gwlb.udp4(b"hay needle hay"))[0] is Verdict.DROP
    assert decide(gwlb, policy, gwlb.udp4(b"needl")) == PASSED
    # bytes of the UDP header (port 3000 = 0x0bb8) are not payload
    assert decide(gwlb, Policy([drop(payload_contains=b"\x0b\xb8")]), gwlb.udp4(b"hello")) == PASSED
    assert (
        decide(gwlb, Policy([drop(payload_contains=b"\x0b\xb8")]), gwlb.udp4(b"he\x0b\xb8llo"))[0]
        is Verdict.DROP
    )
    # nor are an ICMP echo's identifier and sequence number (0x4142 = b"AB")
    echo = Policy([drop(payload_contains=b"AB")])
    assert decide(gwlb, echo, gwlb.icmp4(0x4142, payload=b"zzz")) == PASSED
    assert decide(gwlb, echo, gwlb.icmp6(0x4142, payload=b"zzz")) == PASSED
    assert decide(gwlb, echo, gwlb.icmp6(1, payload=b"zABz"))[0] is Verdict.DROP
    # a TCP header with options (MSS 1460: 02 04 05 b4) is skipped whole
    tcp = IP(**gwlb.v4) / TCP(sport=1, dport=2, options=[("MSS", 1460)]) / b"data"
    assert b"\x02\x04\x05\xb4" in raw(tcp)
    assert decide(gwlb, Policy([drop(payload_contains=b"\x02\x04\x05\xb4")]), tcp) == PASSED
    assert decide(gwlb, Policy([drop(payload_contains=b"ata")]), tcp)[0] is Verdict.DROP


def test_all_conditions_of_a_rule_must_hold(gwlb):
    policy = Policy(
        [drop(ip_version=4, protocol=PROTO_UDP, ports=ports(3000), payload_contains=b"x")]
    )
    assert decide(gwlb, policy, gwlb.udp4(b"x", dport=3000))[0] is Verdict.DROP
    assert decide(gwlb, policy, gwlb.udp6(b"x", dport=3000)) == PASSED
    assert decide(gwlb, policy, gwlb.tcp4(b"x", dport=3000)) == PASSED
    assert decide(gwlb, policy, gwlb.udp4(b"x", dport=3001)) == PASSED
    assert decide(gwlb, policy, gwlb.udp4(b"y", dport=3000)) == PASSED


# ---- drop_seq_multiple -------------------------------------------------------------------------


@pytest.mark.parametrize("seq", [0, 1, 2, 3, 6, 7, 65535])
def test_drop_seq_multiple(gwlb, seq):
    policy = Policy([every(3, protocol=PROTO_ICMP), every(3, protocol=PROTO_ICMPV6)])
    dropped = seq % 3 == 0
    for rule, inner in (
        (0, gwlb.icmp4(seq)),
        (0, gwlb.icmp4(seq, icmp_type=0)),
        (1, gwlb.icmp6(seq)),
        (1, gwlb.icmp6(seq, request=False)),
    ):
        assert decide(gwlb, policy, inner) == ((Verdict.DROP, rule, ()) if dropped else PASSED)


def test_drop_seq_multiple_ignores_non_echo(gwlb):
    policy = Policy([every(1, protocol=PROTO_ICMP), every(1)])
    # type 3 carries bytes where an echo's sequence would be: not a sequence number
    unreachable = IP(**gwlb.v4) / ICMP(type=3, code=1) / raw(gwlb.udp4(b"q"))
    assert decide(gwlb, policy, unreachable) == PASSED
    assert decide(gwlb, policy, gwlb.udp4(b"\0" * 8)) == PASSED


def test_a_drop_seq_rule_that_does_not_drop_lets_later_rules_decide(gwlb):
    rules = [every(5, protocol=PROTO_ICMP), drop(payload_contains=b"later")]
    assert decide(gwlb, Policy(rules), gwlb.icmp4(1, payload=b"later")) == (Verdict.DROP, 1, ())
    assert decide(gwlb, Policy(rules), gwlb.icmp4(5, payload=b"later")) == (Verdict.DROP, 0, ())


# ---- what cannot be rewritten ------------------------------------------------------------------


def _first_and_later(gwlb, version, payload):
    if version == 4:
        pieces = fragment(gwlb.udp4(payload), fragsize=64)
    else:
        whole = IPv6(**gwlb.v6) / IPv6ExtHdrFragment() / UDP(sport=1, dport=3000) / payload
        pieces = fragment6(whole, 1280)
    return pieces[0], pieces[1]


@pytest.mark.parametrize("version", [4, 6])
def test_fragments(gwlb, version):
    first, later = _first_and_later(gwlb, version, b"needle " * 400)
    assert decide(gwlb, Policy([drop()]), later) == PASSED  # no transport header: always passes
    assert decide(gwlb, Policy([drop(**UDP_ONLY)]), first) == (Verdict.DROP, 0, ())
    rules = [pass_(dst_ports=ports(9)), replace(b"needle", b"pin", **UDP_ONLY)]
    assert decide(gwlb, Policy(rules), first) == (Verdict.UNREWRITABLE, 1, ())
    assert decide(gwlb, Policy(rules), later) == PASSED
    rules.append(drop(payload_contains=b"needle"))  # a drop still wins over the replace
    assert decide(gwlb, Policy(rules), first) == (Verdict.DROP, 2, ())


def test_routed_ipv6_cannot_be_rewritten(gwlb):
    inner = (
        IPv6(**gwlb.v6)
        / IPv6ExtHdrRouting(type=0, segleft=1, addresses=["fd00:c::1"])
        / UDP(sport=1, dport=3000)
        / b"needle"
    )
    assert decide(gwlb, Policy([replace(b"needle", b"pin", **UDP_ONLY)]), inner) == (
        Verdict.UNREWRITABLE,
        0,
        (),
    )


def test_tcp_cannot_be_rewritten(gwlb):
    """The loader refuses such a rule; the engine still never rewrites TCP."""
    policy = Policy([replace(b"needle", b"pin", protocol=PROTO_TCP), replace(b"needle", b"pin")])
    assert decide(gwlb, policy, gwlb.tcp4(b"a needle")) == (Verdict.UNREWRITABLE, 0, ())
    datagram = gwlb.wrap(gwlb.tcp4(b"a needle"))
    assert handle_datagram(datagram, 0, len(datagram), policy)[0] is Outcome.UNREWRITABLE
